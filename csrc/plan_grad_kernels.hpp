// Envelope gradient of an entropic OT value with respect to the points, in one fused pass.
//
// For point clouds x (n x d), y (m x d) with cost C_ij = scale |x_i - y_j|^2 (kind 0) or
// scale |x_i - y_j| (kind 1) and the plan P_ij = exp((f_i + g_j - C_ij)/eps - 1), the gradient
// of sum_ij P_ij C_ij at fixed P (Danskin) is
//   gx_i = sum_j w_ij (x_i - y_j),   gy_j = sum_i w_ij (y_j - x_i),
//   w_ij = P_ij * 2 scale (kind 0)   or   P_ij * scale / |x_i - y_j| (kind 1; 0 where x_i = y_j).
// Each row of the cost is computed once (as in the Sinkhorn sweeps), nothing n x m is stored:
// the torch version materialises several n x m temporaries per row chunk, and on the CPU their
// first-touch page faults and torch's slow float32 exp below exp(-88) cost 10-50 ns per entry.
// gx is (n x d) and gy (m x d), row-major, written (not accumulated).
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "fast_math.hpp"
#include "sinkhorn_kernels.hpp"

namespace otsolve {

template <typename T>
void plan_cost_gradients(const PointCloudCost<T>& cost, const double* f, const double* g, double eps,
                         double* gx, double* gy, bool need_x, bool need_y, int n_threads) {
  const long n = cost.n, m = cost.m, d = cost.d;
  const double inv_eps = 1.0 / eps;
  const int nt = resolve_threads(n_threads, n * m);
  const bool euclid = cost.kind == CostKind::Euclidean;
  const double w2 = euclid ? cost.scale : 2.0 * cost.scale;
  // per-thread column accumulators: colw[j] = sum_i w_ij, colx[k*m + j] = sum_i w_ij x_ik
  std::vector<std::vector<double>> colw(need_y ? nt : 0), colx(need_y ? nt : 0);
#pragma omp parallel num_threads(nt)
  {
    FlushDenormals ftz;
    const int tid = thread_num();
    double* cw = nullptr;
    double* cx = nullptr;
    if (need_y) {
      colw[tid].assign(m, 0.0);
      colx[tid].assign(m * d, 0.0);
      cw = colw[tid].data();
      cx = colx[tid].data();
    }
    std::vector<double> buf(m), raw(euclid ? m : 0);
    double* w = buf.data();
#pragma omp for schedule(static)
    for (long i = 0; i < n; ++i) {
      cost.row(i, w);  // C_ij
      const double fi = f[i] * inv_eps - 1.0;
      if (euclid) {
        // |x_i - y_j| = C_ij / scale; the weight divides by it
        const double inv_s = 1.0 / cost.scale;
#pragma omp simd
        for (long j = 0; j < m; ++j) raw[j] = w[j] * inv_s;
      }
#pragma omp simd
      for (long j = 0; j < m; ++j) w[j] = fast_exp(fi + (g[j] - w[j]) * inv_eps) * w2;
      if (euclid) {
#pragma omp simd
        for (long j = 0; j < m; ++j) w[j] = raw[j] > 0.0 ? w[j] / raw[j] : 0.0;
      }
      const T* xi = cost.X + i * d;
      if (need_x) {
        double r = 0.0;
#pragma omp simd reduction(+ : r)
        for (long j = 0; j < m; ++j) r += w[j];
        for (long k = 0; k < d; ++k) {
          const T* yk = cost.YT + k * m;
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (long j = 0; j < m; ++j) s += w[j] * static_cast<double>(yk[j]);
          gx[i * d + k] = r * static_cast<double>(xi[k]) - s;
        }
      }
      if (need_y) {
#pragma omp simd
        for (long j = 0; j < m; ++j) cw[j] += w[j];
        for (long k = 0; k < d; ++k) {
          const double xik = static_cast<double>(xi[k]);
          double* ck = cx + k * m;
#pragma omp simd
          for (long j = 0; j < m; ++j) ck[j] += w[j] * xik;
        }
      }
    }
    if (need_y) {
#pragma omp barrier
#pragma omp for schedule(static)
      for (long j = 0; j < m; ++j) {
        double sw = 0.0;
        for (int q = 0; q < nt; ++q) sw += colw[q][j];
        for (long k = 0; k < d; ++k) {
          double sx = 0.0;
          for (int q = 0; q < nt; ++q) sx += colx[q][k * m + j];
          gy[j * d + k] = sw * static_cast<double>(cost.YT[k * m + j]) - sx;
        }
      }
    }
  }
}

}  // namespace otsolve
