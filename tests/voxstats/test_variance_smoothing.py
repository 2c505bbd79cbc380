"""Variance smoothing (randomise -v): the pseudo-t against an independent float64 reference."""

import itertools
import sys

import numpy as np
import pytest
from scipy import ndimage

from voxstats import permuted_glm
from voxstats.variance_smoothing import VarianceSmoother, fsl_gaussian_kernel

randomise_module = sys.modules["voxstats.randomise"]


def _kernel_3d(sigma_mm, voxel_size):
    """FSL's smooth() kernel written out as a full 3D array (newimage: radius 2*int(s-0.001)+3)."""
    axes = []
    for d in voxel_size:
        s = sigma_mm / d
        r = int(s - 0.001) * 2 + 3
        k = np.array([np.exp(-(j * j) / (2 * s * s)) for j in range(-r, r + 1)])
        axes.append(k / k.sum())
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


def _smoothed(values, mask, kernel):
    vol = np.zeros(mask.shape)
    vol[mask] = values
    return ndimage.convolve(vol, kernel, mode="constant")[mask]


def test_kernel_is_fsl_smooth():
    k = fsl_gaussian_kernel(2.5)  # 2.5 voxels: radius 2*2+3 = 7, 15 taps
    assert k.size == 15 and k.sum() == pytest.approx(1.0) and k[7] == k.max()
    np.testing.assert_allclose(k[8] / k[7], np.exp(-1 / (2 * 2.5 ** 2)))
    assert fsl_gaussian_kernel(0.5).size == 2 * 3 + 1


def test_smoother_matches_a_3d_convolution():
    rng = np.random.default_rng(0)
    mask = np.zeros((9, 8, 7), bool)
    mask[1:8, 2:7, 1:6] = True
    mask[4, 4, 3] = False
    values = rng.uniform(0.5, 2, (3, mask.sum()))
    smoother = VarianceSmoother(mask, 5.0, (2.0, 2.5, 3.0))
    kernel = _kernel_3d(5.0, (2.0, 2.5, 3.0))
    norm = _smoothed(np.ones(mask.sum()), mask, kernel)
    for row, got in zip(values, smoother.smooth(values)):
        np.testing.assert_allclose(got, _smoothed(row, mask, kernel) / norm, rtol=1e-12)


def test_pseudo_t_and_its_permutation_p_against_brute_force(monkeypatch):
    """Exhaustive 4+4 design: every relabelling's pseudo-t by lstsq and a 3D convolution."""
    rng = np.random.default_rng(1)
    shape = (5, 4, 3)
    mask = np.ones(shape, bool)
    n = 8
    group = np.repeat([1.0, 0.0], 4)
    y = rng.standard_normal((n, mask.sum())) * rng.uniform(0.5, 2, mask.sum())
    y[:, :12] += 1.2 * group[:, np.newaxis]
    x = np.column_stack([np.ones(n), group])
    relabels = [np.isin(np.arange(n), m) for m in itertools.combinations(range(n), 4)]
    relabels.sort(key=lambda a: not np.array_equal(a, group.astype(bool)))
    perms = []
    for a in relabels:  # data permutation realising the relabelling: design row i <- subject inv[i]
        inv = np.empty(n, dtype=np.int64)
        inv[a], inv[~a] = np.arange(4), np.arange(4, 8)
        perm = np.empty(n, dtype=np.int64)
        perm[inv] = np.arange(n)
        perms.append(perm)

    class Schedule:
        permutations = np.array(perms)
        signs = np.ones((70, n), dtype=np.int8)
        n_perm, exhaustive, n_possible = 70, True, 70
        permute, sign_flip, rule = True, False, "the 70 relabellings of a 4+4 design"

        def rows(self, start, stop):
            return self.permutations[start:stop], self.signs[start:stop]

    monkeypatch.setattr(randomise_module, "make_schedule", lambda *a, **k: Schedule())
    res = permuted_glm(y, x, [0, 1], mask=mask, n_perm=70, variance_smoothing=4.0,
                       voxel_size=(2.0, 2.0, 2.0), two_sided=False, rng=0)
    c = res[0]
    kernel = _kernel_3d(4.0, (2.0, 2.0, 2.0))
    norm = _smoothed(np.ones(mask.sum()), mask, kernel)
    null = []
    for a in relabels:
        xp = np.column_stack([np.ones(n), a.astype(float)])
        beta, *_ = np.linalg.lstsq(xp, y, rcond=None)
        resid = y - xp @ beta
        var = (resid ** 2).sum(0) / (n - 2)
        scale = np.linalg.inv(xp.T @ xp)[1, 1]
        null.append(beta[1] / np.sqrt(scale * _smoothed(var, mask, kernel) / norm))
    null = np.array(null)
    np.testing.assert_allclose(c.stat, null[0], rtol=1e-5)
    assert not np.allclose(c.stat, null[0] * 0 + (y[group == 1].mean(0) - y[group == 0].mean(0)))
    np.testing.assert_array_equal(np.rint(c.p * 70), np.sum(null >= null[0] - 1e-9 * np.abs(null[0]), axis=0))
    np.testing.assert_array_equal(np.rint(c.p_fwe * 70),
                                  [np.sum(null.max(axis=1) >= o - 1e-9 * abs(o)) for o in null[0]])
    assert res.settings["variance_smoothing"] == 4.0


def test_variance_smoothing_needs_a_grid():
    with pytest.raises(ValueError, match=r"variance_smoothing needs the voxels' grid"):
        permuted_glm(np.random.default_rng(0).normal(size=(6, 4)), np.ones((6, 1)), [1],
                     variance_smoothing=2.0, n_perm=10)
    with pytest.raises(ValueError, match=r"'variance_smoothing' parameter: expected a sigma > 0 mm"):
        VarianceSmoother(np.ones((3, 3, 3), bool), 0.0, (1, 1, 1))
