// A CPU emulator of the CUDA execution model, for testing otsolve's CUDA kernels without a GPU.
//
// The .cu sources are compiled by g++ as C++17 with this header force-included. A launch runs
// the grid's blocks one after another; inside a block every CUDA thread is a fiber (its own
// stack, cooperative switching), so __syncthreads, __syncwarp and the warp shuffles are real
// rendezvous points, as under Volta's independent thread scheduling: code that relies on
// implicit warp lock-step fails here too. The emulator is strict where real hardware is silently
// undefined, and reports (instead of hanging or returning garbage):
//   * a deadlock (threads waiting at a barrier that cannot complete),
//   * a full-mask warp operation in a warp with exited or missing lanes,
//   * launch configurations CUDA rejects (block > 1024 threads, grid.y / grid.z > 65535),
//   * kernel arguments whose type or size differs from the parameter's (the launcher checks
//     each value and each pointer's element type against the kernel's signature),
//   * fiber stack overflow.
// OTSOLVE_CUDA_EMULATOR_SCHEDULE=<seed> runs each block's threads in a pseudo-random order (a
// race check: results must not change); OTSOLVE_CUDA_EMULATOR_SANITIZE=1 builds the kernels with
// AddressSanitizer (out-of-bounds accesses reported, like compute-sanitizer's memcheck).
// Only full-mask (0xffffffff) warp operations of width 32 are supported, which is all otsolve
// uses. Atomics are plain read-modify-writes (one OS thread runs every fiber).
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
// Blocks run one at a time, so a function-local static is exactly "one copy per block".
#define __shared__ static
#define __constant__ static
// __restrict__ is a GCC keyword already; `#pragma unroll` is ignored by g++.

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace otsemu {

// ---- fibers --------------------------------------------------------------------------------
struct Fiber {
  void* sp = nullptr;
  uint3 tid{0, 0, 0};
  int lane = 0, warp = 0;
  bool done = false;
  const unsigned* wait_gen = nullptr;  // barrier generation being waited on (nullptr: runnable)
  unsigned wait_value = 0;
};

struct Barrier {
  int expected = 0, arrived = 0;
  unsigned gen = 0;
};

struct State {
  Fiber* cur = nullptr;
  void* sched_sp = nullptr;
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;
  Barrier block;
  std::vector<Barrier> warps;
  std::vector<std::uint64_t> slots;  // 32 shuffle slots per warp
  std::function<void()> body;
  std::vector<unsigned> order;
  std::uint64_t schedule_seed = 0;
  std::string error;
  uint3 bidx{0, 0, 0};
  dim3 bdim, gdim;
};
inline State g;

constexpr std::size_t kStackSize = 256 * 1024;
constexpr std::uint64_t kCanary = 0x6f7473656d75ULL;  // "otsemu"

inline void fail(const std::string& msg) {
  if (g.error.empty()) g.error = msg;
}

}  // namespace otsemu

// ---- context switch (x86-64 System V: save callee-saved registers, swap stacks) -------------
#if defined(__x86_64__)
extern "C" void otsemu_swap(void** save_sp, void* load_sp);
asm(R"(
.text
.p2align 4
.globl otsemu_swap
.hidden otsemu_swap
.type otsemu_swap,@function
otsemu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size otsemu_swap, .-otsemu_swap
)");
#else
#error "the otsolve CUDA emulator supports x86-64 hosts only"
#endif

// AddressSanitizer builds (OTSOLVE_CUDA_EMULATOR_SANITIZE=1) tell ASan about each stack switch,
// so that out-of-bounds accesses of the kernels are reported like compute-sanitizer's memcheck.
#ifdef OTSEMU_ASAN
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, std::size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, std::size_t* size_old);
}
#endif

namespace otsemu {

#ifdef OTSEMU_ASAN
struct AsanStacks {
  const void* sched_bottom = nullptr;
  std::size_t sched_size = 0;
  void* sched_fake = nullptr;
};
inline AsanStacks asan;
#endif

// fiber -> scheduler (the fiber may be resumed later unless `final`)
inline void switch_to_scheduler(bool final = false) {
#ifdef OTSEMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(final ? nullptr : &fake, asan.sched_bottom, asan.sched_size);
  otsemu_swap(&g.cur->sp, g.sched_sp);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)final;
  otsemu_swap(&g.cur->sp, g.sched_sp);
#endif
}

inline void yield_to_scheduler() { switch_to_scheduler(false); }

// Wait until `b` completes (all its expected members arrived). An aborted launch never resumes
// its fibers, so a wait that cannot complete simply does not return.
inline void barrier_wait(Barrier& b) {
  const unsigned gen = b.gen;
  if (++b.arrived >= b.expected) {
    b.arrived = 0;
    ++b.gen;
    return;
  }
  g.cur->wait_gen = &b.gen;
  g.cur->wait_value = gen;
  yield_to_scheduler();
  g.cur->wait_gen = nullptr;
}

inline void sync_block() { barrier_wait(g.block); }

inline void sync_warp(unsigned mask, const char* what) {
  Fiber* f = g.cur;
  Barrier& w = g.warps[f->warp];
  if (mask != 0xffffffffu) {
    fail(std::string(what) + ": only full-mask (0xffffffff) warp operations are emulated");
    yield_to_scheduler();
  }
  if (w.expected != 32) {
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "%s with a full mask in warp %d of block (%u,%u,%u), which has %d live lanes "
                  "(undefined on a GPU: exited or missing lanes)",
                  what, f->warp, g.bidx.x, g.bidx.y, g.bidx.z, w.expected);
    fail(buf);
    yield_to_scheduler();
  }
  barrier_wait(w);
}

template <typename T>
inline T exchange(unsigned mask, T v, int src, const char* what) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  sync_warp(mask, what);  // everyone arrived: the previous exchange's slots are free
  Fiber* f = g.cur;
  std::uint64_t* slot = g.slots.data() + 32 * f->warp;
  std::memcpy(slot + f->lane, &v, sizeof(T));
  sync_warp(mask, what);
  T r;
  std::memcpy(&r, slot + (src & 31), sizeof(T));
  return r;
}

// Called on the fiber's own stack when its thread returns from the kernel.
inline void thread_exit() {
  Fiber* f = g.cur;
  f->done = true;
  Barrier& w = g.warps[f->warp];
  --w.expected;
  --g.block.expected;
  // a barrier now complete without this thread releases its waiters (CUDA counts exited threads
  // as arrived at __syncthreads); warps waiting in a full-mask op while a lane exits are an error
  if (w.arrived > 0) {
    fail("a lane exited while the rest of its warp waits in a full-mask warp operation");
  }
  if (g.block.arrived > 0 && g.block.arrived >= g.block.expected) {
    g.block.arrived = 0;
    ++g.block.gen;
  }
}

}  // namespace otsemu

extern "C" void otsemu_fiber_entry() {
#ifdef OTSEMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &otsemu::asan.sched_bottom, &otsemu::asan.sched_size);
#endif
  otsemu::g.body();
  otsemu::thread_exit();
  otsemu::switch_to_scheduler(true);
  std::abort();  // a finished fiber is never resumed
}

// ---- the CUDA device API used by the kernels -------------------------------------------------
#define threadIdx (::otsemu::g.cur->tid)
#define blockIdx (::otsemu::g.bidx)
#define blockDim (::otsemu::g.bdim)
#define gridDim (::otsemu::g.gdim)

inline void __syncthreads() { otsemu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { otsemu::sync_warp(mask, "__syncwarp"); }
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  if (width != 32) otsemu::fail("__shfl_sync: only width 32 is emulated");
  return otsemu::exchange(mask, v, src, "__shfl_sync");
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if (width != 32) otsemu::fail("__shfl_xor_sync: only width 32 is emulated");
  return otsemu::exchange(mask, v, otsemu::g.cur->lane ^ lane_mask, "__shfl_xor_sync");
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  if (width != 32) otsemu::fail("__shfl_down_sync: only width 32 is emulated");
  const int lane = otsemu::g.cur->lane;
  const int src = lane + (int)delta < 32 ? lane + (int)delta : lane;
  return otsemu::exchange(mask, v, src, "__shfl_down_sync");
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  if (width != 32) otsemu::fail("__shfl_up_sync: only width 32 is emulated");
  const int lane = otsemu::g.cur->lane;
  const int src = lane - (int)delta >= 0 ? lane - (int)delta : lane;
  return otsemu::exchange(mask, v, src, "__shfl_up_sync");
}

template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  const T old = *p;
  if (v > old) *p = v;
  return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
  const T old = *p;
  if (v < old) *p = v;
  return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <typename T>
inline T atomicCAS(T* p, T cmp, T v) {
  const T old = *p;
  if (old == cmp) *p = v;
  return old;
}

template <typename To, typename From>
inline To otsemu_bitcast(From x) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between types of different sizes");
  To y;
  std::memcpy(&y, &x, sizeof y);
  return y;
}
inline float __int_as_float(int x) { return otsemu_bitcast<float>(x); }
inline int __float_as_int(float x) { return otsemu_bitcast<int>(x); }
inline double __longlong_as_double(long long x) { return otsemu_bitcast<double>(x); }
inline long long __double_as_longlong(double x) { return otsemu_bitcast<long long>(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

namespace otsemu {

// ---- launching ---------------------------------------------------------------------------------
// Argument descriptors from Python: kind (0 pointer, 1 signed int, 2 unsigned int, 3 float,
// 4 bool), size in bytes; for pointers also the element's kind and size.
struct ArgInfo {
  int kind, size, elem_kind, elem_size;
};

template <typename T>
constexpr int kind_of() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, bool>) return 4;
  else if constexpr (std::is_floating_point_v<U>) return 3;
  else if constexpr (std::is_integral_v<U> && std::is_signed_v<U>) return 1;
  else if constexpr (std::is_integral_v<U>) return 2;
  else return -1;  // structs, void: not checked
}

template <typename A>
constexpr ArgInfo info_of() {
  if constexpr (std::is_pointer_v<A>) {
    using P = std::remove_cv_t<std::remove_pointer_t<A>>;
    if constexpr (std::is_void_v<P>) return {0, (int)sizeof(void*), -1, 0};
    else return {0, (int)sizeof(void*), kind_of<P>(), (int)sizeof(P)};
  } else {
    return {kind_of<A>(), (int)sizeof(A), 0, 0};
  }
}

inline const char* kind_name(int k) {
  switch (k) {
    case 0: return "pointer";
    case 1: return "signed int";
    case 2: return "unsigned int";
    case 3: return "float";
    case 4: return "bool";
    default: return "other";
  }
}

inline bool run_block(unsigned nthreads) {
  g.block = Barrier{(int)nthreads, 0, 0};
  const unsigned nwarps = (nthreads + 31) / 32;
  g.warps.assign(nwarps, Barrier{});
  for (unsigned w = 0; w < nwarps; ++w) g.warps[w].expected = (int)std::min(32u, nthreads - 32 * w);
  g.slots.assign(32 * nwarps, 0);
  for (unsigned t = 0; t < nthreads; ++t) {
    Fiber& f = g.fibers[t];
    f = Fiber{};
    f.tid = uint3{t % g.bdim.x, (t / g.bdim.x) % g.bdim.y, t / (g.bdim.x * g.bdim.y)};
    f.lane = (int)(t & 31);
    f.warp = (int)(t >> 5);
    // initial frame: six callee-saved registers, then the return address otsemu_swap jumps to;
    // entry sees rsp = 8 mod 16, as after a call
    char* top = g.stacks[t] + kStackSize;
    auto* sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                                             // fake return address of the entry
    *--sp = reinterpret_cast<void*>(&otsemu_fiber_entry);
    for (int r = 0; r < 6; ++r) *--sp = nullptr;
    f.sp = sp;
  }
  // Schedule: threads in index order, or (OTSOLVE_CUDA_EMULATOR_SCHEDULE=<seed>) in a per-block
  // pseudo-random order: a kernel free of data races gives bit-identical results either way.
  std::vector<unsigned>& order = g.order;
  order.resize(nthreads);
  for (unsigned t = 0; t < nthreads; ++t) order[t] = t;
  if (g.schedule_seed) {
    std::uint64_t st = g.schedule_seed * 0x9E3779B97F4A7C15ULL + g.bidx.x + 65536ULL * (g.bidx.y + 65536ULL * g.bidx.z);
    for (unsigned t = nthreads; t > 1; --t) {  // Fisher-Yates with a 64-bit LCG
      st = st * 6364136223846793005ULL + 1442695040888963407ULL;
      std::swap(order[t - 1], order[(unsigned)((st >> 33) % t)]);
    }
  }
  unsigned alive = nthreads;
  while (alive > 0) {
    bool progressed = false;
    for (unsigned q = 0; q < nthreads; ++q) {
      const unsigned t = order[q];
      Fiber& f = g.fibers[t];
      if (f.done || (f.wait_gen && *f.wait_gen == f.wait_value)) continue;
      g.cur = &f;
#ifdef OTSEMU_ASAN
      __sanitizer_start_switch_fiber(&asan.sched_fake, g.stacks[t], kStackSize);
      otsemu_swap(&g.sched_sp, f.sp);
      __sanitizer_finish_switch_fiber(asan.sched_fake, nullptr, nullptr);
#else
      otsemu_swap(&g.sched_sp, f.sp);
#endif
      g.cur = nullptr;
      progressed = true;
      if (!g.error.empty()) return false;  // abandon the block's fibers
      if (f.done) --alive;
    }
    if (!progressed) {
      char buf[240];
      std::snprintf(buf, sizeof buf,
                    "deadlock in block (%u,%u,%u): %u live threads all wait at barriers that cannot "
                    "complete (%d of %d arrived at __syncthreads)",
                    g.bidx.x, g.bidx.y, g.bidx.z, alive, g.block.arrived, g.block.expected);
      fail(buf);
      return false;
    }
  }
  for (unsigned t = 0; t < nthreads; ++t) {
    if (*reinterpret_cast<std::uint64_t*>(g.stacks[t]) != kCanary) {
      fail("fiber stack overflow (a kernel's locals exceed the emulator's stack)");
      return false;
    }
  }
  return true;
}

template <typename... A, std::size_t... I>
inline std::tuple<A...> unpack(void** args, std::index_sequence<I...>) {
  return std::tuple<A...>(*static_cast<A*>(args[I])...);
}

// grid_block: gx, gy, gz, bx, by, bz. Returns 0, or 1 with the message in err.
template <typename... A>
int launch(void (*kernel)(A...), const unsigned* gb, const int* info, void** args, int nargs, char* err,
           int errlen) {
  g.error.clear();
  constexpr std::size_t N = sizeof...(A);
  constexpr ArgInfo want[N + 1] = {info_of<A>()..., ArgInfo{0, 0, 0, 0}};
  char buf[300];
  auto report = [&](const std::string& msg) {
    std::snprintf(err, (std::size_t)errlen, "%s", msg.c_str());
    return 1;
  };
  if ((std::size_t)nargs != N) {
    std::snprintf(buf, sizeof buf, "the kernel takes %zu arguments, %d were given", N, nargs);
    return report(buf);
  }
  for (std::size_t i = 0; i < N; ++i) {
    const ArgInfo& w = want[i];
    const int* h = info + 4 * i;
    bool ok = w.kind == -1 ? w.size == h[1] : (w.kind == h[0] && w.size == h[1]);
    if (ok && w.kind == 0 && w.elem_kind != -1) ok = w.elem_kind == h[2] && w.elem_size == h[3];
    if (!ok) {
      if (w.kind == 0)
        std::snprintf(buf, sizeof buf,
                      "argument %zu: the kernel expects a pointer to %s of %d bytes, got %s%s of %d bytes", i,
                      kind_name(w.elem_kind), w.elem_size, h[0] == 0 ? "an array of " : "a scalar ",
                      kind_name(h[0] == 0 ? h[2] : h[0]), h[0] == 0 ? h[3] : h[1]);
      else
        std::snprintf(buf, sizeof buf, "argument %zu: the kernel expects a %s of %d bytes, got %s of %d bytes", i,
                      kind_name(w.kind), w.size, h[0] == 0 ? "an array" : kind_name(h[0]), h[1]);
      return report(buf);
    }
  }
  const dim3 grid(gb[0], gb[1], gb[2]), block(gb[3], gb[4], gb[5]);
  const unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nthreads == 0)
    return report("invalid configuration: zero-sized grid or block");
  if (nthreads > 1024 || block.z > 64) return report("invalid configuration: more than 1024 threads per block");
  if (grid.y > 65535 || grid.z > 65535) return report("invalid configuration: grid.y or grid.z > 65535");
  if (grid.x > 2147483647u) return report("invalid configuration: grid.x > 2^31 - 1");

  const char* sched = std::getenv("OTSOLVE_CUDA_EMULATOR_SCHEDULE");
  g.schedule_seed = sched ? std::strtoull(sched, nullptr, 10) : 0;
  auto tup = unpack<A...>(args, std::index_sequence_for<A...>{});
  g.body = [&]() { std::apply(kernel, tup); };
  g.bdim = block;
  g.gdim = grid;
  if (g.stacks.size() < nthreads) {
    while (g.stacks.size() < nthreads) {
      char* s = static_cast<char*>(std::malloc(kStackSize));
      if (!s) return report("out of memory for fiber stacks");
      g.stacks.push_back(s);
    }
  }
  for (unsigned long long t = 0; t < nthreads; ++t) std::memcpy(g.stacks[t], &kCanary, sizeof kCanary);
  if (g.fibers.size() < nthreads) g.fibers.resize(nthreads);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        g.bidx = uint3{x, y, z};
        if (!run_block((unsigned)nthreads)) {
          g.body = nullptr;
          return report(g.error);
        }
      }
  g.body = nullptr;
  return 0;
}

}  // namespace otsemu
