"""Fault injection for the datagen pipeline (issue #14): kills at random points (SIGKILL at every
kind of write step, including creation and mid-chunk, and at random delays), failing writers
(ENOSPC, EIO), writes that silently do not reach the file, a tiny filesystem, files interrupted at
creation, read-only files. After every fault: each sample marked done holds exactly the data of an
uninterrupted run, and rerunning completes the dataset, equal to the uninterrupted run.

Child processes come from a forkserver with the pipeline preloaded (a fork costs milliseconds, a
fresh interpreter ~1.5 s), so the module runs in well under 30 s.
"""
import errno
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

pytest.importorskip("h5py")
pytest.importorskip("zarr")

from otsolve.cli import main  # noqa: E402
from otsolve.datagen import DatagenIOError, generate, read_dataset  # noqa: E402
from otsolve.datagen import store as h5store  # noqa: E402
from otsolve.datagen import zarr_store  # noqa: E402

KW = dict(tol=1e-9, chunk_size=3, dtype="float64", progress=False, seed=3)
FAMILY, N, GRID = "darcy", 12, 8
FORMATS = ["h5", "zarr"]
FIELDS = ("inputs", "solutions", "iterations", "matvecs", "residual", "converged")


@pytest.fixture(scope="module")
def ctx():
    c = mp.get_context("forkserver")
    c.set_forkserver_preload(["otsolve.datagen.pipeline", "otsolve.datagen.zarr_store", "h5py", "zarr",
                              "scipy.sparse.linalg"])
    return c


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, per format."""
    d = tmp_path_factory.mktemp("ref")
    out = {}
    for fmt in FORMATS:
        generate(FAMILY, N, GRID, d / f"ref.{fmt}", **KW)
        out[fmt] = read_dataset(d / f"ref.{fmt}")
    return out


def _child(path, kill_at):
    """Runs in a forked child: generate, SIGKILLed by the hook before its ``kill_at``-th write step."""
    h5store._KILL_AT, h5store._WRITE_STEP = kill_at, 0
    generate(FAMILY, N, GRID, path, **KW)


def _run_child(ctx, path, kill_at=0, kill_after=None):
    p = ctx.Process(target=_child, args=(str(path), kill_at))
    p.start()
    if kill_after is not None:
        time.sleep(kill_after)
        p.kill()  # SIGKILL
    p.join(60)
    assert p.exitcode in (0, -signal.SIGKILL), p.exitcode
    return p.exitcode


def assert_done_rows_honest(path, ref):
    """Every sample marked done holds exactly the uninterrupted run's data (absent file: nothing done)."""
    if not os.path.exists(path):
        return 0
    if h5store.is_zarr_path(path):  # killed while being created: marked so, nothing done
        import zarr

        try:
            g = zarr.open_group(str(path), mode="r")
        except FileNotFoundError:
            return 0
        if g.attrs.get("otsolve_creating"):
            return 0
    d = read_dataset(path)  # an HDF5 file only ever exists complete
    done = d["done"]
    assert np.array_equal(np.sort(d["order"]), np.arange(N))  # every sample exactly once
    for name in FIELDS:
        np.testing.assert_array_equal(d[name][done], ref[name][done], err_msg=name)
    return int(done.sum())


def assert_equal_to_reference(path, ref):
    d = read_dataset(path)
    assert d["done"].all()
    assert np.array_equal(np.sort(d["order"]), np.arange(N))
    np.testing.assert_array_equal(d["order"], ref["order"])
    for name in FIELDS:
        np.testing.assert_array_equal(d[name], ref[name], err_msg=name)


def _count_steps(tmp_path, fmt):
    h5store._KILL_AT, h5store._WRITE_STEP = 10**9, 0
    try:
        generate(FAMILY, N, GRID, tmp_path / f"count.{fmt}", **KW)
        return h5store._WRITE_STEP
    finally:
        h5store._KILL_AT, h5store._WRITE_STEP = 0, 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_kill_at_random_write_steps(tmp_path, ctx, reference, fmt):
    """SIGKILL before a random write step (creation, data, flush, fsync, flags), again and again
    on the resumed runs, then finish: the result equals the uninterrupted run."""
    total = _count_steps(tmp_path, fmt)
    assert total > 10
    rng = random.Random(1400 + len(fmt))
    path = tmp_path / f"k.{fmt}"
    steps = [1, 2] + [rng.randint(3, total) for _ in range(4)]  # creation steps always among them
    killed = 0
    for n in steps:
        code = _run_child(ctx, path, kill_at=n)
        killed += code == -signal.SIGKILL
        if assert_done_rows_honest(path, reference[fmt]) == N:
            break
    assert killed >= 2
    res = generate(FAMILY, N, GRID, path, **KW)
    assert res["complete"]
    assert_equal_to_reference(path, reference[fmt])


@pytest.mark.parametrize("fmt", FORMATS)
def test_kill_at_random_delays(tmp_path, ctx, reference, fmt):
    """SIGKILL from outside at random moments of real runs (seeded), resume until done."""
    t = time.perf_counter()
    _run_child(ctx, tmp_path / f"timing.{fmt}")
    run_time = time.perf_counter() - t
    rng = random.Random(77 + len(fmt))
    path = tmp_path / f"d.{fmt}"
    for _ in range(4):
        code = _run_child(ctx, path, kill_after=rng.uniform(0.0, run_time))
        assert_done_rows_honest(path, reference[fmt])
        if code == 0:
            break
    generate(FAMILY, N, GRID, path, **KW)
    assert_equal_to_reference(path, reference[fmt])


def test_cli_subprocess_killed(tmp_path, reference):
    """The real command line, SIGKILLed (in the middle of its writes, and at a random moment),
    then rerun: exit 0, 'resumed', the data of an uninterrupted run."""
    out = tmp_path / "cli.h5"
    cmd = [sys.executable, "-m", "otsolve.cli", "datagen", FAMILY, "--samples", str(N), "--grid", str(GRID),
           "--tol", "1e-9", "--out", str(out), "--chunk-size", "3", "--no-progress", "--dtype", "float64",
           "--seed", "3"]
    env = dict(os.environ, OTSOLVE_DATAGEN_KILL_AT_WRITE="40")
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    n_done = assert_done_rows_honest(out, reference["h5"])
    assert 0 < n_done < N
    env.pop("OTSOLVE_DATAGEN_KILL_AT_WRITE")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(random.Random(5).uniform(0.5, 2.0))
    p.kill()
    p.communicate(timeout=120)
    assert_done_rows_honest(out, reference["h5"])
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stdout or "already done" in again.stdout
    assert_equal_to_reference(out, reference["h5"])


def _failing(real, fail_on, code):
    calls = {"n": 0}

    def write(*args):
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise OSError(code, os.strerror(code))
        return real(*args)

    return write


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_failing_writer(tmp_path, reference, monkeypatch, capsys, fmt, code):
    """A write that raises stops the run with a one-line message naming the error (exit 74);
    nothing unwritten is marked done; the same command then resumes and completes."""
    path = tmp_path / f"f.{fmt}"
    mod, name = (h5store, "_write_rows") if fmt == "h5" else (zarr_store, "_write_array")
    real = getattr(mod, name)
    monkeypatch.setattr(mod, name, _failing(real, 12, code))  # the 12th array write: chunk 2
    with pytest.raises(DatagenIOError) as info:
        generate(FAMILY, N, GRID, path, **KW)
    assert info.value.errno == code and "rerun" in str(info.value) and os.strerror(code) in str(info.value)
    assert 0 < assert_done_rows_honest(path, reference[fmt]) < N
    # the command line: one line on stderr, exit code 74
    monkeypatch.setattr(mod, name, _failing(real, 1, code))
    argv = ["datagen", FAMILY, "--samples", str(N), "--grid", str(GRID), "--tol", "1e-9", "--out", str(path),
            "--chunk-size", "3", "--no-progress", "--dtype", "float64", "--seed", "3"]
    assert main(argv) == 74
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("otsolve: error:")]
    assert len(errors) == 1 and os.strerror(code) in errors[0] and "rerun" in errors[0], lines
    assert all(line.startswith("resuming") for line in lines if line not in errors), lines
    monkeypatch.setattr(mod, name, real)
    assert main(argv) == 0
    assert_equal_to_reference(path, reference[fmt])


def test_write_that_never_reaches_the_file(tmp_path, reference, monkeypatch):
    """HDF5 writes are read back from the file: a write that 'succeeds' without landing is caught."""
    path = tmp_path / "lost.h5"
    monkeypatch.setattr(h5store, "_write_rows", lambda dset, idx, values: None)
    with pytest.raises(DatagenIOError, match="differ from what was written"):
        generate(FAMILY, N, GRID, path, **KW)
    assert assert_done_rows_honest(path, reference["h5"]) == 0
    monkeypatch.undo()
    generate(FAMILY, N, GRID, path, **KW)
    assert_equal_to_reference(path, reference["h5"])


def _mount_tmpfs(where, size_k):
    where.mkdir(exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def _pages(path):
    return sum(-(-os.path.getsize(os.path.join(r, f)) // 4096) for r, _, fs in os.walk(path) for f in fs)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_filesystem(tmp_path, reference, monkeypatch, fmt):
    """A full disk (a real tiny tmpfs when this test may mount one, else a writer failing with
    ENOSPC): a clear ENOSPC error, no sample falsely done, and the run resumes once there is room."""
    mnt = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    ref_path = tmp_path / f"sized.{fmt}"
    generate(FAMILY, N, GRID, ref_path, **KW)
    full = _pages(ref_path) if fmt == "zarr" else -(-os.path.getsize(ref_path) // 4096)
    size_k = max(16, 4 * (full * 6 // 10))  # 60% of what the finished dataset needs
    if not _mount_tmpfs(mnt, size_k):
        mod, name = (h5store, "_write_rows") if fmt == "h5" else (zarr_store, "_write_array")
        monkeypatch.setattr(mod, name, _failing(getattr(mod, name), 5, errno.ENOSPC))
        mounted = False
    else:
        mounted = True
    try:
        path = mnt / f"X.{fmt}"
        argv = ["datagen", FAMILY, "--samples", str(N), "--grid", str(GRID), "--tol", "1e-9", "--out", str(path),
                "--chunk-size", "3", "--no-progress", "--dtype", "float64", "--seed", "3"]
        with pytest.raises(DatagenIOError) as info:
            generate(FAMILY, N, GRID, path, **KW)
        assert info.value.errno == errno.ENOSPC, info.value
        assert assert_done_rows_honest(path, reference[fmt]) < N
        if fmt == "h5" and mounted:  # refused before solving anything: no file is left behind
            assert "needs" in str(info.value) and os.listdir(mnt) == []
        if mounted:
            subprocess.run(["mount", "-o", f"remount,size={max(1024, 8 * full)}k", str(mnt)], check=True)
        else:
            monkeypatch.undo()
        assert main(argv) == 0
        assert_equal_to_reference(path, reference[fmt])
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("content", [b"", "superblock", "empty-hdf5"])
def test_file_interrupted_at_creation_resumes(tmp_path, reference, content):
    """Files a run killed while creating leaves (empty, a truncated superblock, an HDF5 file with
    nothing in it, and our own temporary file) are recreated, not refused."""
    import h5py

    path = tmp_path / "c.h5"
    if content == b"":
        path.write_bytes(b"")
    else:
        h5py.File(path, "w").close()
        if content == "superblock":
            path.write_bytes(path.read_bytes()[:96])
    (tmp_path / "c.h5.creating").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    generate(FAMILY, N, GRID, path, **KW)
    assert_equal_to_reference(path, reference["h5"])
    assert not (tmp_path / "c.h5.creating").exists()


def test_other_files_are_refused_not_overwritten(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("my notes, not HDF5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        generate(FAMILY, N, GRID, path, **KW)
    assert path.read_text() == "my notes, not HDF5"
    zdir = tmp_path / "other.zarr"
    zdir.mkdir()
    (zdir / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an otsolve datagen"):
        generate(FAMILY, N, GRID, zdir, **KW)
    assert (zdir / "keep.txt").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_only_finished_output_is_reported_done(tmp_path, monkeypatch, capsys, fmt):
    """A finished dataset is never opened for writing: read-only is fine; an unfinished read-only
    one is an I/O error saying how many samples are left."""
    import h5py

    path = tmp_path / f"ro.{fmt}"
    generate(FAMILY, N, GRID, path, **KW)
    real_open = h5py.File

    def no_write(name, mode="r", *a, **k):
        if mode != "r":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(name, mode, *a, **k)

    monkeypatch.setattr(h5py, "File", no_write)
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: m != os.W_OK)
    argv = ["datagen", FAMILY, "--samples", str(N), "--grid", str(GRID), "--tol", "1e-9", "--out", str(path),
            "--chunk-size", "3", "--no-progress", "--dtype", "float64", "--seed", "3"]
    assert main(argv) == 0
    assert "already done" in capsys.readouterr().out
    part = tmp_path / f"part.{fmt}"
    monkeypatch.undo()
    mod, name = (h5store, "_write_rows") if fmt == "h5" else (zarr_store, "_write_array")
    monkeypatch.setattr(mod, name, _failing(getattr(mod, name), 9, errno.EIO))
    with pytest.raises(DatagenIOError):
        generate(FAMILY, N, GRID, part, **KW)
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: m != os.W_OK)
    with pytest.raises(DatagenIOError, match="samples are left"):
        generate(FAMILY, N, GRID, part, **KW)


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("dask.distributed")
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                 host="127.0.0.1", dashboard_address="127.0.0.1:0")
    yield c
    c.close()


def _child_dask(path, address):
    generate(FAMILY, N, GRID, path, scheduler=address, **KW)


def test_zarr_on_a_cluster_client_killed_and_worker_failing(tmp_path, ctx, reference, cluster, monkeypatch):
    """Zarr written by Dask workers: the client SIGKILLed at random moments (its running tasks may
    still write their chunks: the writes are idempotent), then a worker's write failing with EIO;
    the resumed store equals the uninterrupted run."""
    path = tmp_path / "cluster.zarr"
    rng = random.Random(16)
    for _ in range(2):
        p = ctx.Process(target=_child_dask, args=(str(path), cluster.scheduler_address))
        p.start()
        time.sleep(rng.uniform(0.2, 1.0))
        p.kill()
        p.join(60)
        assert_done_rows_honest(path, reference["zarr"])
    # workers run in this process (processes=False): a failing writer there fails the run
    monkeypatch.setattr(zarr_store, "_write_array", _failing(zarr_store._write_array, 3, errno.EIO))
    from dask.distributed import Client

    with Client(cluster) as client:
        try:
            generate(FAMILY, N, GRID, path, client=client, **KW)
        except DatagenIOError as exc:  # unless the killed runs had already finished every chunk
            assert exc.errno == errno.EIO and "at least" in str(exc)
        assert_done_rows_honest(path, reference["zarr"])
        monkeypatch.undo()
        generate(FAMILY, N, GRID, path, client=client, **KW)
    assert_equal_to_reference(path, reference["zarr"])
