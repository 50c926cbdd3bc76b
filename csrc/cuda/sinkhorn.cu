// Fused log-domain Sinkhorn passes on the GPU (dense costs and point clouds), batched.
//
// Convention: P_ij = exp((f_i + g_j - C_ij)/eps - 1). One iteration is
//   row pass:    lse_i = LSE_j (g_j - C_ij)/eps;  err += |exp(f_i/eps - 1 + lse_i) - a~_i|;
//                f_i <- eps (log a_i + 1/2 + lam_a (1/2 - lse_i))
//   column pass: lse_j = LSE_i (f_i - C_ij)/eps;  g_j <- eps (log b_j + 1/2 + lam_b (1/2 - lse_j))
// with lam = 1/(1 + eps/rho) for a marginal KL-relaxed with strength rho (unbalanced OT; each
// side's rho is a kernel argument) and lam = 1 (the balanced eps (log a_i + 1 - lse_i)) for
// rho = inf; the targets a~ = a exp(-(f - eps log a - eps/2)/rho) are a itself when balanced
// (see finish_line in otsolve_common.cuh and otsolve/problems/marginals.py).
// so the cost is read twice per iteration (the memory floor) and each entry costs one exp.
// The row pass measures the L1 marginal error of the iterate entering it (its columns are exact
// after the previous column pass), so stopping costs no extra pass.
//
// Unbalanced problems (either rho finite): after each column pass, translate_pass shifts the
// potentials by the optimal translation (f + t, g - t) (translation-invariant Sinkhorn, Sejourne,
// Vialard, Peyre, AISTATS 2022; t from the total target masses, see `translation` in
// otsolve_common.cuh), which leaves the plan unchanged and removes the slow mass mode; the column
// pass keeps each column's resulting mass (`line_mass`) so that the column error carried to the
// next row pass is recomputed exactly for the shifted iterate.
//
// Batching: every array has a leading problem axis (B problems of one size, contiguous) and the
// kernels run only over `active` problem ids (grid.y / grid.z), so finished problems cost nothing.
// Mode 1 computes marginals (and <C,P> per row) of the plan of (f, g) without updating them.
#include "otsolve_common.cuh"

using namespace otsolve_cuda;

// ---- dense cost: row pass, one warp per row ---------------------------------------------
// C (B, n, m); pot (B, n) updated; other (B, m); logw (B, n); err_out (B,) accumulated.
template <typename T>
__global__ void row_pass_dense(const T* __restrict__ C, const T* __restrict__ other, const T* __restrict__ logw,
                               T* __restrict__ pot, const T* __restrict__ omega, const int* __restrict__ active,
                               i64 n, i64 m, T eps, double rho, int mode, int with_cost, double* __restrict__ err_out,
                               T* __restrict__ mass_out, double* __restrict__ cost_out) {
  const int p = active[blockIdx.y];
  const int lane = threadIdx.x & 31;
  const i64 i = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  double err = 0.0;
  if (i < n) {  // whole warps take this branch together (rows are per warp)
    const T* c = C + ((i64)p * n + i) * m;
    const T* o = other + (i64)p * m;
    const T inv = (T)1 / eps;
    Lse<T> st;
    st.init();
    if (with_cost) {
#pragma unroll 4
      for (i64 j = lane; j < m; j += 32) {
        const T cij = c[j];
        st.push((o[j] - cij) * inv, cij);
      }
    } else {
#pragma unroll 4
      for (i64 j = lane; j < m; j += 32) st.push((o[j] - c[j]) * inv, (T)0);
    }
    st.warp_reduce();
    if (lane == 0) {
      const double ts = (st.s > 0.0) ? st.t / st.s : 0.0;
      err = finish_line<T>(mode, st.value(), ts, pot, (i64)p * n + i, logw, eps, omega[p], rho, 0, mass_out,
                           with_cost ? cost_out : (double*)0, (double*)0);
    }
  }
  if (mode == 0) block_atomic_add(err, err_out + p);
}

// ---- dense cost: column pass, partial LSE over row chunks ---------------------------------
// block (32, 8): threadIdx.x -> column, threadIdx.y strides rows of the chunk blockIdx.y.
// Partials (n_active, nchunk, m) are combined by col_finalize. Reads of C stay coalesced.
template <typename T>
__global__ void col_partial_dense(const T* __restrict__ C, const T* __restrict__ other, const int* __restrict__ active,
                                  i64 n, i64 m, T eps, int rows_per_chunk, int with_cost, T* __restrict__ part_mx,
                                  double* __restrict__ part_s, double* __restrict__ part_t) {
  __shared__ T smx[8][33];
  __shared__ double ss[8][33];
  __shared__ double st_[8][33];
  const int z = blockIdx.z;
  const int p = active[z];
  const i64 j = (i64)blockIdx.x * 32 + threadIdx.x;
  const i64 r0 = (i64)blockIdx.y * rows_per_chunk;
  i64 r1 = r0 + rows_per_chunk;
  if (r1 > n) r1 = n;
  const T inv = (T)1 / eps;
  Lse<T> st;
  st.init();
  if (j < m) {
    const T* c = C + (i64)p * n * m + j;
    const T* o = other + (i64)p * n;
#pragma unroll 4
    for (i64 i = r0 + threadIdx.y; i < r1; i += 8) {
      const T cij = c[i * m];
      st.push((o[i] - cij) * inv, with_cost ? cij : (T)0);
    }
  }
  smx[threadIdx.y][threadIdx.x] = st.mx;
  ss[threadIdx.y][threadIdx.x] = st.s;
  st_[threadIdx.y][threadIdx.x] = st.t;
  __syncthreads();
  if (threadIdx.y == 0 && j < m) {
    for (int q = 1; q < 8; ++q) st.merge(smx[q][threadIdx.x], ss[q][threadIdx.x], st_[q][threadIdx.x]);
    const i64 k = ((i64)z * gridDim.y + blockIdx.y) * m + j;
    part_mx[k] = st.mx;
    part_s[k] = st.s;
    part_t[k] = st.t;
  }
}

// One thread per (column, active problem): merge the chunk partials and finish the column.
// keep_mass (mode 0): each column's mass after the update goes to line_mass (B, m).
template <typename T>
__global__ void col_finalize(const T* __restrict__ part_mx, const double* __restrict__ part_s,
                             const double* __restrict__ part_t, int nchunk, const T* __restrict__ logw,
                             T* __restrict__ pot, const T* __restrict__ omega, const int* __restrict__ active,
                             int n_active, i64 m, T eps, double rho,
                             int mode, int with_cost, double* __restrict__ err_out, T* __restrict__ mass_out,
                             double* __restrict__ cost_out, int keep_mass, double* __restrict__ line_mass) {
  const i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  const int z = blockIdx.y;
  if (z >= n_active) return;
  const int p = active[z];
  double err = 0.0;
  if (j < m) {
    Lse<T> st;
    st.init();
    for (int q = 0; q < nchunk; ++q) {
      const i64 k = ((i64)z * nchunk + q) * m + j;
      st.merge(part_mx[k], part_s[k], part_t[k]);
    }
    const double ts = (st.s > 0.0) ? st.t / st.s : 0.0;
    err = finish_line<T>(mode, st.value(), ts, pot, (i64)p * m + j, logw, eps, omega[p], rho, 1, mass_out,
                         with_cost ? cost_out : (double*)0, keep_mass ? line_mass : (double*)0);
  }
  if (mode == 0 && err_out) block_atomic_add(err, err_out + p);
}

// ---- point clouds: cost computed on the fly ------------------------------------------------
// Row pass over X (B, n, d) against YT (B, d, m) (y stored by coordinate so lanes read
// coalesced). The column pass is the same kernel with the roles of x and y swapped.
// R rows per warp share each loaded y coordinate (R x less L2 traffic); coordinates of the R
// rows live in registers when d <= DMAX (compile-time indices only), else they are re-read.
// kind 0: scale * ||x - y||^2, kind 1: scale * ||x - y||. keep_mass (column pass, mode 0): each
// line's mass after the update goes to line_mass (B, n).
#define OTS_DMAX 4
#define OTS_R 4
template <typename T>
__global__ void row_pass_pointcloud(const T* __restrict__ X, const T* __restrict__ YT, int d, int kind, T scale,
                                    const T* __restrict__ other, const T* __restrict__ logw, T* __restrict__ pot,
                                    const T* __restrict__ omega, const int* __restrict__ active, i64 n, i64 m,
                                    T eps, double rho, int mode, int with_cost, int result_err,
                                    double* __restrict__ err_out, T* __restrict__ mass_out,
                                    double* __restrict__ cost_out, int keep_mass,
                                    double* __restrict__ line_mass) {
  const int p = active[blockIdx.y];
  const int lane = threadIdx.x & 31;
  const i64 i0 = ((i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * OTS_R;
  double err = 0.0;
  if (i0 < n) {
    const T* xb = X + (i64)p * n * d;
    const T* yt = YT + (i64)p * d * m;
    const T* o = other + (i64)p * m;
    const T inv = (T)1 / eps;
    const bool small_d = d <= OTS_DMAX;
    T xr[OTS_R][OTS_DMAX];
#pragma unroll
    for (int r = 0; r < OTS_R; ++r) {
      const i64 i = (i0 + r < n) ? i0 + r : n - 1;  // tail rows duplicate the last; not written
#pragma unroll
      for (int k = 0; k < OTS_DMAX; ++k) xr[r][k] = (small_d && k < d) ? xb[i * d + k] : (T)0;
    }
    Lse<T> st[OTS_R];
#pragma unroll
    for (int r = 0; r < OTS_R; ++r) st[r].init();
    for (i64 j = lane; j < m; j += 32) {
      T acc[OTS_R];
#pragma unroll
      for (int r = 0; r < OTS_R; ++r) acc[r] = (T)0;
      if (small_d) {
#pragma unroll
        for (int k = 0; k < OTS_DMAX; ++k) {
          if (k < d) {
            const T yk = yt[(i64)k * m + j];
#pragma unroll
            for (int r = 0; r < OTS_R; ++r) {
              const T t = xr[r][k] - yk;
              acc[r] += t * t;
            }
          }
        }
      } else {
        for (int k = 0; k < d; ++k) {
          const T yk = yt[(i64)k * m + j];
#pragma unroll
          for (int r = 0; r < OTS_R; ++r) {
            const i64 i = (i0 + r < n) ? i0 + r : n - 1;
            const T t = xb[i * d + k] - yk;
            acc[r] += t * t;
          }
        }
      }
      const T oj = o[j];
#pragma unroll
      for (int r = 0; r < OTS_R; ++r) {
        T cij = (kind == 1) ? sqrt(acc[r]) : acc[r];
        cij *= scale;
        st[r].push((oj - cij) * inv, with_cost ? cij : (T)0);
      }
    }
#pragma unroll
    for (int r = 0; r < OTS_R; ++r) {
      st[r].warp_reduce();
      if (lane == 0 && i0 + r < n) {
        const double ts = (st[r].s > 0.0) ? st[r].t / st[r].s : 0.0;
        err += finish_line<T>(mode, st[r].value(), ts, pot, (i64)p * n + i0 + r, logw, eps, omega[p], rho,
                              result_err, mass_out, with_cost ? cost_out : (double*)0,
                              keep_mass ? line_mass : (double*)0);
      }
    }
  }
  if (mode == 0) block_atomic_add(err, err_out + p);
}

// ---- unbalanced: translation-invariant step ------------------------------------------------
// One block per active problem (grid.x), after a column pass that kept the column masses:
//   A = sum_i a~_i(f), B = sum_j b~_j(g) (targets of the updated potentials; a balanced side's
//   target is its weights), t = translation(A, B, rho_a, rho_b) (0 if a mass is 0 / not finite),
//   f <- f + t, g <- g - t on the finite entries (the plan is unchanged), and
//   err_out[p] = sum_j |col_mass_j - b~_j(g)|, the exact column error of the shifted iterate
//   (replacing the column pass's, which was measured before the shift; the next row pass adds
//   its rows to it).
template <typename T>
__global__ void translate_pass(T* __restrict__ f, T* __restrict__ g, const T* __restrict__ log_a,
                               const T* __restrict__ log_b, const double* __restrict__ col_mass,
                               const int* __restrict__ active, i64 n, i64 m, T eps, double rho_a, double rho_b,
                               double* __restrict__ err_out) {
  const int p = active[blockIdx.x];
  const int tid = threadIdx.x, nt = blockDim.x;
  const double e = (double)eps;
  T* fp = f + (i64)p * n;
  T* gp = g + (i64)p * m;
  const T* la = log_a + (i64)p * n;
  const T* lb = log_b + (i64)p * m;
  double sa = 0.0, sb = 0.0;
  for (i64 i = tid; i < n; i += nt) {
    const double lw = (double)la[i];
    if (lw != dninf()) sa += marginal_target(exp(lw), lw, (double)fp[i], e, rho_a);
  }
  for (i64 j = tid; j < m; j += nt) {
    const double lw = (double)lb[j];
    if (lw != dninf()) sb += marginal_target(exp(lw), lw, (double)gp[j], e, rho_b);
  }
  sa = block_sum(sa);
  sb = block_sum(sb);
  const double t = translation(sa, sb, rho_a, rho_b);
  if (t != 0.0) {  // each thread shifts the entries it alone reads below
    for (i64 i = tid; i < n; i += nt) {
      const double v = (double)fp[i];
      if (v > dninf() && v < dpinf()) fp[i] = (T)(v + t);
    }
    for (i64 j = tid; j < m; j += nt) {
      const double v = (double)gp[j];
      if (v > dninf() && v < dpinf()) gp[j] = (T)(v - t);
    }
  }
  double err = 0.0;
  const double* cm = col_mass + (i64)p * m;
  for (i64 j = tid; j < m; j += nt) {
    const double lw = (double)lb[j];
    const double tg = (lw == dninf()) ? 0.0 : marginal_target(exp(lw), lw, (double)gp[j], e, rho_b);
    err += fabs(cm[j] - tg);
  }
  err = block_sum(err);
  if (tid == 0) err_out[p] = err;
}

#ifdef OTSOLVE_NVCC_CHECK
// Explicit instantiations so that `nvcc -DOTSOLVE_NVCC_CHECK` type-checks every template body.
#define OTS_INST(T)                                                                                   \
  template __global__ void row_pass_dense<T>(const T*, const T*, const T*, T*, const T*, const int*, i64, i64, \
                                             T, double, int, int, double*, T*, double*);                     \
  template __global__ void col_partial_dense<T>(const T*, const T*, const int*, i64, i64, T, int, int, T*,  \
                                                double*, double*);                                    \
  template __global__ void col_finalize<T>(const T*, const double*, const double*, int, const T*, T*,     \
                                           const T*, const int*, int, i64, T, double, int, int, double*, T*,  \
                                           double*, int, double*);                            \
  template __global__ void row_pass_pointcloud<T>(const T*, const T*, int, int, T, const T*, const T*, T*, \
                                                  const T*, const int*, i64, i64, T, double, int, int, int, double*, \
                                                  T*, double*, int, double*);                                 \
  template __global__ void translate_pass<T>(T*, T*, const T*, const T*, const double*, const int*, i64, i64, T, \
                                             double, double, double*);
OTS_INST(float)
OTS_INST(double)
#endif
