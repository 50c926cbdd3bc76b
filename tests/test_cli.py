"""The otsolve command line."""
import subprocess
import sys

import numpy as np
import pytest

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


def test_demo_runs(capsys):
    assert main(["demo", "--n", "200"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "True" in out


def test_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "otsolve.cli", "solve", "/nonexistent.npy", "/x.npy"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_unsupported_format(tmp_path, capsys):
    (tmp_path / "x.json").write_text("[]")
    assert main(["solve", str(tmp_path / "x.json"), str(tmp_path / "x.json")]) == 2
    assert "unsupported format" in capsys.readouterr().err
