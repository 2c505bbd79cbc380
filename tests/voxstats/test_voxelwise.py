"""Voxel-wise regressors (randomise --vxl/--vxf) against per-voxel statsmodels and explicit refits."""

import nibabel as nib
import numpy as np
import pytest
import statsmodels.api as sm

from voxstats import make_schedule, permuted_glm, randomise
from voxstats.design import make_contrasts, make_design
from voxstats.voxelwise import voxelwise_basis


def _problem(seed=0, n=14, n_vox=30):
    rng = np.random.default_rng(seed)
    group = np.repeat([0.0, 1.0], n // 2)
    age = rng.uniform(20, 60, n)
    gm = rng.uniform(0.2, 0.8, (n, n_vox))  # the voxel-wise regressor
    y = 1.0 + 0.8 * group[:, None] + 2.0 * gm + 0.01 * age[:, None] + rng.standard_normal((n, n_vox))
    # design file: the placeholder column holds the mean grey matter (as FSL users often do)
    x = np.column_stack([np.ones(n), group, age, gm.mean(axis=1)])
    return y, x, gm


@pytest.mark.parametrize("weights", [[0, 1, 0, 0], [0, 0, 0, 1]])
def test_observed_t_matches_statsmodels_per_voxel(weights):
    y, x, gm = _problem()
    res = permuted_glm(y, x, weights, voxelwise_evs={3: gm}, n_perm=30, rng=0)
    c = res[0]
    for v in range(y.shape[1]):
        xv = x.copy()
        xv[:, 3] = gm[:, v]
        fit = sm.OLS(y[:, v], xv).fit()
        assert c.stat[v] == pytest.approx(float(fit.t_test(np.array([weights])).tvalue.squeeze()), rel=2e-5)
    assert res.df == y.shape[0] - 4
    # an F contrast too
    f = permuted_glm(y, x, None, f_contrasts=[[[0, 1, 0, 0], [0, 0, 0, 1]]], voxelwise_evs={3: gm},
                     n_perm=10, rng=0)[0]
    xv = x.copy()
    xv[:, 3] = gm[:, 5]
    want = sm.OLS(y[:, 5], xv).fit().f_test(np.array([[0, 1, 0, 0], [0, 0, 0, 1]])).fvalue
    assert f.stat[5] == pytest.approx(float(np.squeeze(want)), rel=2e-5)


def test_permuted_statistics_match_freedman_lane_refits():
    """Each rearrangement: P R_z Y + H_z Y refitted with the voxel's own design."""
    y, x, gm = _problem(1, n=12, n_vox=8)
    weights = np.array([0, 1, 0, 0.0])
    res = permuted_glm(y, x, weights, voxelwise_evs={3: gm}, n_perm=25, rng=4, two_sided=False)
    schedule = make_schedule(12, 25, rng=4)
    design = make_design(x)
    (con,) = make_contrasts(weights, design)
    maxima = []
    for i in range(25):
        perm, _ = schedule.rows(i, i + 1)
        t = []
        for v in range(8):
            xv = x.copy()
            xv[:, 3] = gm[:, v]
            z = xv[:, [0, 2, 3]]  # nuisance: the columns the contrast does not weight
            fitted = z @ np.linalg.lstsq(z, y[:, v], rcond=None)[0]
            star = (y[:, v] - fitted)[perm[0]] + fitted
            t.append(float(sm.OLS(star, xv).fit().t_test(weights[None]).tvalue.squeeze()))
        maxima.append(max(t))
    np.testing.assert_allclose(res[0].null_max, maxima, rtol=1e-4)


def test_by_name_and_from_images(tmp_path):
    y, x, gm = _problem(2, n=10, n_vox=24)
    shape = (4, 3, 2)
    affine = np.diag([2.0, 2, 2, 1])
    imgs = [nib.Nifti1Image(row.reshape(shape).astype(np.float32), affine) for row in y]
    ev_path = tmp_path / "gm.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(gm.reshape((10,) + shape), 0, -1), affine), ev_path)
    import pandas as pd
    frame = pd.DataFrame(x, columns=["one", "group", "age", "gm"])
    a = randomise(imgs, frame, {"g": {"group": 1.0}}, voxelwise_evs={"gm": str(ev_path)}, n_perm=20, rng=0)
    b = permuted_glm(y.astype(np.float32), x, [0, 1, 0, 0], voxelwise_evs={3: gm.astype(np.float32)},
                     n_perm=20, rng=0)
    np.testing.assert_allclose(a[0].stat, b[0].stat, rtol=1e-5)
    np.testing.assert_array_equal(a[0].p, b[0].p)


def test_rank_deficient_voxels_get_zero():
    y, x, gm = _problem(3, n=10, n_vox=6)
    gm[:, 2] = 0.5  # constant: collinear with the intercept at this voxel
    basis = voxelwise_basis(make_design(x, allow_rank_deficient=True),
                            make_contrasts([0, 1, 0, 0], make_design(x))[0], {3: gm}, 6)
    assert not basis.usable[2] and basis.usable[[0, 1, 3, 4, 5]].all()
    c = permuted_glm(y, x, [0, 1, 0, 0], voxelwise_evs={3: gm}, n_perm=20, rng=0)[0]
    assert c.stat[2] == 0 and c.p[2] == 1 and c.p_fwe[2] == 1


def test_bad_voxelwise_evs():
    y, x, gm = _problem(4, n=10, n_vox=6)
    with pytest.raises(ValueError, match=r"voxelwise_evs\[3\]: expected shape \(10, 6\)"):
        permuted_glm(y, x, [0, 1, 0, 0], voxelwise_evs={3: gm[:, :5]}, n_perm=10)
    with pytest.raises(ValueError, match=r"voxelwise_evs: unknown regressor 'gmx'"):
        permuted_glm(y, x, [0, 1, 0, 0], voxelwise_evs={"gmx": gm}, n_perm=10)
