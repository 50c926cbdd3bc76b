// Fused log-domain Sinkhorn sweeps (CPU).
//
// Convention (docs/sinkhorn.md): plan P_ij = exp((f_i + g_j - C_ij)/eps - 1).
// One Sinkhorn iteration = one pass over the cost, one exp per entry:
//   for each row i:  v_j = (g_j - C_ij)/eps,  lse_i = LSE_j v_j           (exact, max-shifted)
//                    row mass of the current plan  s_i = exp(f_i/eps - 1 + lse_i)
//                    f_i <- eps (log a_i + 1 - lse_i)                       (row i now sums to a_i)
//                    colacc_j += a_i exp(v_j - lse_i)                        (= new P_ij <= a_i)
//   then             g_j <- g_j + eps (log b_j - log colacc_j)              (columns sum to b_j)
// Every exponent is shifted by a maximum or bounded by a marginal, so nothing overflows for any
// eps; a column whose accumulated mass underflows is recomputed with an exact column LSE.
// The row masses s_i give the L1 marginal error of the iterate *entering* the sweep for free
// (its columns are exact), so the stopping test costs nothing extra.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "fast_math.hpp"

namespace otsolve {

enum class CostKind : int { SqEuclidean = 0, Euclidean = 1 };

// Cost provider for a dense row-major n x m matrix.
template <typename T>
struct DenseCost {
  const T* C;
  long n, m;
  // Fill buf[0..m) with row i as double.
  inline void row(long i, double* buf) const {
    const T* c = C + i * m;
#pragma omp simd
    for (long j = 0; j < m; ++j) buf[j] = static_cast<double>(c[j]);
  }
  inline double at(long i, long j) const { return static_cast<double>(C[i * m + j]); }
};

// Cost provider computing squared-Euclidean / Euclidean costs of point clouds on the fly.
// X is n x d row-major; YT is d x m (coordinates of y stored by dimension, so rows vectorize).
template <typename T>
struct PointCloudCost {
  const T* X;
  const T* YT;
  long n, m, d;
  double scale;
  CostKind kind;
  inline void row(long i, double* buf) const {
    const T* x = X + i * d;
    {
      const double x0 = static_cast<double>(x[0]);
      const T* y0 = YT;
#pragma omp simd
      for (long j = 0; j < m; ++j) {
        const double t = x0 - static_cast<double>(y0[j]);
        buf[j] = t * t;
      }
    }
    for (long k = 1; k < d; ++k) {
      const double xk = static_cast<double>(x[k]);
      const T* yk = YT + k * m;
#pragma omp simd
      for (long j = 0; j < m; ++j) {
        const double t = xk - static_cast<double>(yk[j]);
        buf[j] += t * t;
      }
    }
    if (kind == CostKind::Euclidean) {
#pragma omp simd
      for (long j = 0; j < m; ++j) buf[j] = std::sqrt(buf[j]);
    }
    const double s = scale;
#pragma omp simd
    for (long j = 0; j < m; ++j) buf[j] *= s;
  }
  inline double at(long i, long j) const {
    double acc = 0.0;
    for (long k = 0; k < d; ++k) {
      const double t = static_cast<double>(X[i * d + k]) - static_cast<double>(YT[k * m + j]);
      acc += t * t;
    }
    if (kind == CostKind::Euclidean) acc = std::sqrt(acc);
    return acc * scale;
  }
};

inline int resolve_threads(int n_threads) {
#ifdef _OPENMP
  return n_threads > 0 ? n_threads : omp_get_max_threads();
#else
  (void)n_threads;
  return 1;
#endif
}

// Exact LSE over rows for column j: LSE_i (f_i - C_ij)/eps.
template <typename Cost>
double column_lse(const Cost& cost, const double* f, long j, double inv_eps) {
  double mx = -std::numeric_limits<double>::infinity();
  for (long i = 0; i < cost.n; ++i) mx = std::max(mx, (f[i] - cost.at(i, j)) * inv_eps);
  if (!std::isfinite(mx)) return mx;
  double s = 0.0;
  for (long i = 0; i < cost.n; ++i) s += std::exp((f[i] - cost.at(i, j)) * inv_eps - mx);
  return mx + std::log(s);
}

struct SweepStats {
  long n_iter = 0;     // completed updates of (f, g)
  int status = 1;      // 0 converged, 1 max_iter, 2 diverged (non-finite potentials)
  std::vector<double> errors;
};

// Run up to max_iter Sinkhorn iterations in place on (f, g). errors[k] is the L1 marginal error
// of the iterate after k updates (measured at the start of sweep k). Stops as soon as that error
// is <= tol and then leaves (f, g) at the measured iterate.
template <typename Cost>
SweepStats sinkhorn_sweeps(const Cost& cost, const double* log_a, const double* log_b, double* f,
                           double* g, double eps, long max_iter, double tol, int n_threads) {
  const long n = cost.n, m = cost.m;
  const double inv_eps = 1.0 / eps;
  const int nt = resolve_threads(n_threads);
  std::vector<double> f_new(n), colsum(m), a(n);
  for (long i = 0; i < n; ++i) a[i] = std::exp(log_a[i]);
  std::vector<std::vector<double>> acc(nt, std::vector<double>(m));
  SweepStats st;
  // Each call measures one more error than it updates; max_iter + 1 sweeps at most, the last
  // only to measure.
  for (long it = 0; it <= max_iter; ++it) {
    double err_rows = 0.0;
    bool last = (it == max_iter);
#pragma omp parallel num_threads(nt) reduction(+ : err_rows)
    {
#ifdef _OPENMP
      const int tid = omp_get_thread_num();
#else
      const int tid = 0;
#endif
      double* ca = acc[tid].data();
      std::fill(ca, ca + m, 0.0);
      std::vector<double> buf(m);
      double* v = buf.data();
#pragma omp for schedule(static)
      for (long i = 0; i < n; ++i) {
        cost.row(i, v);
        double mx = -std::numeric_limits<double>::infinity();
#pragma omp simd reduction(max : mx)
        for (long j = 0; j < m; ++j) {
          v[j] = (g[j] - v[j]) * inv_eps;
          mx = std::max(mx, v[j]);
        }
        double s = 0.0;
        if (!last) {
#pragma omp simd reduction(+ : s)
          for (long j = 0; j < m; ++j) {
            v[j] = fast_exp(v[j] - mx);
            s += v[j];
          }
        } else {
#pragma omp simd reduction(+ : s)
          for (long j = 0; j < m; ++j) s += fast_exp(v[j] - mx);
        }
        const double lse = mx + std::log(s);
        // Row mass of the entering plan: exp(f_i/eps - 1 + lse).
        const double row_mass = std::exp(std::min(f[i] * inv_eps - 1.0 + lse, 709.0));
        err_rows += std::fabs(row_mass - a[i]);
        f_new[i] = eps * (log_a[i] + 1.0 - lse);
        if (!last) {
          const double w = a[i] / s;
#pragma omp simd
          for (long j = 0; j < m; ++j) ca[j] += w * v[j];
        }
      }
      // implicit barrier; reduce the per-thread column accumulators
      if (!last) {
#pragma omp for schedule(static)
        for (long j = 0; j < m; ++j) {
          double t = 0.0;
          for (int k = 0; k < nt; ++k) t += acc[k][j];
          colsum[j] = t;
        }
      }
    }
    st.errors.push_back(err_rows);
    if (!std::isfinite(err_rows) && it > 0) {
      // Potentials are finite by construction unless the input was not; report divergence.
      bool bad = false;
      for (long i = 0; i < n && !bad; ++i) bad = !std::isfinite(f[i]);
      for (long j = 0; j < m && !bad; ++j) bad = !std::isfinite(g[j]);
      if (bad) {
        st.status = 2;
        return st;
      }
    }
    if (err_rows <= tol) {
      st.status = 0;
      return st;
    }
    if (last) break;
    std::copy(f_new.begin(), f_new.end(), f);
    // Column update; underflowed columns get an exact LSE.
    const double tiny = 1e-280;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 256)
    for (long j = 0; j < m; ++j) {
      if (colsum[j] > tiny && std::isfinite(colsum[j])) {
        g[j] += eps * (log_b[j] - std::log(colsum[j]));
      } else {
        g[j] = eps * (log_b[j] + 1.0 - column_lse(cost, f, j, inv_eps));
      }
    }
    st.n_iter = it + 1;
  }
  st.status = 1;
  return st;
}

// Marginals, transport cost <C,P> and sum P log P of the plan defined by (f, g), in one pass.
// P is formed directly (no stabilizer): the caller passes potentials from a solve.
template <typename Cost>
void plan_statistics(const Cost& cost, const double* f, const double* g, double eps, double* row,
                     double* col, double* out_cost, double* out_plogp, int n_threads) {
  const long n = cost.n, m = cost.m;
  const double inv_eps = 1.0 / eps;
  const int nt = resolve_threads(n_threads);
  std::vector<std::vector<double>> acc(nt, std::vector<double>(m, 0.0));
  double tc = 0.0, te = 0.0;
#pragma omp parallel num_threads(nt) reduction(+ : tc, te)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    double* ca = acc[tid].data();
    std::vector<double> buf(m);
    double* c = buf.data();
#pragma omp for schedule(static)
    for (long i = 0; i < n; ++i) {
      cost.row(i, c);
      double s = 0.0, sc = 0.0, se = 0.0;
      const double fi = f[i];
#pragma omp simd reduction(+ : s, sc, se)
      for (long j = 0; j < m; ++j) {
        const double l = (fi + g[j] - c[j]) * inv_eps - 1.0;
        const double p = fast_exp(l);
        s += p;
        sc += p * c[j];
        se += p > 0.0 ? p * l : 0.0;
        ca[j] += p;
      }
      row[i] = s;
      tc += sc;
      te += se;
    }
#pragma omp for schedule(static)
    for (long j = 0; j < m; ++j) {
      double t = 0.0;
      for (int k = 0; k < nt; ++k) t += acc[k][j];
      col[j] = t;
    }
  }
  *out_cost = tc;
  *out_plogp = te;
}

}  // namespace otsolve
