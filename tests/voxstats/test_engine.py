"""The permutation engine: ties, constant voxels, merging chunks as they arrive.

References are independent float64 NumPy brute forces over the distinct
rearrangements (statistics equal in exact arithmetic are counted with a 1e-9
relative tolerance there) and ``scipy.ndimage.label``.
"""

import gc
import importlib
import itertools
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from voxstats import engine, permuted_glm
from voxstats._reference import tfce_reference
from voxstats.executor import run_chunks
from voxstats.glm import f_to_z

randomise_module = sys.modules["voxstats.randomise"]


class _FixedSchedule:
    """A schedule given row by row (identity first), duck-typing PermutationSchedule."""

    def __init__(self, permutations, signs=None):
        self.permutations = np.asarray(permutations, dtype=np.int64)
        self.signs = np.ones_like(self.permutations, dtype=np.int8) if signs is None else np.asarray(signs, np.int8)
        self.exhaustive = True
        self.n_possible = len(self.permutations)
        self.permute = signs is None
        self.sign_flip = signs is not None
        self.rule = "every rearrangement given by the test"

    @property
    def n_perm(self):
        return self.permutations.shape[0]

    def rows(self, start, stop):
        return self.permutations[start:stop], self.signs[start:stop]


def _relabellings(labels):
    """Data permutations realising every distinct relabelling of ``labels``, identity first.

    Permuting the data by ``perm`` (row j of the permuted data is subject perm[j])
    gives the statistic of the original data with design row i taken from
    subject inv[i], where perm[inv[i]] = i.
    """
    labels = np.asarray(labels)
    out = []
    for relabel in sorted(set(itertools.permutations(labels.tolist())), key=lambda r: r != tuple(labels)):
        pool = {g: list(np.flatnonzero(labels == g)) for g in np.unique(labels)}
        inv = np.array([pool[g].pop(0) for g in relabel])
        perm = np.empty_like(inv)
        perm[inv] = np.arange(inv.size)
        out.append((perm, np.array(relabel)))
    return out


def _use_schedule(monkeypatch, schedule):
    monkeypatch.setattr(randomise_module, "make_schedule", lambda *args, **kwargs: schedule)


def _f_stat(y, labels, k):
    """One-way ANOVA F of the columns of y for group labels (float64)."""
    grand = y.mean(0)
    between = sum((labels == g).sum() * (y[labels == g].mean(0) - grand) ** 2 for g in range(k))
    within = sum(((y[labels == g] - y[labels == g].mean(0)) ** 2).sum(0) for g in range(k))
    n = y.shape[0]
    return (between / (k - 1)) / (within / (n - k))


def _count_ge(null, observed):
    """#{null >= observed} with ties up to 1e-9 relative (the exact-arithmetic ties of the brute force)."""
    return np.sum(null >= observed - 1e-9 * np.abs(observed), axis=0)


# --------------------------------------------------------------------------- ties


def test_ties_f_contrast_three_groups_of_three(monkeypatch):
    """3 groups of 3, F: each relabelling has 5 twins with the same F; all must compare equal.

    Before: float32 projections broke the twins' ties differently from the
    observed map (FWE p at the peak 196/1680 where randomise gives 198/1680;
    uncorrected p off by up to 4/1680 here).
    """
    rng = np.random.default_rng(0)
    shape = (4, 3, 2)
    labels = np.repeat([0, 1, 2], 3)
    y = rng.standard_normal((9, int(np.prod(shape))))
    y[:, :8] += 0.8 * (labels == 0)[:, np.newaxis]
    x = np.eye(3)[labels]
    rows = _relabellings(labels)
    assert len(rows) == 1680
    _use_schedule(monkeypatch, _FixedSchedule([p for p, _ in rows]))
    res = permuted_glm(y, x, None, f_contrasts=[[[1, -1, 0], [0, 1, -1]]], mask=np.ones(shape, bool),
                       tfce=True, cluster_threshold_f=2.0, n_perm=1680, rng=0)
    c = res[0]
    null = np.array([_f_stat(y, relabel, 3) for _, relabel in rows])  # (1680, n_voxels)
    obs = null[0]
    np.testing.assert_allclose(c.stat, obs, rtol=1e-10)
    np.testing.assert_array_equal(np.rint(c.p * 1680), _count_ge(null, obs))
    maxima = null.max(axis=1)
    np.testing.assert_array_equal(np.rint(c.p_fwe * 1680), [_count_ge(maxima, o) for o in obs])
    peak = int(np.argmax(obs))
    assert np.rint(c.p_fwe[peak] * 1680) == _count_ge(maxima, obs[peak]) and _count_ge(maxima, obs[peak]) % 6 == 0
    # TFCE of F converted to z: twins have bit-identical maps, so identical TFCE
    z = f_to_z(null, 2, 6)
    tfce_null = np.array([tfce_reference(m.reshape(shape), two_sided=False).ravel() for m in z])
    tfce_max = tfce_null.max(axis=1)
    np.testing.assert_array_equal(np.rint((c.tfce_p_fwe * 1680)), [_count_ge(tfce_max, o) for o in tfce_null[0]])
    np.testing.assert_array_equal(np.rint((c.tfce_p * 1680)), _count_ge(tfce_null, tfce_null[0]))
    # cluster extent (26-connected, >= threshold): twins give the same maxima
    extent_max = np.array([np.bincount(ndimage.label(m.reshape(shape) >= 2.0, np.ones((3, 3, 3)))[0].ravel())[1:]
                           .max(initial=0) for m in null])
    inside = c.cluster_labels > 0
    assert inside.any()
    if inside.any():
        size = np.bincount(c.cluster_labels)[c.cluster_labels[inside]]
        np.testing.assert_array_equal(np.rint(c.cluster_extent_p_fwe[inside] * 1680),
                                      [np.sum(extent_max >= s) for s in size])


def test_ties_t_contrast_with_symmetric_nuisance(monkeypatch):
    """4 groups of 2, t contrast A - B: relabellings that swap C and D rotate the nuisance basis."""
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2, 3], 2)
    y = rng.standard_normal((8, 60))
    y[:, :10] += 1.0 * (labels == 0)[:, np.newaxis]
    x = np.eye(4)[labels]
    rows = _relabellings(labels)
    assert len(rows) == 2520
    _use_schedule(monkeypatch, _FixedSchedule([p for p, _ in rows]))
    c = permuted_glm(y, x, [1, -1, 0, 0], n_perm=2520, rng=0, two_sided=True)[0]
    # Freedman-Lane: the data residualised against the nuisance (the A+B mean, C, D), then relabelled
    nuisance = np.column_stack([x[:, 0] + x[:, 1], x[:, 2], x[:, 3]])
    y = y - nuisance @ np.linalg.lstsq(nuisance, y, rcond=None)[0]

    def t_stat(relabel):
        means = np.stack([y[relabel == g].mean(0) for g in range(4)])
        within = sum(((y[relabel == g] - means[g]) ** 2).sum(0) for g in range(4)) / 4
        return (means[0] - means[1]) / np.sqrt(within * (1 / 2 + 1 / 2))

    null = np.abs(np.array([t_stat(relabel) for _, relabel in rows]))
    np.testing.assert_array_equal(np.rint(c.p * 2520), _count_ge(null, null[0]))
    np.testing.assert_array_equal(np.rint(c.p_fwe * 2520), [_count_ge(null.max(axis=1), o) for o in null[0]])


def test_basis_rows_of_equal_design_rows_are_identical():
    rng = np.random.default_rng(2)
    design = np.repeat(np.eye(3), [4, 3, 5], axis=0) @ rng.standard_normal((3, 3))
    basis = np.linalg.svd(design, full_matrices=False)[0]
    basis[1] += 1e-17  # a few ulps apart, as an SVD may leave them
    canon = engine.canonical_basis(basis, design)
    for g in np.unique(design, axis=0):
        rows = canon[np.all(design == g, axis=1)]
        assert (rows == rows[0]).all()
    np.testing.assert_allclose(canon, basis, atol=1e-15)


# --------------------------------------------------------------------------- constant voxels


def test_constant_voxels_take_no_part(monkeypatch):
    """One-sample test with a voxel equal to 5 in every subject: t 0, p 1, TFCE 0, out of every maximum.

    Before: t = 0 but p = 0.002 and TFCE 3e11 there, and other voxels' FWE p shifted.
    """
    rng = np.random.default_rng(3)
    n, shape = 8, (3, 3, 2)
    y = rng.standard_normal((n, 18)) - 0.5  # mostly negative t: a 0 would win the one-sided maxima
    y[:, 4] = 5.0
    y[:, 9] = 0.0
    signs = np.array(list(itertools.product((1, -1), repeat=n)), dtype=np.int8)
    signs = signs[np.argsort(np.any(signs < 0, axis=1), kind="stable")]  # identity first
    _use_schedule(monkeypatch, _FixedSchedule(np.tile(np.arange(n), (len(signs), 1)), signs))
    res = permuted_glm(y, np.ones((n, 1)), [1], mask=np.ones(shape, bool), n_perm=256, tfce=True,
                       two_sided=False, rng=0)
    c = res[0]
    assert res.scheme == "sign-flip"
    for v in (4, 9):
        assert c.stat[v] == 0 and c.p[v] == 1 and c.p_fwe[v] == 1 and c.tfce[v] == 0
        assert c.tfce_p[v] == 1 and c.tfce_p_fwe[v] == 1
    # brute force over the 256 sign flips, the constant voxels left out
    keep = np.setdiff1d(np.arange(18), [4, 9])
    flipped = signs[:, :, np.newaxis] * y[np.newaxis][:, :, keep]
    t = flipped.mean(1) / (flipped.std(1, ddof=1) / np.sqrt(n))
    np.testing.assert_allclose(c.stat[keep], t[0], rtol=1e-10)
    np.testing.assert_array_equal(np.rint(c.p[keep] * 256), _count_ge(t, t[0]))
    np.testing.assert_array_equal(np.rint(c.p_fwe[keep] * 256), [_count_ge(t.max(axis=1), o) for o in t[0]])
    assert np.all(c.null_max == pytest.approx(t.max(axis=1), rel=1e-5))


# --------------------------------------------------------------------------- merging chunks


def _chunk(start, stop, n_voxels, seed):
    rng = np.random.default_rng(seed)
    return engine.ChunkResult(start=start, stop=stop, null_max=rng.random(stop - start),
                              counts=rng.integers(0, 5, n_voxels))


def test_accumulator_is_order_independent_and_checks_tiling():
    chunks = [_chunk(a, b, 7, i) for i, (a, b) in enumerate([(0, 3), (3, 4), (4, 10)])]
    forward = engine.merge_chunks(chunks, 10)
    backward = engine.merge_chunks(chunks[::-1], 10)
    np.testing.assert_array_equal(forward.counts, sum(c.counts for c in chunks))
    np.testing.assert_array_equal(forward.null_max, np.concatenate([c.null_max for c in chunks]))
    np.testing.assert_array_equal(backward.counts, forward.counts)
    np.testing.assert_array_equal(backward.null_max, forward.null_max)
    assert forward.tfce_counts is None
    with pytest.raises(ValueError, match=r"overlap at rearrangement 3"):
        engine.merge_chunks(chunks + [_chunk(3, 5, 7, 9)], 10)
    with pytest.raises(ValueError, match=r"chunks cover 9 of 10 rearrangements \(gap at rearrangement 3\)"):
        engine.merge_chunks([chunks[0], chunks[2]], 10)


def _resident_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc (Linux)")
def test_accumulator_memory_follows_the_rearrangements_merged_not_n_perm():
    """-n 2e9 with 12 subjects is 479 million rearrangements: the first chunks must not cost GBs.

    Before: the per-rearrangement maxima were np.full(n_perm, nan), 800 MB resident at once here.
    """
    n_perm = 100_000_000  # 800 MB of float64 maxima, 100 MB of coverage, if written up front
    accumulator = engine.NullAccumulator(n_perm)
    before = _resident_mb()
    for start in (0, 256, n_perm - 256):
        accumulator.add(_chunk(start, start + 256, 1000, start))
    grown = _resident_mb() - before
    assert grown < 50, f"{grown:.0f} MB resident after 3 chunks of 256"
    assert accumulator.n_done == 768
    with pytest.raises(ValueError, match=r"chunks cover 768 of 100000000 rearrangements \(gap at rearrangement 512\)"):
        accumulator.result()


def test_chunks_are_merged_as_they_arrive():
    """No chunk is kept once merged: memory does not grow with the number of chunks."""
    alive = []

    class Runner:
        def map(self, job, schedule, observed, bounds):
            for i, (start, stop) in enumerate(bounds):
                gc.collect()
                # every chunk handed over before is gone
                assert all(ref() is None for ref in alive), f"chunk {i}: earlier chunks still alive"
                chunk = _chunk(start, stop, 1000, i)
                alive.append(weakref.ref(chunk.counts))
                yield chunk
                del chunk

    class Job:
        name = "c"

    class Schedule:
        n_perm = 40

    merged = run_chunks(Runner(), Job(), Schedule(), None, engine.chunk_bounds(40, 4))
    assert merged.counts.shape == (1000,) and merged.null_max.shape == (40,)


def test_float64_products_where_rearrangements_can_tie():
    from voxstats.design import make_design

    class Schedule:
        def __init__(self, n_possible, exhaustive=False):
            self.n_possible, self.exhaustive = n_possible, exhaustive

    groups = make_design(np.repeat(np.eye(3), 3, axis=0))
    covariate = make_design(np.column_stack([np.ones(9), np.arange(9.0)]))
    assert engine.precise_products(groups, Schedule(1680, exhaustive=True))
    assert engine.precise_products(groups, Schedule(10**9))
    assert not engine.precise_products(groups, Schedule(10**12))  # a twin of the data: p < 1e-8 per draw
    assert not engine.precise_products(covariate, Schedule(100, exhaustive=True))  # no two rows alike


@pytest.mark.parametrize("sign_flip", [False, True])
def test_constant_voxels_left_out_of_the_maxima_under_freedman_lane(sign_flip):
    """Design 1 + covariate, one-sided, mostly negative t: a constant voxel's 0 must not be the maximum."""
    from voxstats import make_schedule
    from voxstats._reference import permuted_t_reference
    from voxstats.design import make_contrasts, make_design

    rng = np.random.default_rng(6)
    n = 10
    x = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.standard_normal((n, 12)) - 2.0 * x[:, 1:2]  # strongly negative slope everywhere
    y[:, 5] = 7.0
    res = permuted_glm(y, x, [0, 1], n_perm=40, rng=2, two_sided=False, sign_flip=sign_flip,
                       permute=True)
    c = res[0]
    assert c.stat[5] == 0 and c.p[5] == 1 and c.p_fwe[5] == 1
    design = make_design(x)
    (con,) = make_contrasts([0, 1], design)
    schedule = make_schedule(n, 40, permute=True, sign_flip=sign_flip, design=design, rng=2)
    keep = np.arange(12) != 5
    for i in range(40):
        perm, signs = schedule.rows(i, i + 1)
        t = permuted_t_reference(y, design, con, perm[0], signs[0] if sign_flip else None)
        assert c.null_max[i] == pytest.approx(t[keep].max(), rel=1e-5, abs=1e-6)
    assert (c.null_max < 0).any()  # the case where a 0 would have won


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("tfce_mode", ["exact", "fsl"])
def test_bit_identical_whatever_threads_tasks_and_chunks(smooth_noise, monkeypatch, tfce_mode):
    rng = np.random.default_rng(8)
    shape, n = (9, 8, 7), 14
    x = np.column_stack([np.ones(n), np.repeat([0.0, 1.0], n // 2), rng.standard_normal(n)])
    y = smooth_noise(rng, shape, n, sigma=1.0) * 2 + 0.5 * np.outer(x[:, 1], np.ones(np.prod(shape)))
    options = dict(mask=np.ones(shape, bool), n_perm=40, tfce=True, tfce_mode=tfce_mode, cluster_threshold=1.0,
                   rng=5)

    def fields(res):
        c = res[0]
        return [c.null_max, c.null_max_tfce, c.null_max_extent, c.null_max_mass, c.p, c.tfce_p, c.tfce]

    serial = fields(permuted_glm(y, x, [0, 1, 0], n_jobs=1, **options))
    # tiny tasks, so that every kernel's work is split between the threads
    tfce_module = importlib.import_module("voxstats.tfce")
    monkeypatch.setattr(tfce_module, "_TASK_VOXELS", 1)
    monkeypatch.setattr(engine, "EXCEEDANCE_BLOCK", 37)
    monkeypatch.setattr(engine, "TASK_VOXELS", 1)
    for n_jobs, chunk_size in ((2, None), (2, 7), (3, 13)):
        got = fields(permuted_glm(y, x, [0, 1, 0], n_jobs=n_jobs, chunk_size=chunk_size, **options))
        for a, b in zip(got, serial):
            np.testing.assert_array_equal(a, b)
    assert np.any(serial[2] > 0) and np.all(np.isfinite(serial[1]))
