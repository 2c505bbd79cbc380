"""Permutation schedules, and exact p-values from exhaustive enumeration vs brute force."""

import itertools
import logging
import math
import pickle

import numpy as np
import pytest
from scipy import stats

from voxstats import make_schedule, permuted_glm
from voxstats.design import make_contrasts, make_design
from voxstats.glm import contrast_statistic


def _rows(schedule):
    return {(p.tobytes(), s.tobytes()) for p, s in zip(schedule.permutations, schedule.signs)}


def test_identity_first_and_rows_distinct():
    schedule = make_schedule(10, 200, rng=0)
    np.testing.assert_array_equal(schedule.permutations[0], np.arange(10))
    np.testing.assert_array_equal(schedule.signs, 1)
    assert schedule.n_perm == 200 and len(_rows(schedule)) == 200
    assert not schedule.exhaustive and schedule.n_possible == math.factorial(10)
    for p in schedule.permutations:
        assert sorted(p) == list(range(10))
    assert schedule.permutations.dtype == np.int64 and schedule.signs.dtype == np.int8


def test_same_seed_same_schedule_and_generator_accepted():
    a = make_schedule(9, 100, sign_flip=True, permute=True, rng=5)
    b = make_schedule(9, 100, sign_flip=True, permute=True, rng=np.random.default_rng(5))
    c = make_schedule(9, 100, sign_flip=True, permute=True, rng=6)
    np.testing.assert_array_equal(a.permutations, b.permutations)
    np.testing.assert_array_equal(a.signs, b.signs)
    assert not np.array_equal(a.permutations, c.permutations)
    np.testing.assert_array_equal(a.signs[0], 1)
    assert np.any(a.signs[1:] < 0) and len(_rows(a)) == 100


@pytest.mark.parametrize("n,kwargs,count", [
    (5, dict(), 120),
    (6, dict(permute=False, sign_flip=True), 64),
    (4, dict(sign_flip=True), 24 * 16),
    (6, dict(exchangeability_blocks=[0, 0, 1, 1, 1, 2]), 2 * 6 * 1),
    (6, dict(exchangeability_blocks=[0, 0, 1, 1, 2, 2], whole_blocks=True), 6),
    (6, dict(exchangeability_blocks=[0, 0, 1, 1, 2, 2], whole_blocks=True, permute=False, sign_flip=True), 8),
])
def test_exhaustive_enumeration(n, kwargs, count):
    schedule = make_schedule(n, 10_000, rng=0, **kwargs)
    assert schedule.exhaustive and schedule.n_possible == count and schedule.n_perm == count
    assert len(_rows(schedule)) == count
    np.testing.assert_array_equal(schedule.permutations[0], np.arange(n))
    np.testing.assert_array_equal(schedule.signs[0], 1)
    # asking for exactly n_possible is exhaustive, one fewer is not
    assert make_schedule(n, count, rng=0, **kwargs).exhaustive
    if count > 2:
        fewer = make_schedule(n, count - 1, rng=0, **kwargs)
        assert not fewer.exhaustive and len(_rows(fewer)) == count - 1


def test_within_block_rearrangements_never_cross_blocks():
    blocks = np.array([3, 1, 3, 2, 1, 2, 3, 1, 2, 3])
    schedule = make_schedule(10, 150, exchangeability_blocks=blocks, sign_flip=True, rng=1)
    assert len(_rows(schedule)) == 150
    for p in schedule.permutations:
        np.testing.assert_array_equal(blocks[p], blocks)
    assert any(not np.array_equal(p, np.arange(10)) for p in schedule.permutations)


def test_whole_block_moves_keep_order_within_blocks():
    blocks = np.repeat([0, 1, 2, 3, 4], 3)
    schedule = make_schedule(15, 60, exchangeability_blocks=blocks, whole_blocks=True, sign_flip=True,
                             rng=2)
    assert schedule.n_possible == math.factorial(5) * 2 ** 5
    for p, s in zip(schedule.permutations, schedule.signs):
        chunks = p.reshape(5, 3)
        # each destination block receives one whole source block, in its order
        np.testing.assert_array_equal(np.diff(chunks, axis=1), 1)
        assert np.all(chunks[:, 0] % 3 == 0)
        # signs are shared by a block
        assert np.all(s.reshape(5, 3) == s.reshape(5, 3)[:, :1])


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_perm=-1), r"Invalid value for the 'n_perm' parameter: expected an integer >= 0 \(0 for all "
                      r"distinct rearrangements\), got -1"),
    (dict(n_perm=10.5), r"'n_perm' parameter: expected an integer >= 0 \(0 for all distinct rearrangements\), "
                        r"got 10\.5"),
    (dict(n_perm=0, exchangeability_blocks=None, permute=True, sign_flip=True, n_subjects=40),
     r"0 asks for all .* distinct rearrangements, too many to enumerate"),
    (dict(permute=False), r"at least one of 'permute' and 'sign_flip' must be True"),
    (dict(exchangeability_blocks=[0, 1, 0]), r"exchangeability_blocks: expected one block label per subject "
                                             r"\(6\), got shape \(3,\)"),
    (dict(exchangeability_blocks=[0, 0, 0, 1, 1, 2], whole_blocks=True),
     r"whole-block permutation needs blocks of equal size, got sizes \[1, 2, 3\]"),
    (dict(whole_blocks=True), r"whole_blocks=True needs exchangeability_blocks"),
])
def test_bad_schedule_options(kwargs, match):
    kwargs = {"n_perm": 10, "n_subjects": 6, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_schedule(**kwargs)


def test_single_rearrangement_is_the_identity():
    schedule = make_schedule(7, 1, rng=0)
    assert schedule.n_perm == 1
    np.testing.assert_array_equal(schedule.permutations[0], np.arange(7))


# --- exact permutation p-values ------------------------------------------------------------


def _brute_force_p(stats_per_row, n_rows):
    """Uncorrected and FWE p from float64 statistics of every rearrangement (row 0 = identity).

    Statistics within 1e-6 (relative) of the observed count as ties, so that
    mathematically equal rearrangements count whatever their rounding.
    """
    absolute = np.abs(stats_per_row)
    obs = absolute[0]
    tol = 1e-6 * np.maximum(obs, 1e-12)
    p = (absolute >= obs - tol).sum(axis=0) / n_rows
    maxima = absolute.max(axis=1)
    p_fwe = np.array([(maxima >= o - t).sum() for o, t in zip(obs, tol)]) / n_rows
    return p, p_fwe


def _freedman_lane_stats(y, design, contrast, rows):
    """Statistics of P R_z Y + H_z Y by an explicit OLS refit, computed here from scratch."""
    x = design.matrix
    tested = np.flatnonzero(contrast.weights[0])
    z = np.delete(x, tested, axis=1)
    fitted = z @ np.linalg.lstsq(z, y, rcond=None)[0]
    resid = y - fitted
    return np.array([contrast_statistic(resid[perm] * signs[:, None] + fitted, design, contrast)[0]
                     for perm, signs in rows])


def test_exhaustive_permutation_p_is_exact_with_nuisance():
    rng = np.random.default_rng(12)
    n = 7
    x = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    y = rng.standard_normal((n, 6))
    y[:, 0] += 2.5 * x[:, 1]  # one voxel with an effect: its p is small
    res = permuted_glm(y, x, [0, 1, 0], n_perm=10_000, rng=0)
    assert res.exhaustive and res.n_perm == math.factorial(n) == res.n_possible
    assert res.scheme == "freedman-lane"
    design = make_design(x)
    (con,) = make_contrasts([0, 1, 0], design)
    rows = [(np.array(p), np.ones(n)) for p in itertools.permutations(range(n))]
    p, p_fwe = _brute_force_p(_freedman_lane_stats(y, design, con, rows), len(rows))
    np.testing.assert_array_equal(res[0].p, p)
    np.testing.assert_array_equal(res[0].p_fwe, p_fwe)
    assert res[0].p[0] < 0.05


def test_exhaustive_permutation_p_is_exact_simple_regression():
    # nuisance = the constant only: Freedman-Lane is plain permutation of the data
    rng = np.random.default_rng(3)
    n = 7
    x = np.column_stack([np.ones(n), rng.standard_normal(n)])
    y = rng.standard_normal((n, 5))
    y[:, 0] += 2.0 * x[:, 1]
    res = permuted_glm(y, x, [0, 1], n_perm=10_000, rng=0)
    assert res.exhaustive and res.n_perm == 5040
    design = make_design(x)
    (con,) = make_contrasts([0, 1], design)
    stats = np.array([contrast_statistic(y[list(p)], design, con)[0] for p in itertools.permutations(range(n))])
    p, p_fwe = _brute_force_p(stats, len(stats))
    np.testing.assert_array_equal(res[0].p, p)
    np.testing.assert_array_equal(res[0].p_fwe, p_fwe)


@pytest.mark.parametrize("two_sided", [True, False])
def test_exhaustive_sign_flip_p_is_exact(two_sided):
    rng = np.random.default_rng(4)
    n = 8
    y = rng.standard_normal((n, 7)) + np.linspace(-0.5, 1.5, 7)
    res = permuted_glm(y, np.ones((n, 1)), [1], n_perm=5000, two_sided=two_sided, rng=0)
    assert res.scheme == "sign-flip" and res.exhaustive and res.n_perm == 2 ** n
    design = make_design(np.ones((n, 1)))
    (con,) = make_contrasts([1], design)
    flips = [np.array(s, dtype=float) for s in itertools.product((1, -1), repeat=n)]
    stats = np.array([contrast_statistic(y * s[:, None], design, con)[0] for s in flips])
    if two_sided:
        p, p_fwe = _brute_force_p(stats, len(flips))
    else:  # one-sided positive: compare signed values
        obs = stats[0]
        tol = 1e-6 * np.abs(obs)
        p = (stats >= obs - tol).sum(axis=0) / len(flips)
        maxima = stats.max(axis=1)
        p_fwe = np.array([(maxima >= o - t).sum() for o, t in zip(obs, tol)]) / len(flips)
    np.testing.assert_array_equal(res[0].p, p)
    np.testing.assert_array_equal(res[0].p_fwe, p_fwe)
    # the largest effect reaches the smallest p the test can give
    assert res[0].p.min() == pytest.approx(2 / 2 ** n if two_sided else 1 / 2 ** n)


def test_exhaustive_within_blocks_p_is_exact():
    rng = np.random.default_rng(6)
    n = 8
    blocks = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    x = np.column_stack([np.ones(n), rng.standard_normal(n), blocks.astype(float)])
    y = rng.standard_normal((n, 4))
    res = permuted_glm(y, x, [0, 1, 0], n_perm=1000, exchangeability_blocks=blocks, rng=0)
    assert res.exhaustive and res.n_perm == 24 * 24
    design = make_design(x)
    (con,) = make_contrasts([0, 1, 0], design)
    rows = []
    for a in itertools.permutations(range(4)):
        for b in itertools.permutations(range(4, 8)):
            rows.append((np.array(a + b), np.ones(n)))
    p, p_fwe = _brute_force_p(_freedman_lane_stats(y, design, con, rows), len(rows))
    np.testing.assert_array_equal(res[0].p, p)
    np.testing.assert_array_equal(res[0].p_fwe, p_fwe)


def test_exhaustive_whole_blocks_with_sign_flips_p_is_exact():
    rng = np.random.default_rng(0)
    n = 8
    blocks = np.repeat([0, 1, 2, 3], 2)
    x = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    y = rng.standard_normal((n, 5))
    res = permuted_glm(y, x, [0, 1, 0], n_perm=10_000, exchangeability_blocks=blocks, whole_blocks=True,
                       sign_flip=True, permute=True, rng=0)
    assert res.exhaustive and res.n_perm == math.factorial(4) * 2 ** 4
    assert res.scheme == "freedman-lane+sign-flip"
    design = make_design(x)
    (con,) = make_contrasts([0, 1, 0], design)
    rows = []
    for order in itertools.permutations(range(4)):
        perm = np.concatenate([np.arange(2 * o, 2 * o + 2) for o in order])
        for bits in itertools.product((1, -1), repeat=4):
            rows.append((perm, np.repeat(bits, 2).astype(float)))
    p, p_fwe = _brute_force_p(_freedman_lane_stats(y, design, con, rows), len(rows))
    np.testing.assert_array_equal(res[0].p, p)
    np.testing.assert_array_equal(res[0].p_fwe, p_fwe)


# --- distinct rearrangements of the design's rows (PALM's rule) -----------------------------


def _inverse(p):
    q = np.empty_like(p)
    q[p] = np.arange(p.size)
    return q


def _distinct_by_brute_force(design, blocks=None, whole=False):
    """Distinct design arrangements X[p^-1] over every permutation the blocks allow (n! candidates)."""
    n = design.shape[0]
    seen = set()
    for p in itertools.permutations(range(n)):
        p = np.array(p)
        if blocks is not None and not whole and np.any(blocks[p] != blocks):
            continue
        if blocks is not None and whole:
            size = np.sum(blocks == blocks[0])
            chunks = p.reshape(-1, size)  # whole blocks of consecutive subjects, order kept
            if np.any(np.diff(chunks, axis=1) != 1) or np.any(chunks[:, 0] % size):
                continue
        seen.add(design[_inverse(p)].tobytes())
    return seen


@pytest.mark.parametrize("design, blocks, whole, count", [
    (np.repeat([[1, 0], [0, 1]], 4, axis=0), None, False, math.comb(8, 4)),  # 4+4 groups: 70
    (np.repeat(np.eye(3), 3, axis=0), None, False, 1680),  # three groups of 3: 9! / (3! 3! 3!)
    (np.tile(np.repeat([[1, 0], [0, 1]], 2, axis=0), (3, 1)), np.repeat([1, 2, 3], 4), False, 6 ** 3),
    # whole blocks of 2: blocks 1 and 3 hold the same rows, so 3!/2! distinct block orders
    (np.array([[0], [1], [1], [1], [0], [1]]), np.repeat([1, 2, 3], 2), True, 3),
])
def test_distinct_rearrangements_counted_and_enumerated(design, blocks, whole, count):
    n = design.shape[0]
    schedule = make_schedule(n, 0, design=design, exchangeability_blocks=blocks, whole_blocks=whole, rng=0)
    assert schedule.exhaustive and schedule.n_perm == schedule.n_possible == count
    perms, _ = schedule.rows(0, count)
    seen = [design[_inverse(p)].tobytes() for p in perms]
    assert len(set(seen)) == count
    if n <= 9:
        assert set(seen) == _distinct_by_brute_force(design, blocks, whole)
    # any n_perm at or above the count enumerates them; below, random distinct ones
    assert make_schedule(n, count + 5, design=design, exchangeability_blocks=blocks, whole_blocks=whole).exhaustive
    fewer = make_schedule(n, count - 1, design=design, exchangeability_blocks=blocks, whole_blocks=whole, rng=1)
    perms, _ = fewer.rows(0, count - 1)
    assert not fewer.exhaustive and len({design[_inverse(p)].tobytes() for p in perms}) == count - 1


def test_sign_flip_counts_ignore_design_rows():
    # one-sample: 2^n; with whole blocks, one sign per block; permuting a constant design adds nothing
    assert make_schedule(7, 0, permute=False, sign_flip=True, design=np.ones((7, 1))).n_possible == 2 ** 7
    assert make_schedule(6, 0, permute=False, sign_flip=True, exchangeability_blocks=np.repeat([1, 2, 3], 2),
                         whole_blocks=True).n_possible == 8
    both = make_schedule(6, 0, permute=True, sign_flip=True, design=np.ones((6, 1)), rng=0)
    perms, signs = both.rows(0, both.n_perm)
    assert both.n_possible == 64 and len({s.tobytes() for s in signs}) == 64


@pytest.mark.parametrize("kwargs", [
    dict(n_subjects=9, n_perm=0, design=np.repeat(np.eye(3), 3, axis=0)),  # enumerate
    dict(n_subjects=9, n_perm=500, design=np.repeat(np.eye(3), 3, axis=0), sign_flip=True),  # shuffle
    dict(n_subjects=30, n_perm=300, sign_flip=True),  # sample (30! 2^30 > 2^62)
    dict(n_subjects=24, n_perm=200, exchangeability_blocks=np.repeat(np.arange(6), 4), sign_flip=True,
         permute=True, design=np.tile([[0], [1], [1], [0]], (6, 1))),
])
def test_rows_depend_only_on_seed_and_index(kwargs):
    schedule = make_schedule(rng=11, **kwargs)
    perms, signs = schedule.rows(0, schedule.n_perm)
    np.testing.assert_array_equal(perms[0], np.arange(schedule.n_subjects))
    assert np.all(np.sort(perms, axis=1) == np.arange(schedule.n_subjects))
    for start, stop in [(0, 1), (1, 64), (63, 65), (100, 131), (schedule.n_perm - 7, schedule.n_perm)]:
        p, s = schedule.rows(start, stop)
        np.testing.assert_array_equal(p, perms[start:stop])
        np.testing.assert_array_equal(s, signs[start:stop])
    again = make_schedule(rng=np.random.default_rng(11), **kwargs)
    np.testing.assert_array_equal(again.rows(0, again.n_perm)[0], perms)
    assert schedule.definition() == again.definition()
    assert make_schedule(rng=12, **kwargs).definition() != schedule.definition()


def test_huge_schedule_is_built_without_memory():
    # randomise -n 2000000000 with 12 subjects: 12! < 2e9, so all 479001600 are enumerated on demand
    schedule = make_schedule(12, 2_000_000_000, rng=0)
    assert schedule.exhaustive and schedule.n_perm == math.factorial(12)
    assert len(pickle.dumps(schedule)) < 20_000
    with pytest.raises(ValueError, match=r"too many to materialise; read ranges with rows\(start, stop\)"):
        schedule.permutations
    perms, _ = schedule.rows(schedule.n_perm - 3, schedule.n_perm)
    assert np.all(np.sort(perms, axis=1) == np.arange(12))
    assert len({p.tobytes() for p in perms}) == 3
    big = make_schedule(13, 2_000_000_000, rng=0)  # 13! > 2e9: random, distinct draws
    assert big.method == "shuffle" and len(pickle.dumps(big)) < 20_000
    perms, _ = big.rows(1_999_999_000, 2_000_000_000)
    assert len({p.tobytes() for p in perms}) == 1000


@pytest.mark.parametrize("domain", [2, 3, 7, 64, 1000, 4097])
def test_feistel_is_a_bijection(domain):
    from voxstats.permutation import _feistel

    keys = np.arange(1, 9, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    out = _feistel(np.arange(domain, dtype=np.uint64), domain, keys)
    np.testing.assert_array_equal(np.sort(out), np.arange(domain))
    assert domain < 8 or np.mean(out != np.arange(domain)) > 0.5


def test_exhaustive_p_counts_distinct_rearrangements_exactly():
    """3+3 groups: p over the 20 distinct relabellings equals p over all 6! permutations."""
    rng = np.random.default_rng(2)
    group = np.array([0, 1, 1, 0, 1, 0], dtype=float)
    x = np.column_stack([np.ones(6), group])
    y = rng.standard_normal((6, 6))
    y[:, 0] += 3 * group
    res = permuted_glm(y, x, [0, 1], n_perm=0, rng=0)
    assert res.exhaustive and res.n_perm == res.n_possible == 20
    assert res.enumeration == "distinct rearrangements of the design's rows (PALM's rule)"
    design = make_design(x)
    (con,) = make_contrasts([0, 1], design)
    stats = np.array([contrast_statistic(y[list(p)], design, con)[0] for p in itertools.permutations(range(6))])
    p, p_fwe = _brute_force_p(stats, len(stats))
    np.testing.assert_allclose(res[0].p, p, rtol=1e-12)
    np.testing.assert_allclose(res[0].p_fwe, p_fwe, rtol=1e-12)
    assert res[0].p[0] == pytest.approx(2 / 20)  # two-sided: the observed split and its mirror


def test_random_distinct_draws_are_uniform_over_distinct_arrangements():
    """4+4 groups, 10 random draws besides the identity: over 700 seeds every one of the 69 other
    relabellings appears about 700 * 10 / 69 times (chi-square), and never twice in one schedule."""
    design = np.repeat([[0.0], [1.0]], 4, axis=0)
    index = {}
    counts = np.zeros(69, dtype=int)
    identity = design[:, 0].tobytes()
    for seed in range(700):
        schedule = make_schedule(8, 11, design=design, rng=seed)
        assert schedule.method == "shuffle"
        perms, _ = schedule.rows(1, 11)
        seen = [design[_inverse(p), 0].tobytes() for p in perms]
        assert len(set(seen)) == 10 and identity not in seen
        for key in seen:
            counts[index.setdefault(key, len(index))] += 1
    assert len(index) == 69
    assert stats.chisquare(counts).pvalue > 1e-3


def test_definition_follows_what_the_rows_depend_on():
    """The checkpoint fingerprint of a schedule: same partition of design rows, same rows."""
    design = np.repeat([[0.0], [1.0]], 4, axis=0)
    base = make_schedule(8, 20, design=design, rng=4)
    relabelled = make_schedule(8, 20, design=design * 7 + 3, rng=4)  # equal rows stay equal
    assert relabelled.definition() == base.definition()
    np.testing.assert_array_equal(relabelled.rows(0, 20)[0], base.rows(0, 20)[0])
    others = [make_schedule(8, 20, design=np.arange(8.0)[:, None], rng=4),
              make_schedule(8, 21, design=design, rng=4),
              make_schedule(8, 20, design=design, exchangeability_blocks=np.repeat([1, 2], 4), rng=4),
              make_schedule(8, 20, design=design, sign_flip=True, rng=4)]
    assert all(o.definition() != base.definition() for o in others)


def _two_groups(n_a, n_b):
    g = np.r_[np.ones(n_a), np.zeros(n_b)]
    return np.column_stack([g, 1 - g])


@pytest.mark.parametrize("n_a, n_b, blocks, expected", [
    (4, 4, [[-1, -(i // 2 + 1), i + 1] for i in range(8)], 1),  # PALM tree: families of 2 as wholes, 1 order
    (2, 2, None, math.comb(4, 2)),  # 6
    (3, 2, None, math.comb(5, 2)),  # 10
    (3, 3, None, math.comb(6, 3)),  # 20: 1/20 = 0.05 can be reached, no warning
    (4, 4, None, math.comb(8, 4)),  # 70
])
def test_warning_when_no_p_value_can_reach_005(caplog, n_a, n_b, blocks, expected):
    design = _two_groups(n_a, n_b)
    with caplog.at_level(logging.WARNING, logger="voxstats.permutation"):
        schedule = make_schedule(n_a + n_b, 0, design=design, exchangeability_blocks=blocks, rng=0)
    assert schedule.n_possible == expected
    warned = [r for r in caplog.records if "no p-value can reach 0.05" in r.getMessage()]
    if expected < 20:
        (record,) = warned
        assert record.levelno == logging.WARNING
        assert f"the smallest attainable p-value is 1/{expected} = {1 / expected:.3g}" in record.getMessage()
    else:
        assert not warned


@pytest.mark.parametrize("n_subjects, n_perm, warned", [
    (12, 0, True),  # 12! = 479,001,600 orderings (every row distinct)
    (10, 0, True),  # 10! = 3,628,800
    (9, 0, False),  # 9! = 362,880 <= 1,000,000
    (12, 5000, False),  # a random subset
])
def test_warning_when_exhaustive_enumeration_is_huge(caplog, n_subjects, n_perm, warned):
    rng = np.random.default_rng(0)
    g = np.arange(n_subjects) < n_subjects // 2
    design = np.column_stack([g, ~g, rng.normal(40, 10, n_subjects)])  # two groups and a continuous age
    with caplog.at_level(logging.WARNING, logger="voxstats.permutation"):
        schedule = make_schedule(n_subjects, n_perm, design=design, rng=0)
    assert schedule.n_possible == math.factorial(n_subjects)
    messages = [r.getMessage() for r in caplog.records if "exhaustive enumeration" in r.getMessage()]
    if warned:
        (message,) = messages
        assert f"all {math.factorial(n_subjects)} distinct rearrangements" in message
        assert "continuous covariate" in message and "random subset" in message
    else:
        assert not messages
