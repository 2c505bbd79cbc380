"""Null calibration: on many small null datasets the FWE rejection rate at 0.05 is nominal.

With the identity in the null and n_perm rearrangements, ``p_fwe <= 0.05`` happens
when the observed maximum ranks in the top 5 % of the null maxima, which under
exchangeability has probability exactly 0.05. Over ``N_SETS`` independent datasets
the number of rejections is Binomial(N_SETS, 0.05); it must fall inside the
central 95 % interval.
"""

import numpy as np
import pytest
from scipy import ndimage, stats

from voxstats import permuted_glm

N_SETS = 200
N_PERM = 100
ALPHA = 0.05


def _maps(rng, shape, n):
    return np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) for _ in range(n)]).reshape(n, -1)


def _dataset(scenario, rng, *, effect=0.0):
    """(data, design, contrast, options) of one dataset; ``effect`` plants a signal."""
    if scenario == "freedman-lane 3D":
        shape, n = (5, 5, 4), 14
        x = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
        y = _maps(rng, shape, n) + 0.8 * np.outer(x[:, 2], np.ones(np.prod(shape)))  # strong nuisance
        contrast, options = [0, 1, 0], dict(connectivity=6)
    elif scenario == "two groups 2D":
        shape, n = (8, 8), 12
        x = np.column_stack([np.ones(n), np.repeat([0.0, 1.0], n // 2)])
        y = _maps(rng, shape, n)
        contrast, options = [0, 1], dict(connectivity=8)
    elif scenario == "sign-flip 2D fsl":
        shape, n = (8, 8), 12
        x = np.ones((n, 1))
        y = _maps(rng, shape, n)
        contrast, options = [1], dict(connectivity=4, tfce_mode="fsl")
    else:
        raise AssertionError(scenario)
    if effect:
        blob = np.zeros(shape)
        blob[(slice(1, 4),) * len(shape)] = effect
        y = y + np.outer(x[:, 1] if x.shape[1] > 1 else x[:, 0], blob.ravel())
    return y, x, contrast, dict(mask=np.ones(shape, bool), **options)


def _rejections(scenario, n_sets, *, effect=0.0, seed=0):
    counts = np.zeros(2, dtype=int)
    for k in range(n_sets):
        rng = np.random.default_rng([seed, k])
        y, x, contrast, options = _dataset(scenario, rng, effect=effect)
        res = permuted_glm(y, x, contrast, n_perm=N_PERM, tfce=True, rng=rng, **options)
        assert res.n_perm == N_PERM and not res.exhaustive
        c = res[0]
        counts += [c.p_fwe.min() <= ALPHA, c.tfce_p_fwe.min() <= ALPHA]
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["freedman-lane 3D", "two groups 2D", "sign-flip 2D fsl"])
def test_fwe_rejection_rate_is_nominal(scenario):
    low, high = stats.binom.interval(0.95, N_SETS, ALPHA)
    voxel, enhanced = _rejections(scenario, N_SETS)
    assert low <= voxel <= high, f"max-statistic FWE: {voxel} rejections of {N_SETS}, band [{low}, {high}]"
    assert low <= enhanced <= high, f"TFCE FWE: {enhanced} rejections of {N_SETS}, band [{low}, {high}]"


@pytest.mark.parametrize("scenario", ["freedman-lane 3D", "two groups 2D", "sign-flip 2D fsl"])
def test_planted_effect_is_found(scenario):
    # the calibration above would also pass for a test that never rejects
    voxel, enhanced = _rejections(scenario, 10, effect=1.0, seed=1)
    assert voxel >= 8 and enhanced >= 8
