// Python bindings (nanobind) for the Sinkhorn-Newton-Sparse kernels (sns_kernels.hpp).
// NumPy references with the same signatures: otsolve/kernels/sns_reference.py.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/tuple.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "sns_kernels.hpp"

namespace nb = nanobind;
using namespace otsolve::sns;

template <typename T>
using Mat = nb::ndarray<const T, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using CVec = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Vec = nb::ndarray<double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using IdxMat = nb::ndarray<int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using CIdxMat = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using ValMat = nb::ndarray<double, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using CValMat = nb::ndarray<const double, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using IdxVec = nb::ndarray<int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using CIdxVec = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

static void check_len(const char* name, size_t got, size_t want) {
  if (got != want)
    throw std::invalid_argument(std::string(name) + " has length " + std::to_string(got) +
                                ", expected " + std::to_string(want));
}

static void check_eps(double eps) {
  if (!(eps > 0.0) || !std::isfinite(eps))
    throw std::invalid_argument("eps must be a positive finite number");
}

template <typename T>
static std::tuple<double, double, double> form(Mat<T> C, CVec x, CVec y, CVec dx, CVec dy,
                                               double alpha, double eps, Vec row, Vec col,
                                               IdxMat kidx, ValMat kval, IdxVec tptr, IdxVec tidx,
                                               Vec tval, int n_threads) {
  const size_t n = C.shape(0), m = C.shape(1), k = kidx.shape(1);
  check_eps(eps);
  check_len("x", x.shape(0), n);
  check_len("dx", dx.shape(0), n);
  check_len("row", row.shape(0), n);
  check_len("y", y.shape(0), m);
  check_len("dy", dy.shape(0), m);
  check_len("col", col.shape(0), m);
  check_len("kidx rows", kidx.shape(0), n);
  check_len("kval rows", kval.shape(0), n);
  check_len("kval columns", kval.shape(1), k);
  check_len("tptr", tptr.shape(0), m + 1);
  check_len("tidx", tidx.shape(0), n * k);
  check_len("tval", tval.shape(0), n * k);
  if (k > m) throw std::invalid_argument("k (kidx.shape[1]) must be <= the number of columns");
  FormResult r;
  {
    nb::gil_scoped_release release;
    r = form_system(C.data(), long(n), long(m), x.data(), y.data(), dx.data(), dy.data(), alpha,
                    eps, row.data(), col.data(), long(k), kidx.data(), kval.data(), tptr.data(),
                    tidx.data(), tval.data(), n_threads);
  }
  return {r.mass, r.lmax, r.kept};
}

template <typename T>
static std::tuple<double, double> line_eval(Mat<T> C, CVec x, CVec y, CVec dx, CVec dy,
                                            double alpha, double eps, Vec row, Vec col,
                                            int n_threads) {
  const size_t n = C.shape(0), m = C.shape(1);
  check_eps(eps);
  check_len("x", x.shape(0), n);
  check_len("dx", dx.shape(0), n);
  check_len("row", row.shape(0), n);
  check_len("y", y.shape(0), m);
  check_len("dy", dy.shape(0), m);
  check_len("col", col.shape(0), m);
  FormResult r;
  {
    nb::gil_scoped_release release;
    std::vector<int64_t> tptr(m + 1);  // k = 0: the (empty) transpose is not needed
    r = form_system(C.data(), long(n), long(m), x.data(), y.data(), dx.data(), dy.data(), alpha,
                    eps, row.data(), col.data(), 0L, nullptr, nullptr, tptr.data(), nullptr,
                    nullptr, n_threads);
  }
  return {r.mass, r.lmax};
}

template <typename T>
static std::tuple<double, double> stats(Mat<T> C, CVec x, CVec y, double eps, Vec row, Vec col,
                                        int n_threads) {
  const size_t n = C.shape(0), m = C.shape(1);
  check_eps(eps);
  check_len("x", x.shape(0), n);
  check_len("row", row.shape(0), n);
  check_len("y", y.shape(0), m);
  check_len("col", col.shape(0), m);
  double mass, cost = 0.0;
  {
    nb::gil_scoped_release release;
    mass = plan_stats(C.data(), long(n), long(m), x.data(), y.data(), eps, row.data(), col.data(),
                      &cost, n_threads);
  }
  return {mass, cost};
}

static SparseSystem make_system(CVec row, CVec col, CIdxMat kidx, CValMat kval, CIdxVec tptr,
                                CIdxVec tidx, CVec tval, int n_threads) {
  const size_t n = row.shape(0), m = col.shape(0), k = kidx.shape(1);
  check_len("kidx rows", kidx.shape(0), n);
  check_len("kval rows", kval.shape(0), n);
  check_len("kval columns", kval.shape(1), k);
  check_len("tptr", tptr.shape(0), m + 1);
  check_len("tidx", tidx.shape(0), n * k);
  check_len("tval", tval.shape(0), n * k);
  // Indices come from sns_form_system; check them once here so a bad call cannot read out of
  // bounds.
  const int64_t* ki = kidx.data();
  for (size_t q = 0; q < n * k; ++q)
    if (ki[q] < 0 || size_t(ki[q]) >= m) throw std::invalid_argument("kidx entry out of range");
  const int64_t* tp = tptr.data();
  if (tp[0] != 0 || size_t(tp[m]) != n * k)
    throw std::invalid_argument("tptr must start at 0 and end at n * k");
  for (size_t j = 0; j < m; ++j)
    if (tp[j + 1] < tp[j]) throw std::invalid_argument("tptr must be nondecreasing");
  const int64_t* ti = tidx.data();
  for (size_t q = 0; q < n * k; ++q)
    if (ti[q] < 0 || size_t(ti[q]) >= n) throw std::invalid_argument("tidx entry out of range");
  return SparseSystem{row.data(), col.data(), kidx.data(), kval.data(), tptr.data(), tidx.data(),
                      tval.data(), long(n), long(m), long(k), threads(n_threads)};
}

template <typename T>
static void bind_dtype(nb::module_& m) {
  m.def("sns_form_system", &form<T>, nb::arg("C"), nb::arg("x"), nb::arg("y"), nb::arg("dx"),
        nb::arg("dy"), nb::arg("alpha"), nb::arg("eps"), nb::arg("row"), nb::arg("col"),
        nb::arg("kidx"), nb::arg("kval"), nb::arg("tptr"), nb::arg("tidx"), nb::arg("tval"),
        nb::arg("n_threads") = 0,
        "Plan at (x + alpha dx, y + alpha dy): marginals, top-k entries per row and their "
        "transpose in one pass. Returns (mass, lmax, kept); mass = inf on overflow.");
  m.def("sns_line_eval", &line_eval<T>, nb::arg("C"), nb::arg("x"), nb::arg("y"), nb::arg("dx"),
        nb::arg("dy"), nb::arg("alpha"), nb::arg("eps"), nb::arg("row"), nb::arg("col"),
        nb::arg("n_threads") = 0,
        "Marginals of the plan at (x + alpha dx, y + alpha dy). Returns (mass, lmax).");
  m.def("sns_plan_stats", &stats<T>, nb::arg("C"), nb::arg("x"), nb::arg("y"), nb::arg("eps"),
        nb::arg("row"), nb::arg("col"), nb::arg("n_threads") = 0,
        "Marginals, mass and <C, P> of the plan of (x, y). Returns (mass, cost); mass = inf on "
        "overflow.");
}

NB_MODULE(_ext_sns, m) {
  m.doc() = "Sinkhorn-Newton-Sparse kernels (C++/OpenMP).";
  bind_dtype<double>(m);
  bind_dtype<float>(m);
  m.def(
      "sns_matvec",
      [](CVec row, CVec col, CIdxMat kidx, CValMat kval, CIdxVec tptr, CIdxVec tidx, CVec tval,
         CVec v, Vec out, int n_threads) {
        SparseSystem A = make_system(row, col, kidx, kval, tptr, tidx, tval, n_threads);
        check_len("v", v.shape(0), size_t(A.n + A.m));
        check_len("out", out.shape(0), size_t(A.n + A.m));
        nb::gil_scoped_release release;
        A.apply(v.data(), out.data());
      },
      nb::arg("row"), nb::arg("col"), nb::arg("kidx"), nb::arg("kval"), nb::arg("tptr"),
      nb::arg("tidx"), nb::arg("tval"), nb::arg("v"), nb::arg("out"), nb::arg("n_threads") = 0,
      "out = [[diag(row), P~], [P~^T, diag(col)]] v.");
  m.def(
      "sns_pcg",
      [](CVec row, CVec col, CIdxMat kidx, CValMat kval, CIdxVec tptr, CIdxVec tidx, CVec tval,
         CVec rhs, Vec z, double rtol, long maxiter, int n_threads) {
        SparseSystem A = make_system(row, col, kidx, kval, tptr, tidx, tval, n_threads);
        check_len("rhs", rhs.shape(0), size_t(A.n + A.m));
        check_len("z", z.shape(0), size_t(A.n + A.m));
        if (maxiter < 0) throw std::invalid_argument("maxiter must be >= 0");
        CGResult r;
        {
          nb::gil_scoped_release release;
          r = pcg(A, rhs.data(), z.data(), rtol, maxiter);
        }
        return std::make_tuple(r.iterations, r.relres);
      },
      nb::arg("row"), nb::arg("col"), nb::arg("kidx"), nb::arg("kval"), nb::arg("tptr"),
      nb::arg("tidx"), nb::arg("tval"), nb::arg("rhs"), nb::arg("z"), nb::arg("rtol"),
      nb::arg("maxiter"), nb::arg("n_threads") = 0,
      "Jacobi-preconditioned CG on the sparsified system, z in place. Returns (iters, relres).");
}
