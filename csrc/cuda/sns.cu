// Sinkhorn-Newton-Sparse on the GPU: plan statistics, sparsified Hessian assembly and its matvec
// (the CUDA kernel set of the one SNS driver, otsolve/backends/sns_kernels.py).
//
// Hessian of the dual (spec sinkhorn_sns.md §3, §4.1):  -eta * M(P),
//   M(P) = [[diag(P 1), P], [P^T, diag(P^T 1)]].
// The sparsified M~ keeps the exact diagonal and, for each row i, the k largest entries of P
// (the same P~ in both off-diagonal blocks, so M~ is symmetric and diagonally dominant = PSD).
// Since P_ij = exp(f_i/eps - 1 + v_ij) with v_ij = (g_j - C_ij)/eps, the k largest entries of a
// row are the k largest v_ij: one streaming pass per row, each lane keeping its own top-K in
// registers, then a k-step merge of the 32 lane lists through shared memory.
// Output is CSR with exactly k entries per row (indptr = i*k, built by the caller):
//   data[i*k + q] = P_i,col[q], indices[i*k + q] = col[q], sorted by decreasing value.
#include "otsolve_common.cuh"

using namespace otsolve_cuda;

#define OTS_TOPK_WARPS 2  // 2 warps x 32 lanes x K=32 x 12 B = 24 KB of shared memory

// Insert (v, j) into a lane-private list sorted decreasingly; K is compile-time so the lists
// stay in registers (no run-time indexing).
template <typename T, int K>
__device__ __forceinline__ void topk_insert(T (&val)[K], int (&idx)[K], T v, int j) {
  if (!(v > val[K - 1])) return;
#pragma unroll
  for (int q = K - 1; q > 0; --q) {
    const bool shift = v > val[q - 1];
    const bool here = !shift && (v > val[q]);
    const T nv = shift ? val[q - 1] : (here ? v : val[q]);
    const int ni = shift ? idx[q - 1] : (here ? j : idx[q]);
    val[q] = nv;
    idx[q] = ni;
  }
  if (v > val[0]) { val[0] = v; idx[0] = j; }
}

// Merge the 32 lane lists of one warp into the row's k largest and write them.
template <typename T, int K>
__device__ __forceinline__ void topk_merge_write(T (&val)[K], int (&idx)[K], int k, int lane, T* sv, int* si,
                                                 i64 row, T pot_i, T eps, T* __restrict__ data,
                                                 int* __restrict__ indices) {
#pragma unroll
  for (int q = 0; q < K; ++q) { sv[lane * K + q] = val[q]; si[lane * K + q] = idx[q]; }
  __syncwarp();
  int head = 0;
  for (int q = 0; q < k; ++q) {
    T best = (head < K) ? sv[lane * K + head] : Tr<T>::ninf();
    int owner = lane;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {  // argmax over lanes, ties -> smaller lane
      const T ob = __shfl_xor_sync(0xffffffffu, best, off);
      const int oo = __shfl_xor_sync(0xffffffffu, owner, off);
      if (ob > best || (ob == best && oo < owner)) { best = ob; owner = oo; }
    }
    // every lane now agrees on (best, owner); the owner publishes its head column and advances
    int col = (lane == owner && head < K) ? si[lane * K + head] : 0;
    col = __shfl_sync(0xffffffffu, col, owner);
    if (lane == 0) {
      const i64 o = row * k + q;
      if (best == Tr<T>::ninf()) {  // fewer than k positive entries: explicit zeros
        data[o] = (T)0;
        indices[o] = 0;
      } else {
        double ex = (double)pot_i / (double)eps - 1.0 + (double)best;
        if (ex > (double)Tr<T>::max_log()) ex = (double)Tr<T>::max_log();
        data[o] = (T)exp(ex);
        indices[o] = col;
      }
    }
    if (lane == owner) ++head;
  }
  __syncwarp();
}

// Dense cost C (n, m); pot = f (n), other = g (m). One warp per row.
template <typename T, int K>
__global__ void topk_rows_dense(const T* __restrict__ C, const T* __restrict__ pot, const T* __restrict__ other,
                                i64 n, i64 m, T eps, int k, T* __restrict__ data, int* __restrict__ indices) {
  __shared__ T sval[OTS_TOPK_WARPS][32 * K];
  __shared__ int sidx[OTS_TOPK_WARPS][32 * K];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const i64 i = (i64)blockIdx.x * OTS_TOPK_WARPS + warp;
  if (i >= n) return;  // whole warp leaves; no block-wide barrier below
  T val[K];
  int idx[K];
#pragma unroll
  for (int q = 0; q < K; ++q) { val[q] = Tr<T>::ninf(); idx[q] = 0; }
  const T* c = C + i * m;
  const T inv = (T)1 / eps;
  for (i64 j = lane; j < m; j += 32) topk_insert<T, K>(val, idx, (other[j] - c[j]) * inv, (int)j);
  topk_merge_write<T, K>(val, idx, k, lane, sval[warp], sidx[warp], i, pot[i], eps, data, indices);
}

// Point clouds X (n, d), YT (d, m); cost kind as in sinkhorn.cu.
template <typename T, int K>
__global__ void topk_rows_pointcloud(const T* __restrict__ X, const T* __restrict__ YT, int d, int kind, T scale,
                                     const T* __restrict__ pot, const T* __restrict__ other, i64 n, i64 m, T eps,
                                     int k, T* __restrict__ data, int* __restrict__ indices) {
  __shared__ T sval[OTS_TOPK_WARPS][32 * K];
  __shared__ int sidx[OTS_TOPK_WARPS][32 * K];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const i64 i = (i64)blockIdx.x * OTS_TOPK_WARPS + warp;
  if (i >= n) return;
  T val[K];
  int idx[K];
#pragma unroll
  for (int q = 0; q < K; ++q) { val[q] = Tr<T>::ninf(); idx[q] = 0; }
  const T inv = (T)1 / eps;
  const T* x = X + i * d;
  for (i64 j = lane; j < m; j += 32) {
    T acc = (T)0;
    for (int kk = 0; kk < d; ++kk) {
      const T t = x[kk] - YT[(i64)kk * m + j];
      acc += t * t;
    }
    T cij = (kind == 1) ? sqrt(acc) : acc;
    cij *= scale;
    topk_insert<T, K>(val, idx, (other[j] - cij) * inv, (int)j);
  }
  topk_merge_write<T, K>(val, idx, k, lane, sval[warp], sidx[warp], i, pot[i], eps, data, indices);
}

// y = eta * M~ z for z = (zx, zy), M~ = [[diag(r), P~], [P~^T, diag(c)]] with P~ in CSR.
// One thread per row i: yx_i = eta (r_i zx_i + sum_q P~_iq zy_q); the transposed block is
// scattered with atomics into yy, which the caller initialised to eta * c * zy.
template <typename T>
__global__ void hess_matvec_csr(const int* __restrict__ indptr, const int* __restrict__ indices,
                                const T* __restrict__ data, const T* __restrict__ r, const T* __restrict__ zx,
                                const T* __restrict__ zy, i64 n, T eta, T* __restrict__ yx, T* __restrict__ yy) {
  const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int s = indptr[i], e = indptr[i + 1];
  const T zxi = zx[i];
  T acc = r[i] * zxi;
  for (int q = s; q < e; ++q) {
    const T pij = data[q];
    const int j = indices[q];
    acc += pij * zy[j];
    atomicAdd(yy + j, eta * pij * zxi);
  }
  yx[i] = eta * acc;
}

// ---- plan statistics (marginals, largest exponent, <C, P>) at given potentials ----------------
// The Newton stage evaluates the plan P_ij = exp((f_i + g_j - C_ij)/eps - 1) at every line-search
// trial: row sums, the largest exponent of each row (overflow test) and, for the final result,
// <C, P> per row come from one warp per row (online log-sum-exp, sums in double); column sums
// from one thread per column over a chunk of rows (coalesced reads), chunks added atomically
// into `col` (zeroed by the caller).

template <typename T> struct DenseCost {
  const T* C;
  i64 m;
  __device__ __forceinline__ T operator()(i64 i, i64 j) const { return C[i * m + j]; }
};

// scale * ||x_i - y_j||^2 (kind 0) or scale * ||x_i - y_j|| (kind 1); X (n, d), YT (d, m).
template <typename T> struct CloudCost {
  const T* X;
  const T* YT;
  int d, kind;
  T scale;
  i64 m;
  __device__ __forceinline__ T operator()(i64 i, i64 j) const {
    T acc = (T)0;
    for (int k = 0; k < d; ++k) {
      const T t = X[i * d + k] - YT[(i64)k * m + j];
      acc += t * t;
    }
    return ((kind == 1) ? sqrt(acc) : acc) * scale;
  }
};

template <typename T, typename Cost>
__device__ __forceinline__ void plan_rows_impl(const Cost& cost, const T* __restrict__ f, const T* __restrict__ g,
                                               i64 n, i64 m, T eps, double* __restrict__ row,
                                               double* __restrict__ rmax, double* __restrict__ rcost) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const i64 i = (i64)blockIdx.x * (blockDim.x >> 5) + warp;
  if (i >= n) return;
  const T inv = (T)1 / eps, fi = f[i];
  Lse<T> s;
  s.init();
  for (i64 j = lane; j < m; j += 32) {
    const T c = cost(i, j);
    s.push((fi + g[j] - c) * inv - (T)1, c);
  }
  s.warp_reduce();
  if (lane == 0) {
    row[i] = exp(s.value());
    rmax[i] = (double)s.mx;
    rcost[i] = (s.s > 0.0) ? exp((double)s.mx) * s.t : 0.0;
  }
}

template <typename T, typename Cost>
__device__ __forceinline__ void plan_cols_impl(const Cost& cost, const T* __restrict__ f, const T* __restrict__ g,
                                               i64 n, i64 m, T eps, int rpc, double* __restrict__ col) {
  const i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= m) return;
  const i64 r0 = (i64)blockIdx.y * rpc;
  const i64 r1 = (r0 + rpc < n) ? r0 + rpc : n;
  const T inv = (T)1 / eps, gj = g[j];
  double s = 0.0;
  for (i64 i = r0; i < r1; ++i) s += (double)Tr<T>::ex((f[i] + gj - cost(i, j)) * inv - (T)1);
  atomicAdd(col + j, s);
}

template <typename T>
__global__ void plan_rows_dense(const T* __restrict__ C, const T* __restrict__ f, const T* __restrict__ g, i64 n,
                                i64 m, T eps, double* __restrict__ row, double* __restrict__ rmax,
                                double* __restrict__ rcost) {
  const DenseCost<T> cost{C, m};
  plan_rows_impl<T>(cost, f, g, n, m, eps, row, rmax, rcost);
}

template <typename T>
__global__ void plan_cols_dense(const T* __restrict__ C, const T* __restrict__ f, const T* __restrict__ g, i64 n,
                                i64 m, T eps, int rpc, double* __restrict__ col) {
  const DenseCost<T> cost{C, m};
  plan_cols_impl<T>(cost, f, g, n, m, eps, rpc, col);
}

template <typename T>
__global__ void plan_rows_pointcloud(const T* __restrict__ X, const T* __restrict__ YT, int d, int kind, T scale,
                                     const T* __restrict__ f, const T* __restrict__ g, i64 n, i64 m, T eps,
                                     double* __restrict__ row, double* __restrict__ rmax,
                                     double* __restrict__ rcost) {
  const CloudCost<T> cost{X, YT, d, kind, scale, m};
  plan_rows_impl<T>(cost, f, g, n, m, eps, row, rmax, rcost);
}

template <typename T>
__global__ void plan_cols_pointcloud(const T* __restrict__ X, const T* __restrict__ YT, int d, int kind, T scale,
                                     const T* __restrict__ f, const T* __restrict__ g, i64 n, i64 m, T eps, int rpc,
                                     double* __restrict__ col) {
  const CloudCost<T> cost{X, YT, d, kind, scale, m};
  plan_cols_impl<T>(cost, f, g, n, m, eps, rpc, col);
}

#ifdef OTSOLVE_NVCC_CHECK
#define OTS_TOPK_INST(T, K)                                                                                 \
  template __global__ void topk_rows_dense<T, K>(const T*, const T*, const T*, i64, i64, T, int, T*, int*); \
  template __global__ void topk_rows_pointcloud<T, K>(const T*, const T*, int, int, T, const T*, const T*, i64, \
                                                      i64, T, int, T*, int*);
OTS_TOPK_INST(float, 8)
OTS_TOPK_INST(float, 16)
OTS_TOPK_INST(float, 32)
OTS_TOPK_INST(double, 8)
OTS_TOPK_INST(double, 16)
OTS_TOPK_INST(double, 32)
#define OTS_PLAN_INST(T)                                                                                   \
  template __global__ void plan_rows_dense<T>(const T*, const T*, const T*, i64, i64, T, double*, double*,     \
                                              double*);                                                       \
  template __global__ void plan_cols_dense<T>(const T*, const T*, const T*, i64, i64, T, int, double*);        \
  template __global__ void plan_rows_pointcloud<T>(const T*, const T*, int, int, T, const T*, const T*, i64,    \
                                                   i64, T, double*, double*, double*);                        \
  template __global__ void plan_cols_pointcloud<T>(const T*, const T*, int, int, T, const T*, const T*, i64,    \
                                                   i64, T, int, double*);
OTS_PLAN_INST(float)
OTS_PLAN_INST(double)
template __global__ void hess_matvec_csr<float>(const int*, const int*, const float*, const float*, const float*,
                                                const float*, i64, float, float*, float*);
template __global__ void hess_matvec_csr<double>(const int*, const int*, const double*, const double*,
                                                 const double*, const double*, i64, double, double*, double*);
#endif
