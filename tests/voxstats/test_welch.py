"""v and G (voxstats.welch) against SciPy, statsmodels and the paper's formulas written out."""

import numpy as np
import pytest
from scipy import linalg, special, stats
from statsmodels.stats.oneway import anova_oneway

from voxstats.design import make_contrasts, make_design
from voxstats.glm import contrast_statistic
from voxstats.welch import (auto_variance_groups, g_to_z, make_variance_groups, residual_dof,
                            welch_statistic)


def _slow_g(y, m, c, groups):
    """Winkler et al. (2014) Eqs. 6-7 with explicit n x n matrices, one voxel at a time."""
    n = m.shape[0]
    c = np.atleast_2d(c)
    s = c.shape[0]
    r = np.eye(n) - m @ linalg.pinv(m)
    labels = np.unique(groups)
    out_g, out_nu = [], []
    for v in range(y.shape[1]):
        psi = linalg.lstsq(m, y[:, v])[0]
        e = r @ y[:, v]
        w = np.zeros(n)
        for g in labels:
            sel = groups == g
            w[sel] = np.trace(r[np.ix_(sel, sel)]) / (e[sel] @ e[sel])
        big_w = np.diag(w)
        total = 0.0
        for g in labels:
            sel = groups == g
            total += (1 / np.sum(np.diag(r)[sel])) * (1 - np.sum(w[sel]) / np.trace(big_w)) ** 2
        lam = 1 + 2 * (s - 1) / (s * (s + 2)) * total
        cpsi = c @ psi
        cov = c @ np.linalg.inv(m.T @ big_w @ m) @ c.T
        out_g.append(cpsi @ np.linalg.solve(cov, cpsi) / (lam * s))
        out_nu.append(s * (s + 2) / (3 * total))
    return np.array(out_g), np.array(out_nu)


@pytest.mark.parametrize("sizes,sds", [((4, 5), (1.0, 3.0)), ((10, 30), (2.0, 0.5)), ((3, 3), (1.0, 1.0))])
def test_two_groups_equal_welch_t_test(rng, sizes, sds):
    n1, n2 = sizes
    g = np.r_[np.zeros(n1), np.ones(n2)]
    y = rng.standard_normal((n1 + n2, 40)) * np.where(g == 1, sds[1], sds[0])[:, None] + 0.3 * g[:, None]
    cell_means, intercept = np.column_stack([1 - g, g]), np.column_stack([np.ones(n1 + n2), g])
    for design, contrast in ((cell_means, [1.0, -1.0]), (intercept, [0.0, -1.0])):
        v, nu = welch_statistic(y, design, [contrast], g)
        ref = stats.ttest_ind(y[g == 0], y[g == 1], equal_var=False)
        np.testing.assert_allclose(v, ref.statistic, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(nu, ref.df, rtol=1e-10)


@pytest.mark.parametrize("k", [3, 4])
def test_one_way_g_equals_welch_anova(rng, k):
    sizes = [5, 7, 9, 6][:k]
    g = np.repeat(np.arange(k), sizes)
    y = rng.standard_normal((g.size, 20)) * np.array([1.0, 2.0, 4.0, 0.7])[g][:, None]
    design = (g[:, None] == np.arange(k)).astype(float)
    contrast = np.eye(k)[:-1] - np.eye(k)[1:]  # all differences: rank k - 1
    gstat, nu = welch_statistic(y, design, contrast, g)
    for j in range(y.shape[1]):
        ref = anova_oneway(y[:, j], g, use_var="unequal")
        assert gstat[j] == pytest.approx(ref.statistic, rel=1e-10)
        assert nu[j] == pytest.approx(ref.df[1], rel=1e-10)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_g_with_nuisance_equals_the_formulas_written_out(rng, rank):
    n = 24
    groups = np.repeat([0, 1, 2], [6, 8, 10])
    x = np.column_stack([np.ones(n), rng.standard_normal((n, 3)), (groups == 1).astype(float)])
    y = rng.standard_normal((n, 6)) * np.array([1.0, 2.5, 0.6])[groups][:, None]
    c = np.eye(5)[1:1 + rank]
    stat, nu = welch_statistic(y, x, c, groups)
    ref_g, ref_nu = _slow_g(y, x, c, groups)
    expected = ref_g if rank > 1 else np.sign(c[0] @ linalg.lstsq(x, y)[0]) * np.sqrt(ref_g)
    np.testing.assert_allclose(stat, expected, rtol=1e-9)
    np.testing.assert_allclose(nu, ref_nu, rtol=1e-9)


def test_rank_one_f_contrast_gives_v_squared(rng):
    n = 15
    groups = np.repeat([0, 1], [7, 8])
    design = make_design(np.column_stack([np.ones(n), groups, rng.standard_normal(n)]))
    (t_con, f_con) = make_contrasts([[0, 1, 0]], design, f_contrasts=[[[0, 1, 0]]])
    y = rng.standard_normal((n, 10))
    v, nu_v = welch_statistic(y, design, t_con, groups)
    g, nu_g = welch_statistic(y, design, f_con, groups)
    np.testing.assert_allclose(g, v**2, rtol=1e-10)
    np.testing.assert_allclose(nu_g, nu_v, rtol=1e-12)


def test_one_group_gives_t_and_f(rng):
    n = 20
    design = make_design(np.column_stack([np.ones(n), rng.standard_normal((n, 2))]))
    t_con, f_con = make_contrasts([[0, 1, 0]], design, f_contrasts=[[[0, 1, 0], [0, 0, 1]]])
    y = rng.standard_normal((n, 12))
    one = np.zeros(n)
    for con in (t_con, f_con):
        stat, nu = welch_statistic(y, design, con, one)
        np.testing.assert_allclose(stat, contrast_statistic(y, design, con)[0], rtol=1e-10)
        assert np.all(np.isinf(nu))


def test_invariant_to_the_parametrisation(rng):
    n = 18
    groups = np.repeat([0, 1, 2], 6)
    m = np.column_stack([np.ones(n), rng.standard_normal((n, 2)), groups == 2]).astype(float)
    c = np.array([[0, 1, 0, 0], [0, 0, 1, 0]], dtype=float)
    mix = rng.standard_normal((4, 4)) + 4 * np.eye(4)
    y = rng.standard_normal((n, 8))
    a = welch_statistic(y, m, c, groups)
    b = welch_statistic(y, m @ mix, c @ mix, groups)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-9)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-9)


def test_constant_voxels_are_zero(rng):
    g = np.repeat([0, 1], 5)
    y = rng.standard_normal((10, 3))
    y[:, 1] = 4.0
    y[g == 0, 2] = 1.0  # one group without residual variance
    stat, _ = welch_statistic(y, np.column_stack([1 - g, g]), [[1, -1]], g)
    assert stat[0] != 0 and stat[1] == 0 and stat[2] == 0


def test_groups_without_residual_dof_are_refused():
    g = np.r_[0, 1, 1, 1, 2, 2, 2]
    design = (g[:, None] == np.arange(3)).astype(float)  # group 0 has one subject and its own mean
    with pytest.raises(ValueError, match=r"groups \[0\] have no residual degrees of freedom"):
        residual_dof(design, make_variance_groups(g, 7))


def test_variance_group_labels():
    groups = make_variance_groups(["site-b", "site-a", "site-b", "site-c"], 4)
    assert groups.labels == ("site-b", "site-a", "site-c")
    np.testing.assert_array_equal(groups.codes, [0, 1, 0, 2])
    np.testing.assert_array_equal(groups.sizes, [2, 1, 1])
    with pytest.raises(ValueError, match="one label per subject"):
        make_variance_groups([1, 2, 3], 4)
    with pytest.raises(ValueError, match="NaN"):
        make_variance_groups([1.0, np.nan, 2.0, 1.0], 4)


def test_auto_groups_as_palm_documents():
    blocks = [1, 1, 1, 1, 2, 2, 2]  # PALM docs, "Data exchangeable within block"
    np.testing.assert_array_equal(auto_variance_groups(blocks), [0, 0, 0, 0, 1, 1, 1])
    whole = [1, 1, 1, 2, 2, 2]  # "Blocks of data exchangeable as a whole": 1 2 3 1 2 3
    np.testing.assert_array_equal(auto_variance_groups(whole, whole_blocks=True), [0, 1, 2, 0, 1, 2])


def test_g_to_z_against_closed_forms():
    t = np.array([-30.0, -2.5, -1e-3, 0.0, 0.4, 3.0, 50.0])
    # Cauchy (df = 1): P(T > t) = atan2(1, t) / pi
    np.testing.assert_allclose(g_to_z(t, 1, 1.0), -special.ndtri(np.arctan2(1, t) / np.pi), rtol=1e-9, atol=1e-12)
    # F(2, nu): P(F > f) = (1 + 2 f / nu) ** (-nu / 2)
    f, nu = np.array([0.01, 0.5, 3.0, 40.0]), 7.5
    upper = (1 + 2 * f / nu) ** (-nu / 2)
    np.testing.assert_allclose(g_to_z(f, 2, nu), -special.ndtri(upper), rtol=1e-9)
