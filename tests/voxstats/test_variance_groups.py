"""Variance groups in the engine: v and G maps of rearrangements, p-values, options."""

import itertools
import re

import numpy as np
import pytest

import voxstats
from voxstats import make_schedule, permuted_glm
from voxstats.design import make_contrasts, make_design
from voxstats.errors import ParameterError
from voxstats.glm import effect_basis
from voxstats.variance_groups import df_range, make_welch_job, resolve_variance_groups, welch_maps
from voxstats.welch import g_to_z, welch_statistic


def _residualised(y, design, contrast):
    z = effect_basis(design, contrast).nuisance
    return y - z @ (z.T @ y)


@pytest.mark.parametrize("n_groups", [2, 3])
@pytest.mark.parametrize("flips", [False, True])
def test_kernel_maps_equal_the_reference(rng, n_groups, flips):
    n = 20
    groups = np.repeat(np.arange(n_groups), [8, 12] if n_groups == 2 else [5, 7, 8])
    design = make_design(np.column_stack([np.ones(n), np.r_[np.zeros(8), np.ones(12)], rng.standard_normal(n)]))
    contrasts = make_contrasts([[0, 1, 0]], design, f_contrasts={"f2": [[0, 1, 0], [0, 0, 1]], "f1": [[0, 0, 1]]})
    y = rng.standard_normal((n, 200)) * np.where(np.arange(n) < 8, 2.0, 1.0)[:, None]
    perms = np.array([np.arange(n)] + [rng.permutation(n) for _ in range(6)])
    signs = np.ones((7, n), np.int8)
    if flips:
        signs[1:] = rng.choice(np.array([1, -1], np.int8), size=(6, n))
    for contrast in contrasts:
        welch = make_welch_job(design, contrast, groups, sign_flip=flips)
        w = _residualised(y, design, contrast).astype(np.float32)
        w64 = w.astype(np.float64)
        out = np.empty((7, 200), np.float32)
        welch_maps(welch, w, np.einsum("ij,ij->j", w64, w64), perms, signs, None, out)
        for b in range(7):
            stat, df2 = welch_statistic(w64[perms[b]] * signs[b][:, None], design, contrast, groups)
            np.testing.assert_allclose(out[b], g_to_z(stat, contrast.rank, df2, kind=contrast.kind),
                                       rtol=2e-5, atol=2e-5, err_msg=contrast.name)


@pytest.mark.parametrize("sizes", [(3, 4), (4, 4)])
def test_exhaustive_p_equal_enumerated_relabellings(sizes):
    """All n! permutations give each of the C(n, n1) relabellings equally often; ties are exact."""
    rng = np.random.default_rng(sizes[0])
    n = sum(sizes)
    g = np.repeat([0, 1], sizes)
    y = (rng.standard_normal((n, 30)) * np.where(g == 1, 3.0, 1.0)[:, None]).astype(np.float32)
    res = permuted_glm(y, np.column_stack([1 - g, g]), [[1, -1]], variance_groups=g, n_perm=10**6, rng=0)
    assert res.exhaustive and res[0].kind == "v"
    z = []
    for first in itertools.combinations(range(n), sizes[0]):
        label = np.ones(n)
        label[list(first)] = 0
        stat, df2 = welch_statistic(y.astype(np.float64), np.column_stack([1 - label, label]), [[1, -1]], label)
        z.append(np.abs(g_to_z(stat, 1, df2)))
    z = np.array(z)
    stat, df2 = welch_statistic(y.astype(np.float64), np.column_stack([1 - g, g]), [[1, -1]], g)
    observed = np.abs(g_to_z(stat, 1, df2))
    tie = observed * (1 - 1e-9)  # values equal in exact arithmetic count as >=
    np.testing.assert_array_equal(res[0].p, np.mean(z >= tie, axis=0))
    np.testing.assert_array_equal(res[0].p_fwe, np.mean(z.max(axis=1)[:, None] >= tie, axis=0))


def test_permuted_glm_equals_a_slow_loop_over_the_schedule(rng):
    n = 16
    groups = np.repeat([0, 1, 2], [4, 5, 7])
    x = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    y = (rng.standard_normal((n, 25)) * np.array([0.5, 1.0, 3.0])[groups][:, None]).astype(np.float32)
    design = make_design(x)
    res = permuted_glm(y, x, [[0, 1, 0]], f_contrasts=[[[0, 1, 0], [0, 0, 1]]], variance_groups=groups,
                       n_perm=150, rng=3, two_sided=True)
    schedule = make_schedule(n, 150, rng=3)
    for contrast, result in zip(make_contrasts([[0, 1, 0]], design, f_contrasts=[[[0, 1, 0], [0, 0, 1]]]),
                                res.contrasts):
        w = _residualised(y.astype(np.float64), design, contrast)
        maps = []
        for perm in schedule.permutations:
            stat, df2 = welch_statistic(w[perm], design, contrast, groups)
            z = g_to_z(stat, contrast.rank, df2, kind=contrast.kind)
            maps.append(np.abs(z) if contrast.kind == "t" else z)
        maps = np.array(maps)
        counts = np.sum(maps >= maps[0] - 1e-9 * np.abs(maps[0]), axis=0)
        np.testing.assert_array_equal(np.round(result.p * 150), counts)
        np.testing.assert_allclose(result.null_max, maps.max(axis=1), rtol=1e-5)
        stat, df2 = welch_statistic(y, design, contrast, groups)
        np.testing.assert_allclose(result.stat, stat, rtol=1e-12)
        np.testing.assert_allclose(result.df2, df2, rtol=1e-12)
        np.testing.assert_allclose(result.z, g_to_z(stat, contrast.rank, df2, kind=contrast.kind), rtol=1e-9)
        assert result.kind == ("v" if contrast.kind == "t" else "G")


def test_same_null_for_any_threads_and_chunks(rng):
    mask = np.ones((6, 5, 4), bool)
    n = 14
    groups = np.repeat([0, 1], [5, 9])
    y = rng.standard_normal((n, mask.sum())).astype(np.float32)
    x = np.column_stack([np.ones(n), groups])
    options = dict(mask=mask, variance_groups=groups, n_perm=70, tfce=True, rng=11)
    a = permuted_glm(y, x, [[0, 1]], **options)
    b = permuted_glm(y, x, [[0, 1]], n_jobs=2, chunk_size=7, **options)
    for field in ("p", "p_fwe", "null_max", "tfce", "tfce_p", "null_max_tfce"):
        np.testing.assert_array_equal(getattr(a[0], field), getattr(b[0], field), err_msg=field)


def test_tfce_works_on_z(rng):
    mask = np.ones((5, 5, 3), bool)
    n = 12
    groups = np.repeat([0, 1], 6)
    y = rng.standard_normal((n, mask.sum())).astype(np.float32)
    res = permuted_glm(y, np.column_stack([1 - groups, groups]), [[1, -1]], mask=mask, variance_groups=groups,
                       n_perm=10, tfce=True, rng=0)
    expected = voxstats.tfce(res[0].z.reshape(mask.shape), mask=mask).ravel()
    np.testing.assert_allclose(res[0].tfce, expected, rtol=2e-5, atol=1e-6)


def test_auto_groups_from_blocks_and_one_group_means_t(rng):
    n = 12
    blocks = np.repeat([1, 2], 6)
    x = np.column_stack([np.ones(n), rng.standard_normal(n)])
    y = rng.standard_normal((n, 9)).astype(np.float32)
    auto = permuted_glm(y, x, [[0, 1]], exchangeability_blocks=blocks, variance_groups="auto", n_perm=30, rng=1)
    explicit = permuted_glm(y, x, [[0, 1]], exchangeability_blocks=blocks, variance_groups=blocks, n_perm=30,
                            rng=1)
    assert auto[0].kind == "v"
    np.testing.assert_array_equal(auto[0].p, explicit[0].p)
    single = permuted_glm(y, x, [[0, 1]], variance_groups=np.ones(n), n_perm=30, rng=1)
    plain = permuted_glm(y, x, [[0, 1]], n_perm=30, rng=1)
    assert single[0].kind == "t" and single.variance_groups is None
    np.testing.assert_array_equal(single[0].p, plain[0].p)
    assert resolve_variance_groups("auto", n) is None


def test_df_range_bounds_the_kernel_df(rng):
    d_r = np.array([3.0, 10.0, 40.0])
    for q in (1, 2):
        lo, hi = df_range(d_r, q)
        f = rng.dirichlet(np.ones(3), size=5000)
        nu = q * (q + 2) / (3 * np.sum((1 - f) ** 2 / d_r, axis=1))
        assert lo <= nu.min() and nu.max() <= hi


def test_bad_variance_groups(rng):
    y = rng.standard_normal((8, 4)).astype(np.float32)
    x = np.column_stack([np.ones(8), np.arange(8.0)])
    with pytest.raises(ValueError, match="variance_groups: expected None, 'auto' or one label per subject"):
        permuted_glm(y, x, [[0, 1]], variance_groups="groups", n_perm=5)
    with pytest.raises(ValueError, match="one label per subject"):
        permuted_glm(y, x, [[0, 1]], variance_groups=[1, 2, 1], n_perm=5)
    g = np.r_[0, 0, np.ones(6, int)]  # group 0: two subjects, each with a mean of its own
    x = np.column_stack([np.eye(8)[:, 0], np.eye(8)[:, 1], g])
    with pytest.raises(ValueError, match=r"groups \[0\] have no residual degrees of freedom"):
        permuted_glm(y, x, [[0, 0, 1]], variance_groups=g, n_perm=5)


def _palm_tree(n_subjects):
    """PALM -eb rows ``-1, -family, subject``: families of two, shuffled as a whole; 'auto' gives one
    variance group per subject (palm_ptree2vg)."""
    return np.column_stack([-np.ones(n_subjects, int), -(np.arange(n_subjects) // 2 + 1),
                            np.arange(1, n_subjects + 1)])


@pytest.mark.parametrize("labels, sizes_one", [
    (np.arange(1, 13), "1 (subject 1), 2 (subject 2)"),  # 12 groups of one
    (np.r_[np.ones(6, int), 2 * np.ones(5, int), 3], "3 (subject 12)"),  # one lone subject
    (["a", "b", "a", "c", "b", "b", "a", "a", "b", "c", "d", "c"], "d (subject 11)"),
    ("auto", "... (12 groups) (derived from the exchangeability blocks by 'auto')"),
])
def test_groups_of_one_subject_are_refused_by_every_entry_point(rng, labels, sizes_one):
    n = 12
    x = np.column_stack([np.repeat([1.0, 0.0], 6), np.repeat([0.0, 1.0], 6), rng.standard_normal(n)])
    y = rng.standard_normal((n, 5)).astype(np.float32)
    tree = _palm_tree(n)
    if isinstance(labels, str):
        from voxstats.welch import auto_variance_groups
        sizes = np.bincount(auto_variance_groups(tree))
    else:
        sizes = np.unique(np.asarray(labels), return_counts=True)[1]
    assert sizes.min() == 1  # hand check: at least one group has one subject
    pattern = (r"^variance_groups: variance groups of one subject: .*" + re.escape(sizes_one)
               + r".*at least 2 subjects per group")
    with pytest.raises(ParameterError, match=pattern):
        resolve_variance_groups(labels, n, exchangeability_blocks=tree)
    with pytest.raises(ParameterError, match=pattern):
        permuted_glm(y, x, [[1, -1, 0]], variance_groups=labels, exchangeability_tree=tree, n_perm=5)
    if not isinstance(labels, str):
        design = make_design(x)
        (contrast,) = make_contrasts([[1, -1, 0]], design)
        with pytest.raises(ParameterError, match=pattern):
            make_welch_job(design, contrast, labels)
        with pytest.raises(ParameterError, match=pattern):
            welch_statistic(y, x, [[1, -1, 0]], labels)


def test_groups_of_two_are_accepted_and_give_welch_t(rng):
    from scipy import stats

    n = 12
    labels = np.repeat([1, 2, 3, 4, 5, 6], 2)  # six groups of two: the smallest allowed
    assert resolve_variance_groups(labels, n).sizes.tolist() == [2] * 6
    g = np.repeat([0, 1], [2, 10])  # two groups, one of two subjects: Welch's t test (SciPy)
    y = rng.standard_normal((n, 4))
    v, _ = welch_statistic(y, np.column_stack([1 - g, g]), [[1, -1]], g)
    np.testing.assert_allclose(v, stats.ttest_ind(y[g == 0], y[g == 1], equal_var=False).statistic, rtol=1e-10)


def test_products_are_float64_only_where_rearrangements_can_tie(rng):
    n = 10
    groups = np.repeat([0, 1], 5)
    cell_means = make_design(np.column_stack([1 - groups, groups]))
    continuous = make_design(np.column_stack([np.ones(n), groups, rng.standard_normal(n)]))
    (tie,) = make_contrasts([[1, -1]], cell_means)
    (free,) = make_contrasts([[0, 1, 0]], continuous)
    assert make_welch_job(cell_means, tie, groups).dtype == np.float64  # equal rows in one group
    assert make_welch_job(continuous, free, groups).dtype == np.float32  # every row distinct
    assert make_welch_job(continuous, free, groups, sign_flip=True).dtype == np.float64  # flipping all signs


def test_g_ties_between_equal_groups_are_exact():
    """G over three groups of two is invariant to relabelling the groups: counts come in sixes.

    (PALM counts some of these exact ties and misses others; see test_palm_values.)
    """
    rng = np.random.default_rng(8)
    g = np.repeat([0, 1, 2], 2)
    x = (g[:, None] == np.arange(3)).astype(float)
    y = rng.standard_normal((6, 20)) * np.array([0.5, 1.0, 2.0])[g][:, None]
    contrast = [[1, -1, 0], [0, 1, -1]]
    res = permuted_glm(y, x, None, f_contrasts=[contrast], variance_groups=g, n_perm=10**6, rng=0)
    assert res.exhaustive and res.n_perm == 90 and res[0].kind == "G"  # distinct relabellings
    z = []
    for order in set(itertools.permutations(g.tolist())):  # the 90 distinct relabellings
        label = np.array(order)
        stat, df2 = welch_statistic(y, (label[:, None] == np.arange(3)).astype(float), contrast, label)
        z.append(g_to_z(stat, 2, df2))
    z = np.array(z)
    stat, df2 = welch_statistic(y, x, contrast, g)
    observed = g_to_z(stat, 2, df2)
    counts = np.sum(z >= observed - 1e-9 * np.abs(observed), axis=0)
    np.testing.assert_array_equal(res[0].p * 90, counts)
    assert np.all(counts % 6 == 0)


def test_exhaustive_enumeration_tells_variance_groups_apart():
    """Equal design rows in different variance groups are not interchangeable: more rearrangements."""
    g = np.repeat([0, 1], 3)
    x = np.column_stack([np.ones(6), [0.0, 1, 2, 0, 1, 2]])  # each row twice, once in each group
    y = np.random.default_rng(1).standard_normal((6, 3))
    assert permuted_glm(y, x, [[0, 1]], n_perm=10**6, rng=0).n_perm == 90  # 6! / 2!^3
    assert permuted_glm(y, x, [[0, 1]], variance_groups=g, n_perm=10**6, rng=0).n_perm == 720
