// Helpers shared by the otsolve CUDA kernels (compiled by NVRTC through cupy.RawModule).
//
// The Python loader (otsolve/backends/cuda_kernels.py) pastes this header into each .cu file
// before compiling, so CuPy's compile cache keys on the full text; nvcc sees it through -I.
// No standard headers: NVRTC has none by default.
#pragma once

namespace otsolve_cuda {

typedef long long i64;

// Per-type constants and math (float uses the accurate expf/logf, not __expf: the marginal
// error of float32 problems is tested against 1e-6 and __expf loses ~1e-5 at exponents ~-80).
template <typename T> struct Tr;
template <> struct Tr<float> {
  static __device__ __forceinline__ float ninf() { return __int_as_float(0xff800000); }
  static __device__ __forceinline__ float pinf() { return __int_as_float(0x7f800000); }
  static __device__ __forceinline__ float ex(float x) { return expf(x); }
  static __device__ __forceinline__ float lg(float x) { return logf(x); }
  static __device__ __forceinline__ float max_log() { return 88.0f; }  // exp overflows above
};
template <> struct Tr<double> {
  static __device__ __forceinline__ double ninf() { return __longlong_as_double(0xfff0000000000000ULL); }
  static __device__ __forceinline__ double pinf() { return __longlong_as_double(0x7ff0000000000000ULL); }
  static __device__ __forceinline__ double ex(double x) { return exp(x); }
  static __device__ __forceinline__ double lg(double x) { return log(x); }
  static __device__ __forceinline__ double max_log() { return 709.0; }
};

__device__ __forceinline__ double dninf() { return __longlong_as_double(0xfff0000000000000ULL); }
__device__ __forceinline__ double dpinf() { return __longlong_as_double(0x7ff0000000000000ULL); }

// Online log-sum-exp state: LSE = mx + log(s), and t = sum_j exp(v_j - mx) * w_j (a weighted sum
// rescaled together with s, used for <C, P>). The max is kept in the working type, the sums in
// double so that long rows (m ~ 1e5) do not lose float32 accuracy.
template <typename T> struct Lse {
  T mx;
  double s, t;
  __device__ __forceinline__ void init() { mx = Tr<T>::ninf(); s = 0.0; t = 0.0; }
  // One exp per entry: either the entry's weight or the rescaling of the old sums.
  __device__ __forceinline__ void push(T v, T w) {
    if (v > mx) {
      const double r = (double)Tr<T>::ex(mx - v);  // 0 when mx = -inf
      s = s * r + 1.0;
      t = t * r + (double)w;
      mx = v;
    } else if (mx != Tr<T>::ninf()) {  // v <= mx; skips -inf entries while mx is still -inf
      const double e = (double)Tr<T>::ex(v - mx);
      s += e;
      t += e * (double)w;
    } else if (v != v) {  // NaN entry: poison the sums so divergence is seen
      s = v;
    }
  }
  __device__ __forceinline__ void merge(T omx, double os, double ot) {
    if (omx == Tr<T>::ninf() && os == 0.0) return;
    if (mx == Tr<T>::ninf() && s == 0.0) { mx = omx; s = os; t = ot; return; }
    if (omx > mx) {
      const double r = (double)Tr<T>::ex(mx - omx);
      s = s * r + os; t = t * r + ot; mx = omx;
    } else {
      const double r = (double)Tr<T>::ex(omx - mx);
      s += os * r; t += ot * r;
    }
  }
  __device__ __forceinline__ void warp_reduce() {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const T omx = __shfl_xor_sync(0xffffffffu, mx, off);
      const double os = __shfl_xor_sync(0xffffffffu, s, off);
      const double ot = __shfl_xor_sync(0xffffffffu, t, off);
      merge(omx, os, ot);
    }
  }
  // log-sum-exp as double (-inf for an empty / all -inf row).
  __device__ __forceinline__ double value() const {
    if (!(s > 0.0)) return (s != s) ? s : dninf();
    return (double)mx + log(s);
  }
};

// Marginal target of a line with weight w = exp(lw) > 0 and potential pot: w when rho = inf
// (balanced), else w exp(-(pot - eps log w - eps/2)/rho) (KL-relaxed marginal of strength rho,
// otsolve.problems.marginals.marginal_target; the exponent is capped at 700 like there).
__device__ __forceinline__ double marginal_target(double w, double lw, double pot, double e, double rho) {
  if (rho == dpinf()) return w;
  double x = -(pot - e * lw - 0.5 * e) / rho;
  if (x > 700.0) x = 700.0;
  return w * exp(x);
}

// Optimal shift t of (f + t, g - t) for the dual of the unbalanced problem from the total target
// masses A = sum a~(f), B = sum b~(g): log(A/B) / (1/rho_a + 1/rho_b) (translation-invariant
// Sinkhorn, Sejourne, Vialard, Peyre, AISTATS 2022; otsolve.problems.marginals.translation);
// 0 when both sides are balanced or a mass is 0 / non-finite.
__device__ __forceinline__ double translation(double mass_a, double mass_b, double rho_a, double rho_b) {
  const double k = 1.0 / rho_a + 1.0 / rho_b;
  if (k == 0.0 || !(mass_a > 0.0 && mass_b > 0.0) || mass_a == dpinf() || mass_b == dpinf()) return 0.0;
  return log(mass_a / mass_b) / k;
}

// Result of one row (or column) of a pass, written by its finishing thread.
//   mode 0 (update): pot <- pot + omega (pot_sinkhorn - pot) with the block maximiser
//     pot_sinkhorn = eps (log w + 1/2 + lam (1/2 - lse)), lam = 1/(1 + eps/rho): the balanced
//     eps (log w + 1 - lse) when rho = inf (lam = 1), damped for a KL-relaxed marginal
//     (omega = 1: plain Sinkhorn; omega in (1, 2): over-relaxation, Thibault et al. 2021).
//     Returns |mass - target| of the line (target: marginal_target, = w when balanced): of the
//     entering iterate when `result_err` is 0 (row pass), of the resulting iterate when 1
//     (column pass; zero for omega = 1, since the exact block update makes the mass equal the
//     target; relaxed, with r = (p_new - sink)/eps: mass = target(sink) exp(r) and
//     target(p_new) = target(sink) exp(-r eps/rho), so |mass - target| = target(p_new) |expm1(r/lam)|).
//     `line_mass` (mode 0 with result_err, may be null): receives the line's mass after the
//     update (its target after an exact step; exp(p_new/eps - 1 + lse) after a relaxed one), for
//     the column error of the translated iterate of unbalanced problems (translate_pass).
//   mode 1 (marginal): mass_out = exp(pot/eps - 1 + lse), cost_out = <C, P> of that line
template <typename T>
__device__ __forceinline__ double finish_line(int mode, double lse, double tsum_over_s, T* pot, i64 idx,
                                              const T* logw, T eps, T omega, double rho, int result_err,
                                              T* mass_out, double* cost_out, double* line_mass) {
  const double e = (double)eps;
  const double p_old = (double)pot[idx];
  double ex = p_old / e - 1.0 + lse;
  if (ex > (double)Tr<T>::max_log()) ex = (double)Tr<T>::max_log();
  const double mass = (p_old == dninf()) ? 0.0 : exp(ex);
  if (mode == 0) {
    const double lw = (double)logw[idx];
    const double w = exp(lw);
    if (lw == dninf()) {
      pot[idx] = (T)dninf();
      if (line_mass) line_mass[idx] = 0.0;
      return result_err ? 0.0 : mass;
    }
    const double lam = 1.0 / (1.0 + e / rho);  // exactly 1 for rho = inf
    const double sink = (lam == 1.0) ? e * (lw + 1.0 - lse) : e * (lw + 0.5 + lam * (0.5 - lse));
    const double om = (double)omega;
    const bool relax = om != 1.0 && p_old > dninf() && p_old < (double)Tr<T>::pinf();
    const double p_new = relax ? p_old + om * (sink - p_old) : sink;
    pot[idx] = (T)p_new;
    if (!result_err) return fabs(mass - marginal_target(w, lw, p_old, e, rho));
    if (!relax) {
      if (line_mass) line_mass[idx] = marginal_target(w, lw, p_new, e, rho);  // exact step
      return 0.0;
    }
    if (line_mass) {
      double xn = p_new / e - 1.0 + lse;
      if (xn > (double)Tr<T>::max_log()) xn = (double)Tr<T>::max_log();
      line_mass[idx] = exp(xn);
    }
    double r = (p_new - sink) / e / lam;
    if (r > (double)Tr<T>::max_log()) r = (double)Tr<T>::max_log();
    return marginal_target(w, lw, p_new, e, rho) * fabs(expm1(r));
  }
  mass_out[idx] = (T)mass;
  if (cost_out) cost_out[idx] = (mass > 0.0) ? mass * tsum_over_s : 0.0;
  return 0.0;
}

// Sum of `v` over the block, returned to every thread (blockDim.x*blockDim.y <= 1024). Every
// thread of the block must call it (it has barriers).
__device__ __forceinline__ double block_sum(double v) {
  __shared__ double red[33];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int nthreads = blockDim.x * blockDim.y;
  const int lane = tid & 31, warp = tid >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = (lane < (nthreads + 31) / 32) ? red[lane] : 0.0;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) red[32] = v;
  }
  __syncthreads();
  const double out = red[32];
  __syncthreads();  // `red` is reused by the next call
  return out;
}

// Sum `v` over the block and add it to *out (one atomic per block). blockDim.x*blockDim.y <= 1024.
// Every thread of the block must call it (block_sum has barriers).
__device__ __forceinline__ void block_atomic_add(double v, double* out) {
  const double total = block_sum(v);
  if (threadIdx.x + threadIdx.y * blockDim.x == 0 && total != 0.0)
    atomicAdd(out, total);  // NaN != 0: divergence reaches the host
}

}  // namespace otsolve_cuda
