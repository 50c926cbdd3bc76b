// Stored-kernel symmetric Sinkhorn for OT(a, a) on a symmetric dense cost (the self-transport
// terms of the Sinkhorn divergence, Feydy et al. 2019), balanced case.
//
// The log-domain symmetric sweep (symmetric_sweeps in sinkhorn_kernels.hpp) evaluates one exp
// per cost entry per iteration. Here the potential is stored as f = f0 + eps log u with the Gibbs
// kernel K_ij = exp((f0_i + f0_j - C_ij)/eps - 1) built once from f0 (Schmitzer 2019's
// absorption, as in sinkhorn_scaling.hpp); an iteration is then one product K u, no exp:
//   s = K u,  row masses of the plan P = diag(u) K diag(u):  r_i = u_i s_i,
//   averaged update f <- (f + T(f)) / 2 with T(f)_i = eps (log a_i + 1 - LSE_j (f_j - C_ij)/eps)
//   is, in the scaling domain,  u_i <- sqrt(u_i a_i / s_i)
// (LSE_j (f_j - C_ij)/eps = log s_i + 1 - f0_i/eps). These are the iterates of symmetric_sweeps,
// stored differently. When a scaling drifts far from 1 (|log u_i| > tau) it is absorbed into f0
// and K is rebuilt; when a kernel row with a positive weight underflows the kernel finishes the
// solve with the log-domain sweeps (so it is exactly as stable; status 3 never escapes).
// errors[k] = L1 error of rows + columns (2 x rows) of the plan after k updates; stops when
// <= tol leaving f at the measured iterate. Status: 0 converged, 1 budget, 2 diverged,
// 4 interrupted. K is an n x n workspace of the cost's type.
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
#include "sinkhorn_scaling.hpp"

namespace otsolve {

template <typename T>
SweepStats symmetric_scaling_dense(const T* C, long n, const double* log_a, double* f, double eps,
                                   long max_iter, double tol, int n_threads, T* K, double tau) {
  const int nt = resolve_threads(n_threads, n * n);
  const double tiny = 1e-280;
  std::vector<double> a(n), u(n, 1.0), s(n);
  for (long i = 0; i < n; ++i) a[i] = std::exp(log_a[i]);
  SweepStats st;
  InterruptPoll interrupted;

  auto absorb = [&]() {
    for (long i = 0; i < n; ++i) {
      if (u[i] != 1.0) f[i] += eps * std::log(u[i]);  // u = 0 (zero weight): f = -inf
      u[i] = 1.0;
    }
  };
  auto finish_in_log_domain = [&](long done) {
    // a kernel row underflowed: the potentials are too far off for K; the log-domain sweeps
    // continue from the same iterate (one re-measuring sweep, then the remaining budget)
    absorb();
    SweepStats rest = symmetric_sweeps(DenseCost<T>{C, n, n}, log_a, f, eps, max_iter - done, tol,
                                       n_threads);
    st.status = rest.status;
    st.n_iter = done + rest.n_iter;
    st.errors.pop_back();  // the underflowed measurement is measured again by the first sweep
    st.errors.insert(st.errors.end(), rest.errors.begin(), rest.errors.end());
    return st;
  };

  build_gibbs_kernel(C, n, n, f, f, eps, K, nt);
  for (long it = 0;; ++it) {
    if (interrupted()) {
      st.status = kStatusInterrupted;
      absorb();
      return st;
    }
    double err_rows = 0.0;
    int bad_rows = 0;
    const double* uu = u.data();
#pragma omp parallel num_threads(nt) reduction(+ : err_rows, bad_rows)
    {
      FlushDenormals ftz;
#pragma omp for schedule(static)
      for (long i = 0; i < n; ++i) {
        const T* k = K + i * n;
        double si = 0.0;
#pragma omp simd reduction(+ : si)
        for (long j = 0; j < n; ++j) si += static_cast<double>(k[j]) * uu[j];
        s[i] = si;
        if (a[i] > 0.0) {
          err_rows += std::fabs(uu[i] * si - a[i]);
          bad_rows += !(si > tiny) || !std::isfinite(si);
        }
      }
    }
    const double err = 2.0 * err_rows;
    st.errors.push_back(err);
    if (bad_rows > 0) return finish_in_log_domain(it);
    if (!std::isfinite(err) && it > 0) {
      absorb();
      bool bad = false;
      for (long i = 0; i < n && !bad; ++i) bad = std::isnan(f[i]) || f[i] == INFINITY;
      if (bad) {
        st.status = 2;
        return st;
      }
    }
    if (err <= tol) {
      st.status = 0;
      absorb();
      return st;
    }
    if (it >= max_iter) break;
    bool far = false;
    for (long i = 0; i < n; ++i) {
      const double ui = a[i] > 0.0 ? std::sqrt(u[i] * a[i] / s[i]) : 0.0;
      u[i] = ui;
      far |= ui > 0.0 && std::fabs(std::log(ui)) > tau;
    }
    st.omegas.push_back(0.5);
    st.n_iter = it + 1;
    if (far) {  // absorb the scalings into the potential and rebuild K
      absorb();
      bool finite = true;
      for (long i = 0; i < n && finite; ++i) finite = !std::isnan(f[i]) && f[i] != INFINITY;
      if (!finite) {
        st.status = 2;
        return st;
      }
      build_gibbs_kernel(C, n, n, f, f, eps, K, nt);
    }
  }
  st.status = 1;
  absorb();
  return st;
}

}  // namespace otsolve
