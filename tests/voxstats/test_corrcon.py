"""FWE correction across contrasts (PALM -corrcon)."""

import numpy as np
import pytest

from voxstats import make_schedule, permuted_glm
from voxstats.design import make_contrasts, make_design
from voxstats.glm import contrast_statistic, effect_basis
from voxstats.welch import g_to_z


@pytest.fixture
def volume(rng, smooth_noise):
    shape = (7, 6, 5)
    n = 12
    x = np.column_stack([np.ones(n), np.repeat([0.0, 1.0], 6), rng.standard_normal(n)])
    y = smooth_noise(rng, shape, n, sigma=1.0) * 2 + 0.8 * x[:, 1:2] * (np.arange(np.prod(shape)) < 60)
    return y.astype(np.float32), x, np.ones(shape, bool)


def test_opposite_contrasts_give_the_two_sided_fwe(volume):
    """max over c and -c of the one-sided maxima is the two-sided maximum, voxels and TFCE and clusters."""
    y, x, mask = volume
    options = dict(mask=mask, n_perm=100, rng=5, tfce=True, cluster_threshold=2.0)
    pair = permuted_glm(y, x, {"up": [0, 1, 0], "down": [0, -1, 0]}, two_sided=False,
                        correct_across_contrasts=True, **options)
    both = permuted_glm(y, x, [[0, 1, 0]], two_sided=True, **options)[0]
    up, down = pair.contrasts
    positive, negative = up.stat > 0, up.stat < 0
    np.testing.assert_array_equal(pair.null_max_across_contrasts["stat"], both.null_max)
    np.testing.assert_array_equal(up.p_cfwe[positive], both.p_fwe[positive])
    np.testing.assert_array_equal(down.p_cfwe[negative], both.p_fwe[negative])
    np.testing.assert_array_equal(up.tfce_p_cfwe[positive], both.tfce_p_fwe[positive])
    np.testing.assert_array_equal(down.tfce_p_cfwe[negative], both.tfce_p_fwe[negative])
    inside = positive & (up.cluster_labels > 0)
    np.testing.assert_array_equal(up.cluster_extent_p_cfwe[inside], both.cluster_extent_p_fwe[inside])
    np.testing.assert_array_equal(up.cluster_mass_p_cfwe[inside], both.cluster_mass_p_fwe[inside])
    for c in pair.contrasts:
        assert np.all(c.p_cfwe >= c.p_fwe) and np.all(c.tfce_p_cfwe >= c.tfce_p_fwe)
    assert both.p_cfwe is None and permuted_glm(y, x, [[0, 1, 0]], n_perm=5).null_max_across_contrasts is None


def test_mixed_kinds_are_corrected_on_z(rng):
    n = 14
    x = np.column_stack([np.ones(n), rng.standard_normal((n, 2))])
    y = (rng.standard_normal((n, 30)) + 0.9 * x[:, 1:2] * (np.arange(30) < 5)).astype(np.float32)
    design = make_design(x)
    t_con = {"t": [0, 1, 0]}
    f_con = {"F": [[0, 1, 0], [0, 0, 1]]}
    res = permuted_glm(y, x, t_con, f_contrasts=f_con, n_perm=120, rng=2, correct_across_contrasts=True)
    schedule = make_schedule(n, 120, rng=2)
    z_max, observed = [], []
    for contrast in make_contrasts(t_con, design, f_contrasts=f_con):
        nuisance = effect_basis(design, contrast).nuisance
        fitted = nuisance @ (nuisance.T @ y.astype(np.float64))
        maps = []
        for perm in schedule.permutations:
            stat = contrast_statistic((y - fitted)[perm] + fitted, design, contrast)[0]
            z = g_to_z(stat, contrast.rank, design.df, kind=contrast.kind)
            maps.append(np.abs(z) if contrast.kind == "t" else z)
        maps = np.array(maps)
        z_max.append(maps.max(axis=1))
        observed.append(maps[0])
    combined = np.max(z_max, axis=0)
    np.testing.assert_allclose(res.null_max_across_contrasts["stat"], combined, rtol=1e-6)
    for result, obs, own in zip(res.contrasts, observed, z_max):
        assert result.kind in ("t", "F")
        np.testing.assert_allclose(result.null_max, own, rtol=1e-6)  # the engine compared z
        tie = obs - 1e-9 * np.abs(obs)
        np.testing.assert_array_equal(result.p_cfwe, np.mean(combined[:, None] >= tie, axis=0))
        np.testing.assert_allclose(result.z, obs if result.kind == "F" else g_to_z(
            result.stat, 1, design.df), rtol=1e-9)


def test_same_kind_contrasts_keep_their_statistic(rng):
    n = 10
    x = np.column_stack([np.ones(n), rng.standard_normal((n, 2))])
    y = rng.standard_normal((n, 8)).astype(np.float32)
    res = permuted_glm(y, x, [[0, 1, 0], [0, 0, 1]], n_perm=50, rng=0, correct_across_contrasts=True)
    plain = permuted_glm(y, x, [[0, 1, 0], [0, 0, 1]], n_perm=50, rng=0)
    for a, b in zip(res.contrasts, plain.contrasts):
        np.testing.assert_array_equal(a.null_max, b.null_max)  # t, not z
        assert a.z is None
    assert res.settings["zstat"] is False


def test_with_variance_groups(rng):
    n = 16
    groups = np.repeat([0, 1], [6, 10])
    x = np.column_stack([1 - groups, groups, rng.standard_normal(n)])
    y = (rng.standard_normal((n, 12)) * np.where(groups == 1, 2.0, 1.0)[:, None]).astype(np.float32)
    res = permuted_glm(y, x, [[1, -1, 0]], f_contrasts=[[[1, -1, 0], [0, 0, 1]]], variance_groups=groups,
                       n_perm=80, rng=4, correct_across_contrasts=True)
    combined = np.maximum(res[0].null_max, res[1].null_max)
    np.testing.assert_array_equal(res.null_max_across_contrasts["stat"], combined)
    assert [c.kind for c in res.contrasts] == ["v", "G"]
    for c in res.contrasts:
        assert np.all(c.p_cfwe >= c.p_fwe)
