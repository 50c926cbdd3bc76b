// Python bindings (nanobind) for the fused log-domain Sinkhorn kernels.
// NumPy references with the same signatures: otsolve/kernels/reference.py.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <limits>
#include <stdexcept>
#include <string>

#include "sinkhorn_kernels.hpp"
#include "sinkhorn_scaling.hpp"
#include "symmetric_kernels.hpp"
#include "plan_grad_kernels.hpp"

namespace nb = nanobind;
using namespace otsolve;

template <typename T>
using Mat = nb::ndarray<const T, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using CVec = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Vec = nb::ndarray<double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// Default marginal strength: inf = the hard constraint (balanced problem).
constexpr double kInf = std::numeric_limits<double>::infinity();

// Interrupt hook of the kernels (InterruptPoll): called without the GIL from the thread that
// released it; takes the GIL and runs Python's signal handlers. A handler that raised (Ctrl-C:
// KeyboardInterrupt) leaves its exception set and the loop stops with status 4.
static bool python_interrupted() {
  nb::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

// After a kernel returned (GIL held again): re-raise a pending KeyboardInterrupt & co.
static void raise_if_interrupted(int status) {
  if (status == kStatusInterrupted) {
    if (PyErr_Occurred()) throw nb::python_error();
    throw std::runtime_error("interrupted");
  }
}

static void check_len(const char* name, size_t got, long want) {
  if (static_cast<long>(got) != want)
    throw std::invalid_argument(std::string(name) + " has length " + std::to_string(got) +
                                ", expected " + std::to_string(want));
}

template <typename Cost>
static std::tuple<long, int, std::vector<double>> run_sweeps(const Cost& cost, CVec log_a, CVec log_b,
                                                              Vec f, Vec g, double eps, long max_iter,
                                                              double tol, int n_threads, double omega,
                                                              double rho_a, double rho_b) {
  check_len("log_a", log_a.shape(0), cost.n);
  check_len("f", f.shape(0), cost.n);
  check_len("log_b", log_b.shape(0), cost.m);
  check_len("g", g.shape(0), cost.m);
  SweepStats st;
  {
    nb::gil_scoped_release release;
    st = sinkhorn_sweeps(cost, log_a.data(), log_b.data(), f.data(), g.data(), eps, max_iter, tol,
                         n_threads, omega, rho_a, rho_b);
  }
  raise_if_interrupted(st.status);
  return {st.n_iter, st.status, st.errors};
}

template <typename Cost>
static std::tuple<long, int, std::vector<double>> run_symmetric(const Cost& cost, CVec log_a, Vec f,
                                                                 double eps, long max_iter, double tol,
                                                                 int n_threads, double rho) {
  if (cost.n != cost.m) throw std::invalid_argument("the symmetric solve needs a square cost");
  check_len("log_a", log_a.shape(0), cost.n);
  check_len("f", f.shape(0), cost.n);
  SweepStats st;
  {
    nb::gil_scoped_release release;
    st = symmetric_sweeps(cost, log_a.data(), f.data(), eps, max_iter, tol, n_threads, rho);
  }
  raise_if_interrupted(st.status);
  return {st.n_iter, st.status, st.errors};
}

template <typename Cost>
static std::tuple<double, double> run_stats(const Cost& cost, CVec f, CVec g, double eps, Vec row,
                                            Vec col, int n_threads) {
  check_len("f", f.shape(0), cost.n);
  check_len("row", row.shape(0), cost.n);
  check_len("g", g.shape(0), cost.m);
  check_len("col", col.shape(0), cost.m);
  double c = 0.0, e = 0.0;
  {
    nb::gil_scoped_release release;
    plan_statistics(cost, f.data(), g.data(), eps, row.data(), col.data(), &c, &e, n_threads);
  }
  return {c, e};
}

template <typename T>
static DenseCost<T> dense(Mat<T> C) {
  return DenseCost<T>{C.data(), static_cast<long>(C.shape(0)), static_cast<long>(C.shape(1))};
}

template <typename T>
static PointCloudCost<T> cloud(Mat<T> X, Mat<T> YT, int kind, double scale) {
  if (X.shape(1) != YT.shape(0)) throw std::invalid_argument("X and Y have different dimensions");
  if (kind != 0 && kind != 1) throw std::invalid_argument("unknown cost kind");
  return PointCloudCost<T>{X.data(), YT.data(), static_cast<long>(X.shape(0)),
                           static_cast<long>(YT.shape(1)), static_cast<long>(X.shape(1)), scale,
                           static_cast<CostKind>(kind)};
}

template <typename T>
static void bind_dtype(nb::module_& m) {
  m.def(
      "sinkhorn_scaling_dense",
      [](Mat<T> C, CVec log_a, CVec log_b, Vec f, Vec g, double eps, long max_iter, double tol,
         int n_threads, nb::ndarray<T, nb::ndim<2>, nb::c_contig, nb::device::cpu> K, double tau,
         double omega, double rho_a, double rho_b) {
        const long n = static_cast<long>(C.shape(0)), mm = static_cast<long>(C.shape(1));
        check_len("log_a", log_a.shape(0), n);
        check_len("f", f.shape(0), n);
        check_len("log_b", log_b.shape(0), mm);
        check_len("g", g.shape(0), mm);
        if (static_cast<long>(K.shape(0)) != n || static_cast<long>(K.shape(1)) != mm)
          throw std::invalid_argument("workspace K must have the shape of C");
        SweepStats st;
        {
          nb::gil_scoped_release release;
          st = sinkhorn_scaling_dense(C.data(), n, mm, log_a.data(), log_b.data(), f.data(), g.data(),
                                      eps, max_iter, tol, n_threads, K.data(), tau, omega, rho_a, rho_b);
        }
        raise_if_interrupted(st.status);
        return std::make_tuple(st.n_iter, st.status, st.errors);
      },
      nb::arg("C"), nb::arg("log_a"), nb::arg("log_b"), nb::arg("f"), nb::arg("g"), nb::arg("eps"),
      nb::arg("max_iter"), nb::arg("tol"), nb::arg("n_threads"), nb::arg("K"), nb::arg("tau") = 50.0, nb::arg("omega") = 1.0,
      nb::arg("rho_a") = kInf, nb::arg("rho_b") = kInf);
  m.def(
      "sinkhorn_dense",
      [](Mat<T> C, CVec log_a, CVec log_b, Vec f, Vec g, double eps, long max_iter, double tol,
         int n_threads, double omega, double rho_a, double rho_b) {
        return run_sweeps(dense<T>(C), log_a, log_b, f, g, eps, max_iter, tol, n_threads, omega,
                          rho_a, rho_b);
      },
      nb::arg("C"), nb::arg("log_a"), nb::arg("log_b"), nb::arg("f"), nb::arg("g"), nb::arg("eps"),
      nb::arg("max_iter"), nb::arg("tol"), nb::arg("n_threads") = 0, nb::arg("omega") = 1.0,
      nb::arg("rho_a") = kInf, nb::arg("rho_b") = kInf);
  m.def(
      "sinkhorn_pointcloud",
      [](Mat<T> X, Mat<T> YT, int kind, double scale, CVec log_a, CVec log_b, Vec f, Vec g,
         double eps, long max_iter, double tol, int n_threads, double omega, double rho_a,
         double rho_b) {
        return run_sweeps(cloud<T>(X, YT, kind, scale), log_a, log_b, f, g, eps, max_iter, tol,
                          n_threads, omega, rho_a, rho_b);
      },
      nb::arg("X"), nb::arg("YT"), nb::arg("kind"), nb::arg("scale"), nb::arg("log_a"),
      nb::arg("log_b"), nb::arg("f"), nb::arg("g"), nb::arg("eps"), nb::arg("max_iter"),
      nb::arg("tol"), nb::arg("n_threads") = 0, nb::arg("omega") = 1.0, nb::arg("rho_a") = kInf,
      nb::arg("rho_b") = kInf);
  m.def(
      "symmetric_dense",
      [](Mat<T> C, CVec log_a, Vec f, double eps, long max_iter, double tol, int n_threads,
         double rho) {
        return run_symmetric(dense<T>(C), log_a, f, eps, max_iter, tol, n_threads, rho);
      },
      nb::arg("C"), nb::arg("log_a"), nb::arg("f"), nb::arg("eps"), nb::arg("max_iter"), nb::arg("tol"),
      nb::arg("n_threads") = 0, nb::arg("rho") = kInf);
  m.def(
      "symmetric_scaling_dense",
      [](Mat<T> C, CVec log_a, Vec f, double eps, long max_iter, double tol, int n_threads,
         nb::ndarray<T, nb::ndim<2>, nb::c_contig, nb::device::cpu> K, double tau) {
        const long n = static_cast<long>(C.shape(0));
        if (static_cast<long>(C.shape(1)) != n) throw std::invalid_argument("the symmetric solve needs a square cost");
        check_len("log_a", log_a.shape(0), n);
        check_len("f", f.shape(0), n);
        if (static_cast<long>(K.shape(0)) != n || static_cast<long>(K.shape(1)) != n)
          throw std::invalid_argument("workspace K must have the shape of C");
        SweepStats st;
        {
          nb::gil_scoped_release release;
          st = symmetric_scaling_dense(C.data(), n, log_a.data(), f.data(), eps, max_iter, tol, n_threads,
                                       K.data(), tau);
        }
        raise_if_interrupted(st.status);
        return std::make_tuple(st.n_iter, st.status, st.errors);
      },
      nb::arg("C"), nb::arg("log_a"), nb::arg("f"), nb::arg("eps"), nb::arg("max_iter"), nb::arg("tol"),
      nb::arg("n_threads"), nb::arg("K"), nb::arg("tau") = 50.0);
  m.def(
      "symmetric_pointcloud",
      [](Mat<T> X, Mat<T> YT, int kind, double scale, CVec log_a, Vec f, double eps, long max_iter,
         double tol, int n_threads, double rho) {
        return run_symmetric(cloud<T>(X, YT, kind, scale), log_a, f, eps, max_iter, tol, n_threads,
                             rho);
      },
      nb::arg("X"), nb::arg("YT"), nb::arg("kind"), nb::arg("scale"), nb::arg("log_a"), nb::arg("f"),
      nb::arg("eps"), nb::arg("max_iter"), nb::arg("tol"), nb::arg("n_threads") = 0,
      nb::arg("rho") = kInf);
  m.def(
      "plan_stats_dense",
      [](Mat<T> C, CVec f, CVec g, double eps, Vec row, Vec col, int n_threads) {
        return run_stats(dense<T>(C), f, g, eps, row, col, n_threads);
      },
      nb::arg("C"), nb::arg("f"), nb::arg("g"), nb::arg("eps"), nb::arg("row"), nb::arg("col"),
      nb::arg("n_threads") = 0);
  m.def(
      "plan_stats_pointcloud",
      [](Mat<T> X, Mat<T> YT, int kind, double scale, CVec f, CVec g, double eps, Vec row, Vec col,
         int n_threads) {
        return run_stats(cloud<T>(X, YT, kind, scale), f, g, eps, row, col, n_threads);
      },
      nb::arg("X"), nb::arg("YT"), nb::arg("kind"), nb::arg("scale"), nb::arg("f"), nb::arg("g"),
      nb::arg("eps"), nb::arg("row"), nb::arg("col"), nb::arg("n_threads") = 0);
  m.def(
      "plan_cost_grad_pointcloud",
      [](Mat<T> X, Mat<T> YT, int kind, double scale, CVec f, CVec g, double eps,
         nb::ndarray<double, nb::ndim<2>, nb::c_contig, nb::device::cpu> gx,
         nb::ndarray<double, nb::ndim<2>, nb::c_contig, nb::device::cpu> gy, bool need_x, bool need_y,
         int n_threads) {
        const PointCloudCost<T> cost = cloud<T>(X, YT, kind, scale);
        check_len("f", f.shape(0), cost.n);
        check_len("g", g.shape(0), cost.m);
        if (need_x && (static_cast<long>(gx.shape(0)) != cost.n || static_cast<long>(gx.shape(1)) != cost.d))
          throw std::invalid_argument("gx must have the shape of X");
        if (need_y && (static_cast<long>(gy.shape(0)) != cost.m || static_cast<long>(gy.shape(1)) != cost.d))
          throw std::invalid_argument("gy must have the shape of Y (m, d)");
        {
          nb::gil_scoped_release release;
          plan_cost_gradients(cost, f.data(), g.data(), eps, gx.data(), gy.data(), need_x, need_y, n_threads);
        }
      },
      nb::arg("X"), nb::arg("YT"), nb::arg("kind"), nb::arg("scale"), nb::arg("f"), nb::arg("g"),
      nb::arg("eps"), nb::arg("gx"), nb::arg("gy"), nb::arg("need_x") = true, nb::arg("need_y") = true,
      nb::arg("n_threads") = 0);
}

NB_MODULE(_ext_sinkhorn, m) {
  m.doc() = "Fused log-domain Sinkhorn kernels (C++/OpenMP).";
  interrupt_hook() = &python_interrupted;
  bind_dtype<double>(m);
  bind_dtype<float>(m);
  m.def("max_threads", []() { return resolve_threads(0); });
  m.def("fast_exp", [](double x) { return fast_exp(x); });
}
