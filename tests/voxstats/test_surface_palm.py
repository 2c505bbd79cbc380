"""Surface inference against PALM on the same GIFTI data (values checked with PALM under GNU Octave).

The data: nilearn's fsaverage5 left white surface (10,242 vertices), 8 synthetic
subjects (smooth noise and a planted effect, built below from a seed), a
"medial wall" (vertices with x > -12 mm, 0 in every subject, outside the mask).

PALM (GitHub master of 2025-12-19, Octave 7.3.0, the GIFTI toolbox's MEX files
compiled with mkoctfile) was run as::

    palm -i data.func.gii -m mask.func.gii -s lh.white.surf.gii -d design.csv -t contrast.csv
         -T -tfce2D -C 2.3 -ise -n 256 -o out

(design: a column of ones, contrast 1; -ise: sign flipping, all 2^8 = 256 enumerated).
Without ``-m``, PALM 2025-12 stops on GIFTI input ("structure has no member
'data'" in palm_maskstruct), hence the explicit mask.

What PALM does, checked here value by value:

- the t statistic, written as float32;
- before any spatial statistic the t map is converted to z (``palm_gtoz``:
  z = Phi^-1 of the t CDF with n - 1 df), in every permutation;
- TFCE with E = 1, H = 2 (``-tfce2D``): thresholds h = dh, 2 dh, ... up to the
  map's maximum with dh = max(z) / 100 recomputed for each permutation, vertices
  z >= h, each cluster adding (its area)^E h^H, the sum multiplied by dh;
- a cluster's area is the sum of its vertices' areas, a vertex's area a third
  of its triangles' areas on the surface given with ``-s``;
- cluster extent (``-C 2.3``): clusters of z >= 2.3, extent = area (mm^2);
- FWE p = share of the 256 null maxima >= the observed value.
"""

import itertools

import numpy as np
import pytest
from scipy import sparse, stats

from voxstats._reference import weighted_tfce_reference
from voxstats.surface import load_mesh

N_SUBJECTS = 8

#: (vertex, t, TFCE, TFCE FWE p, t FWE p, cluster extent (mm^2), cluster extent FWE p) from PALM.
PALM = [
    (531, 5.7291813, 6974.118, 0.00390625, 0.7265625, 661.40344, 0.00390625),
    (68, -5.181502, 0.0, 1.0, 1.0, 0.0, 1.0),
    (771, 2.6881006, 4076.7266, 0.0390625, 1.0, 0.0, 1.0),
    (9267, 2.651612, 3936.8914, 0.0546875, 1.0, 0.0, 1.0),
    (7664, 3.4298563, 5367.068, 0.00390625, 1.0, 661.40344, 0.00390625),
    (3381, 1.946509, 918.25226, 0.984375, 1.0, 0.0, 1.0),
    (2559, -0.855875, 0.0, 1.0, 1.0, 0.0, 1.0),
    (123, 3.9824598, 6125.0063, 0.00390625, 0.9921875, 661.40344, 0.00390625),
    (7709, 0.3194657, 104.60519, 1.0, 1.0, 0.0, 1.0),
    (5161, 1.4980327, 357.23376, 1.0, 1.0, 0.0, 1.0),
    (9669, 1.1265504, 455.7802, 1.0, 1.0, 0.0, 1.0),
    (4827, 1.3044046, 322.72183, 1.0, 1.0, 0.0, 1.0),
    (5606, 9.159116, 808.994, 0.99609375, 0.12109375, 0.0, 1.0),  # the largest t
]
#: PALM: vertices with TFCE FWE p < 0.05, and the smallest voxel-wise (max-z) FWE p.
PALM_N_TFCE_FWE = 133
PALM_MIN_T_FWE = 0.12109375


def _palm_problem():
    """The mesh, the mask and the (8, 10242) float32 data PALM was given."""
    from nilearn import datasets

    mesh = load_mesh(datasets.load_fsaverage("fsaverage5")["white_matter"].parts["left"])
    xyz, faces = mesh.coordinates, mesh.faces
    n = mesh.n_vertices
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    adj = sparse.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    adj = ((adj + adj.T) > 0).astype(float).tocsr()
    degree = np.asarray(adj.sum(1)).ravel()
    noise = np.random.default_rng(16).standard_normal((N_SUBJECTS, n))
    for _ in range(8):
        noise = (noise + (adj @ noise.T).T) / (1 + degree)
    noise /= noise.std(axis=0)
    distance = np.linalg.norm(xyz - xyz[int(np.argmin(xyz[:, 0]))], axis=1)
    data = (noise + 2.0 * np.exp(-0.5 * (distance / 12) ** 2)).astype(np.float32)
    wall = xyz[:, 0] > -12
    data[:, wall] = 0
    return mesh, ~wall, data


def _t_to_z(t, df):
    """PALM's palm_gtoz for t: each tail from its own CDF, for precision."""
    return np.where(t > 0, stats.norm.isf(stats.t.sf(t, df)), stats.norm.ppf(stats.t.cdf(t, df)))


@pytest.fixture(scope="module")
def problem():
    return _palm_problem()


def _one_sample_t(data):
    y = data.astype(np.float64)
    return y.mean(0) / (y.std(0, ddof=1) / np.sqrt(y.shape[0]))


def test_t_map_equals_palm(problem):
    import voxstats

    mesh, mask, data = problem
    res = voxstats.permuted_glm(data[:, mask], np.ones((N_SUBJECTS, 1)), [1.0], n_perm=1)
    t = np.zeros(mesh.n_vertices)
    t[mask] = res[0].stat
    vertices = [row[0] for row in PALM]
    np.testing.assert_allclose(t[vertices], [row[1] for row in PALM], rtol=2e-7, atol=2e-7)


def test_palm_tfce_is_the_stepped_area_weighted_sum_on_z(problem):
    """Our reference in PALM's convention reproduces PALM's TFCE map (float32 output)."""
    mesh, mask, data = problem
    kept = np.flatnonzero(mask)
    adjacency = mesh.adjacency.tocsr()[kept][:, kept]
    z = _t_to_z(_one_sample_t(data[:, mask]), N_SUBJECTS - 1)
    palm = weighted_tfce_reference(z, adjacency, mesh.vertex_areas[kept], E=1.0, H=2.0, two_sided=False,
                                   mode="palm")
    where = np.searchsorted(kept, [row[0] for row in PALM if mask[row[0]]])
    want = [row[2] for row in PALM if mask[row[0]]]
    np.testing.assert_allclose(palm[where], want, rtol=3e-7, atol=1e-4)


def _masker(mesh, mask):
    from voxstats.surface_io import SurfaceFormat, SurfaceMasker

    return SurfaceMasker(mesh=mesh, mask=mask, areas=mesh.vertex_areas, fmt=SurfaceFormat("gifti", ".func.gii"))


def test_voxel_and_cluster_fwe_equal_palm_under_exhaustive_sign_flipping(problem):
    """All 256 sign flips: max-statistic FWE p and cluster-extent FWE p are PALM's exactly.

    PALM thresholds z >= 2.3; on t that is t >= t_7(Phi(2.3)), the same vertices.
    """
    import voxstats

    mesh, mask, data = problem
    t_threshold = float(stats.t.isf(stats.norm.sf(2.3), N_SUBJECTS - 1))
    res = voxstats.permuted_glm(data[:, mask], np.ones((N_SUBJECTS, 1)), [1.0], mask=_masker(mesh, mask),
                                n_perm=256, two_sided=False, cluster_threshold=t_threshold, rng=0)
    c = res[0]
    assert res.exhaustive and res.n_perm == 256
    where = {v: k for k, v in enumerate(np.flatnonzero(mask))}
    rows = [row for row in PALM if mask[row[0]]]
    index = [where[row[0]] for row in rows]
    np.testing.assert_array_equal(c.p_fwe[index], [row[4] for row in rows])
    assert c.p_fwe.min() == PALM_MIN_T_FWE
    np.testing.assert_array_equal(c.cluster_extent_p_fwe[index], [row[6] for row in rows])
    # the largest cluster's area (mm²), as PALM writes it (float32)
    assert c.null_max_extent[0] == pytest.approx(661.40344, rel=1e-7)


def test_exact_tfce_fwe_close_to_palm(problem):
    """Exact area-weighted TFCE on z (PALM's statistic) over the 256 flips: FWE p within PALM's step error."""
    import voxstats

    mesh, mask, data = problem
    kept = np.flatnonzero(mask)
    adjacency = mesh.adjacency.tocsr()[kept][:, kept]
    areas = mesh.vertex_areas[kept]
    y = data[:, mask].astype(np.float64)
    maxima = []
    for signs in itertools.product([1.0, -1.0], repeat=N_SUBJECTS):
        z = _t_to_z(_one_sample_t(y * np.array(signs)[:, None]), N_SUBJECTS - 1)
        enhanced = voxstats.tfce(z, connectivity=adjacency, weights=areas, E=1.0, H=2.0, two_sided=False)
        maxima.append(enhanced.max())
        if len(maxima) == 1:
            observed = enhanced
    p = (np.asarray(maxima)[None, :] >= observed[:, None]).mean(axis=1)
    rows = [row for row in PALM if mask[row[0]]]
    index = np.searchsorted(kept, [row[0] for row in rows])
    # the TFCE values themselves: PALM's 100-step Riemann sum is within 3 % where TFCE is large
    strong = np.array([row[2] > 0.3 * 6974.118 for row in rows])
    np.testing.assert_allclose(observed[index][strong], np.array([row[2] for row in rows])[strong], rtol=0.03)
    np.testing.assert_allclose(p[index], [row[3] for row in rows], atol=3 / 256)
    assert abs(int((p < 0.05).sum()) - PALM_N_TFCE_FWE) <= 0.05 * PALM_N_TFCE_FWE
