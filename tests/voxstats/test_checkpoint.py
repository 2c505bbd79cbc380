"""Chunked runs: chunk-size invariance, checkpoints, resume, corrupt and foreign chunks, signals."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import voxstats
from voxstats import checkpoint, engine
from voxstats.cli import main
from voxstats.design_files import write_contrasts, write_design

SHAPE = (6, 5, 4)
N = 12
N_PERM = 100
ARRAYS = ("stat", "p", "p_fwe", "p_fdr", "null_max", "tfce", "tfce_p", "tfce_p_fwe", "null_max_tfce",
          "cluster_extent_p_fwe", "cluster_mass_p_fwe", "null_max_extent", "null_max_mass")


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(4)
    mask = np.ones(SHAPE, dtype=bool)
    mask[0, 0, :] = False
    group = np.repeat([0.0, 1.0], N // 2)
    age = rng.normal(40, 10, N)
    data = rng.standard_normal((N, int(mask.sum()))).astype(np.float32)
    data[:, :20] += 1.2 * group[:, None]
    design = np.column_stack([np.ones(N), group, age])
    return {"data": data, "mask": mask, "design": design,
            "contrasts": {"group": [0, 1, 0], "age": [0, 0, 1]},
            "f": {"both": [[0, 1, 0], [0, 0, 1]]}}


def _run(problem, **kwargs):
    options = dict(f_contrasts=problem["f"], mask=problem["mask"], n_perm=N_PERM, tfce=True,
                   cluster_threshold=2.0, cluster_threshold_f=4.0, rng=11, chunk_size=16)
    options.update(kwargs)
    return voxstats.permuted_glm(problem["data"], problem["design"], problem["contrasts"], **options)


def assert_same(a, b):
    assert a.n_perm == b.n_perm
    assert len(a.contrasts) == len(b.contrasts) == 3
    for ca, cb in zip(a.contrasts, b.contrasts):
        assert ca.name == cb.name
        for name in ARRAYS:
            x, y = getattr(ca, name), getattr(cb, name)
            assert x is not None, name
            np.testing.assert_array_equal(x, y, err_msg=f"{ca.name}.{name}")


@pytest.fixture(scope="module")
def reference(problem):
    return _run(problem, chunk_size=None)


@pytest.fixture
def count_chunks(monkeypatch):
    """Count the chunks actually computed (engine.run_chunk calls)."""
    calls = []
    original = engine.run_chunk

    def counted(job, schedule, start, stop, *args, **kwargs):
        calls.append((job.name, start, stop))
        return original(job, schedule, start, stop, *args, **kwargs)

    monkeypatch.setattr(engine, "run_chunk", counted)
    return calls


def _chunk_files(directory):
    return sorted(Path(directory).glob("*/chunk-*.npz"))


# --------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunk_size_changes_nothing(problem, reference, chunk_size):
    assert_same(_run(problem, chunk_size=chunk_size), reference)


def test_chunk_size_changes_nothing_sign_flip():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((9, 30)) + 0.3
    kwargs = dict(mask=np.ones((5, 6), bool), connectivity=4, n_perm=50, tfce=True, rng=2)
    results = [voxstats.permuted_glm(data, np.ones((9, 1)), [1], chunk_size=size, **kwargs)
               for size in (1, 7, 64)]
    assert results[0].scheme == "sign-flip"
    for other in results[1:]:
        np.testing.assert_array_equal(other[0].null_max_tfce, results[0][0].null_max_tfce)
        np.testing.assert_array_equal(other[0].tfce_p, results[0][0].tfce_p)


# --------------------------------------------------------------------------- checkpoint and resume


def test_checkpoint_run_equals_plain_run_and_writes_chunks(problem, reference, tmp_path):
    result = _run(problem, checkpoint_dir=tmp_path, chunk_size=32)
    assert_same(result, reference)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == checkpoint.FORMAT
    assert manifest["chunk_size"] == 32 and manifest["seed"] == 11 and manifest["n_perm"] == N_PERM
    assert set(manifest["fingerprint"]) == {"data", "design", "contrasts", "options", "schedule",
                                            "neighbourhood"}
    files = _chunk_files(tmp_path)
    assert len(files) == 3 * 4  # 3 contrasts x ceil(100 / 32)
    assert [f.name for f in files[:4]] == ["chunk-0000000-0000032.npz", "chunk-0000032-0000064.npz",
                                           "chunk-0000064-0000096.npz", "chunk-0000096-0000100.npz"]
    assert not list(tmp_path.glob("*/.tmp-*"))


def test_resume_of_a_finished_run_computes_nothing(problem, reference, tmp_path, count_chunks):
    _run(problem, checkpoint_dir=tmp_path)
    n_written = len(count_chunks)
    assert n_written == 3 * 7
    result = _run(problem, checkpoint_dir=tmp_path, resume=True)
    assert len(count_chunks) == n_written
    assert_same(result, reference)


def test_resume_computes_only_missing_chunks(problem, reference, tmp_path, count_chunks):
    _run(problem, checkpoint_dir=tmp_path)
    files = _chunk_files(tmp_path)
    for f in files[::3]:
        f.unlink()
    count_chunks.clear()
    result = _run(problem, checkpoint_dir=tmp_path, resume=True)
    assert len(count_chunks) == len(files[::3])
    assert_same(result, reference)
    assert len(_chunk_files(tmp_path)) == len(files)


@pytest.mark.parametrize("seed", range(6))
def test_chunk_ranges_equal_filtering_the_list(seed):
    rng = np.random.default_rng(seed)
    bounds = engine.chunk_bounds(int(rng.integers(1, 200)), int(rng.integers(1, 9)))
    kept = np.flatnonzero(rng.random(len(bounds)) < [0.0, 0.3, 0.5, 0.9, 1.0, 0.5][seed])
    want = [b for i, b in enumerate(bounds) if i not in set(kept.tolist())]
    for over in (bounds, list(bounds)):  # a ChunkBounds or a plain list
        todo = checkpoint.ChunkRanges.complement(over, kept)
        assert list(todo) == want and len(todo) == len(want) and bool(todo) == bool(want)
        assert [todo[i] for i in range(-len(want), len(want))] == want + want
        assert todo[1:4] == want[1:4]
        with pytest.raises(IndexError):
            todo[len(want)]


def test_what_is_left_of_a_huge_run_is_ranges_not_a_list(tmp_path):
    """-n 2e9 in chunks of 256 is 7.8 million chunks: a resume holds what is left as index ranges."""
    bounds = engine.chunk_bounds(2_000_000_000, 256)
    n = len(bounds)
    store = checkpoint._ContrastStore(tmp_path / "c", "fingerprint", n_voxels=3)
    done = [0, 1, 2, 5, n - 1]
    for i in done:
        start, stop = bounds[i]
        store.save(engine.ChunkResult(start, stop, null_max=np.zeros(stop - start),
                                      counts=np.zeros(3, np.int64)))
    (store.folder / "chunk-0000003-0000007.npz").write_bytes(b"")  # not a chunk of this chunking
    (store.folder / ".tmp-chunk-x").write_bytes(b"")  # left by an interrupted write
    seen = []
    todo = store.resume(bounds, lambda chunk: seen.append((chunk.start, chunk.stop)))
    assert sorted(seen) == [bounds[i] for i in done]
    assert len(todo) == n - len(done)
    assert todo.ranges.tolist() == [[3, 5], [6, n - 1]]
    assert todo[:3] == [bounds[3], bounds[4], bounds[6]] and todo[-1] == bounds[n - 2]
    assert not (store.folder / ".tmp-chunk-x").exists()


def test_resume_keeps_the_recorded_chunk_size(problem, reference, tmp_path, count_chunks, caplog):
    _run(problem, checkpoint_dir=tmp_path, chunk_size=16)
    count_chunks.clear()
    with caplog.at_level(logging.INFO, logger="voxstats.checkpoint"):
        result = _run(problem, checkpoint_dir=tmp_path, resume=True, chunk_size=5)
    assert count_chunks == []
    assert "recorded chunk size 16" in caplog.text
    assert_same(result, reference)


def test_resume_in_an_empty_directory_starts_afresh(problem, reference, tmp_path):
    assert_same(_run(problem, checkpoint_dir=tmp_path / "new", resume=True), reference)


def test_stale_temporary_files_are_removed(problem, tmp_path):
    _run(problem, checkpoint_dir=tmp_path)
    folder = _chunk_files(tmp_path)[0].parent
    stale = folder / ".tmp-abc123"
    stale.write_bytes(b"half a chunk")
    _run(problem, checkpoint_dir=tmp_path, resume=True)
    assert not stale.exists()


def test_progress_bar_counts_resumed_chunks(problem, tmp_path, capsys):
    _run(problem, checkpoint_dir=tmp_path)
    for f in _chunk_files(tmp_path)[:5]:
        f.unlink()
    _run(problem, checkpoint_dir=tmp_path, resume=True, verbose=True)
    err = capsys.readouterr().err
    # one bar per contrast, each counting the schedule's rearrangements (resumed ones at once)
    assert err.count(f"{N_PERM}/{N_PERM}") >= 3 and f"{3 * N_PERM}" not in err


# --------------------------------------------------------------------------- corrupt chunks


def _tamper_counts(path):
    """Rewrite a chunk file with one count changed but the old checksum (a silent bit flip)."""
    with np.load(path) as npz:
        content = {k: npz[k] for k in npz.files}
    content["counts"] = content["counts"].copy()
    content["counts"][0] += 1
    with open(path, "wb") as handle:
        np.savez(handle, **content)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path):
    path.write_bytes(b"\x00" * 100)


@pytest.mark.parametrize("tamper", [_tamper_counts, _truncate, _garbage])
def test_corrupt_chunk_is_recomputed(problem, reference, tmp_path, count_chunks, caplog, tamper):
    _run(problem, checkpoint_dir=tmp_path)
    victim = _chunk_files(tmp_path)[2]
    tamper(victim)
    count_chunks.clear()
    with caplog.at_level(logging.WARNING, logger="voxstats.checkpoint"):
        result = _run(problem, checkpoint_dir=tmp_path, resume=True)
    assert len(count_chunks) == 1
    assert f"Checkpoint chunk {victim} is corrupt" in caplog.text
    assert_same(result, reference)
    # the file was rewritten and is valid again
    count_chunks.clear()
    _run(problem, checkpoint_dir=tmp_path, resume=True)
    assert count_chunks == []


def _rewrite_chunk(path, change):
    """Rewrite a chunk with ``change(arrays)`` applied and a checksum that matches (a deliberate edit)."""
    with np.load(path) as npz:
        content = {k: npz[k] for k in npz.files}
    meta = str(content.pop("meta"))
    content.pop("checksum")
    change(content)
    checksum = checkpoint._ContrastStore._checksum(meta, content)
    with open(path, "wb") as handle:
        np.savez(handle, meta=np.array(meta), checksum=np.array(checksum), **content)


def _renamed(arrays):
    arrays["null_maxima"] = arrays.pop("null_max")


def _float_counts(arrays):
    arrays["counts"] = arrays["counts"].astype(np.float64)


def _short_counts(arrays):
    arrays["counts"] = arrays["counts"][:-1]


def _nan_max(arrays):
    arrays["null_max"] = arrays["null_max"].copy()
    arrays["null_max"][1] = np.nan


def _extra(arrays):
    arrays["notes"] = np.zeros(3)


def _too_many_counts(arrays):
    arrays["counts"] = arrays["counts"] + 1000


@pytest.mark.parametrize("change, problem_text", [
    (_renamed, r"arrays \[.*'null_maxima'.*\], expected"),
    (_float_counts, r"counts: expected \d+ integer counts, got float64"),
    (_short_counts, r"counts: expected \d+ integer counts, got int64 of shape"),
    (_nan_max, r"null_max: NaN or infinite values"),
    (_extra, r"arrays \[.*'notes'.*\], expected"),
    (_too_many_counts, r"counts: counts outside 0\.\.16"),
])
def test_chunk_arrays_are_validated(problem, reference, tmp_path, count_chunks, caplog, change, problem_text):
    """A chunk whose checksum holds but whose arrays are wrong is reported in one line and recomputed."""
    _run(problem, checkpoint_dir=tmp_path)
    victim = _chunk_files(tmp_path)[1]
    _rewrite_chunk(victim, change)
    count_chunks.clear()
    with caplog.at_level(logging.WARNING, logger="voxstats.checkpoint"):
        result = _run(problem, checkpoint_dir=tmp_path, resume=True)
    assert len(count_chunks) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert re.search(rf"Checkpoint chunk {re.escape(str(victim))} is corrupt \({problem_text}", warnings[0])
    assert_same(result, reference)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("chunk_size"), r"no 'chunk_size'"),
    (lambda m: m.update(seed="11"), r"'seed' must be an integer >= 0 or null, got '11'"),
    (lambda m: m.update(chunk_size=0), r"'chunk_size' must be an integer >= 1, got 0"),
    (lambda m: m.update(chunk_size=True), r"'chunk_size' must be an integer >= 1, got True"),
    (lambda m: m.update(fingerprint=["x"]), r"'fingerprint' must be an object of digests, got \['x'\]"),
    (lambda m: m.update(contrasts="group"), r"'contrasts' must be a list, got 'group'"),
])
def test_hand_edited_manifest_gives_one_line(problem, tmp_path, edit, message):
    _run(problem, checkpoint_dir=tmp_path)
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"^checkpoint_dir: .*manifest.json is not a valid voxstats "
                                         rf"checkpoint manifest \({message}\)") as info:
        _run(problem, checkpoint_dir=tmp_path, resume=True)
    assert "\n" not in str(info.value)
    if "seed" in message:
        with pytest.raises(ValueError, match=message):
            checkpoint.recorded_seed(tmp_path)


@pytest.mark.parametrize("content, what", [
    ("[1, 2]", "expected a JSON object, got a list"),
    ('"manifest"', "expected a JSON object, got a str"),
    ("{\"format\": 1}", "format 1, expected 'voxstats-checkpoint-1'"),
])
def test_manifest_that_is_not_an_object(problem, tmp_path, content, what):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ValueError, match=re.escape(what)):
        _run(problem, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=re.escape(what)):
        checkpoint.recorded_seed(tmp_path)


def test_cli_hand_edited_manifest_names_the_flag(study, capsys):
    ckpt = study / "edited_ckpt"
    argv = _argv(study, "edited", "--checkpoint-dir", str(ckpt))
    ckpt.mkdir()
    (ckpt / "manifest.json").write_text(json.dumps({"format": checkpoint.FORMAT, "seed": [1]}))
    assert main(argv + ["--resume"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("voxstats randomise: error: --checkpoint-dir: ") and err.count("\n") == 1
    assert "is not a valid voxstats checkpoint manifest (no 'fingerprint')" in err


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("change, component", [
    ("design", "design"),
    ("seed", "schedule"),
    ("data", "data"),
    ("tfce_H", "options"),
    ("contrast", "contrasts"),
])
def test_foreign_checkpoint_is_refused(problem, tmp_path, change, component):
    _run(problem, checkpoint_dir=tmp_path)
    before = {f: f.read_bytes() for f in _chunk_files(tmp_path)}
    other = dict(problem)
    kwargs = {}
    if change == "design":
        design = problem["design"].copy()
        design[:, 2] = np.arange(N)
        other["design"] = design
    elif change == "seed":
        kwargs["rng"] = 12
    elif change == "data":
        other["data"] = problem["data"] * np.float32(1.001)
    elif change == "tfce_H":
        kwargs["tfce_H"] = 1.5
    else:
        other["contrasts"] = {"group": [0, -1, 0], "age": [0, 0, 1]}
    with pytest.raises(ValueError, match=rf"holds a checkpoint of a different run \(the {component} "
                                         r"differs\); refusing to mix it in"):
        _run(other, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert {f: f.read_bytes() for f in _chunk_files(tmp_path)} == before


def test_threads_and_executor_are_not_part_of_the_fingerprint(problem, reference, tmp_path,
                                                              count_chunks):
    _run(problem, checkpoint_dir=tmp_path, n_jobs=1)
    count_chunks.clear()
    assert_same(_run(problem, checkpoint_dir=tmp_path, resume=True, n_jobs=2), reference)
    assert count_chunks == []


def test_foreign_chunk_file_is_refused(problem, tmp_path):
    _run(problem, checkpoint_dir=tmp_path / "a")
    _run(problem, checkpoint_dir=tmp_path / "b", rng=99)
    a, b = _chunk_files(tmp_path / "a")[0], _chunk_files(tmp_path / "b")[0]
    a.write_bytes(b.read_bytes())
    with pytest.raises(ValueError, match=r"belongs to another run .* refusing to mix it in"):
        _run(problem, checkpoint_dir=tmp_path / "a", resume=True)


def test_existing_checkpoint_needs_resume(problem, tmp_path):
    _run(problem, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"already holds a checkpoint; pass resume=True \(--resume\) to "
                                         r"continue it with the same inputs and options"):
        _run(problem, checkpoint_dir=tmp_path)
    # the same message for another run's checkpoint (here: another seed) when resume is not asked for
    with pytest.raises(ValueError, match=r"already holds a checkpoint; pass resume=True"):
        _run(problem, checkpoint_dir=tmp_path, rng=12345)


def test_non_checkpoint_directory_is_refused(problem, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"is not empty and holds no voxstats checkpoint"):
        _run(problem, checkpoint_dir=tmp_path)
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest.json is not a valid voxstats checkpoint manifest \(not JSON"):
        _run(problem, checkpoint_dir=tmp_path, resume=True)


def test_checkpoint_dir_that_is_a_file_is_refused(problem, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"checkpoint_dir: .*file exists and is not a directory"):
        _run(problem, checkpoint_dir=path)


def test_resume_needs_a_directory(problem):
    with pytest.raises(ValueError, match=r"resume=True needs a checkpoint_dir"):
        _run(problem, resume=True)


def test_bad_executor_options(problem):
    with pytest.raises(ValueError, match=r"Invalid value for the 'executor' parameter. Allowed values "
                                         r"are 'local', 'dask', but got 'spark' instead"):
        _run(problem, executor="spark")
    with pytest.raises(ValueError, match=r"'scheduler' parameter: a scheduler is only used with "
                                         r"executor='dask'"):
        _run(problem, scheduler="tcp://127.0.0.1:8786")


def test_missing_distributed_is_explained(problem, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install \"voxstats\[distributed\]\""):
        _run(problem, executor="dask")


# --------------------------------------------------------------------------- killed and interrupted runs

# Runs the command line with small chunks, each slowed down, so that the test can
# stop it midway. Chunk size and speed change no number.
_CHILD = textwrap.dedent("""
    import sys, time
    from voxstats import engine
    engine.default_chunk_size = lambda n_voxels: 8
    _run_chunk = engine.run_chunk
    def slow(*args, **kwargs):
        time.sleep(0.1)
        return _run_chunk(*args, **kwargs)
    engine.run_chunk = slow
    from voxstats.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture
def study(tmp_path, problem):
    mask = problem["mask"]
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    volumes = np.zeros(SHAPE + (N,), dtype=np.float32)
    volumes[mask] = problem["data"].T + 10.0
    nib.save(nib.Nifti1Image(volumes, affine), tmp_path / "all.nii.gz")
    import pandas as pd

    write_design(tmp_path / "design.mat", pd.DataFrame(problem["design"], columns=["c", "g", "age"]))
    write_contrasts(tmp_path / "design.con", {"g": [0.0, 1, 0], "age": [0.0, 0, 1]})
    return tmp_path


def _argv(study, out, *extra):
    return ["randomise", "-i", str(study / "all.nii.gz"), "-o", str(study / out), "-d",
            str(study / "design.mat"), "-t", str(study / "design.con"), "-n", "200", "-T", "-R", "-x",
            "-c", "2.0", "--quiet", *extra]


def _start_child(argv, cwd):
    env = dict(os.environ)
    root = str(Path(voxstats.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.Popen([sys.executable, "-c", _CHILD, *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_chunks(proc, directory, n, timeout=120):
    deadline = time.monotonic() + timeout
    while len(_chunk_files(directory)) < n:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {n} chunks were written: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for chunk files")
        time.sleep(0.01)


def _outputs(study, prefix):
    paths = sorted(study.glob(f"{prefix}_*.nii.gz"))
    return {p.name[len(prefix):]: np.asarray(nib.load(p).dataobj) for p in paths}


def _assert_same_outputs(study, a, b):
    out_a, out_b = _outputs(study, a), _outputs(study, b)
    # tstat, vox_corrp, tfce_corrp, clustere_corrp, and with -R tfce and clustere, per contrast
    assert len(out_a) == 2 * 6
    assert out_a.keys() == out_b.keys()
    for key in out_a:
        np.testing.assert_array_equal(out_a[key], out_b[key], err_msg=key)


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_outputs(study):
    ckpt = study / "ckpt"
    argv = _argv(study, "killed", "--seed", "5", "--checkpoint-dir", str(ckpt))
    proc = _start_child(argv, study)
    _wait_for_chunks(proc, ckpt, 4)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    n_done = len(_chunk_files(ckpt))
    assert 4 <= n_done < 2 * 25  # killed midway (2 contrasts x 200 / 8 chunks)
    assert not _outputs(study, "killed")
    assert main(argv + ["--resume"]) == 0
    assert len(_chunk_files(ckpt)) == 2 * 25
    assert main(_argv(study, "clean", "--seed", "5")) == 0
    _assert_same_outputs(study, "killed", "clean")


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_says_how_to_resume(study):
    ckpt = study / "ckpt"
    argv = _argv(study, "stopped", "--checkpoint-dir", str(ckpt))  # no --seed: drawn and recorded
    proc = _start_child(argv, study)
    _wait_for_chunks(proc, ckpt, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    kept = len(_chunk_files(ckpt))
    assert 3 <= kept < 2 * 25
    assert "stopped by SIGTERM; finished chunks are kept in" in err
    assert "To continue: voxstats randomise" in err and "--resume --seed" in err
    assert not list(ckpt.glob("*/.tmp-*"))
    assert not _outputs(study, "stopped")
    seed = json.loads((ckpt / "manifest.json").read_text())["seed"]
    # The same command plus --resume: the recorded seed is reused.
    assert main(argv + ["--resume"]) == 0
    record = json.loads((study / "stopped.json").read_text())
    assert record["seed"] == seed
    assert main(_argv(study, "clean", "--seed", str(seed))) == 0
    _assert_same_outputs(study, "stopped", "clean")


def test_cli_resume_and_scheduler_need_their_partners(study, capsys):
    assert main(_argv(study, "x", "--resume")) == 2
    assert "--resume needs --checkpoint-dir DIR" in capsys.readouterr().err
    assert main(_argv(study, "x", "--scheduler", "tcp://127.0.0.1:1")) == 2
    assert "--scheduler needs --executor dask" in capsys.readouterr().err


def test_cli_refuses_a_foreign_checkpoint(study, capsys):
    ckpt = str(study / "ckpt")
    assert main(_argv(study, "a", "--seed", "1", "--checkpoint-dir", ckpt)) == 0
    assert main(_argv(study, "b", "--seed", "2", "--checkpoint-dir", ckpt, "--resume")) == 1
    assert "different run (the schedule differs); refusing to mix it in" in capsys.readouterr().err
    # without --resume, with or without --seed: the directory holds a checkpoint, --resume continues it
    for extra in ([], ["--seed", "1"], ["--seed", "2"]):
        assert main(_argv(study, "c", "--checkpoint-dir", ckpt, *extra)) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "different run" not in err
        assert f"--checkpoint-dir: {ckpt} already holds a checkpoint; pass --resume to continue it" in err


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_signal_finishes_the_current_chunk_then_stops(problem, reference, tmp_path, monkeypatch):
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    original = engine.run_chunk
    calls = []

    def signalling(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the signal arrives during the third chunk
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "run_chunk", signalling)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(checkpoint.RunInterrupted, match=r"interrupted by SIGTERM with 3 of 7 chunks of "
                                                        r"this contrast done and kept in .*resume=True") as info:
        _run(problem, checkpoint_dir=tmp_path)
    assert info.value.signum == signal.SIGTERM and info.value.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    assert len(_chunk_files(tmp_path)) == 3
    monkeypatch.setattr(engine, "run_chunk", original)
    assert_same(_run(problem, checkpoint_dir=tmp_path, resume=True), reference)
