// Sinkhorn-Newton-Sparse kernels (CPU): the Newton system from the potentials in one pass, the
// sparse symmetric matvec and a Jacobi-preconditioned CG built on it.
//
// Convention (docs/sns.md): plan P_ij = exp((x_i + y_j - C_ij)/eps - 1), evaluated at the trial
// point (x + alpha dx, y + alpha dy) so that one pass serves as the line-search evaluation and,
// when the step is accepted, as the next Newton system.
// Sparsified Hessian block: the k largest entries of each row of P (fixed row length, CSR with
// row pointer k*i) and its transpose as a CSR matrix, so M~ v = [diag(row) vx + P~ vy;
// diag(col) vy + P~^T vx] is two gathers (no atomics).
// NumPy references with the same semantics: otsolve/kernels/sns_reference.py.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <utility>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "fast_math.hpp"

namespace otsolve {
namespace sns {

// A trial whose largest exponent exceeds this is rejected (exp(700) * n * m stays finite).
constexpr double kOverflowExponent = 700.0;

inline int threads(int n_threads) {
#ifdef _OPENMP
  return n_threads > 0 ? n_threads : omp_get_max_threads();
#else
  (void)n_threads;
  return 1;
#endif
}

struct FormResult {
  double mass = 0.0;  // sum of P (inf when the trial overflows)
  double lmax = -std::numeric_limits<double>::infinity();  // largest exponent
  double kept = 0.0;  // mass of the kept entries
};

// Keep the k best (largest L, ties: smaller column) of L[0..m) in idx[0..k), sorted by column.
// Selection by block maxima: split the row into blocks of kBlock entries; the k largest block
// maxima are k distinct entries, so the k-th largest entry of the row is >= the k-th largest
// block maximum thr. Only blocks whose maximum reaches thr can hold a kept entry (about k of
// them), so the scan touches O(k * kBlock) entries instead of m, and the k best candidates are
// picked by a partial sort. bmax: scratch of m / kBlock + 1 doubles; cand: scratch of m indices.
constexpr long kBlock = 16;

inline void select_top_k(const double* L, long m, long k, int64_t* idx, double* bmax,
                         double* bsel, int64_t* cand) {
  // "p before q" = p is better: larger L, or equal L and smaller column.
  auto better = [L](int64_t p, int64_t q) { return L[p] > L[q] || (L[p] == L[q] && p < q); };
  const long nb = (m + kBlock - 1) / kBlock;
  long cnt = 0;
  if (nb >= k) {
    for (long q = 0; q < nb; ++q) {
      const long lo = q * kBlock, hi = std::min(m, lo + kBlock);
      double mx = -std::numeric_limits<double>::infinity();
#pragma omp simd reduction(max : mx)
      for (long j = lo; j < hi; ++j) mx = std::max(mx, L[j]);
      bmax[q] = mx;
    }
    std::copy(bmax, bmax + nb, bsel);
    std::nth_element(bsel, bsel + (k - 1), bsel + nb, std::greater<double>());
    const double thr = bsel[k - 1];
    for (long q = 0; q < nb; ++q) {
      if (!(bmax[q] >= thr)) continue;
      const long lo = q * kBlock, hi = std::min(m, lo + kBlock);
      for (long j = lo; j < hi; ++j) {
        cand[cnt] = j;
        cnt += (L[j] >= thr);
      }
    }
  }
  if (cnt < k) {  // short rows (or NaN in the row): every column is a candidate
    cnt = m;
    for (long j = 0; j < m; ++j) cand[j] = j;
  }
  std::partial_sort(cand, cand + k, cand + cnt, better);
  std::copy(cand, cand + k, idx);
  std::sort(idx, idx + k);
}

// One pass over C: marginals row/col, kept entries (kidx, kval: n x k), their transpose
// (tptr: m + 1, tidx/tval: n k), total and kept mass. k = 0 only evaluates the marginals.
template <typename T>
FormResult form_system(const T* C, long n, long m, const double* x, const double* y,
                       const double* dx, const double* dy, double alpha, double eps, double* row,
                       double* col, long k, int64_t* kidx, double* kval, int64_t* tptr,
                       int64_t* tidx, double* tval, int n_threads) {
  const int nt = threads(n_threads);
  const double inv_eps = 1.0 / eps;
  std::vector<double> yt(m);
  for (long j = 0; j < m; ++j) yt[j] = y[j] + alpha * dy[j];
  std::vector<std::vector<double>> acc(nt, std::vector<double>(m, 0.0));
  double lmax = -std::numeric_limits<double>::infinity();
  double mass = 0.0, kept = 0.0;
  int overflow = 0;
#pragma omp parallel num_threads(nt) reduction(max : lmax) reduction(+ : mass, kept, overflow)
  {
    const int tid = thread_num();
    double* ca = acc[tid].data();
    std::vector<double> lbuf(m), pbuf(m);
    std::vector<int64_t> cbuf(k > 0 ? m : 0);
    std::vector<double> bbuf(k > 0 ? 2 * (m / kBlock + 1) : 0);
    double* L = lbuf.data();
    double* p = pbuf.data();
    const double* ytp = yt.data();
#pragma omp for schedule(static)
    for (long i = 0; i < n; ++i) {
      const T* c = C + i * m;
      const double xi = x[i] + alpha * dx[i];
      double mx = -std::numeric_limits<double>::infinity();
#pragma omp simd reduction(max : mx)
      for (long j = 0; j < m; ++j) {
        L[j] = (xi + ytp[j] - static_cast<double>(c[j])) * inv_eps - 1.0;
        mx = std::max(mx, L[j]);
      }
      lmax = std::max(lmax, mx);
      if (!(mx <= kOverflowExponent)) {  // overflow or NaN: reject the trial, skip the row
        overflow += 1;
        continue;
      }
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (long j = 0; j < m; ++j) {
        p[j] = fast_exp(L[j]);
        s += p[j];
        ca[j] += p[j];
      }
      row[i] = s;
      mass += s;
      if (k > 0) {
        int64_t* ki = kidx + i * k;
        double* kv = kval + i * k;
        select_top_k(L, m, k, ki, bbuf.data(), bbuf.data() + (m / kBlock + 1), cbuf.data());
        for (long t = 0; t < k; ++t) {
          kv[t] = p[ki[t]];
          kept += kv[t];
        }
      }
    }
#pragma omp for schedule(static)
    for (long j = 0; j < m; ++j) {
      double t = 0.0;
      for (int q = 0; q < nt; ++q) t += acc[q][j];
      col[j] = t;
    }
  }
  FormResult res;
  res.lmax = lmax;
  if (overflow > 0) {
    res.mass = std::numeric_limits<double>::infinity();
    res.kept = std::numeric_limits<double>::infinity();
    return res;
  }
  res.mass = mass;
  res.kept = kept;
  // Transpose by counting sort; rows stay in increasing order inside each column.
  std::fill(tptr, tptr + m + 1, int64_t(0));
  const long nnz = n * k;
  for (long q = 0; q < nnz; ++q) tptr[kidx[q] + 1] += 1;
  for (long j = 0; j < m; ++j) tptr[j + 1] += tptr[j];
  std::vector<int64_t> fill(tptr, tptr + m);
  for (long i = 0; i < n; ++i)
    for (long t = 0; t < k; ++t) {
      const int64_t j = kidx[i * k + t];
      const int64_t pos = fill[j]++;
      tidx[pos] = i;
      tval[pos] = kval[i * k + t];
    }
  return res;
}

// Exact statistics of the plan of (x, y) (no trial step): marginals row/col, mass and
// <C, P> (returned in `cost`); mass = inf when an exponent exceeds kOverflowExponent.
template <typename T>
double plan_stats(const T* C, long n, long m, const double* x, const double* y, double eps,
                  double* row, double* col, double* cost, int n_threads) {
  const int nt = threads(n_threads);
  const double inv_eps = 1.0 / eps;
  std::vector<std::vector<double>> acc(nt, std::vector<double>(m, 0.0));
  double mass = 0.0, csum = 0.0;
  int overflow = 0;
#pragma omp parallel num_threads(nt) reduction(+ : mass, csum, overflow)
  {
    const int tid = thread_num();
    double* ca = acc[tid].data();
    std::vector<double> lbuf(m);
    double* L = lbuf.data();
#pragma omp for schedule(static)
    for (long i = 0; i < n; ++i) {
      const T* c = C + i * m;
      double mx = -std::numeric_limits<double>::infinity();
#pragma omp simd reduction(max : mx)
      for (long j = 0; j < m; ++j) {
        L[j] = (x[i] + y[j] - static_cast<double>(c[j])) * inv_eps - 1.0;
        mx = std::max(mx, L[j]);
      }
      if (!(mx <= kOverflowExponent)) {
        overflow += 1;
        row[i] = std::numeric_limits<double>::infinity();
        continue;
      }
      double s = 0.0, t = 0.0;
#pragma omp simd reduction(+ : s, t)
      for (long j = 0; j < m; ++j) {
        const double p = fast_exp(L[j]);
        s += p;
        t += p * static_cast<double>(c[j]);
        ca[j] += p;
      }
      row[i] = s;
      mass += s;
      csum += t;
    }
#pragma omp for schedule(static)
    for (long j = 0; j < m; ++j) {
      double t = 0.0;
      for (int q = 0; q < nt; ++q) t += acc[q][j];
      col[j] = t;
    }
  }
  *cost = csum;
  return overflow > 0 ? std::numeric_limits<double>::infinity() : mass;
}

// The sparsified system matrix M~ = [[diag(row), P~], [P~^T, diag(col)]].
struct SparseSystem {
  const double* row;
  const double* col;
  const int64_t* kidx;
  const double* kval;
  const int64_t* tptr;
  const int64_t* tidx;
  const double* tval;
  long n, m, k;
  int nt;

  // out = M~ v (v, out of length n + m). Two gathers. CG calls this hundreds of times per
  // Newton step with ~50 microseconds of work at n = 5000: an OpenMP region per call costs
  // milliseconds whenever the cores are shared (a descheduled thread stalls the barrier), so
  // only very large systems are threaded.
  void apply(const double* v, double* out) const {
    const double* vy = v + n;
    const bool par = nt > 1 && (n + m) * (k + 1) >= (1L << 22);
#pragma omp parallel num_threads(nt) if (par)
    {
#pragma omp for schedule(static) nowait
      for (long i = 0; i < n; ++i) {
        const int64_t* ki = kidx + i * k;
        const double* kv = kval + i * k;
        double s = row[i] * v[i];
        for (long t = 0; t < k; ++t) s += kv[t] * vy[ki[t]];
        out[i] = s;
      }
#pragma omp for schedule(static)
      for (long j = 0; j < m; ++j) {
        double s = col[j] * vy[j];
        for (int64_t q = tptr[j]; q < tptr[j + 1]; ++q) s += tval[q] * v[tidx[q]];
        out[n + j] = s;
      }
    }
  }
};

inline double dot(const double* a, const double* b, long len) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (long i = 0; i < len; ++i) s += a[i] * b[i];
  return s;
}

struct CGResult {
  long iterations = 0;
  double relres = 0.0;
};

// Remove the component of v (length n + m) along the gauge direction (1_n, -1_m).
inline void project_gauge(double* v, long n, long m) {
  double sx = 0.0, sy = 0.0;
#pragma omp simd reduction(+ : sx)
  for (long i = 0; i < n; ++i) sx += v[i];
#pragma omp simd reduction(+ : sy)
  for (long j = 0; j < m; ++j) sy += v[n + j];
  const double c = (sx - sy) / double(n + m);
#pragma omp simd
  for (long i = 0; i < n; ++i) v[i] -= c;
#pragma omp simd
  for (long j = 0; j < m; ++j) v[n + j] += c;
}

// Projected Jacobi-preconditioned CG: Pi M~ Pi z = Pi rhs on the complement of the gauge
// direction, preconditioner Pi D^-1 Pi. The direction (1, -1) is (almost) null for M~ when
// little mass is dropped; keeping it out of every search direction keeps CG well conditioned.
// z: warm start in / solution out. Same steps as sns_reference.sns_pcg: stop on
// ||Pi r||_2 <= rtol ||Pi rhs||_2, at maxiter, or on breakdown (p^T M~ p <= 0, also NaN).
inline CGResult pcg(const SparseSystem& A, const double* rhs, double* z, double rtol, long maxiter) {
  const long n = A.n, m = A.m, N = n + m;
  std::vector<double> dinv(N), b(rhs, rhs + N), r(N), s(N), p(N), q(N);
  for (long i = 0; i < n; ++i) dinv[i] = 1.0 / (A.row[i] + 1e-300);
  for (long j = 0; j < m; ++j) dinv[n + j] = 1.0 / (A.col[j] + 1e-300);
  CGResult res;
  project_gauge(z, n, m);
  project_gauge(b.data(), n, m);
  const double bnorm = std::sqrt(dot(b.data(), b.data(), N));
  if (bnorm == 0.0) {
    std::fill(z, z + N, 0.0);
    return res;
  }
  A.apply(z, q.data());
  for (long i = 0; i < N; ++i) r[i] = b[i] - q[i];
  project_gauge(r.data(), n, m);
  double rnorm = std::sqrt(dot(r.data(), r.data(), N));
  if (rnorm <= rtol * bnorm) {
    res.relres = rnorm / bnorm;
    return res;
  }
  for (long i = 0; i < N; ++i) s[i] = dinv[i] * r[i];
  project_gauge(s.data(), n, m);
  std::copy(s.begin(), s.end(), p.begin());
  double rs = dot(r.data(), s.data(), N);
  long it = 0;
  while (it < maxiter) {
    A.apply(p.data(), q.data());
    project_gauge(q.data(), n, m);
    const double pq = dot(p.data(), q.data(), N);
    if (!(pq > 0.0)) break;
    const double a = rs / pq;
    double rr = 0.0;
#pragma omp simd reduction(+ : rr)
    for (long i = 0; i < N; ++i) {
      z[i] += a * p[i];
      r[i] -= a * q[i];
      rr += r[i] * r[i];
    }
    ++it;
    rnorm = std::sqrt(rr);
    if (rnorm <= rtol * bnorm) break;
#pragma omp simd
    for (long i = 0; i < N; ++i) s[i] = dinv[i] * r[i];
    project_gauge(s.data(), n, m);
    const double rs_new = dot(r.data(), s.data(), N);
    const double beta = rs_new / rs;
#pragma omp simd
    for (long i = 0; i < N; ++i) p[i] = s[i] + beta * p[i];
    rs = rs_new;
  }
  res.iterations = it;
  res.relres = rnorm / bnorm;
  return res;
}

}  // namespace sns
}  // namespace otsolve
