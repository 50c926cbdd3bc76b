"""The datagen pipeline end to end: HDF5 output vs spsolve, resume after a kill, Dask LocalCluster."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse.linalg as spla

h5py = pytest.importorskip("h5py")

from otsolve.cli import main  # noqa: E402
from otsolve.datagen import generate, read_dataset  # noqa: E402
from otsolve.pde import make_system  # noqa: E402


def _check_against_direct(path, family="darcy", tol=1e-6):
    d = read_dataset(path)
    a = d["attrs"]
    assert d["done"].all()
    assert np.array_equal(np.sort(d["order"]), np.arange(a["samples"]))
    for i in range(a["samples"]):
        S = make_system(family, a["grid"], i, a["seed"], **a["options"])
        u = S.to_grid(spla.spsolve(S.A.tocsc(), S.b))
        np.testing.assert_allclose(d["solutions"][i], u, rtol=tol, atol=tol * np.abs(u).max())
        np.testing.assert_allclose(d["inputs"][i], S.inputs, rtol=1e-6)
    return d


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "d.h5"
    rc = main(["datagen", "darcy", "--samples", "12", "--grid", "12", "--tol", "1e-9", "--out", str(out),
               "--chunk-size", "5", "--no-progress", "--dtype", "float64"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "samples/s" in text and "iterations" in text
    d = _check_against_direct(out)
    assert (d["residual"] <= 1e-9).all() and (d["iterations"] > 0).all()
    # rerun: nothing left to do
    assert main(["datagen", "darcy", "--samples", "12", "--grid", "12", "--tol", "1e-9", "--out", str(out),
                 "--no-progress", "--dtype", "float64"]) == 0
    assert "already done" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["helmholtz", "poisson"])
def test_other_families(tmp_path, family):
    out = tmp_path / f"{family}.h5"
    res = generate(family, 6, 10, out, tol=1e-10, chunk_size=3, progress=False, dtype="float64",
                   precond="ilu" if family == "helmholtz" else None,
                   options={"k_range": [1.0, 3.0]} if family == "helmholtz" else None)
    assert res["complete"] and res["unconverged"] == 0
    _check_against_direct(out, family)


def test_resume_after_kill(tmp_path):
    out = tmp_path / "r.h5"
    cmd = [sys.executable, "-m", "otsolve.cli", "datagen", "darcy", "--samples", "20", "--grid", "10",
           "--tol", "1e-9", "--out", str(out), "--chunk-size", "4", "--no-progress", "--dtype", "float64"]
    env = dict(os.environ, OTSOLVE_DATAGEN_KILL_AFTER_CHUNKS="2")
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 75, killed.stderr
    with h5py.File(out, "r") as f:
        done = f["done"][()]
    assert done.sum() == 8  # two chunks survived the crash, the rest is missing
    env.pop("OTSOLVE_DATAGEN_KILL_AFTER_CHUNKS")
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "12 solved in this run, resumed" in again.stdout
    _check_against_direct(out)


def test_resume_rejects_other_settings(tmp_path):
    out = tmp_path / "s.h5"
    generate("darcy", 4, 8, out, progress=False)
    with pytest.raises(ValueError, match="grid"):
        generate("darcy", 4, 9, out, progress=False)
    bad = tmp_path / "x.h5"
    bad.write_text("not hdf5")
    with pytest.raises(OSError, match="cannot be opened"):
        generate("darcy", 4, 8, bad, progress=False)


def test_cli_errors(tmp_path, capsys):
    rc = main(["datagen", "darcy", "--samples", "0", "--grid", "8", "--out", str(tmp_path / "e.h5")])
    assert rc == 2 and "samples" in capsys.readouterr().err
    rc = main(["datagen", "darcy", "--samples", "3", "--grid", "8", "--tol", "-1", "--out", str(tmp_path / "e.h5")])
    assert rc == 2 and "tol" in capsys.readouterr().err


def test_local_cluster(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                       host="127.0.0.1", dashboard_address=None)
    try:
        out = tmp_path / "c.h5"
        rc = main(["datagen", "darcy", "--samples", "10", "--grid", "10", "--tol", "1e-9", "--out", str(out),
                   "--chunk-size", "3", "--no-progress", "--dtype", "float64",
                   "--scheduler", cluster.scheduler_address])
        assert rc == 0
        d = _check_against_direct(out)
        # the same data as a one-process run (same order, chunks, recycling within chunks)
        out1 = tmp_path / "one.h5"
        generate("darcy", 10, 10, out1, tol=1e-9, chunk_size=3, progress=False, dtype="float64")
        np.testing.assert_allclose(read_dataset(out1)["solutions"], d["solutions"], rtol=1e-12, atol=1e-15)
    finally:
        cluster.close()
