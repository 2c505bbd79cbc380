"""voxstats.tfce against the label-at-every-threshold reference and hand computations."""

import importlib
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest
from scipy import sparse

from voxstats import _tfce_numba, tfce
from voxstats._reference import tfce_fsl_reference, tfce_reference
from voxstats.graph import graph_from_adjacency, grid_graph
from voxstats.tfce import batch_tfce, stepped_table, tfce_values

GRIDS = [((6, 5, 4), 6), ((6, 5, 4), 18), ((6, 5, 4), 26), ((9, 8), 4), ((9, 8), 8)]


def _field(rng, shape):
    """Random map with zeros, positive and negative blobs (distinct values)."""
    x = rng.standard_normal(shape) * 2
    x[rng.random(shape) < 0.15] = 0.0
    return x


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("two_sided", [True, False])
@pytest.mark.parametrize("shape,connectivity", GRIDS)
def test_exact_matches_reference(shape, connectivity, two_sided, seed):
    stat = _field(np.random.default_rng(seed), shape)
    got = tfce(stat, connectivity=connectivity, two_sided=two_sided)
    want = tfce_reference(stat, connectivity=connectivity, two_sided=two_sided)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.count_nonzero(got) > 0


@pytest.mark.parametrize("E,H", [(1.0, 2.0), (0.5, 1.5), (2.0 / 3.0, 2.5)])
def test_exact_other_exponents(rng, E, H):
    stat = _field(rng, (6, 6, 4))
    np.testing.assert_allclose(tfce(stat, connectivity=26, E=E, H=H),
                               tfce_reference(stat, connectivity=26, E=E, H=H), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dh", [None, 0.05, 0.37])
@pytest.mark.parametrize("shape,connectivity", GRIDS)
def test_fsl_matches_stepwise_reference(shape, connectivity, dh):
    stat = _field(np.random.default_rng(3), shape)
    got = tfce(stat, connectivity=connectivity, mode="fsl", dh=dh)
    want = tfce_reference(stat, connectivity=connectivity, mode="fsl", dh=dh)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_fsl_one_sided_and_other_exponents(rng):
    stat = _field(rng, (7, 6, 3))
    for kwargs in (dict(two_sided=False), dict(E=1.0, H=2.0), dict(E=0.5, H=1.0, dh=0.2)):
        np.testing.assert_allclose(tfce(stat, mode="fsl", **kwargs),
                                   tfce_reference(stat, mode="fsl", **kwargs), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["exact", "fsl"])
def test_sparse_graph_matches_reference(mode, random_graph):
    rng = np.random.default_rng(7)
    adjacency = random_graph(rng, 60, n_edges=90)
    values = rng.standard_normal(60)
    got = tfce(values, connectivity=adjacency, mode=mode)
    want = tfce_reference(values, connectivity=adjacency, mode=mode)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # csr, csc and a dense-equivalent lil adjacency give the same answer
    for fmt in (adjacency.tocsr(), adjacency.tocsc(), sparse.lil_matrix(adjacency)):
        np.testing.assert_array_equal(tfce(values, connectivity=fmt, mode=mode), got)


def _two_clusters(heights=(2.0, 3.0)):
    """10^3 volume, two separated flat 10-voxel clusters (a 2x5 and a 10x1 patch)."""
    stat = np.zeros((10, 10, 10))
    stat[1:3, 1:6, 2] = heights[0]
    stat[0:10, 8, 7] = heights[1]
    return stat


def test_zero_exponents_give_the_map_itself(rng):
    # E = H = 0: the integrand is 1, so TFCE(v) = s(v) whatever the clusters
    stat = _field(rng, (6, 6, 4))
    np.testing.assert_allclose(tfce(stat, E=0.0, H=0.0), stat, rtol=1e-12, atol=1e-15)


def test_hand_computed_exact():
    stat = _two_clusters()
    out = tfce(stat)  # E=0.5, H=2
    # a flat cluster of size n and height h: integral_0^h n**E h'**H dh' = sqrt(n) h**3 / 3
    assert np.allclose(out[1:3, 1:6, 2], np.sqrt(10) * 2.0 ** 3 / 3, rtol=1e-12)
    assert np.allclose(out[:, 8, 7], np.sqrt(10) * 3.0 ** 3 / 3, rtol=1e-12)
    assert out.max() == pytest.approx(np.sqrt(10) * 9.0)
    assert np.count_nonzero(out) == 20
    # other exponents
    out = tfce(stat, E=1.0, H=1.0)
    assert out.max() == pytest.approx(10 * 3.0 ** 2 / 2)


def _fsl_thresholds(dh, top):
    """FSL's thresholds, as its loop makes them: float h = 0; while (h < top + dh) h += dh."""
    h, step, out = np.float32(0), np.float32(dh), []
    while h < np.float32(np.float32(top) + step):
        out.append(h)
        h = np.float32(h + step)
    return out


def test_hand_computed_fsl():
    stat = _two_clusters()
    out = tfce(stat, mode="fsl")
    # the 10x1 patch runs from x = 0 to 9: FSL leaves the volume's border (x = 0, 9) out,
    # so that cluster has 8 voxels and its ends get 0
    assert out[0, 8, 7] == 0 and out[9, 8, 7] == 0
    assert np.count_nonzero(out) == 18
    dh = 3.0 / 100  # default step: max / 100, a float
    for h, size, where in ((2.0, 10, (slice(1, 3), slice(1, 6), 2)), (3.0, 8, (slice(1, 9), 8, 7))):
        steps = [t for t in _fsl_thresholds(dh, 3.0) if t < h]
        expected = np.sqrt(size) * sum(float(np.float32(np.float64(t) ** 2)) for t in steps)
        np.testing.assert_allclose(out[where], expected, rtol=1e-12)
    # a given step: h = 2 -> thresholds 0, 0.5, 1, 1.5 ; h = 3 -> up to 2.5
    out = tfce(stat, mode="fsl", dh=0.5)
    assert out[1, 1, 2] == pytest.approx(np.sqrt(10) * (0.25 + 1 + 2.25))
    assert out[1, 8, 7] == pytest.approx(np.sqrt(8) * (0.25 + 1 + 2.25 + 4 + 6.25))


def test_hand_computed_merging_cluster():
    # 1D chain on a 2D grid: values 3, 1 next to each other -> the 3 voxel sees
    # size 1 above height 1 and size 2 below.
    stat = np.zeros((1, 5))
    stat[0, 1], stat[0, 2] = 3.0, 1.0
    out = tfce(stat, connectivity=4, E=1.0, H=2.0)
    assert out[0, 1] == pytest.approx(2 * 1 / 3 + 1 * (27 - 1) / 3)
    assert out[0, 2] == pytest.approx(2 * 1 / 3)
    # 8-connectivity links diagonal neighbours, 4-connectivity does not
    diag = np.zeros((3, 3))
    diag[0, 0], diag[1, 1] = 2.0, 2.0
    assert tfce(diag, connectivity=4, E=1.0)[0, 0] == pytest.approx(8 / 3)
    assert tfce(diag, connectivity=8, E=1.0)[0, 0] == pytest.approx(2 * 8 / 3)


@pytest.mark.parametrize("mode", ["exact", "fsl"])
def test_sign_flip_invariance(rng, mode):
    stat = _field(rng, (7, 6, 5))
    np.testing.assert_allclose(tfce(-stat, mode=mode), -tfce(stat, mode=mode), rtol=1e-12, atol=0)


def test_one_sided_zero_on_negative_and_equal_on_positive(rng):
    stat = _field(rng, (7, 6, 5))
    one = tfce(stat, two_sided=False)
    two = tfce(stat, two_sided=True)
    assert np.all(one[stat <= 0] == 0)
    assert np.all(two[stat < 0] < 0)
    # clusters never mix signs, so positive voxels are unchanged
    np.testing.assert_allclose(one[stat > 0], two[stat > 0], rtol=1e-12)


def test_nan_treated_as_zero(rng):
    stat = _field(rng, (6, 6, 4))
    with_nan = stat.copy()
    holes = rng.random(stat.shape) < 0.1
    with_nan[holes] = np.nan
    zeroed = np.where(holes, 0.0, stat)
    np.testing.assert_array_equal(tfce(with_nan), tfce(zeroed))
    assert np.all(np.isfinite(tfce(with_nan)))


def test_mask_excludes_voxels(rng):
    stat = _field(rng, (6, 6, 4))
    mask = rng.random(stat.shape) < 0.7
    out = tfce(stat, mask=mask)
    assert np.all(out[~mask] == 0)
    np.testing.assert_allclose(out, tfce_reference(np.where(mask, stat, 0.0)), rtol=1e-10, atol=1e-12)
    # a mask image is accepted as well
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), np.eye(4))
    np.testing.assert_array_equal(tfce(stat, mask=mask_img), out)


def test_input_not_modified(rng):
    stat = _field(rng, (5, 5, 5))
    stat[0, 0, 0] = np.nan
    copy = stat.copy()
    tfce(stat)
    np.testing.assert_array_equal(stat, copy)


def test_image_in_image_out(rng):
    stat = _field(rng, (6, 5, 4))
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    img = nib.Nifti1Image(stat.astype(np.float32), affine)
    out = tfce(img)
    assert isinstance(out, nib.Nifti1Image)
    np.testing.assert_array_equal(out.affine, affine)
    np.testing.assert_allclose(out.get_fdata(), tfce(stat.astype(np.float32)), rtol=1e-6)


def test_empty_and_single_voxel():
    assert np.all(tfce(np.zeros((4, 4, 4))) == 0)
    one = np.zeros((4, 4, 4))
    one[1, 2, 3] = -2.0
    out = tfce(one)
    assert out[1, 2, 3] == pytest.approx(-(2.0 ** 3) / 3)
    assert np.count_nonzero(out) == 1
    assert np.all(tfce(one, two_sided=False) == 0)


@pytest.mark.parametrize("mode,dh", [("exact", None), ("fsl", 0.1)])
@pytest.mark.parametrize("two_sided", [True, False])
def test_float32_batch_kernel_matches_public(rng, mode, dh, two_sided):
    shape = (7, 6, 5)
    mask = rng.random(shape) < 0.8
    graph = grid_graph(mask, 6)
    maps32 = np.stack([_field(rng, shape)[mask] for _ in range(5)]).astype(np.float32)
    with ThreadPoolExecutor(2) as pool:
        out = batch_tfce(maps32, graph, fsl=mode == "fsl", dh=dh, two_sided=two_sided, pool=pool)
    for row, got in zip(maps32, out):
        want = tfce_values(row.astype(np.float64), graph, mode=mode, dh=dh, two_sided=two_sided)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5)


def test_exact_is_limit_of_stepped_sum(rng):
    stat = _field(rng, (6, 6, 4))
    # FSL mode leaves the volume border out: its limit is the exact TFCE of the map without it
    interior = np.zeros_like(stat)
    interior[1:-1, 1:-1, 1:-1] = stat[1:-1, 1:-1, 1:-1]
    exact = tfce(interior)
    big = np.abs(exact) > 1e-3 * np.abs(exact).max()
    errors = []
    for dh in (0.1, 0.01, 0.001):
        stepped = tfce(stat, mode="fsl", dh=dh) * dh
        errors.append(np.max(np.abs(stepped[big] - exact[big]) / np.abs(exact[big])))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.01


def test_graph_api_agrees_with_grid(rng):
    # the same grid given as a sparse adjacency gives the same TFCE
    stat = _field(rng, (5, 4, 3))
    graph = grid_graph(np.ones(stat.shape, bool), 18)
    adjacency = sparse.csr_matrix((np.ones(graph.indices.size), graph.indices, graph.indptr))
    via_graph = tfce(stat.ravel(), connectivity=adjacency)
    np.testing.assert_allclose(via_graph.reshape(stat.shape), tfce(stat, connectivity=18), rtol=1e-12)
    assert graph_from_adjacency(adjacency).n_voxels == stat.size


@pytest.mark.parametrize("kwargs,match", [
    (dict(connectivity=7), r"Invalid value for the 'connectivity' parameter in 3D\. Allowed values are "
                           r"6, 18, 26, but got 7 instead\."),
    (dict(mode="tfce"), r"Invalid value for the 'mode' parameter\. Allowed values are 'exact', 'fsl', "
                        r"but got 'tfce' instead\."),
    (dict(E=-1.0), r"'E' parameter: expected a finite number >= 0, got -1\.0"),
    (dict(H=np.nan), r"'H' parameter: expected a finite number >= 0"),
    (dict(mode="fsl", dh=0.0), r"'dh' parameter: expected a step > 0, got 0\.0"),
    (dict(mode="fsl", dh=-1.0), r"'dh' parameter: expected a step > 0"),
    (dict(dh=0.1), r"'dh' parameter \(fixed step\) only applies to mode='fsl'"),
    (dict(mask=np.ones((3, 3, 3), bool)), r"mask: shape \(3, 3, 3\) does not match the map's shape \(4, 4, 4\)"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfce(np.ones((4, 4, 4)), **kwargs)


def test_bad_shapes_and_connectivity():
    with pytest.raises(ValueError, match=r"in 2D\. Allowed values are 4, 8, but got 6 instead"):
        tfce(np.ones((4, 4)), connectivity=6)
    with pytest.raises(ValueError, match=r"stat: expected a 2D or 3D map .*got shape \(2, 2, 2, 2\)"):
        tfce(np.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"adjacency: has 5 nodes but the data have 4 voxels"):
        tfce(np.ones(4), connectivity=sparse.eye(5, format="csr"))
    with pytest.raises(ValueError, match=r"adjacency: expected a square matrix"):
        tfce(np.ones(4), connectivity=sparse.csr_matrix((4, 5)))
    with pytest.raises(ValueError, match=r"mask: not used with a sparse adjacency"):
        tfce(np.ones(4), connectivity=sparse.eye(4, format="csr"), mask=np.ones(4, bool))


@pytest.mark.parametrize("mode", ["exact", "fsl"])
@pytest.mark.parametrize("shape,connectivity", GRIDS)
def test_ties_and_plateaus(shape, connectivity, mode):
    # integer-valued maps: many voxels share each value, clusters merge at equal heights
    stat = np.random.default_rng(9).integers(-3, 4, size=shape).astype(float)
    want = tfce_reference(stat, connectivity=connectivity, mode=mode, dh=0.5 if mode == "fsl" else None)
    got = tfce(stat, connectivity=connectivity, mode=mode, dh=0.5 if mode == "fsl" else None)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    graph = grid_graph(np.ones(shape, bool), connectivity)
    out = batch_tfce(stat.reshape(1, -1), graph, fsl=mode == "fsl", dh=0.5 if mode == "fsl" else None)
    np.testing.assert_allclose(out[0], want.ravel(), rtol=1e-6, atol=1e-6)


# --- FSL randomise's loop: volume border, single-precision thresholds, nothing below the first step


def test_fsl_thresholds_are_accumulated_in_single_precision():
    for dh in (0.037, 0.03, 0.0452, 0.1, 1 / 3, 0.0017):
        thresholds, cumulative = stepped_table(dh, 2.0, 4.0)
        loop = _fsl_thresholds(dh, 4.0)
        np.testing.assert_array_equal(thresholds[:len(loop)], np.array(loop, dtype=np.float64))
        assert thresholds[-1] >= 4.0
        terms = [float(np.float32(np.float64(t) ** 2)) for t in thresholds]
        np.testing.assert_allclose(cumulative, np.r_[0.0, np.cumsum(terms)], rtol=1e-15)
    # far too many steps (FSL's float threshold would stop growing near 2**24 of them)
    with pytest.raises(ValueError, match=r"'dh' parameter: a step of 1e-09 makes 4e\+09 steps up to 4"):
        stepped_table(1e-9, 2.0, 4.0)


def test_fsl_border_is_left_out():
    # FSL's tfce() visits indices 1..dim-2 only: 1.0 at (0, 1, 1) of a 3x3x3 map gets 0
    stat = np.zeros((3, 3, 3))
    stat[0, 1, 1] = 1.0
    assert np.all(tfce(stat, mode="fsl") == 0)
    assert np.all(tfce_fsl_reference(stat) == 0)
    assert tfce(stat)[0, 1, 1] == pytest.approx(1 / 3)  # exact mode enhances the border
    # a border voxel never joins a cluster: (1, 1, 1) stays a cluster of one
    stat[1, 1, 1] = 1.0
    out = tfce(stat, mode="fsl")
    steps = [t for t in _fsl_thresholds(0.01, 1.0) if t < 1.0]
    assert out[1, 1, 1] == pytest.approx(sum(float(np.float32(np.float64(t) ** 2)) for t in steps), rel=1e-12)
    assert out[0, 1, 1] == 0
    assert tfce(stat)[1, 1, 1] == pytest.approx(np.sqrt(2) / 3)
    # the same grid given as a sparse adjacency has no border
    graph = grid_graph(np.ones(stat.shape, bool), 6)
    adjacency = sparse.csr_matrix((np.ones(graph.indices.size), graph.indices, graph.indptr))
    via_graph = tfce(stat.ravel(), connectivity=adjacency, mode="fsl")
    assert via_graph[np.ravel_multi_index((0, 1, 1), stat.shape)] > 0


@pytest.mark.parametrize("shape,connectivity", GRIDS + [((3, 3, 3), 26), ((5, 2, 4), 6)])
def test_fsl_matches_port_of_fsl_loop(shape, connectivity):
    # float32 maps and float32 sums: FSL's own arithmetic, to single precision
    stat = _field(np.random.default_rng(11), shape).astype(np.float32)
    want = tfce_fsl_reference(stat, connectivity=connectivity, two_sided=True)
    np.testing.assert_allclose(tfce(stat, connectivity=connectivity, mode="fsl"), want, rtol=2e-6, atol=1e-6)
    top = float(np.abs(stat).max())
    graph = grid_graph(np.ones(shape, bool), connectivity)
    got = batch_tfce(stat.reshape(1, -1), graph, fsl=True, dh=float(np.float32(top / 100)))
    np.testing.assert_allclose(got[0], want.ravel(), rtol=2e-6, atol=1e-6)
    if min(shape) < 3:  # all border (FSL refuses such a volume)
        assert np.all(want == 0)


def test_fsl_peak_gets_its_last_step_by_float_rounding():
    # 3.7 at the centre: dh = float(0.037); the 101st threshold, accumulated in float, falls
    # just below 3.7, so the peak gets one more step of ~3.7**2 than k * dh in double would give
    stat = np.zeros((3, 3, 3))
    stat[1, 1, 1] = 3.7
    thresholds = _fsl_thresholds(0.037, 3.7)
    assert np.float32(thresholds[100]) < np.float32(3.7) and 100 * (3.7 / 100) >= 3.7  # in double: no
    want = sum(float(np.float32(np.float64(t) ** 2)) for t in thresholds if t < np.float32(3.7))
    assert want == pytest.approx(463.20, abs=0.01)
    assert tfce(stat, mode="fsl")[1, 1, 1] == pytest.approx(want, rel=1e-12)
    assert tfce_fsl_reference(stat)[1, 1, 1] == pytest.approx(want, rel=1e-6)
    graph = grid_graph(np.ones(stat.shape, bool), 6)
    got = batch_tfce(stat.reshape(1, -1), graph, fsl=True, dh=0.037, two_sided=False)
    assert got[0, 13] == pytest.approx(want, rel=1e-6)


def _padded_noise(seed):
    """A 12^3 noise map (scaled by a random factor) inside a 14^3 zero volume."""
    rng = np.random.default_rng(seed)
    stat = np.zeros((14, 14, 14), dtype=np.float32)
    stat[1:-1, 1:-1, 1:-1] = rng.standard_normal((12, 12, 12)) * rng.uniform(0.5, 5)
    return stat


@pytest.mark.parametrize("seed", [57, 213, 821])
def test_nothing_below_the_first_step(seed):
    # these maps left residues of +-1e-13 on voxels with 0 < |t| <= dh (cancellation in the
    # union-find's offsets); below the first step FSL's TFCE is exactly 0, in every kernel
    stat = _padded_noise(seed)
    dh = float(np.float32(np.abs(stat).max() / 100))
    small = (stat != 0) & (np.abs(stat) <= dh)
    assert small.sum() > 10
    graph = grid_graph(np.ones(stat.shape, bool), 6)
    batch = batch_tfce(stat.reshape(1, -1), graph, fsl=True, dh=dh).reshape(stat.shape)
    public = tfce(stat, mode="fsl")
    for out in (batch, public):
        assert np.all(out[small] == 0)
        assert np.all(np.sign(out[~small]) == np.sign(stat[~small]))
    # exact mode: tiny values keep their sign and relative precision (no absolute tolerance)
    stat64 = stat.astype(np.float64)
    np.testing.assert_allclose(tfce(stat64), tfce_reference(stat64), rtol=1e-9, atol=0)
    exact32 = batch_tfce(stat.reshape(1, -1), graph).reshape(stat.shape)
    np.testing.assert_allclose(exact32, tfce_reference(stat64), rtol=2e-5, atol=0)


# --- extent weights (area-weighted TFCE on meshes)


def test_weighted_hand_computed_chain():
    # two nodes of areas 2 and 3 mm^2, values 3 and 1, E = 1, H = 2: the first sees extent 2 above
    # h = 1 and 5 below; the second only 5
    adjacency = sparse.csr_matrix(np.array([[0, 1], [1, 0]]))
    out = tfce(np.array([3.0, 1.0]), connectivity=adjacency, E=1.0, weights=[2.0, 3.0])
    np.testing.assert_allclose(out, [5 / 3 + 2 * 26 / 3, 5 / 3], rtol=1e-14)
    fsl = tfce(np.array([3.0, 1.0]), connectivity=adjacency, E=1.0, weights=[2.0, 3.0], mode="fsl", dh=0.5)
    np.testing.assert_allclose(fsl, [5 * 0.25 + 2 * (1 + 2.25 + 4 + 6.25), 5 * 0.25], rtol=1e-14)


@pytest.mark.parametrize("mode", ["exact", "fsl"])
@pytest.mark.parametrize("E", [0.5, 1.0])
def test_weighted_matches_reference(mode, E, random_graph):
    rng = np.random.default_rng(12)
    adjacency = random_graph(rng, 80, n_edges=130)
    values = rng.standard_normal(80)
    weights = rng.uniform(0.1, 3.0, 80)
    weights[:5] = 0.0
    got = tfce(values, connectivity=adjacency, mode=mode, E=E, weights=weights)
    want = tfce_reference(values, connectivity=adjacency, mode=mode, E=E, weights=weights)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)
    # on a grid too, and through the float32 batch kernel
    stat = _field(rng, (6, 5, 4))
    w = rng.uniform(0.5, 2.0, stat.shape)
    want = tfce_reference(stat, mode=mode, E=E, weights=w)
    np.testing.assert_allclose(tfce(stat, mode=mode, E=E, weights=w), want, rtol=1e-10, atol=1e-12)
    graph = grid_graph(np.ones(stat.shape, bool), 6, weights=w.ravel())
    dh = float(np.float32(np.abs(stat).max() / 100)) if mode == "fsl" else None
    got32 = batch_tfce(stat.reshape(1, -1), graph, E=E, fsl=mode == "fsl", dh=dh)
    np.testing.assert_allclose(got32[0], want.ravel(), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["exact", "fsl"])
def test_unit_weights_are_bit_identical_to_unweighted(rng, mode):
    stat = _field(rng, (7, 6, 5))
    ones = np.ones(stat.shape)
    np.testing.assert_array_equal(tfce(stat, mode=mode, weights=ones), tfce(stat, mode=mode))
    graph = grid_graph(np.ones(stat.shape, bool), 6)
    maps = np.stack([_field(rng, stat.shape).ravel() for _ in range(3)]).astype(np.float32)
    dh = 0.05 if mode == "fsl" else None
    np.testing.assert_array_equal(batch_tfce(maps, graph.with_weights(ones.ravel()), fsl=mode == "fsl", dh=dh),
                                  batch_tfce(maps, graph, fsl=mode == "fsl", dh=dh))


def test_bad_weights():
    with pytest.raises(ValueError, match=r"weights: shape \(3, 3\) does not match the map's shape \(4, 4, 4\)"):
        tfce(np.ones((4, 4, 4)), weights=np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"weights: expected finite weights >= 0"):
        tfce(np.ones((4, 4, 4)), weights=-np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match=r"weights: expected one weight per node, shape \(4,\), got \(5,\)"):
        tfce(np.ones(4), connectivity=sparse.eye(4, format="csr"), weights=np.ones(5))


def test_fsl_values_checked_against_fsl():
    # values written by FSL's own tfce() (newimage, randomise 2.9 built from source, as
    # fslmaths -tfce 2 0.5 C): a border voxel (3.0 at x = 0), two blobs that touch only
    # diagonally, a voxel below the first step (0.02 < dh = 0.03)
    stat = np.zeros((4, 4, 4), dtype=np.float32)
    stat[1, 1, 1], stat[1, 2, 1], stat[2, 2, 2] = 2.5, 1.2, 2.0
    stat[2, 1, 2], stat[0, 1, 1], stat[2, 2, 1] = 0.02, 3.0, 0.7
    voxels = [(0, 1, 1), (1, 1, 1), (1, 2, 1), (2, 1, 2), (2, 2, 1), (2, 2, 2)]
    checked = {6: [0.0, 185.18162536621094, 30.45924186706543, 0.0, 7.783198356628418, 92.11038970947266],
               26: [0.0, 218.56578063964844, 35.55556869506836, 0.0, 7.783198356628418, 132.13619995117188]}
    for connectivity, fsl_values in checked.items():
        ours = tfce(stat, connectivity=connectivity, mode="fsl", two_sided=False)
        port = tfce_fsl_reference(stat, connectivity=connectivity)
        for voxel, want in zip(voxels, fsl_values):
            assert port[voxel] == want  # the port of FSL's loop, bit for bit
            assert ours[voxel] == pytest.approx(want, rel=1e-6, abs=0)
    # 3x3x3 cases of issue 11: 1.0 at the border and at the centre; 3.7 at the centre
    stat = np.zeros((3, 3, 3))
    stat[0, 1, 1] = stat[1, 1, 1] = 1.0
    assert tfce_fsl_reference(stat)[1, 1, 1] == 33.83496856689453
    assert tfce(stat, mode="fsl")[1, 1, 1] == pytest.approx(33.83496856689453, rel=1e-6)
    stat = np.zeros((3, 3, 3))
    stat[1, 1, 1] = 3.7
    assert tfce_fsl_reference(stat)[1, 1, 1] == 463.2002258300781
    assert tfce(stat, mode="fsl")[1, 1, 1] == pytest.approx(463.2002258300781, rel=1e-6)


@pytest.mark.parametrize("mode", ["exact", "fsl"])
def test_batch_is_bit_identical_whatever_the_threads_and_tasks(rng, mode, monkeypatch):
    tfce_module = importlib.import_module("voxstats.tfce")  # the module (voxstats.tfce is the function)

    shape = (9, 8, 7)
    graph = grid_graph(rng.random(shape) < 0.9, 6)
    maps = np.stack([_field(rng, shape)[graph.mask] for _ in range(7)]).astype(np.float32)
    dh = 0.07 if mode == "fsl" else None
    serial = batch_tfce(maps, graph, fsl=mode == "fsl", dh=dh)
    for task_voxels in (1, 3 * graph.n_voxels, 10 ** 9):  # one row per task, three, all rows in one
        monkeypatch.setattr(tfce_module, "_TASK_VOXELS", task_voxels)
        for workers in (2, 3):
            with ThreadPoolExecutor(workers) as pool:
                np.testing.assert_array_equal(batch_tfce(maps, graph, fsl=mode == "fsl", dh=dh, pool=pool),
                                              serial)
    for i, row in enumerate(maps):  # and each row alone
        np.testing.assert_array_equal(batch_tfce(row[np.newaxis], graph, fsl=mode == "fsl", dh=dh)[0], serial[i])


@pytest.mark.parametrize("n,spread", [(5, 1.0), (33, 1.0), (1000, 1.0), (100_000, 3.0),
                                      (300_000, 1e-3), (50_000, 1e-30)])
def test_msd_radix_sort_is_a_stable_descending_sort(n, spread):
    rng = np.random.default_rng(n)
    x = np.abs(rng.normal(0, spread, n)).astype(np.float32)
    x[rng.random(n) < 0.3] = x[0]  # many ties: their order must be the input order
    keys = x.view(np.uint32).copy()
    order = np.arange(n, dtype=np.uint32)
    work = np.empty(n, np.uint32), np.empty(n, np.uint32), np.empty(4096, np.int64)
    _tfce_numba._radix_order_desc_msd(keys, n, order, *work)
    expected = np.argsort(-x.astype(np.float64), kind="stable")
    np.testing.assert_array_equal(order, expected)
    np.testing.assert_array_equal(np.uint32(0x7FFFFFFF) - keys, x.view(np.uint32)[expected])


def test_large_maps_sorted_by_the_msd_sort_give_the_same_tfce():
    # a map with more active voxels than _MSD_MIN goes through the MSD sort in the batch kernel;
    # the single-map kernel, given NumPy's stable order, must give the same values bit for bit
    rng = np.random.default_rng(3)
    shape = (100, 100, 90)
    mask = np.ones(shape, bool)
    mask[:3] = False
    graph = grid_graph(mask, 6)
    row = _field(rng, shape)[mask].astype(np.float32)
    row[row == 0] = 0.25
    row[::7] = row[0]  # ties
    assert np.count_nonzero(row) >= _tfce_numba._MSD_MIN
    got = batch_tfce(row[None], graph)[0]
    values = row.astype(np.float64)
    order = np.argsort(-np.abs(values), kind="stable")
    empty = np.empty(0)
    want = _tfce_numba.tfce_graph(values, order, graph.neighbours, empty, np.empty(0, np.bool_),
                                  True, 0.5, 2.0, False, empty, empty)
    np.testing.assert_array_equal(got, want.astype(np.float32))
