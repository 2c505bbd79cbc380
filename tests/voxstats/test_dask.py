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
