"""p-values: counting, FWE, FDR vs statsmodels, tail approximation, cluster null maxima vs labelling."""

import logging

import numpy as np
import pytest
from scipy import ndimage, stats
from statsmodels.stats.multitest import multipletests

from voxstats import engine, make_schedule, permuted_glm
from voxstats._reference import cluster_sizes_reference
from voxstats.design import make_contrasts, make_design
from voxstats.graph import grid_graph
from voxstats.inference import cluster_labels, fdr_bh, fwe_pvalues, pvalues_from_counts, tail_fwe_pvalues
from voxstats.randomise import make_job


def test_fwe_pvalues_brute_force(rng):
    null_max = rng.gamma(2.0, size=200)
    null_max[5] = null_max[9]  # a tie
    observed = np.concatenate([rng.gamma(2.0, size=50), null_max[[5, 0]], [null_max.max()]])
    got = fwe_pvalues(observed, null_max)
    want = np.array([(null_max >= o).mean() for o in observed])
    np.testing.assert_array_equal(got, want)
    assert got[-1] == 1 / 200  # the observed maximum is in the null: smallest p is 1/N
    assert fwe_pvalues(np.array([0.0]), null_max)[0] == 1.0


def test_pvalues_from_counts():
    np.testing.assert_array_equal(pvalues_from_counts([1, 50, 100], 100), [0.01, 0.5, 1.0])


@pytest.mark.parametrize("seed", range(3))
def test_fdr_matches_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(size=300), rng.uniform(0, 0.002, size=30), [0.01, 0.01, 1.0]])
    rng.shuffle(p)
    np.testing.assert_allclose(fdr_bh(p), multipletests(p, method="fdr_bh")[1], rtol=1e-12)
    assert fdr_bh(np.array([])).size == 0


def test_tail_approximation_follows_a_known_tail():
    # exponential null maxima: the GPD fit has shape ~0, p(x) ~ exp(-x)
    rng = np.random.default_rng(1)
    null_max = rng.exponential(size=5000)
    observed = np.array([0.5, 6.0, 9.0, 12.0])
    approx = tail_fwe_pvalues(observed, null_max)
    exact = fwe_pvalues(observed, null_max)
    assert approx[0] == exact[0]  # below the tail threshold: the permutation p
    # within a factor 2 of the true tail, even beyond the largest null value
    assert np.all(np.abs(np.log(approx[1:]) + observed[1:]) < np.log(2))
    # beyond the null's range the permutation p is 0 (or 1/N); the tail keeps decreasing
    assert np.all(np.diff(approx) < 0) and np.all(approx > 0)
    assert approx[-1] < 1 / null_max.size


def test_tail_approximation_with_too_few_points_falls_back(caplog):
    null_max = np.repeat([1.0, 2.0], 20)
    with caplog.at_level(logging.WARNING, logger="voxstats.inference"):
        got = tail_fwe_pvalues(np.array([1.5, 2.0]), null_max)
    np.testing.assert_array_equal(got, fwe_pvalues(np.array([1.5, 2.0]), null_max))
    assert "Too few distinct null maxima" in caplog.text


@pytest.mark.parametrize("connectivity", [6, 26])
def test_cluster_labels_match_ndimage(rng, connectivity):
    shape = (8, 7, 5)
    values = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) * 4
    mask = np.ones(shape, bool)
    labels, extent, mass = cluster_labels(values.ravel(), 0.5, grid_graph(mask, connectivity))
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    ref_sizes, ref_mass = [], []
    for sign in (1, -1):
        lab, n = ndimage.label(sign * values > 0.5, structure=structure)
        ref_sizes += ndimage.sum_labels(np.ones(shape), lab, range(1, n + 1)).tolist()
        ref_mass += ndimage.sum_labels(np.abs(values), lab, range(1, n + 1)).tolist()
    assert sorted(extent[1:].tolist()) == sorted(ref_sizes)
    np.testing.assert_allclose(np.sort(mass[1:]), np.sort(ref_mass), rtol=1e-12)
    assert np.all((labels > 0) == (np.abs(values.ravel()) > 0.5))
    # one-sided: only positive clusters
    labels1, _, _ = cluster_labels(values.ravel(), 0.5, grid_graph(mask, connectivity), two_sided=False)
    assert np.all((labels1 > 0) == (values.ravel() > 0.5))


def _cluster_problem(smooth_noise):
    rng = np.random.default_rng(21)
    shape = (7, 6, 5)
    n = 12
    y = smooth_noise(rng, shape, n, sigma=1.0) * 3
    x = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    y += 0.4 * np.outer(x[:, 1], (np.arange(y.shape[1]) % 7 < 3))
    return y, x, shape


@pytest.mark.parametrize("two_sided,connectivity", [(True, None), (False, None), (True, 6)])
def test_cluster_null_maxima_match_labelling(smooth_noise, two_sided, connectivity):
    y, x, shape = _cluster_problem(smooth_noise)
    mask = np.ones(shape, bool)
    res = permuted_glm(y, x, [0, 1, 0], mask=mask, n_perm=40, cluster_threshold=1.5,
                       two_sided=two_sided, rng=3, cluster_connectivity=connectivity)
    connectivity = 26 if connectivity is None else connectivity  # randomise's default
    assert res.settings["cluster_connectivity"] == connectivity
    c = res[0]
    # the engine's own permuted maps (same schedule), labelled by scipy.ndimage
    design = make_design(x)
    (con,) = make_contrasts([0, 1, 0], design)
    schedule = make_schedule(y.shape[0], 40, rng=3)
    maps = engine.statistics(make_job(y, design, con, None), schedule, 0, 40)
    for i in range(40):
        extent, mass = cluster_sizes_reference(maps[i].reshape(shape), 1.5, connectivity, two_sided=two_sided)
        assert c.null_max_extent[i] == extent
        assert c.null_max_mass[i] == pytest.approx(mass, rel=1e-5)
    # observed clusters: p = share of null maxima >= the cluster's extent / mass
    labels, extent, mass = cluster_labels(maps[0], 1.5, grid_graph(mask, connectivity), two_sided=two_sided)
    assert extent.size > 1
    for lab in range(1, extent.size):
        inside = labels == lab
        assert np.all(c.cluster_extent_p_fwe[inside] == np.mean(c.null_max_extent >= extent[lab]))
        assert np.allclose(c.cluster_mass_p_fwe[inside], np.mean(c.null_max_mass >= mass[lab] * (1 - 1e-6)))
    np.testing.assert_array_equal(c.cluster_extent_p_fwe[labels == 0], 1.0)
    assert c.cluster_threshold == 1.5


def test_cluster_threshold_for_f_contrasts(smooth_noise):
    y, x, shape = _cluster_problem(smooth_noise)
    res = permuted_glm(y, x, None, f_contrasts={"f": [[0, 1, 0]]}, mask=np.ones(shape, bool),
                       n_perm=30, cluster_threshold=2.0, cluster_threshold_f=4.0, rng=0)
    c = res["f"]
    assert c.kind == "F" and c.cluster_threshold == 4.0
    # F is one-sided; labels come from the float32 observed map, so allow rounding at the threshold
    clear = np.abs(c.stat - 4.0) > 1e-3
    assert clear.mean() > 0.9 and (c.stat > 4.0).any()
    np.testing.assert_array_equal((c.cluster_labels > 0)[clear], (c.stat > 4.0)[clear])
    assert c.null_max_extent[0] == np.max(np.bincount(c.cluster_labels)[1:], initial=0)


def test_p_values_range_and_fdr_in_results(smooth_noise):
    y, x, shape = _cluster_problem(smooth_noise)
    res = permuted_glm(y, x, [0, 1, 0], mask=np.ones(shape, bool), n_perm=50, tfce=True, rng=1)
    c = res[0]
    for p in (c.p, c.p_fwe, c.tfce_p, c.tfce_p_fwe, c.p_fdr, c.tfce_p_fdr):
        assert np.all(p >= 1 / 50) and np.all(p <= 1)
    assert np.all(c.p_fwe >= c.p)
    # the identity is in the null: the observed maximum has p_fwe exactly 1/n_perm
    assert c.p_fwe[np.argmax(np.abs(c.stat))] == 1 / 50
    assert c.tfce_p_fwe[np.argmax(np.abs(c.tfce))] == 1 / 50
    assert c.null_max[0] == pytest.approx(np.abs(c.stat).max(), rel=1e-4)
    np.testing.assert_allclose(c.p_fdr, multipletests(c.p, method="fdr_bh")[1], rtol=1e-12)
    np.testing.assert_allclose(c.tfce_p_fdr, multipletests(c.tfce_p, method="fdr_bh")[1], rtol=1e-12)


def test_tail_approximation_in_results(smooth_noise):
    y, x, shape = _cluster_problem(smooth_noise)
    y[:, 3] += 5.0 * x[:, 1]  # one voxel far beyond every permuted maximum
    plain = permuted_glm(y, x, [0, 1, 0], mask=np.ones(shape, bool), n_perm=200, tfce=True, rng=2)
    assert plain[0].p_fwe_tail is None and plain[0].tfce_p_fwe_tail is None
    res = permuted_glm(y, x, [0, 1, 0], mask=np.ones(shape, bool), n_perm=200, tfce=True, rng=2,
                       tail_approximation=True)
    c = res[0]
    np.testing.assert_array_equal(c.p_fwe, plain[0].p_fwe)
    for values, approx, perm, null in ((np.abs(c.stat), c.p_fwe_tail, c.p_fwe, c.null_max),
                                       (np.abs(c.tfce), c.tfce_p_fwe_tail, c.tfce_p_fwe, c.null_max_tfce)):
        top = np.argmax(values)
        assert values[top] > 1.5 * np.max(null[1:])
        # in the extreme tail the approximation goes below the permutation floor 1/n_perm
        assert perm[top] == 1 / 200 and approx[top] < perm[top]
        assert np.all(approx > 0) and np.all(approx <= 1)
        # outside the tail (p > tail fraction) the permutation p is kept
        np.testing.assert_array_equal(approx[perm > 0.1], perm[perm > 0.1])
        # a decreasing function of the observed value
        order = np.argsort(values)
        assert np.all(np.diff(approx[order]) <= 1e-15)


def test_tail_approximation_against_scipy_gpd():
    rng = np.random.default_rng(5)
    null_max = rng.gamma(3.0, size=1000)
    threshold = np.quantile(null_max, 0.9)
    exceed = null_max[null_max > threshold] - threshold
    shape, _, scale = stats.genpareto.fit(exceed, floc=0.0)
    x = np.array([threshold + 1.0, threshold + 3.0])
    want = exceed.size / null_max.size * stats.genpareto.sf(x - threshold, shape, scale=scale)
    np.testing.assert_allclose(tail_fwe_pvalues(x, null_max), want, rtol=1e-10)


# --- cluster connectivity: 26 by default, as FSL randomise (CLUST_CON 26) -------------------


def test_voxels_touching_at_an_edge_are_one_cluster():
    """Two supra-threshold voxels sharing an edge: one cluster at 26 (and 18), two at 6."""
    shape = (4, 4, 3)
    n = 8
    group = np.repeat([1.0, 0.0], 4)
    rng = np.random.default_rng(5)
    y = rng.normal(scale=0.2, size=(n,) + shape)
    for ijk in ((1, 1, 1), (2, 2, 1)):  # differ in two coordinates: an edge, no face
        y[(slice(None),) + ijk] += 3.0 * group
    y = y.reshape(n, -1)
    x = np.column_stack([np.ones(n), group])
    mask = np.ones(shape, bool)
    for connectivity, n_clusters in ((None, 1), (18, 1), (6, 2)):
        c = permuted_glm(y, x, [0, 1], mask=mask, n_perm=50, cluster_threshold=5.0, rng=0,
                         two_sided=False, cluster_connectivity=connectivity)[0]
        assert (c.stat > 5.0).sum() == 2  # exactly the two planted voxels
        assert c.cluster_labels.max() == n_clusters
        np.testing.assert_array_equal(c.cluster_extent[c.stat > 5.0], [2.0, 2.0] if n_clusters == 1 else [1.0, 1.0])
        ref, n_ref = ndimage.label((c.stat > 5.0).reshape(shape),
                                   structure=ndimage.generate_binary_structure(3, {None: 3, 18: 2, 6: 1}[connectivity]))
        assert n_ref == n_clusters


def _two_sample_t(y, a):
    """Welch-free pooled two-sample t of the columns of y, group ``a`` (bool) minus the rest."""
    y1, y0 = y[a], y[~a]
    n1, n0 = len(y1), len(y0)
    pooled = (((y1 - y1.mean(0)) ** 2).sum(0) + ((y0 - y0.mean(0)) ** 2).sum(0)) / (n1 + n0 - 2)
    return (y1.mean(0) - y0.mean(0)) / np.sqrt(pooled * (1 / n1 + 1 / n0))


def test_cluster_fwe_on_a_4_plus_4_design_equals_brute_force(smooth_noise):
    """Exhaustive cluster extent and mass FWE p against all 70 relabellings, 26-connected."""
    import itertools

    rng = np.random.default_rng(4)
    shape = (6, 5, 4)
    n = 8
    group = np.repeat([True, False], 4)
    y = smooth_noise(rng, shape, n, sigma=0.6) * 2
    y[:, :40] += 1.0 * group[:, np.newaxis]
    x = np.column_stack([group, ~group]).astype(float)
    threshold = 2.0  # here 6-connected clusters give FWE 1-p off by up to 0.94
    res = permuted_glm(y, x, [1, -1], mask=np.ones(shape, bool), n_perm=40320, two_sided=False,
                       cluster_threshold=threshold, rng=0)
    c = res[0]
    assert res.exhaustive
    structure = np.ones((3, 3, 3), bool)  # 26-connected

    def clusters(t):
        lab, k = ndimage.label(t.reshape(shape) >= threshold, structure=structure)
        extent = ndimage.sum_labels(np.ones(shape), lab, range(1, k + 1))
        mass = ndimage.sum_labels(t.reshape(shape), lab, range(1, k + 1))
        return lab.ravel(), np.asarray(extent), np.asarray(mass)

    max_extent, max_mass = [], []
    for members in itertools.combinations(range(n), 4):
        a = np.zeros(n, bool)
        a[list(members)] = True
        _, extent, mass = clusters(_two_sample_t(y, a))
        max_extent.append(extent.max(initial=0))
        max_mass.append(mass.max(initial=0))
    max_extent, max_mass = np.array(max_extent), np.array(max_mass)
    assert max_extent.size == 70
    labels, extent, mass = clusters(_two_sample_t(y, group))
    assert extent.size >= 1
    for k in range(extent.size):
        inside = labels == k + 1
        np.testing.assert_allclose(c.cluster_extent_p_fwe[inside], np.mean(max_extent >= extent[k]), rtol=1e-12)
        np.testing.assert_allclose(c.cluster_mass_p_fwe[inside],
                                   np.mean(max_mass >= mass[k] * (1 - 1e-6)), rtol=1e-12)
    np.testing.assert_array_equal(c.cluster_extent_p_fwe[labels == 0], 1.0)
    # the null maxima are the brute force's, each relabelling counted alike
    np.testing.assert_allclose(np.sort(np.unique(c.null_max_extent)), np.unique(max_extent))


def test_weighted_cluster_extent(smooth_noise):
    # extents (masses) on a weighted graph (e.g. vertex areas) are sums of weights (of weight * |t|),
    # in the observed labelling and in the engine's null maxima, against scipy.ndimage labelling
    y, x, shape = _cluster_problem(smooth_noise)
    weights = np.random.default_rng(4).uniform(0.2, 3.0, y.shape[1])
    graph = grid_graph(np.ones(shape, bool), 6, weights=weights)
    res = permuted_glm(y, x, [0, 1, 0], adjacency=graph, n_perm=20, cluster_threshold=1.5, rng=3)
    design = make_design(x)
    (con,) = make_contrasts([0, 1, 0], design)
    maps = engine.statistics(make_job(y, design, con, None), make_schedule(y.shape[0], 20, rng=3), 0, 20)
    for i in range(20):
        extent, mass = cluster_sizes_reference(maps[i].reshape(shape), 1.5, 6, weights=weights.reshape(shape))
        assert res[0].null_max_extent[i] == pytest.approx(extent, rel=1e-12)
        assert res[0].null_max_mass[i] == pytest.approx(mass, rel=1e-6)
    labels, extent, mass = cluster_labels(maps[0], 1.5, graph)
    for lab in range(1, extent.size):
        assert extent[lab] == pytest.approx(weights[labels == lab].sum(), rel=1e-12)
        inside = labels == lab
        assert mass[lab] == pytest.approx((weights[inside] * np.abs(maps[0][inside])).sum(), rel=1e-12)
    unweighted = cluster_labels(maps[0], 1.5, graph, weights=np.ones(y.shape[1]))[1]
    np.testing.assert_array_equal(unweighted, np.bincount(labels)[:extent.size] * (np.arange(extent.size) > 0))
