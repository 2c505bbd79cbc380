"""The compiled kernels, run again as plain Python (``NUMBA_DISABLE_JIT=1``).

The tests of this module compare every kernel with its slow reference on tiny
inputs. They run in the normal (compiled) session, and
:func:`test_kernels_without_jit_in_a_subprocess` runs them once more in a fresh
interpreter with the JIT disabled, where coverage tools and debuggers see the
kernels' Python source.
"""

import os
from concurrent.futures import ThreadPoolExecutor
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from scipy import ndimage

from voxstats import _engine_numba, _tfce_numba, engine, make_schedule, permuted_glm, tfce
from voxstats._reference import cluster_sizes_reference, permuted_t_reference, tfce_reference
from voxstats.design import make_contrasts, make_design
from voxstats.glm import contrast_statistic
from voxstats.graph import grid_graph
from voxstats.randomise import make_job
from voxstats.tfce import batch_tfce, tfce_values

ROOT = Path(__file__).resolve().parents[2]
_EXPECT = "VOXSTATS_TEST_EXPECT_NOJIT"


def _field(seed, shape):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2
    x[rng.random(shape) < 0.2] = 0.0
    return x


def test_jit_state_is_as_expected():
    if os.environ.get(_EXPECT) == "1":
        assert numba.config.DISABLE_JIT
        assert not hasattr(_tfce_numba.tfce_graph, "signatures")  # a plain function
    else:
        assert hasattr(_tfce_numba.tfce_graph, "signatures")


@pytest.mark.parametrize("shape,connectivity", [((4, 4, 3), 6), ((4, 4, 3), 26), ((5, 4), 8)])
@pytest.mark.parametrize("mode,dh", [("exact", None), ("fsl", None), ("fsl", 0.3)])
def test_tfce_kernel(shape, connectivity, mode, dh):
    stat = _field(1, shape)
    np.testing.assert_allclose(tfce(stat, connectivity=connectivity, mode=mode, dh=dh),
                               tfce_reference(stat, connectivity=connectivity, mode=mode, dh=dh),
                               rtol=1e-10, atol=1e-12)
    one = tfce(stat, connectivity=connectivity, mode=mode, dh=dh, two_sided=False)
    np.testing.assert_allclose(one, tfce_reference(stat, connectivity=connectivity, mode=mode, dh=dh,
                                                   two_sided=False), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fsl", [False, True])
def test_tfce_batch_kernel(fsl):
    mask = np.ones((4, 4, 3), bool)
    graph = grid_graph(mask, 6)
    maps = np.stack([_field(s, mask.shape).ravel() for s in range(3)]).astype(np.float32)
    dh = 0.2
    with ThreadPoolExecutor(2) as pool:
        out = batch_tfce(maps, graph, fsl=fsl, dh=dh if fsl else None, pool=pool)
    for row, got in zip(maps, out):
        want = tfce_values(row.astype(np.float64), graph, mode="fsl" if fsl else "exact", dh=dh if fsl else None)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize("two_sided", [True, False])
def test_cluster_kernel(two_sided):
    shape = (5, 4, 3)
    mask = np.ones(shape, bool)
    maps = np.stack([_field(s, shape).ravel() for s in range(4)]).astype(np.float32)
    weights = np.random.default_rng(5).uniform(0.5, 2.0, maps.shape[1])
    for w in (None, weights):
        extent = np.zeros(4)
        mass = np.zeros(4)
        _tfce_numba.cluster_maxima_rows(maps, 0, 4, 1.0, two_sided, grid_graph(mask, 6).neighbours,
                                        np.zeros(0) if w is None else w, extent, mass)
        for i in range(4):
            e, m = cluster_sizes_reference(maps[i].reshape(shape), 1.0, 6, two_sided=two_sided,
                                           weights=None if w is None else w.reshape(shape))
            assert extent[i] == pytest.approx(e, rel=1e-12)
            assert mass[i] == pytest.approx(m, rel=1e-6)


def test_exceedance_kernel():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((6, 10)).astype(np.float32)
    observed = maps[0].copy()
    for absolute in (True, False):
        counts = np.zeros(10, dtype=np.int64)
        maxima = np.full(6, -np.inf, dtype=np.float32)
        everywhere = np.ones(10, bool)
        _engine_numba.exceedances(maps, observed, absolute, everywhere, 0, 4, counts, maxima)  # two blocks
        _engine_numba.exceedances(maps, observed, absolute, everywhere, 4, 10, counts, maxima)
        values = np.abs(maps) if absolute else maps
        np.testing.assert_array_equal(counts, (values >= values[0]).sum(axis=0))
        np.testing.assert_array_equal(maxima, values.max(axis=1))


@pytest.mark.parametrize("sign_flip", [False, True])
def test_statistic_kernels(sign_flip):
    rng = np.random.default_rng(3)
    n = 9
    x = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    y = rng.standard_normal((n, 5))
    y[:, 4] = 2.0  # constant voxel: statistic 0
    design = make_design(x)
    t_con, f_con = make_contrasts([0, 0, 1], design, f_contrasts=[[[0, 0, 1]]])
    schedule = make_schedule(n, 10, sign_flip=sign_flip, permute=True, rng=0)
    t_maps = engine.statistics(make_job(y, design, t_con, None), schedule, 0, 10)
    f_maps = engine.statistics(make_job(y, design, f_con, None), schedule, 0, 10)
    for i in range(10):
        want = permuted_t_reference(y, design, t_con, schedule.permutations[i], schedule.signs[i])
        np.testing.assert_allclose(t_maps[i], want, rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(f_maps[i], want ** 2, rtol=5e-4, atol=5e-4)  # F(1, df) = t**2
    assert np.all(t_maps[:, 4] == 0)


def test_driver_end_to_end():
    rng = np.random.default_rng(4)
    n, shape = 8, (4, 3, 3)
    x = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    y = rng.standard_normal((n, 36)) + np.outer(x[:, 1], np.r_[np.ones(6), np.zeros(30)])
    res = permuted_glm(y, x, [0, 1, 0], mask=np.ones(shape, bool), n_perm=12, tfce=True,
                       cluster_threshold=1.0, rng=0, n_jobs=2, chunk_size=5)
    c = res[0]
    design = make_design(x)
    np.testing.assert_allclose(c.stat, contrast_statistic(y, design, make_contrasts([0, 1, 0], design)[0])[0])
    assert c.null_max[0] == pytest.approx(np.abs(c.stat).max(), rel=1e-4)
    # the identity is in the null: the observed maximum's p is its rank among the null maxima
    assert c.p_fwe.min() == np.mean(c.null_max >= c.null_max[0]) >= 1 / 12
    np.testing.assert_allclose(c.tfce, tfce_reference(c.stat.reshape(shape)).ravel(), rtol=1e-4,
                               atol=1e-4 * np.abs(c.tfce).max())
    again = permuted_glm(y, x, [0, 1, 0], mask=np.ones(shape, bool), n_perm=12, tfce=True,
                         cluster_threshold=1.0, rng=0)
    np.testing.assert_array_equal(again[0].null_max_tfce, c.null_max_tfce)
    np.testing.assert_array_equal(again[0].null_max_extent, c.null_max_extent)


@pytest.mark.slow
def test_kernels_without_jit_in_a_subprocess():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", **{_EXPECT: "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider",
           "-k", "not subprocess", "-W", "error"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


# --------------------------------------------------------------------------- the engine's kernels


def test_engine_exceedances_with_inactive_voxels():
    rng = np.random.default_rng(1)
    maps = (rng.standard_normal((6, 10)) - 3).astype(np.float32)  # mostly negative
    observed = maps[0].copy()
    active = np.ones(10, bool)
    active[[2, 7]] = False
    for absolute in (True, False):
        counts = np.zeros(10, dtype=np.int64)
        maxima = np.full(6, -np.inf, dtype=np.float32)
        _engine_numba.exceedances(maps, observed, absolute, active, 0, 10, counts, maxima)
        values = np.abs(maps) if absolute else maps
        np.testing.assert_array_equal(counts, (values >= values[0]).sum(axis=0))
        np.testing.assert_array_equal(maxima, values[:, active].max(axis=1))
    maxima = np.full(6, -np.inf, dtype=np.float32)
    _engine_numba.exceedances(maps, observed, False, np.zeros(10, bool), 0, 10, np.zeros(10, np.int64), maxima)
    np.testing.assert_array_equal(maxima, -np.inf)  # no active voxel: the block leaves the maxima alone


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_engine_statistics_from_projections(dtype):
    from voxstats import _engine_numba

    rng = np.random.default_rng(2)
    n_maps, p, q, n_vox, df = 3, 4, 2, 7, 9.0
    proj = rng.standard_normal((n_maps * p, n_vox)).astype(dtype)
    sum_sq = (proj.astype(np.float64).reshape(n_maps, p, n_vox) ** 2).sum(axis=1).max(axis=0) + 5.0
    sum_sq[3] = 0.0  # a voxel without variance: 0
    for f_test in (False, True):
        out = np.empty((n_maps, n_vox), dtype=np.float32)
        _engine_numba.stats_from_projection(proj, sum_sq, df, p, q, f_test, out)
        g = proj.astype(np.float64).reshape(n_maps, p, n_vox)
        rss = sum_sq - (g ** 2).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            want = ((g[:, :q] ** 2).sum(axis=1) / q) / (rss / df) if f_test else g[:, 0] / np.sqrt(rss / df)
        want[:, 3] = 0.0
        np.testing.assert_allclose(out, want, rtol=1e-6)
    effect = np.empty((n_maps, n_vox))
    variance = np.empty((n_maps, n_vox))
    _engine_numba.t_components(proj, sum_sq, df, p, effect, variance)
    np.testing.assert_allclose(effect[:, [0, 1, 2, 4, 5, 6]], proj.astype(np.float64)[::p][:, [0, 1, 2, 4, 5, 6]])
    assert variance[0, 3] == 0.0 and effect[0, 3] == 0.0


def test_voxelwise_projection_and_cluster_labels():
    from voxstats import _engine_numba

    rng = np.random.default_rng(3)
    n, p, n_vox = 6, 3, 5
    basis = rng.standard_normal((n, p, n_vox)).astype(np.float32)
    data = rng.standard_normal((n, n_vox)).astype(np.float32)
    perm = rng.permutation(n)
    signs = np.where(rng.random(n) < 0.5, -1, 1).astype(np.int8)
    out = np.empty((p, n_vox))
    _engine_numba.voxelwise_projection(basis, data, perm, signs, out)
    want = np.einsum("jkv,jv->kv", basis.astype(np.float64), signs[:, None] * data[perm].astype(np.float64))
    np.testing.assert_allclose(out, want, rtol=1e-12)
    shape = (5, 4, 3)
    maps = np.stack([_field(s, shape).ravel() for s in range(3)]).astype(np.float32)
    labels = np.empty(maps.shape, dtype=np.int64)
    _engine_numba.cluster_label_maps(maps, 1.0, False, grid_graph(np.ones(shape, bool), 26).neighbours, labels, 2)
    for row, lab in zip(maps, labels):
        ref, _ = ndimage.label(row.reshape(shape) > 1.0, np.ones((3, 3, 3)))
        ref = ref.ravel()
        assert ((lab > 0) == (ref > 0)).all()
        for k in np.unique(ref[ref > 0]):  # same partition; label = smallest voxel index + 1
            members = np.flatnonzero(ref == k)
            assert (lab[members] == members.min() + 1).all()
