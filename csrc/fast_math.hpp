// Vectorizable exp for the log-domain kernels.
//
// glibc's exp is scalar unless -ffast-math is on; this branch-free version (Cody-Waite range
// reduction, degree-12 Taylor polynomial on |r| <= ln2/2, exponent built with integer ops) lets
// the compiler vectorize the hot loops with SSE2/AVX2/AVX-512. Relative error < 3e-16 on
// [-708, 709]; results below exp(-708) are flushed to zero, which is harmless where it is used
// (terms of a log-sum-exp already shifted by their maximum).
#pragma once
#include <cstdint>
#include <cstring>
#include <cmath>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define OTSOLVE_HAVE_MXCSR 1
#endif

namespace otsolve {

static inline double bits_to_double(std::uint64_t u) {
  double d;
  std::memcpy(&d, &u, sizeof d);
  return d;
}
static inline std::uint64_t double_to_bits(double d) {
  std::uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
}

static inline double fast_exp(double x) {
  const double shift = 0x1.8p52;  // 1.5 * 2^52: adding it rounds to an integer in the low bits
  const double log2e = 0x1.71547652b82fep0;
  const double ln2hi = 0x1.62e42fefa3800p-1;
  const double ln2lo = 0x1.ef35793c76730p-45;
  const double xc = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double kd = xc * log2e + shift;
  const std::uint64_t ki = double_to_bits(kd);
  const double k = kd - shift;
  const double r = (xc - k * ln2hi) - k * ln2lo;
  double p = 1.0 / 479001600.0;  // 1/12!
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // 2^k from the integer sitting in the low bits of kd (k in [-1022, 1023] after clamping).
  const std::uint64_t e = (ki - 0x4338000000000000ULL + 1023ULL) << 52;
  const double y = p * bits_to_double(e);
  return x < -708.0 ? 0.0 : (x > 709.78 ? __builtin_inf() : y);
}

// Index of the calling OpenMP thread (0 without OpenMP).
static inline int thread_num() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Flush subnormals to zero in this thread while the guard lives. Tiny plan entries times tiny
// scalings land in the subnormal range, where x86 arithmetic is ~100x slower; values below
// 2.2e-308 are irrelevant to every sum these kernels form. Put one in each parallel region.
class FlushDenormals {
 public:
  FlushDenormals() {
#ifdef OTSOLVE_HAVE_MXCSR
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040);  // FTZ (bit 15) | DAZ (bit 6)
#endif
  }
  ~FlushDenormals() {
#ifdef OTSOLVE_HAVE_MXCSR
    _mm_setcsr(saved_);
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned int saved_ = 0;
};

}  // namespace otsolve
