"""The Dask executor: the same maps as the local executor, data scattered once, checkpoints shared."""

import numpy as np
import pytest

import voxstats
from voxstats import engine

distributed = pytest.importorskip("distributed")

ARRAYS = ("stat", "p", "p_fwe", "tfce", "tfce_p", "tfce_p_fwe", "null_max", "null_max_tfce",
          "cluster_extent_p_fwe", "cluster_mass_p_fwe", "null_max_extent", "null_max_mass")
N = 10


@pytest.fixture(scope="module")
def client():
    """One LocalCluster for the module: 2 single-threaded worker processes."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(8)
    mask = np.ones((5, 5, 4), dtype=bool)
    group = np.repeat([0.0, 1.0], N // 2)
    data = rng.standard_normal((N, mask.sum())).astype(np.float32)
    data[:, :15] += group[:, None]
    design = np.column_stack([np.ones(N), group, rng.normal(size=N)])
    return {"data": data, "mask": mask, "design": design}


def _run(problem, **kwargs):
    options = dict(f_contrasts={"F": [[0, 1, 0], [0, 0, 1]]}, mask=problem["mask"], n_perm=120,
                   tfce=True, cluster_threshold=2.0, cluster_threshold_f=3.0, rng=5, chunk_size=7)
    options.update(kwargs)
    return voxstats.permuted_glm(problem["data"], problem["design"], {"g": [0, 1, 0]}, **options)


@pytest.fixture(scope="module")
def local(problem):
    return _run(problem)


def assert_same(a, b):
    assert len(a.contrasts) == len(b.contrasts) == 2
    for ca, cb in zip(a.contrasts, b.contrasts):
        for name in ARRAYS:
            assert getattr(ca, name) is not None, name
            np.testing.assert_array_equal(getattr(ca, name), getattr(cb, name), err_msg=name)


def test_dask_equals_local(problem, local, client):
    result = _run(problem, executor="dask", scheduler=client)
    assert_same(result, local)
    assert result.n_perm == 120


def test_dask_by_address_equals_local(problem, local, client):
    assert_same(_run(problem, executor="dask", scheduler=client.scheduler.address, chunk_size=64), local)


def test_data_are_scattered_once_per_contrast(problem, client, monkeypatch):
    scattered, submitted = [], []
    scatter, submit = client.scatter, client.submit

    def spy_scatter(data, **kwargs):
        scattered.append((data, kwargs))
        return scatter(data, **kwargs)

    def spy_submit(func, *args, **kwargs):
        submitted.append(args)
        return submit(func, *args, **kwargs)

    monkeypatch.setattr(client, "scatter", spy_scatter)
    monkeypatch.setattr(client, "submit", spy_submit)
    _run(problem, executor="dask", scheduler=client)
    assert len(scattered) == 2  # one per contrast
    for data, kwargs in scattered:
        assert kwargs["broadcast"] is True
        assert isinstance(data[0], engine.ContrastJob)
    assert len(submitted) == 2 * 18  # ceil(120 / 7) chunks per contrast
    for args in submitted:
        assert all(isinstance(a, distributed.Future) for a in args[:3])  # job, schedule, observed
        assert all(isinstance(a, int) for a in args[3:])  # start, stop
    # the big array travels only inside the scattered job
    assert not any(isinstance(a, np.ndarray) for args in submitted for a in args)


def test_only_a_window_of_chunks_is_submitted_at_a_time(problem, local, client, monkeypatch):
    """40 chunks per contrast, 2 worker threads: at most 4 submitted and not yet collected."""
    from voxstats import executor

    in_flight, most = [0], [0]
    submit, result = client.submit, executor._result

    def spy_submit(*args, **kwargs):
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        return submit(*args, **kwargs)

    def spy_result(future):
        in_flight[0] -= 1
        return result(future)

    monkeypatch.setattr(client, "submit", spy_submit)
    monkeypatch.setattr(executor, "_result", spy_result)
    runner = executor.DaskExecutor(client)
    assert runner.window() == 2 * 2  # two single-threaded workers
    assert_same(_run(problem, executor="dask", scheduler=client, chunk_size=3), local)
    assert most[0] == 4 and in_flight[0] == 0


def test_checkpoint_started_locally_resumes_on_dask(problem, local, client, tmp_path):
    _run(problem, checkpoint_dir=tmp_path)
    files = sorted(tmp_path.glob("*/chunk-*.npz"))
    for f in files[1::2]:
        f.unlink()
    result = _run(problem, executor="dask", scheduler=client, checkpoint_dir=tmp_path, resume=True)
    assert_same(result, local)
    assert len(sorted(tmp_path.glob("*/chunk-*.npz"))) == len(files)


def test_bad_scheduler_type(problem):
    with pytest.raises(TypeError, match=r"Invalid value for the 'scheduler' parameter: expected an "
                                        r"address string, a distributed.Client or None, got int"):
        _run(problem, executor="dask", scheduler=8786)


@pytest.mark.slow
def test_dask_local_cluster_started_for_the_run(problem, local):
    """executor='dask' without a scheduler starts (and closes) its own LocalCluster of n_jobs workers."""
    assert_same(_run(problem, executor="dask", n_jobs=2), local)


def test_cli_dask_scheduler_equals_local(problem, client, tmp_path):
    import nibabel as nib
    import pandas as pd

    from voxstats.cli import main
    from voxstats.design_files import write_contrasts, write_design

    volumes = np.zeros(problem["mask"].shape + (N,), dtype=np.float32)
    volumes[problem["mask"]] = problem["data"].T + 5.0
    nib.save(nib.Nifti1Image(volumes, np.eye(4)), tmp_path / "all.nii.gz")
    write_design(tmp_path / "d.mat", pd.DataFrame(problem["design"], columns=["c", "g", "x"]))
    write_contrasts(tmp_path / "d.con", {"g": [0.0, 1, 0]})
    common = ["randomise", "-i", str(tmp_path / "all.nii.gz"), "-d", str(tmp_path / "d.mat"),
              "-t", str(tmp_path / "d.con"), "-n", "60", "-T", "-R", "-x", "--seed", "3", "--quiet"]
    assert main(common + ["-o", str(tmp_path / "local")]) == 0
    assert main(common + ["-o", str(tmp_path / "dask"), "--executor", "dask",
                          "--scheduler", client.scheduler.address]) == 0
    for suffix in ("tstat1", "vox_corrp_tstat1", "tfce_tstat1", "tfce_corrp_tstat1"):
        a = np.asarray(nib.load(tmp_path / f"local_{suffix}.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp_path / f"dask_{suffix}.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b, err_msg=suffix)


# --------------------------------------------------------------------------- failures


def test_a_port_that_is_not_a_scheduler_fails_within_the_timeout(problem, monkeypatch):
    """A plain HTTP server accepts the connection but never speaks Dask: one line, no hang."""
    import http.server
    import threading
    import time

    from voxstats import executor
    from voxstats.errors import ParameterError

    monkeypatch.setattr(executor, "TIMEOUT", 2.0)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"tcp://127.0.0.1:{server.server_address[1]}"
        start = time.monotonic()
        with pytest.raises(ParameterError, match=rf"^scheduler: {address} did not answer as a Dask "
                                                 r"scheduler within 2 s \(is it the dashboard's port"):
            _run(problem, executor="dask", scheduler=address)
        assert time.monotonic() - start < 2.0 + 10.0
    finally:
        server.shutdown()
        server.server_close()
    closed = f"tcp://127.0.0.1:{server.server_address[1]}"  # nothing listens there any more
    with pytest.raises(ParameterError, match=rf"^scheduler: cannot reach a Dask scheduler at {closed} "
                                             r"\(ConnectionRefusedError"):
        _run(problem, executor="dask", scheduler=closed)


def _start(args, tmp_path, name):
    import subprocess
    import sys

    with open(tmp_path / f"{name}.log", "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                                cwd=tmp_path)


def _wait_for(path, timeout=180.0):
    import time

    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.1)


@pytest.fixture
def own_cluster(tmp_path):
    """A scheduler and one worker (no nanny, so a killed worker stays dead) in subprocesses."""
    import json

    procs = {}
    try:  # a failed start (a worker that never arrives) must not leave the others running
        scheduler_file = tmp_path / "scheduler.json"
        procs["scheduler"] = _start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                     "--no-dashboard", "--scheduler-file", str(scheduler_file)], tmp_path, "scheduler")
        _wait_for(scheduler_file)
        address = json.loads(scheduler_file.read_text())["address"]

        slow = tmp_path / "slow_chunks.py"  # a worker preload: each chunk takes at least 0.5 s
        slow.write_text(  # Dask may import a preload file twice: patch once
            "import time\nfrom voxstats import engine\n\n"
            "if not getattr(engine.run_chunk, 'slowed', False):\n"
            "    _run = engine.run_chunk\n\n"
            "    def run_chunk(*args, **kwargs):\n        time.sleep(0.5)\n        return _run(*args, **kwargs)\n\n"
            "    run_chunk.slowed = True\n    engine.run_chunk = run_chunk\n")

        def add_worker(slow_chunks=False):
            name = f"worker{len(procs)}"
            preload = ["--preload", str(slow)] if slow_chunks else []
            procs[name] = _start(["distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
                                  "--no-dashboard", "--death-timeout", "180", *preload], tmp_path, name)
            with distributed.Client(address, timeout="180s") as c:
                alive = sum(1 for k, p in procs.items() if k.startswith("worker") and p.poll() is None)
                c.wait_for_workers(alive, timeout=180)
            return procs[name]

        add_worker(slow_chunks=True)  # the 40 chunks of a run take 20 s: it is still running when the cluster goes
        yield {"address": address, "procs": procs, "add_worker": add_worker}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _study(problem, tmp_path):
    import nibabel as nib
    import pandas as pd

    from voxstats.design_files import write_contrasts, write_design

    volumes = np.zeros(problem["mask"].shape + (N,), dtype=np.float32)
    volumes[problem["mask"]] = problem["data"].T + 5.0
    nib.save(nib.Nifti1Image(volumes, np.eye(4)), tmp_path / "all.nii.gz")
    write_design(tmp_path / "d.mat", pd.DataFrame(problem["design"], columns=["c", "g", "x"]))
    write_contrasts(tmp_path / "d.con", {"g": [0.0, 1, 0]})
    # 40 chunks of 256
    return ["randomise", "-i", str(tmp_path / "all.nii.gz"), "-d", str(tmp_path / "d.mat"),
            "-t", str(tmp_path / "d.con"), "-n", "10240", "-T", "-x", "--seed", "3", "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("lose", ["workers", "scheduler"])
def test_losing_the_cluster_gives_one_line_with_the_resume_command(problem, tmp_path, own_cluster,
                                                                    monkeypatch, capsys, lose):
    import shlex
    import signal
    import time

    import nibabel as nib

    from voxstats import checkpoint, executor
    from voxstats.cli import main

    # Only the wait for a lost cluster to come back is shortened; reaching the scheduler, sending
    # the data and collecting chunks keep their 30 s, which a loaded machine (CI with -n 2) may need.
    monkeypatch.setattr(executor, "GRACE", 10.0)
    common = _study(problem, tmp_path)
    real_save = checkpoint._ContrastStore.save
    saved, killed = [], []

    def save_then_break(store, chunk):
        real_save(store, chunk)
        saved.append(chunk.start)
        if len(saved) == 1:  # the first chunk is safe on disk: now the cluster goes away
            victims = [p for name, p in own_cluster["procs"].items()
                       if (lose == "workers") == name.startswith("worker")]
            for proc in victims:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            killed.append(time.monotonic())

    monkeypatch.setattr(checkpoint._ContrastStore, "save", save_then_break)
    ckpt = tmp_path / "ckpt"
    argv = common + ["-o", str(tmp_path / "dask"), "--executor", "dask", "--scheduler",
                     own_cluster["address"], "--checkpoint-dir", str(ckpt)]
    assert main(argv) == 1
    after_the_loss = time.monotonic() - killed[0]
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("voxstats")]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    what = "no Dask worker is left" if lose == "workers" else "the Dask scheduler"
    assert line.startswith("voxstats randomise: error: ") and what in line, line
    assert f"finished chunks are kept in {ckpt}. To continue: voxstats " in line
    # no hang: the run stops once the grace period is over (plus closing the client, at most TIMEOUT)
    assert after_the_loss < executor.GRACE + 2 * executor.TIMEOUT, after_the_loss
    resume = shlex.split(line.split("To continue: voxstats ", 1)[1])
    assert resume == argv + ["--resume"]
    assert 1 <= len(sorted(ckpt.glob("*/chunk-*.npz"))) < 40
    if lose == "workers":  # a worker comes back: the resume command finishes the run
        monkeypatch.setattr(checkpoint._ContrastStore, "save", real_save)
        own_cluster["add_worker"]()
        assert main(resume) == 0
        assert main(common + ["-o", str(tmp_path / "local")]) == 0
        for suffix in ("tstat1", "vox_corrp_tstat1", "tfce_corrp_tstat1"):
            np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / f"local_{suffix}.nii.gz").dataobj),
                                          np.asarray(nib.load(tmp_path / f"dask_{suffix}.nii.gz").dataobj))
