"""Null calibration of PALM's designs: where the plain test fails and the remedy holds.

Over independent null datasets the FWE rejection rate at 0.05 of a valid test
falls in the central 95 % band of Binomial(N_SETS, 0.05). Unequal variances in
unbalanced groups make the pooled t anti-conservative under free permutation
(Welch's v is asymptotically valid); twins sharing a family component make
free permutation anti-conservative (permuting within the family tree is
exact). ``bench/calibrate_palm_designs.py`` runs the same scenarios with more
datasets.
"""

import numpy as np
import pytest
from scipy import ndimage, stats

from voxstats import permuted_glm
from voxstats.families import blocks_from_families

N_SETS = 120
N_PERM = 100
ALPHA = 0.05


def _noise(rng, n):
    maps = np.stack([ndimage.gaussian_filter(rng.standard_normal((8, 8)), 1.0) for _ in range(n)]).reshape(n, -1)
    return maps / maps.std()


def _unequal_variances(rng):
    group = np.repeat([0.0, 1.0], [20, 60])
    y = _noise(rng, group.size) * np.where(group == 0, 2.0, 1.0)[:, None]
    return y, np.column_stack([1 - group, group]), [1, -1], {}, {"variance_groups": group}


def _twins(rng):
    family = np.repeat(np.arange(20), 2)
    blocks = blocks_from_families(np.arange(family.size), family, family + 1000, ["MZ"] * family.size)
    y = np.sqrt(0.8) * _noise(rng, 20)[family] + np.sqrt(0.2) * _noise(rng, family.size)
    trait = rng.standard_normal(20)[family] + 0.3 * rng.standard_normal(family.size)
    return y, np.column_stack([np.ones(family.size), trait]), [0, 1], {}, {"exchangeability_blocks": blocks}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [_unequal_variances, _twins])
def test_plain_test_fails_and_palm_design_holds(scenario):
    low, high = stats.binom.interval(0.95, N_SETS, ALPHA)
    counts = np.zeros(2, dtype=int)
    for k in range(N_SETS):
        rng = np.random.default_rng([17, k])
        y, x, contrast, plain, remedy = scenario(rng)
        for j, options in enumerate((plain, remedy)):
            res = permuted_glm(y.astype(np.float32), x, [contrast], n_perm=N_PERM, rng=k, **options)
            counts[j] += res[0].p_fwe.min() <= ALPHA
    assert counts[0] > high, f"plain test: {counts[0]} rejections of {N_SETS}, expected above {high}"
    assert low <= counts[1] <= high, f"remedy: {counts[1]} rejections of {N_SETS}, band [{low}, {high}]"
