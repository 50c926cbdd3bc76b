"""The datagen pipeline end to end: HDF5 and Zarr output vs spsolve, layouts, settings checks,
AMG, Dask (LocalCluster, scheduler file, workers writing Zarr chunks), the torch loader.

Fault injection (kills, I/O errors, full disks) lives in test_datagen_faults.py."""
import json

import numpy as np
import pytest
import scipy.sparse.linalg as spla

h5py = pytest.importorskip("h5py")

from otsolve.cli import main  # noqa: E402
from otsolve.datagen import family_options, generate, read_dataset  # noqa: E402
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
    assert (d["residual"] <= 1e-9).all() and (d["iterations"] > 0).all() and d["converged"].all()
    # rerun: nothing left to do
    assert main(["datagen", "darcy", "--samples", "12", "--grid", "12", "--tol", "1e-9", "--out", str(out),
                 "--no-progress", "--dtype", "float64", "--chunk-size", "5"]) == 0
    assert "already done" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["helmholtz", "poisson"])
def test_other_families(tmp_path, family):
    out = tmp_path / f"{family}.h5"
    res = generate(family, 6, 10, out, tol=1e-10, chunk_size=3, progress=False, dtype="float64",
                   precond="ilu" if family == "helmholtz" else None,
                   options={"k_range": [1.0, 3.0]} if family == "helmholtz" else None)
    assert res["complete"] and res["unconverged"] == 0
    _check_against_direct(out, family)


def test_zarr_output_matches_hdf5(tmp_path):
    kw = dict(tol=1e-9, chunk_size=4, progress=False, dtype="float64", seed=2)
    generate("darcy", 10, 10, tmp_path / "a.h5", **kw)
    res = generate("darcy", 10, 10, tmp_path / "a.zarr", **kw)
    assert res["format"] == "zarr" and res["complete"]
    z = _check_against_direct(tmp_path / "a.zarr")
    h = read_dataset(tmp_path / "a.h5")
    for name in ("inputs", "solutions", "iterations", "order", "residual"):
        np.testing.assert_array_equal(z[name], h[name])
    # Zarr rows are in solve order: work chunk c is exactly Zarr chunk c
    import zarr

    g = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    assert g["solutions"].chunks[0] == 4
    np.testing.assert_array_equal(g["solutions"][:][3], h["solutions"][h["order"][3]])


def test_zarr_fsspec_url(tmp_path):
    url = "file://" + str(tmp_path / "u.zarr")
    res = generate("poisson", 5, 8, url, tol=1e-10, chunk_size=2, progress=False, dtype="float64")
    assert res["complete"]
    _check_against_direct(url, "poisson")
    assert generate("poisson", 5, 8, url, tol=1e-10, chunk_size=2, progress=False, dtype="float64")["solved_now"] == 0


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_pdebench_layout(tmp_path, fmt):
    """PDEBench's Darcy names and shapes, read the way PDEBench's FNO loader reads them."""
    out = tmp_path / f"p.{fmt}"
    generate("darcy", 6, 9, out, tol=1e-9, chunk_size=3, progress=False, layout="pdebench")
    if fmt == "h5":
        with h5py.File(out, "r") as f:
            assert {"nu", "tensor", "x-coordinate", "y-coordinate"} <= set(f.keys())
            tensor, nu = np.array(f["tensor"], dtype=np.float32), np.array(f["nu"], dtype=np.float32)
            x, y = np.array(f["x-coordinate"]), np.array(f["y-coordinate"])
            desc = json.loads(f.attrs["description"])
    else:
        import zarr

        g = zarr.open_group(str(out), mode="r")
        tensor, nu, x, y = g["tensor"][:], g["nu"][:], g["x-coordinate"][:], g["y-coordinate"][:]
        desc = g.attrs["description"]
    assert tensor.shape == (6, 1, 9, 9) and nu.shape == (6, 9, 9) and x.shape == y.shape == (9,)
    np.testing.assert_allclose(x, np.linspace(0, 1, 9))
    # PDEBench: data = concat([nu[..., None], tensor -> (b, x, y, t)]) as (b, x, y, 2)
    data = np.concatenate([nu[:, :, :, None], np.transpose(tensor, (0, 2, 3, 1))], axis=-1)
    d = read_dataset(out)
    order = d["order"] if fmt == "zarr" else np.arange(6)  # Zarr rows are in solve order
    np.testing.assert_array_equal(data[..., 0], d["inputs"][order, 0])
    np.testing.assert_array_equal(data[..., 1], d["solutions"][order])
    # the file describes itself
    assert desc["arrays"]["nu"]["channels"][0]["name"] == "K"
    assert desc["arrays"]["tensor"]["units"] == "dimensionless"
    assert desc["grid"]["nodes_per_side"] == 9 and desc["generator"]["tol"] == 1e-9
    assert desc["generator"]["options"] == family_options("darcy")


def test_self_description_default_layout(tmp_path):
    out = tmp_path / "h.h5"
    generate("helmholtz", 3, 8, out, tol=1e-8, chunk_size=3, progress=False, precond="ilu")
    a = read_dataset(out)["attrs"]
    ch = a["description"]["arrays"]["inputs"]["channels"]
    assert [c["name"] for c in ch] == ["K", "k"] and "radians" in ch[1]["units"]
    assert a["description"]["generator"]["precond"] == "ilu" and a["description"]["grid"]["dim"] == 2


SETTINGS_CHANGES = [("grid", 9), ("samples", 5), ("seed", 1), ("tol", 1e-7), ("dtype", "float64"),
                    ("method", "gcrodr"), ("precond", "jacobi"), ("k", 10), ("restart", 30), ("sort", "none"),
                    ("chunk_size", 3), ("options", {"alpha": 3.0}), ("layout", "pdebench")]


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_resume_rejects_other_settings(tmp_path, fmt):
    out = tmp_path / f"s.{fmt}"
    base = dict(progress=False, chunk_size=2)
    generate("darcy", 4, 8, out, **base)
    for key, value in SETTINGS_CHANGES:
        kw = dict(base)
        args = {"samples": 4, "grid": 8}
        if key in args:
            args[key] = value
        else:
            kw[key] = value
        with pytest.raises(ValueError, match=rf"generated with {key}=.*this run asks for"):
            generate("darcy", args["samples"], args["grid"], out, **kw)
    # the same settings with an option spelled out at its default value resume fine
    assert generate("darcy", 4, 8, out, options={"alpha": 2.5}, **base)["solved_now"] == 0


def test_cli_names_the_differing_setting(tmp_path, capsys):
    out = tmp_path / "m.h5"
    base = ["datagen", "darcy", "--samples", "4", "--grid", "8", "--out", str(out), "--no-progress"]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base + ["--precond", "amg"]) == 2
    err = capsys.readouterr().err
    assert "precond" in err and "--precond" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv,needle", [
    (["--samples", "0"], "samples"),
    (["--tol", "-1"], "tol"),
    (["--options", '{"alpah": 3}'], "'alpah'"),
    (["--options", '{"k_range": [2, 6]}'], "'k_range' for darcy"),
    (["--options", '{"alpha": 3'], "not valid JSON"),
    (["--options", "[1, 2]"], "JSON object"),
    (["--options", '{"alpha": "big"}'], "options"),
    (["--layout", "pdebench", "--family-override", "poisson"], "pdebench"),
    (["--precond", "amg", "--family-override", "helmholtz"], "amg"),
    (["--k", "40", "--method", "gcrodr"], "k=40"),
    (["--workers", "0"], "workers"),
    (["--scheduler", "nowhere.json"], "scheduler file not found"),
    (["--out-override", "s3://bucket/x.h5"], "Zarr"),
])
def test_cli_user_errors_are_one_line(tmp_path, capsys, argv, needle):
    family = "darcy"
    out = str(tmp_path / "e.h5")
    if "--family-override" in argv:
        i = argv.index("--family-override")
        family = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if "--out-override" in argv:
        i = argv.index("--out-override")
        out = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    base = ["datagen", family, "--samples", "3", "--grid", "8", "--out", out, "--no-progress"]
    if "--samples" in argv:
        base = ["datagen", family, "--grid", "8", "--out", out, "--no-progress"]
    rc = main(base + argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_unknown_option_key_suggests_the_right_one():
    with pytest.raises(ValueError, match=r"unknown key 'k_rang' for helmholtz \(did you mean 'k_range'\?\)"):
        generate("helmholtz", 2, 8, "unused.h5", options={"k_rang": [2, 6]}, progress=False)


@pytest.mark.parametrize("family", ["darcy", "poisson"])
def test_amg_preconditioner(tmp_path, family):
    pytest.importorskip("pyamg")
    kw = dict(tol=1e-9, chunk_size=4, progress=False, dtype="float64")
    plain = generate(family, 4, 24, tmp_path / "n.h5", **kw)
    amg = generate(family, 4, 24, tmp_path / "a.h5", precond="amg", **kw)
    assert amg["unconverged"] == 0 and amg["precond"] == "amg"
    _check_against_direct(tmp_path / "a.h5", family)
    assert amg["mean_iterations"] < plain["mean_iterations"] / 2  # AMG: a few iterations, not ~grid many


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("dask.distributed")
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                 host="127.0.0.1", dashboard_address="127.0.0.1:0")
    yield c
    c.close()


def test_local_cluster_address(tmp_path, cluster):
    out = tmp_path / "c.h5"
    rc = main(["datagen", "darcy", "--samples", "10", "--grid", "10", "--tol", "1e-9", "--out", str(out),
               "--chunk-size", "3", "--no-progress", "--dtype", "float64", "--scheduler", cluster.scheduler_address])
    assert rc == 0
    d = _check_against_direct(out)
    # the same data as a one-process run (same order, chunks, recycling within chunks)
    out1 = tmp_path / "one.h5"
    generate("darcy", 10, 10, out1, tol=1e-9, chunk_size=3, progress=False, dtype="float64")
    np.testing.assert_array_equal(read_dataset(out1)["solutions"], d["solutions"])


def test_scheduler_file_and_workers_writing_zarr(tmp_path, cluster):
    sched = tmp_path / "scheduler.json"  # what `dask scheduler --scheduler-file` writes, minus the worker list
    sched.write_text(json.dumps({"type": "Scheduler", "address": cluster.scheduler_address}))
    out = tmp_path / "w.zarr"
    rc = main(["datagen", "darcy", "--samples", "10", "--grid", "10", "--tol", "1e-9", "--out", str(out),
               "--chunk-size", "3", "--no-progress", "--dtype", "float64", "--scheduler", str(sched)])
    assert rc == 0
    d = _check_against_direct(out)
    out1 = tmp_path / "one.zarr"
    generate("darcy", 10, 10, out1, tol=1e-9, chunk_size=3, progress=False, dtype="float64")
    np.testing.assert_array_equal(read_dataset(out1)["solutions"], d["solutions"])


def test_torch_dataset_feeds_a_training_loop(tmp_path):
    torch = pytest.importorskip("torch")
    from otsolve.datagen import TorchDataset

    for name in ("t.h5", "t.zarr"):
        generate("darcy", 8, 8, tmp_path / name, tol=1e-8, chunk_size=3, progress=False,
                 layout="pdebench" if name == "t.h5" else "otsolve")
    ds = TorchDataset(tmp_path / "t.h5", grid_channels=True)
    ref = read_dataset(tmp_path / "t.h5")
    assert len(ds) == 8
    x, y = ds[5]
    assert x.shape == (3, 8, 8) and y.shape == (1, 8, 8) and x.dtype == torch.float32
    np.testing.assert_array_equal(x[0].numpy(), ref["inputs"][5, 0])
    np.testing.assert_array_equal(y[0].numpy(), ref["solutions"][5])
    np.testing.assert_allclose(x[1, :, 0].numpy(), np.linspace(0, 1, 8), rtol=1e-6)  # x coordinate channel
    z = TorchDataset(tmp_path / "t.zarr")
    np.testing.assert_array_equal(z[5][1][0].numpy(), ref["solutions"][5])  # by sample, not by Zarr row
    train = TorchDataset(tmp_path / "t.h5", indices=range(6), grid_channels=True)
    loader = torch.utils.data.DataLoader(train, batch_size=3, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only contend on a shared machine
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 1, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        for xb, yb in loader:
            assert xb.shape == (3, 3, 8, 8) and yb.shape == (3, 1, 8, 8)
            loss = torch.mean((model(xb) - yb) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    torch.set_num_threads(threads)
    assert np.mean(losses[-2:]) < 0.5 * np.mean(losses[:2])
