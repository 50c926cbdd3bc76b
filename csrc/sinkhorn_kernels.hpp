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
//
// Unbalanced problems (KL-relaxed marginals of strength rho, otsolve/problems/marginals.py; the
// NumPy reference otsolve/kernels/reference.py defines the iterates): the block updates are
// damped by lam = 1/(1 + eps/rho) around eps (log a + 1/2),
//   f_i <- eps (log a_i + 1/2 + lam_a (1/2 - lse_i))     (row i now sums to a_i e^{(1-lam_a)(lse_i-1/2)})
//   g_j <- lam_b (g_j + eps (log b_j - log colacc_j)) + (1 - lam_b) eps (log b_j + 1/2)
// and the error is measured against the marginal targets a~ = a exp(-(f - eps log a - eps/2)/rho)
// (exact after a plain update, as in the balanced case). rho = inf gives lam = 1 and runs the
// balanced code unchanged (one flag per side, tested outside the inner loops).
// After each full update (f then g) of an unbalanced problem the potentials are shifted by the
// optimal translation (f + t, g - t), t = log(A/B)/(1/rho_a + 1/rho_b) with A, B the total target
// masses (translation-invariant Sinkhorn, Sejourne, Vialard, Peyre, AISTATS 2022; translation()
// below). The plan is unchanged; the slow "mass" mode of unbalanced Sinkhorn (rate 1 - O(eps/rho))
// goes away.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "fast_math.hpp"

namespace otsolve {

// Cooperative interruption of long compiled loops (Ctrl-C). The kernels run without the GIL, so
// they cannot see Python's signal handlers; a Python binding installs a hook that takes the GIL,
// runs the handlers (PyErr_CheckSignals) and returns true when one raised (KeyboardInterrupt).
// The loops poll it from the calling thread between iterations, at most every 0.25 s (one clock
// read per iteration otherwise), and return with status 4; the binding then raises the error.
using InterruptHook = bool (*)();
inline InterruptHook& interrupt_hook() {
  static InterruptHook hook = nullptr;
  return hook;
}

class InterruptPoll {
 public:
  // true when the loop must stop (the hook reported a pending exception)
  bool operator()() {
    const InterruptHook hook = interrupt_hook();
    if (hook == nullptr) return false;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::milliseconds(250)) return false;
    last_ = now;
    return hook();
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

constexpr int kStatusInterrupted = 4;

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

// Threads for a loop over `work` cost entries per pass. Automatic choice (n_threads <= 0) keeps
// at least ~256k entries per thread: below that, fork/join and barriers cost more than they save
// (and on a loaded machine a barrier can wait a whole scheduler quantum).
inline int resolve_threads(int n_threads, long work = std::numeric_limits<long>::max()) {
#ifdef _OPENMP
  // never more threads than processors: oversubscription only adds barrier cost (4096 threads
  // turned a 1-s solve into a minute); the Python side validates and warns (check_n_threads)
  if (n_threads > 0) return std::min(n_threads, std::max(1, omp_get_num_procs()));
  const long cap = std::max(1L, work / (1L << 18));
  return static_cast<int>(std::min<long>(omp_get_max_threads(), cap));
#else
  (void)n_threads;
  (void)work;
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
  int status = 1;      // 0 converged, 1 max_iter, 2 diverged, 3 underflow (scaling kernel only),
                       // 4 interrupted (a Python signal handler raised; see InterruptPoll)
  std::vector<double> errors;
  std::vector<double> omegas;  // relaxation used by each update
};

// Over-relaxation f <- f + omega (f_sinkhorn - f) (Thibault et al. 2021, "Overrelaxed
// Sinkhorn-Knopp algorithm"; adaptive choice as in Lehmann et al. 2022): with the plain
// iteration's linear rate kappa, omega* = 2 / (1 + sqrt(1 - kappa)) turns the rate into
// omega* - 1. omega > 0 is used as given; omega <= 0 means adaptive: plain steps until the rate
// is measurable, then omega*, falling back to plain steps when the error grows tenfold (transient growth is normal).
struct Relaxation {
  double omega = 1.0;
  bool adaptive = false;
  double omega_max = 1.95;
  std::vector<double> plain;    // errors seen with omega == 1 since the last reset
  std::vector<double> relaxed;  // errors seen with the current omega > 1
  double best = std::numeric_limits<double>::infinity();
  double stall_ref = std::numeric_limits<double>::infinity();  // error at the last 10% gain
  int stall_count = 0;  // relaxed iterations since then

  explicit Relaxation(double w) {
    adaptive = !(w > 0.0);
    omega = adaptive ? 1.0 : w;
  }
  void reset() {
    omega = 1.0;
    plain.clear();
    relaxed.clear();
    best = std::numeric_limits<double>::infinity();
    stall_ref = std::numeric_limits<double>::infinity();
    stall_count = 0;
  }
  void observe(double err) {
    if (!adaptive) return;
    if (!std::isfinite(err)) {
      reset();
      return;
    }
    if (omega == 1.0) {
      plain.push_back(err);
      const size_t lag = 5;
      if (plain.size() > 10) {
        const double prev = plain[plain.size() - 1 - lag];
        const double kappa = prev > 0.0 ? std::pow(err / prev, 1.0 / lag) : 1.0;
        if (kappa > 0.0 && kappa < 0.999) {
          omega = std::min(1.9, 2.0 / (1.0 + std::sqrt(1.0 - kappa)));
          best = err;
          stall_ref = err;
          stall_count = 0;
          relaxed.assign(1, err);
        }
      }
      return;
    }
    best = std::min(best, err);
    if (err > 10.0 * best) {  // over-relaxation is hurting: back to plain steps, re-measure
      reset();
      return;
    }
    // Stalled: no 10% gain in 100 relaxed iterations. Rounding (float32 costs) gives the
    // over-relaxed map a higher error floor than plain Sinkhorn's: plain steps for good.
    if (err < 0.9 * stall_ref) {
      stall_ref = err;
      stall_count = 0;
    } else if (++stall_count >= 100) {
      reset();
      adaptive = false;
      return;
    }
    // Refine: Young's relation (rho + w - 1)^2 = rho w^2 kappa links the observed rate rho at
    // relaxation w to the plain rate kappa; a rate slower than w - 1 means kappa was
    // underestimated (early iterations converge faster than the asymptotic rate).
    relaxed.push_back(err);
    const size_t lag = 10;
    if (relaxed.size() > lag) {
      const double prev = relaxed[relaxed.size() - 1 - lag];
      const double rho = prev > 0.0 ? std::pow(err / prev, 1.0 / lag) : 1.0;
      const double w = omega;
      if (rho > w - 1.0 && rho < 1.0) {
        const double kappa = (rho + w - 1.0) * (rho + w - 1.0) / (rho * w * w);
        if (kappa < 1.0) {
          const double wn = std::min(omega_max, 2.0 / (1.0 + std::sqrt(1.0 - kappa)));
          if (wn > w + 0.01) {
            omega = wn;
            relaxed.assign(1, err);
          }
        }
      }
    }
  }
};

// Damping lam = rho / (rho + eps) of a KL-relaxed marginal's block update (exactly 1 for
// rho = inf, the balanced update); the same expression as marginals.damping.
inline double damping(double eps, double rho) { return 1.0 / (1.0 + eps / rho); }

// Marginal target w exp(-(pot - eps log w - eps/2)/rho) of a relaxed side (0 where w = 0), the
// exponent clamped as marginals.marginal_target does.
inline double marginal_target(double w, double log_w, double pot, double eps, double rho) {
  if (!(w > 0.0)) return 0.0;
  return w * std::exp(std::min(-(pot - eps * log_w - 0.5 * eps) / rho, 700.0));
}

// Optimal shift t of (f + t, g - t) for the dual of the unbalanced problem, from the total target
// masses A = sum a~(f), B = sum b~(g) (a balanced side's target is its weights): the same
// expression as marginals.translation; 0 when both sides are balanced or a mass is 0 / non-finite.
inline double translation(double mass_a, double mass_b, double rho_a, double rho_b) {
  const double k = 1.0 / rho_a + 1.0 / rho_b;
  if (k == 0.0 || !(mass_a > 0.0 && mass_b > 0.0) || std::isinf(mass_a) || std::isinf(mass_b)) return 0.0;
  return std::log(mass_a / mass_b) / k;
}

// Run up to max_iter (over-relaxed) Sinkhorn iterations in place on (f, g). errors[k] is the L1
// marginal error (rows + columns) of the iterate after k updates, measured during the sweep that
// performs update k+1. Stops as soon as that error is <= tol and then leaves (f, g) at the
// measured iterate; after max_iter updates the final iterate's error is not measured here.
// rho_a / rho_b: strengths of KL-relaxed marginals (inf = hard constraint, the balanced problem);
// finite ones damp that side's update and measure its error against the marginal target.
template <typename Cost>
SweepStats sinkhorn_sweeps(const Cost& cost, const double* log_a, const double* log_b, double* f,
                           double* g, double eps, long max_iter, double tol, int n_threads,
                           double omega_in = 1.0,
                           double rho_a = std::numeric_limits<double>::infinity(),
                           double rho_b = std::numeric_limits<double>::infinity()) {
  const long n = cost.n, m = cost.m;
  const double inv_eps = 1.0 / eps;
  const bool unb_a = std::isfinite(rho_a), unb_b = std::isfinite(rho_b);
  const double lam_a = damping(eps, rho_a), lam_b = damping(eps, rho_b);
  const int nt = resolve_threads(n_threads, n * m);
  std::vector<double> f_new(n), colsum(m), col_in(m), a(n), b(m);
  // column masses of the plan after each column update (relaxed columns only; for the column
  // error of the translated iterate)
  std::vector<double> col_after(unb_b ? m : 0);
  for (long i = 0; i < n; ++i) a[i] = std::exp(log_a[i]);
  for (long j = 0; j < m; ++j) b[j] = std::exp(log_b[j]);
  std::vector<std::vector<double>> acc(nt, std::vector<double>(m));
  std::vector<std::vector<double>> acc_in(nt);
  Relaxation relax(omega_in);
  SweepStats st;
  InterruptPoll interrupted;
  double col_err = 0.0;  // column error of the current iterate (known after the first sweep)
  for (long it = 0; it < max_iter; ++it) {
    if (interrupted()) {  // (f, g) hold a complete iterate here
      st.status = kStatusInterrupted;
      return st;
    }
    const bool first = (it == 0);
    const double w = relax.omega;
    double err_rows = 0.0;
#pragma omp parallel num_threads(nt) reduction(+ : err_rows)
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
#pragma omp simd reduction(+ : s)
        for (long j = 0; j < m; ++j) {
          v[j] = fast_exp(v[j] - mx);
          s += v[j];
        }
        const double lse = mx + std::log(s);
        const double fi = f[i] * inv_eps - 1.0;
        // Row mass of the entering plan: exp(f_i/eps - 1 + lse).
        const double target = unb_a ? marginal_target(a[i], log_a[i], f[i], eps, rho_a) : a[i];
        err_rows += std::fabs(std::exp(std::min(fi + lse, 709.0)) - target);
        if (first) {  // entering column masses, for the first error only
          const double wi = std::exp(std::min(fi + mx, 709.0));
#pragma omp simd
          for (long j = 0; j < m; ++j) cin[j] += wi * v[j];
        }
        double f_sink, wrow;
        if (unb_a) {  // damped update; new row mass a_i exp((1 - lam_a)(lse - 1/2))
          f_sink = eps * (log_a[i] + 0.5 + lam_a * (0.5 - lse));
          wrow = a[i] > 0.0 ? a[i] / s * std::exp(std::min((1.0 - lam_a) * (lse - 0.5), 700.0)) : 0.0;
        } else {
          f_sink = eps * (log_a[i] + 1.0 - lse);
          wrow = a[i] / s;
        }
        double fn = f_sink;
        if (w != 1.0 && a[i] > 0.0 && std::isfinite(f[i])) {
          fn = f[i] + w * (f_sink - f[i]);
          wrow *= std::exp(std::min((fn - f_sink) * inv_eps, 700.0));
        }
        f_new[i] = fn;
        if (wrow != 0.0) {
#pragma omp simd
          for (long j = 0; j < m; ++j) ca[j] += wrow * v[j];
        }
      }
      // implicit barrier; reduce the per-thread column accumulators
#pragma omp for schedule(static)
      for (long j = 0; j < m; ++j) {
        double t = 0.0, tin = 0.0;
        for (int k = 0; k < nt; ++k) t += acc[k][j];
        colsum[j] = t;
        if (first) {
          for (int k = 0; k < nt; ++k) tin += acc_in[k][j];
          col_in[j] = tin;
        }
      }
    }
    if (first) {
      col_err = 0.0;
      if (unb_b) {
        for (long j = 0; j < m; ++j)
          col_err += std::fabs(col_in[j] - marginal_target(b[j], log_b[j], g[j], eps, rho_b));
      } else {
        for (long j = 0; j < m; ++j) col_err += std::fabs(col_in[j] - b[j]);
      }
    }
    const double err = err_rows + col_err;
    st.errors.push_back(err);
    if (!std::isfinite(err) && it > 0) {
      bool bad = false;
      for (long i = 0; i < n && !bad; ++i) bad = std::isnan(f[i]) || f[i] == INFINITY;
      for (long j = 0; j < m && !bad; ++j) bad = std::isnan(g[j]) || g[j] == INFINITY;
      if (bad) {
        st.status = 2;
        return st;
      }
    }
    if (err <= tol) {
      st.status = 0;
      return st;
    }
    std::copy(f_new.begin(), f_new.end(), f);
    // Column update; underflowed columns get an exact LSE (and a plain step).
    const double tiny = 1e-280;
    double cerr = 0.0;
    if (!unb_b) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 256) reduction(+ : cerr)
      for (long j = 0; j < m; ++j) {
        if (colsum[j] > tiny && std::isfinite(colsum[j])) {
          const double step = log_b[j] - std::log(colsum[j]);
          if (w == 1.0 || !std::isfinite(g[j]) || b[j] == 0.0) {
            g[j] += eps * step;
          } else {
            g[j] += w * eps * step;
            // column mass after the relaxed step: colsum^(1-w) b^w
            cerr += std::fabs(colsum[j] * std::exp(w * step) - b[j]);
          }
        } else {
          g[j] = eps * (log_b[j] + 1.0 - column_lse(cost, f, j, inv_eps));
        }
      }
    } else {
      // damped: g_sink = lam_b (g + eps (log b - log colsum)) + (1 - lam_b) eps (log b + 1/2),
      // whose column mass colsum exp((g_sink - g)/eps) equals its target b~(g_sink). col_after
      // keeps each column's mass after the step, for the error after the translation below.
      double* ca = col_after.data();
#pragma omp parallel for num_threads(nt) schedule(dynamic, 256)
      for (long j = 0; j < m; ++j) {
        if (colsum[j] > tiny && std::isfinite(colsum[j])) {
          const double g_sink = lam_b * (g[j] + eps * (log_b[j] - std::log(colsum[j]))) +
                                (1.0 - lam_b) * eps * (log_b[j] + 0.5);
          if (w == 1.0 || !std::isfinite(g[j]) || b[j] == 0.0) {
            g[j] = g_sink;
            ca[j] = marginal_target(b[j], log_b[j], g_sink, eps, rho_b);  // exact step
          } else {
            const double gn = g[j] + w * (g_sink - g[j]);
            // column mass after the relaxed step
            ca[j] = colsum[j] * std::exp(std::min((gn - g[j]) * inv_eps, 700.0));
            g[j] = gn;
          }
        } else {
          g[j] = eps * (log_b[j] + 0.5 + lam_b * (0.5 - column_lse(cost, f, j, inv_eps)));
          ca[j] = marginal_target(b[j], log_b[j], g[j], eps, rho_b);  // exact step
        }
      }
    }
    if (unb_a || unb_b) {
      // Translation-invariant step: (f + t, g - t) with t maximising the dual along that line
      // (t from the total target masses of the updated potentials). The plan, hence its row and
      // column masses, is unchanged; the targets move (b~(g - t) = b~(g) e^{t/rho_b}), so the
      // column error carried to the next sweep is recomputed for the shifted iterate (a balanced
      // column side's targets do not move: cerr stays exact). -inf potentials stay -inf.
      double mass_a = 0.0, mass_b = 0.0;
      for (long i = 0; i < n; ++i)
        mass_a += unb_a ? marginal_target(a[i], log_a[i], f[i], eps, rho_a) : a[i];
      for (long j = 0; j < m; ++j)
        mass_b += unb_b ? marginal_target(b[j], log_b[j], g[j], eps, rho_b) : b[j];
      const double t = translation(mass_a, mass_b, rho_a, rho_b);
      if (t != 0.0) {
        for (long i = 0; i < n; ++i) f[i] += t;
        for (long j = 0; j < m; ++j) g[j] -= t;
      }
      if (unb_b) {
        cerr = 0.0;
        for (long j = 0; j < m; ++j)
          cerr += std::fabs(col_after[j] - marginal_target(b[j], log_b[j], g[j], eps, rho_b));
      }
    }
    col_err = cerr;
    st.omegas.push_back(w);
    st.n_iter = it + 1;
    relax.observe(err);
  }
  st.status = 1;
  return st;
}

// Symmetric Sinkhorn for OT(a, a) on a symmetric cost (the self-transport terms of the Sinkhorn
// divergence, Feydy et al. 2019): the optimal potentials satisfy f = g, so one potential is kept
// and updated by the averaged map f <- (f + T(f)) / 2 with T(f)_i = eps (log a_i + 1 - LSE_j
// (f_j - C_ij)/eps) (the Sinkhorn update with g = f). The plain map T oscillates; the average
// converges in a handful of iterations. errors[k] = L1 error of rows + columns (= 2 x rows, by
// symmetry) of the plan P_ij = exp((f_i + f_j - C_ij)/eps - 1) after k updates; stops when
// <= tol leaving f at the measured iterate. Status as sinkhorn_sweeps (0, 1, 2, 4).
// rho: strength of the KL-relaxed marginal (inf = balanced): finite, T is the damped update
// eps (log a_i + 1/2 + lam (1/2 - LSE)) and the error is measured against the marginal target.
template <typename Cost>
SweepStats symmetric_sweeps(const Cost& cost, const double* log_a, double* f, double eps,
                            long max_iter, double tol, int n_threads,
                            double rho = std::numeric_limits<double>::infinity()) {
  const long n = cost.n, m = cost.m;
  const double inv_eps = 1.0 / eps;
  const bool unb = std::isfinite(rho);
  const double lam = damping(eps, rho);
  const int nt = resolve_threads(n_threads, n * m);
  std::vector<double> f_new(n), a(n);
  for (long i = 0; i < n; ++i) a[i] = std::exp(log_a[i]);
  SweepStats st;
  InterruptPoll interrupted;
  for (long it = 0;; ++it) {
    if (interrupted()) {
      st.status = kStatusInterrupted;
      return st;
    }
    double err_rows = 0.0;
#pragma omp parallel num_threads(nt) reduction(+ : err_rows)
    {
      FlushDenormals ftz;
      std::vector<double> buf(m);
      double* v = buf.data();
#pragma omp for schedule(static)
      for (long i = 0; i < n; ++i) {
        cost.row(i, v);
        double mx = -std::numeric_limits<double>::infinity();
#pragma omp simd reduction(max : mx)
        for (long j = 0; j < m; ++j) {
          v[j] = (f[j] - v[j]) * inv_eps;
          mx = std::max(mx, v[j]);
        }
        double s = 0.0;
        if (std::isfinite(mx)) {
#pragma omp simd reduction(+ : s)
          for (long j = 0; j < m; ++j) s += fast_exp(v[j] - mx);
        }
        const double lse = mx + std::log(s);
        const double fi = f[i] * inv_eps - 1.0;
        if (a[i] > 0.0) {
          const double target = unb ? marginal_target(a[i], log_a[i], f[i], eps, rho) : a[i];
          err_rows += std::fabs(std::exp(std::min(fi + lse, 709.0)) - target);
        }
        const double t = unb ? eps * (log_a[i] + 0.5 + lam * (0.5 - lse)) : eps * (log_a[i] + 1.0 - lse);
        f_new[i] = (a[i] > 0.0 && std::isfinite(f[i])) ? 0.5 * (f[i] + t) : t;
      }
    }
    const double err = 2.0 * err_rows;
    st.errors.push_back(err);
    if (!std::isfinite(err) && it > 0) {
      bool bad = false;
      for (long i = 0; i < n && !bad; ++i) bad = std::isnan(f[i]) || f[i] == INFINITY;
      if (bad) {
        st.status = 2;
        return st;
      }
    }
    if (err <= tol) {
      st.status = 0;
      return st;
    }
    if (it >= max_iter) break;
    std::copy(f_new.begin(), f_new.end(), f);
    st.omegas.push_back(0.5);
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
  const int nt = resolve_threads(n_threads, n * m);
  std::vector<std::vector<double>> acc(nt, std::vector<double>(m, 0.0));
  double tc = 0.0, te = 0.0;
#pragma omp parallel num_threads(nt) reduction(+ : tc, te)
  {
    FlushDenormals ftz;
    const int tid = thread_num();
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
