"""The otsolve command line."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.distance import cdist

import otsolve
from otsolve.cli import main


def test_solve_npy_and_csv(tmp_path, capsys, rng):
    x, y = rng.random((40, 2)), rng.random((30, 2))
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "y.csv", y, delimiter=",")
    out = tmp_path / "plan.npz"
    rc = main(["solve", str(tmp_path / "x.npy"), str(tmp_path / "y.csv"), "--epsilon", "0.05", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "converged       True" in text and "iterations" in text and "time" in text
    data = np.load(out)
    assert data["plan"].shape == (40, 30)
    np.testing.assert_allclose(data["plan"].sum(), 1.0, rtol=1e-8)


def test_missing_file_is_one_clear_line(tmp_path, capsys):
    rc = main(["solve", str(tmp_path / "nope.npy"), str(tmp_path / "nope.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and "file not found" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_file_content(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("1,2\nx,y\n")
    rc = main(["solve", str(tmp_path / "bad.csv"), str(tmp_path / "bad.csv")])
    assert rc == 2 and "cannot read" in capsys.readouterr().err


def test_bad_epsilon_and_method(tmp_path, capsys, rng):
    np.save(tmp_path / "x.npy", rng.random((5, 2)))
    rc = main(["solve", str(tmp_path / "x.npy"), str(tmp_path / "x.npy"), "--epsilon", "-1"])
    assert rc == 2 and "epsilon" in capsys.readouterr().err
    rc = main(["solve", str(tmp_path / "x.npy"), str(tmp_path / "x.npy"), "--method", "magic"])
    assert rc == 2 and "known methods" in capsys.readouterr().err


def test_dimension_mismatch(tmp_path, capsys, rng):
    np.save(tmp_path / "x.npy", rng.random((5, 2)))
    np.save(tmp_path / "y.npy", rng.random((5, 3)))
    rc = main(["solve", str(tmp_path / "x.npy"), str(tmp_path / "y.npy")])
    assert rc == 2 and "different dimensions" in capsys.readouterr().err


def _demo_rows(out):
    """{label: (iters, cost, marginal error, converged)} from the demo's table."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\S.*?)\s{2,}(\S+)\s+(\S+)\s+([-\d.e]+)\s+([-\d.e+]+)\s+(True|False)\s+[\d.]+s$", line)
        if m:
            rows[(m.group(1), m.group(2))] = (m.group(3), float(m.group(4)), float(m.group(5)), m.group(6) == "True")
    return rows


def test_demo_runs(capsys):
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    from otsolve.cli import demo_data

    n = 200
    assert main(["demo", "--n", str(n)]) == 0
    out = capsys.readouterr().out
    rows = _demo_rows(out)
    x, y = demo_data(n)
    C = cdist(x, y, "sqeuclidean")
    C /= C.max()
    r, c = linear_sum_assignment(C)
    exact = C[r, c].mean()  # uniform weights, n = m: exact OT is an assignment
    entropic = [rows[("sinkhorn", "1e-01")], rows[("sinkhorn", "1e-02")],
                rows[("sinkhorn + eps-scaling", "1e-03")], rows[("sns", "1e-03")]]
    for _, cost, err, conv in entropic:
        assert conv and err <= 1e-9
        assert cost >= exact - 1e-12  # every feasible plan costs at least the exact OT cost
    costs = [row[1] for row in entropic]
    assert costs[0] > costs[1] > costs[2]  # <C, P_eps> decreases as epsilon decreases
    assert costs[2] - exact < 0.2 * (costs[0] - exact)
    assert abs(costs[3] - costs[2]) < 1e-6  # SNS and Sinkhorn solve the same problem
    if "emd" in otsolve.available_methods():
        assert abs(rows[("emd (exact OT)", "-")][1] - exact) < 1e-7
    else:
        assert f"{exact:.8f}" in out
    k_row = rows[("sparsity_constrained k=2", "g=1")]
    assert k_row[1] >= exact - 1e-12 or k_row[2] > 0  # a relaxation: rows need not be exact


def test_demo_bad_n(capsys):
    assert main(["demo", "--n", "1"]) == 2
    assert "--n" in capsys.readouterr().err


def test_console_script_entry_point(tmp_path):
    # cwd outside the checkout: `-m` puts the cwd first on sys.path, and the installed package is meant
    proc = subprocess.run([sys.executable, "-m", "otsolve.cli", "solve", "/nonexistent.npy", "/x.npy"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_unsupported_format(tmp_path, capsys):
    (tmp_path / "x.json").write_text("[]")
    assert main(["solve", str(tmp_path / "x.json"), str(tmp_path / "x.json")]) == 2
    assert "unsupported format" in capsys.readouterr().err


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _solve_args(tmp_path, rng, n=30, m=25):
    x, y = rng.random((n, 2)) * 10, rng.random((m, 2)) * 10  # costs up to ~200: scaling matters
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return x, y, [str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]


def _field(out, name):
    return float(re.search(rf"^{re.escape(name)}\s+(\S+)", out, flags=re.M).group(1))


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"otsolve {otsolve.__version__}"


def test_python_m_otsolve(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "otsolve", "--version"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"otsolve {otsolve.__version__}"
    proc = subprocess.run([sys.executable, "-m", "otsolve", "solve", "/nonexistent.npy", "/x.npy"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("otsolve: error: file not found")


def test_solve_cost_in_input_units(tmp_path, capsys, rng):
    x, y, files = _solve_args(tmp_path, rng)
    out_file = tmp_path / "p.npz"
    assert main(["solve", *files, "--epsilon", "0.02", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    C = cdist(x, y, "sqeuclidean")
    data = np.load(out_file)
    P = data["plan"]
    true_cost = float((C * P).sum())  # <C, P> with the user's C
    assert _field(out, "cost <C,P>") == pytest.approx(true_cost, rel=1e-8)
    assert float(data["cost"]) == pytest.approx(true_cost, rel=1e-12)
    assert float(data["scale"]) == pytest.approx(1 / C.max(), rel=1e-12)
    assert float(data["scaled_cost"]) == pytest.approx(true_cost / C.max(), rel=1e-10)
    assert "solved on C / " in out and "input's units" in out
    # f, g are potentials of the user's C with epsilon in the user's units
    eps_user = 0.02 * C.max()
    P2 = np.exp((data["f"][:, None] + data["g"][None, :] - C) / eps_user - 1)
    np.testing.assert_allclose(P2, P, rtol=1e-7, atol=1e-300)


def test_solve_unscaled_cost(tmp_path, capsys, rng):
    x, y, files = _solve_args(tmp_path, rng)
    assert main(["solve", *files, "--scale-cost", "1", "--epsilon", "5"]) == 0
    out = capsys.readouterr().out
    assert "solved on" not in out and _field(out, "epsilon") == 5


def test_csv_with_header_row(tmp_path, capsys, rng):
    x, y = rng.random((12, 3)), rng.random((9, 3))
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="a,b,c", comments="")
    np.savetxt(tmp_path / "y.csv", y, delimiter=",")
    np.savetxt(tmp_path / "x_plain.csv", x, delimiter=",")
    assert (tmp_path / "x.csv").read_text().startswith("a,b,c\n")
    assert main(["solve", str(tmp_path / "x.csv"), str(tmp_path / "y.csv"), "--out", str(tmp_path / "1.npz")]) == 0
    assert main(["solve", str(tmp_path / "x_plain.csv"), str(tmp_path / "y.csv"),
                 "--out", str(tmp_path / "2.npz")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "1.npz")["plan"], np.load(tmp_path / "2.npz")["plan"])
    assert np.load(tmp_path / "1.npz")["plan"].shape == (12, 9)


def test_complex_npy_rejected(tmp_path, capsys, rng):
    np.save(tmp_path / "z.npy", rng.random((5, 2)) + 1j * rng.random((5, 2)))
    np.save(tmp_path / "x.npy", rng.random((5, 2)))
    assert main(["solve", str(tmp_path / "z.npy"), str(tmp_path / "x.npy")]) == 2
    err = _one_error_line(capsys)
    assert "z.npy" in err and "complex" in err


def test_sparsity_constrained_flags(tmp_path, capsys, rng):
    _, _, files = _solve_args(tmp_path, rng)
    out_file = tmp_path / "k.npz"
    rc = main(["solve", *files, "--method", "sparsity_constrained", "--k", "2", "--gamma", "0.5",
               "--out", str(out_file)])
    out = capsys.readouterr().out
    assert rc in (0, 1) and "gamma           0.5" in out
    P = np.load(out_file)["plan"]
    assert (np.count_nonzero(P, axis=0) <= 2).all()  # k = 2 nonzeros per column at most


def test_flag_for_another_method_is_an_error(tmp_path, capsys, rng):
    _, _, files = _solve_args(tmp_path, rng)
    assert main(["solve", *files, "--k", "2"]) == 2
    err = _one_error_line(capsys)
    assert "--k does not apply to --method sinkhorn" in err and "sparsity_constrained" in err
    assert main(["solve", *files, "--method", "sparsity_constrained", "--epsilon-scaling"]) == 2
    assert "--epsilon-scaling" in _one_error_line(capsys)


def test_epsilon_scaling_flag(tmp_path, capsys, rng):
    _, _, files = _solve_args(tmp_path, rng)
    assert main(["solve", *files, "--epsilon", "1e-3", "--epsilon-scaling", "--tol", "1e-8",
                 "--max-iter", "20000"]) == 0
    out = capsys.readouterr().out
    assert "converged       True" in out and _field(out, "marginal error") <= 1e-8


def test_max_iter_unconverged_exit_1(tmp_path, capsys, rng):
    _, _, files = _solve_args(tmp_path, rng)
    assert main(["solve", *files, "--epsilon", "1e-3", "--max-iter", "2"]) == 1
    assert "converged       False" in capsys.readouterr().out


def test_help_texts(capsys):
    with pytest.raises(SystemExit) as e:
        main(["solve", "--help"])
    out = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]  # after the usage line
    assert e.value.code == 0
    for flag, words in [("--tol TOL", "L1 error of both marginals"), ("--max-iter MAX_ITER", "iteration limit"),
                        ("--k K", "nonzeros per plan column"), ("--gamma GAMMA", "quadratic regularization"),
                        ("--epsilon-scaling", "decreasing sequence")]:
        assert flag in out and words in out.split(flag, 1)[1][:200], flag


@pytest.mark.parametrize("argv", [["solve"], ["solve", "a.npy", "b.npy", "--epsilon", "abc"], ["nosuchcommand"],
                                  ["solve", "a.npy", "b.npy", "--bogus"]])
def test_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error:" in _one_error_line(capsys)


@pytest.mark.parametrize("options", ['{"k_range": [2, 6]}', '{"alpha": }', '[1, 2]'])
def test_datagen_bad_options_one_line(options, tmp_path, capsys):
    rc = main(["datagen", "darcy", "--samples", "2", "--grid", "8", "--out", str(tmp_path / "d.h5"),
               "--no-progress", "--options", options])
    assert rc == 2
    _one_error_line(capsys)


def test_numba_cache_state_is_detected(tmp_path, rng):
    """The demo announces the one-off numba compile exactly when the kernels have no disk cache."""
    from otsolve.cli import _numba_cache_cold

    code = "from otsolve.cli import _numba_cache_cold; print(_numba_cache_cold())"
    env = dict(__import__("os").environ, NUMBA_CACHE_DIR=str(tmp_path))  # an empty cache
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.stdout.strip() == "True", proc.stderr[-2000:]
    x = rng.random((8, 2))
    otsolve.solve(None, None, otsolve.PointCloud(x, x), method="sparsity_constrained", k=2, gamma=1.0)
    assert _numba_cache_cold() is False  # compiled (or loaded) and cached on disk
