// Stabilized kernel-domain Sinkhorn with absorption (Schmitzer 2019, Alg. 2) for dense costs.
//
// The plan is P_ij = u_i K_ij v_j with K_ij = exp((f_i + g_j - C_ij)/eps - 1) built from the
// current potentials. An iteration is then one pass over K with no exp at all (a row dot product
// and a column accumulation, fused), which is what makes it as fast as kernel-domain Sinkhorn.
// When a scaling drifts far from 1 (|log u| or |log v| > tau) it is absorbed into (f, g) and K
// is rebuilt; a row or column of K whose mass underflowed makes the kernel hand back to the
// log-domain sweeps (status 3). At exit the scalings are absorbed, so (f, g) are the potentials.
// Unbalanced problems (finite rho_a / rho_b): damped updates and the translation step, the same
// iterates as sinkhorn_sweeps (see sinkhorn_scaling_dense_impl).
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "fast_math.hpp"
#include "sinkhorn_kernels.hpp"

namespace otsolve {

// K_ij = exp((f_i + g_j - C_ij)/eps - 1), stored in T.
template <typename T>
void build_gibbs_kernel(const T* C, long n, long m, const double* f, const double* g, double eps,
                        T* K, int nt) {
  const double inv_eps = 1.0 / eps;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (long i = 0; i < n; ++i) {
    const T* c = C + i * m;
    T* k = K + i * m;
    const double fi = f[i] * inv_eps - 1.0;
#pragma omp simd
    for (long j = 0; j < m; ++j)
      k[j] = static_cast<T>(fast_exp(fi + (g[j] - static_cast<double>(c[j])) * inv_eps));
  }
}

// Runs up to max_iter iterations on (f, g) in place, K is an n*m workspace.
// status: 0 converged, 1 max_iter, 2 diverged, 3 underflow (caller falls back to log sweeps),
// 4 interrupted (InterruptPoll).
// errors[k] = L1 marginal error (rows + columns) of the iterate after k updates, as in
// sinkhorn_sweeps; omega as there (<= 0: adaptive over-relaxation).
//
// Unb = true: the unbalanced problem (rho_a / rho_b, at least one finite), the same iterates as
// sinkhorn_sweeps / the NumPy reference sinkhorn_dense. With f = f0 + eps log u (f0 the stored
// potentials K was built from) and s_i = sum_j K_ij v_j = exp(f0_i/eps - 1 + lse_i), the damped
// row update f_sink = eps (log a + 1/2 + lam_a (1/2 - lse)) is
//   log u_sink = lam_a log(a_i / s_i) + (1 - lam_a)(log a_i + 1/2 - f0_i/eps)
// (lam_a = 1: the balanced u = a / s), the column update likewise with the column sums of the
// new u; over-relaxation acts on log u. The scalings are kept in the log domain (lu, lv) too,
// so the potentials f0 + eps lu needed by the marginal targets cost no log. The translation
// step (f + t, g - t) after each full update shifts the stored f0, g0: K_ij depends on
// f0_i + g0_j only, so it stays valid. A scaling whose log leaves [-kMaxLogScaling,
// kMaxLogScaling] (it would overflow / underflow) is handled like an underflowed row/column
// (status 3). One instantiation per case: the balanced code path is unchanged.
template <typename T, bool Unb>
SweepStats sinkhorn_scaling_dense_impl(const T* C, long n, long m, const double* log_a,
                                       const double* log_b, double* f, double* g, double eps,
                                       long max_iter, double tol, int n_threads, T* K, double tau,
                                       double omega_in, double rho_a, double rho_b) {
  const int nt = resolve_threads(n_threads, n * m);
  std::vector<double> a(n), b(m), u(n, 1.0), v(m, 1.0), u_new(n), colsum(m), col_in(m);
  for (long i = 0; i < n; ++i) a[i] = std::exp(log_a[i]);
  for (long j = 0; j < m; ++j) b[j] = std::exp(log_b[j]);
  std::vector<std::vector<double>> acc(nt, std::vector<double>(m));
  std::vector<std::vector<double>> acc_in(nt);
  const double tiny = 1e-280;
  Relaxation relax(omega_in);
  SweepStats st;
  // unbalanced only: log scalings, column masses after the column step, damping per side
  constexpr double kMaxLogScaling = 700.0;
  const bool unb_a = Unb && std::isfinite(rho_a), unb_b = Unb && std::isfinite(rho_b);
  const double lam_a = damping(eps, rho_a), lam_b = damping(eps, rho_b);
  const double inv_eps = 1.0 / eps;
  std::vector<double> lu(Unb ? n : 0, 0.0), lu_new(Unb ? n : 0), lv(Unb ? m : 0, 0.0),
      col_after(Unb ? m : 0);
  // marginal targets of the current iterate (f0 + eps lu, g0 + eps lv): a relaxed side's
  // w exp(-(pot - eps log w - eps/2)/rho) (as marginal_target(), vectorized), else the weights
  std::vector<double> ta(Unb ? a : std::vector<double>()), tb(Unb ? b : std::vector<double>());
  auto targets = [eps](std::vector<double>& t, const std::vector<double>& w, const double* log_w,
                       const double* pot, const std::vector<double>& lsc, double rho) {
    const long len = static_cast<long>(t.size());
#pragma omp simd
    for (long i = 0; i < len; ++i) {
      const double x = std::min(-(pot[i] + eps * lsc[i] - eps * log_w[i] - 0.5 * eps) / rho, 700.0);
      t[i] = w[i] > 0.0 ? w[i] * fast_exp(x) : 0.0;
    }
  };
  if constexpr (Unb) {
    if (unb_a) targets(ta, a, log_a, f, lu, rho_a);
    if (unb_b) targets(tb, b, log_b, g, lv, rho_b);
  }

  auto absorb = [&]() {
    if constexpr (Unb) {
      for (long i = 0; i < n; ++i) {
        if (lu[i] != 0.0) f[i] += eps * lu[i];
        u[i] = 1.0;
        lu[i] = 0.0;
      }
      for (long j = 0; j < m; ++j) {
        if (lv[j] != 0.0) g[j] += eps * lv[j];
        v[j] = 1.0;
        lv[j] = 0.0;
      }
      return;
    }
    for (long i = 0; i < n; ++i) {
      if (u[i] != 1.0) f[i] += eps * std::log(u[i]);
      u[i] = 1.0;
    }
    for (long j = 0; j < m; ++j) {
      if (v[j] != 1.0) g[j] += eps * std::log(v[j]);
      v[j] = 1.0;
    }
  };

  build_gibbs_kernel(C, n, m, f, g, eps, K, nt);
  InterruptPoll interrupted;
  double col_err = 0.0;
  for (long it = 0; it < max_iter; ++it) {
    if (interrupted()) {
      st.status = kStatusInterrupted;
      absorb();
      return st;
    }
    const bool first = (it == 0);
    const double w = relax.omega;
    double err = 0.0;
    int bad_rows = 0;
#pragma omp parallel num_threads(nt) reduction(+ : err, bad_rows)
    {
      FlushDenormals ftz;
      const int tid = thread_num();
      double* ca = acc[tid].data();
      std::fill(ca, ca + m, 0.0);
      double* cin = nullptr;
      if (first) {
        acc_in[tid].assign(m, 0.0);
        cin = acc_in[tid].data();
      }
      const double* vv = v.data();
#pragma omp for schedule(static)
      for (long i = 0; i < n; ++i) {
        const T* k = K + i * m;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (long j = 0; j < m; ++j) s += static_cast<double>(k[j]) * vv[j];
        if constexpr (Unb) {
          err += std::fabs(u[i] * s - ta[i]);
        } else {
          err += std::fabs(u[i] * s - a[i]);
        }
        if (first) {
          const double ui = u[i];
#pragma omp simd
          for (long j = 0; j < m; ++j) cin[j] += ui * static_cast<double>(k[j]);
        }
        if (!(s > tiny) || !std::isfinite(s)) {
          bad_rows += (a[i] > 0.0);
          u_new[i] = (a[i] > 0.0) ? u[i] : 0.0;
          if constexpr (Unb) lu_new[i] = (a[i] > 0.0) ? lu[i] : -INFINITY;
          continue;
        }
        double ui;
        if constexpr (Unb) {
          if (!(a[i] > 0.0)) {
            u_new[i] = 0.0;
            lu_new[i] = -INFINITY;
            continue;
          }
          const double lr = log_a[i] - std::log(s);  // log(a_i / s_i)
          double l = unb_a ? lam_a * lr + (1.0 - lam_a) * (log_a[i] + 0.5 - f[i] * inv_eps) : lr;
          if (w != 1.0 && std::isfinite(lu[i]) && std::isfinite(f[i])) l = lu[i] + w * (l - lu[i]);
          if (!(std::fabs(l) <= kMaxLogScaling)) {  // u would overflow / underflow: hand back
            bad_rows += 1;
            u_new[i] = u[i];
            lu_new[i] = lu[i];
            continue;
          }
          lu_new[i] = l;
          ui = std::exp(l);
        } else {
          ui = a[i] / s;
          if (w != 1.0 && ui > 0.0) ui = std::exp((1.0 - w) * std::log(u[i]) + w * std::log(ui));
        }
        u_new[i] = ui;
        if (ui != 0.0) {
#pragma omp simd
          for (long j = 0; j < m; ++j) ca[j] += ui * static_cast<double>(k[j]);
        }
      }
#pragma omp for schedule(static)
      for (long j = 0; j < m; ++j) {
        double t = 0.0, tin = 0.0;
        for (int q = 0; q < nt; ++q) t += acc[q][j];
        colsum[j] = t;
        if (first) {
          for (int q = 0; q < nt; ++q) tin += acc_in[q][j];
          col_in[j] = tin;
        }
      }
    }
    if (first) {
      col_err = 0.0;
      if constexpr (Unb) {
        for (long j = 0; j < m; ++j) col_err += std::fabs(v[j] * col_in[j] - tb[j]);
      } else {
        for (long j = 0; j < m; ++j) col_err += std::fabs(v[j] * col_in[j] - b[j]);
      }
    }
    err += col_err;
    st.errors.push_back(err);
    if (err <= tol && bad_rows == 0) {
      st.status = 0;
      absorb();
      return st;
    }
    if (bad_rows > 0) {  // a row's kernel mass underflowed: potentials too far off for K
      st.status = 3;
      absorb();
      return st;
    }
    // v update; columns with underflowed mass also hand back to the log-domain sweeps
    bool bad_col = false, far = false;
    double cerr = 0.0;
    if constexpr (Unb) {
      for (long i = 0; i < n; ++i) {
        u[i] = u_new[i];
        lu[i] = lu_new[i];
        far |= std::fabs(lu[i]) > tau && std::isfinite(lu[i]);
      }
      for (long j = 0; j < m; ++j) {
        if (!(colsum[j] > tiny) || !std::isfinite(colsum[j])) {
          if (b[j] > 0.0) bad_col = true;
          v[j] = (b[j] > 0.0) ? v[j] : 0.0;
          lv[j] = (b[j] > 0.0) ? lv[j] : -INFINITY;
          col_after[j] = v[j] * colsum[j];
          continue;
        }
        if (!(b[j] > 0.0)) {
          v[j] = 0.0;
          lv[j] = -INFINITY;
          col_after[j] = 0.0;
          continue;
        }
        const double lr = log_b[j] - std::log(colsum[j]);  // log(b_j / colsum_j)
        double l = unb_b ? lam_b * lr + (1.0 - lam_b) * (log_b[j] + 0.5 - g[j] * inv_eps) : lr;
        if (w != 1.0 && std::isfinite(lv[j]) && std::isfinite(g[j])) l = lv[j] + w * (l - lv[j]);
        if (!(std::fabs(l) <= kMaxLogScaling)) {  // v would overflow / underflow: hand back
          bad_col = true;
          col_after[j] = v[j] * colsum[j];
          continue;
        }
        lv[j] = l;
        v[j] = std::exp(l);
        col_after[j] = v[j] * colsum[j];  // column mass of the updated plan
        far |= std::fabs(l) > tau;
      }
    } else {
      for (long i = 0; i < n; ++i) {
        u[i] = u_new[i];
        far |= u[i] > 0.0 && std::fabs(std::log(u[i])) > tau;
      }
      for (long j = 0; j < m; ++j) {
        if (!(colsum[j] > tiny) || !std::isfinite(colsum[j])) {
          if (b[j] > 0.0) bad_col = true;
          v[j] = (b[j] > 0.0) ? v[j] : 0.0;
          continue;
        }
        double vj = b[j] / colsum[j];
        if (w != 1.0 && vj > 0.0) {
          vj = std::exp((1.0 - w) * std::log(v[j]) + w * std::log(vj));
          cerr += std::fabs(vj * colsum[j] - b[j]);
        }
        v[j] = vj;
        far |= vj > 0.0 && std::fabs(std::log(vj)) > tau;
      }
    }
    if constexpr (Unb) {
      if (!bad_col) {
        // Translation-invariant step (f + t, g - t), t from the total target masses of the
        // updated potentials (translation()); stored in f0, g0: K and the plan are unchanged.
        // The column error carried to the next iteration is that of the shifted iterate.
        // The targets move with the shift (a~(f + t) = a~(f) e^{-t/rho_a}): recomputed after it.
        if (unb_a) targets(ta, a, log_a, f, lu, rho_a);
        if (unb_b) targets(tb, b, log_b, g, lv, rho_b);
        double mass_a = 0.0, mass_b = 0.0;
        for (long i = 0; i < n; ++i) mass_a += ta[i];
        for (long j = 0; j < m; ++j) mass_b += tb[j];
        const double t = translation(mass_a, mass_b, rho_a, rho_b);
        if (t != 0.0) {
          for (long i = 0; i < n; ++i) f[i] += t;
          for (long j = 0; j < m; ++j) g[j] -= t;
          if (unb_a) targets(ta, a, log_a, f, lu, rho_a);
          if (unb_b) targets(tb, b, log_b, g, lv, rho_b);
        }
        for (long j = 0; j < m; ++j) cerr += std::fabs(col_after[j] - tb[j]);
      }
    }
    col_err = cerr;
    st.omegas.push_back(w);
    st.n_iter = it + 1;
    relax.observe(err);
    if (bad_col) {
      st.status = 3;
      absorb();
      return st;
    }
    if (far) {  // absorb the scalings into the potentials and rebuild K
      absorb();
      bool finite = true;
      for (long i = 0; i < n && finite; ++i) finite = !std::isnan(f[i]) && f[i] != INFINITY;
      for (long j = 0; j < m && finite; ++j) finite = !std::isnan(g[j]) && g[j] != INFINITY;
      if (!finite) {
        st.status = 2;
        return st;
      }
      build_gibbs_kernel(C, n, m, f, g, eps, K, nt);
    }
  }
  st.status = 1;
  absorb();
  return st;
}

// rho_a / rho_b: strengths of KL-relaxed marginals (inf = hard constraint, the balanced problem,
// which runs the balanced instantiation unchanged).
template <typename T>
SweepStats sinkhorn_scaling_dense(const T* C, long n, long m, const double* log_a, const double* log_b,
                                  double* f, double* g, double eps, long max_iter, double tol,
                                  int n_threads, T* K, double tau, double omega_in = 1.0,
                                  double rho_a = std::numeric_limits<double>::infinity(),
                                  double rho_b = std::numeric_limits<double>::infinity()) {
  if (std::isfinite(rho_a) || std::isfinite(rho_b))
    return sinkhorn_scaling_dense_impl<T, true>(C, n, m, log_a, log_b, f, g, eps, max_iter, tol,
                                                n_threads, K, tau, omega_in, rho_a, rho_b);
  return sinkhorn_scaling_dense_impl<T, false>(C, n, m, log_a, log_b, f, g, eps, max_iter, tol,
                                               n_threads, K, tau, omega_in, rho_a, rho_b);
}

}  // namespace otsolve
