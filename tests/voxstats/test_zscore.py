"""z of t and F with real degrees of freedom (voxstats.zscore): exact kernels and tables."""

import numpy as np
import pytest
from scipy import special, stats

from voxstats import _zscore_numba, zscore
from voxstats.welch import g_to_z
from voxstats.zscore import to_z, z_table


def _scipy_z(x, df1, df2, kind):
    if kind == "t":
        return -special.ndtri_exp(stats.t.logsf(np.abs(x), df2)) * np.sign(x)
    upper, lower = stats.f.logsf(x, df1, df2), stats.f.logcdf(x, df1, df2)
    return np.where(upper < lower, -special.ndtri_exp(upper), special.ndtri_exp(lower))


@pytest.mark.parametrize("df", [0.7, 1.0, 3.3, 10.0, 119.5, 1000.0])
def test_exact_t_equals_scipy(rng, df):
    t = np.r_[rng.standard_normal(300) * 4, 1e-3, -7.0, 25.0]
    np.testing.assert_allclose(to_z(t, 1, df), _scipy_z(t, 1, df, "t"), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("df1,df2", [(2, 5.5), (3, 20.0), (5, 119.5), (1, 12.0)])
def test_exact_f_equals_scipy(rng, df1, df2):
    f = np.r_[rng.uniform(0, 5, 300) ** 2, 1e-3]
    np.testing.assert_allclose(to_z(f, df1, df2, kind="F"), _scipy_z(f, df1, df2, "F"), rtol=1e-10, atol=1e-12)


def test_far_tails_in_log_space():
    # P(T_1 > t) = atan2(1, t) / pi and P(F(2, nu) > f) = (1 + 2 f / nu)^(-nu / 2), in logs
    t = np.array([1e3, 1e8, 1e150])
    expected = -special.ndtri_exp(np.log(np.arctan2(1, t) / np.pi))
    np.testing.assert_allclose(to_z(t, 1, 1.0), expected, rtol=1e-12)
    f, nu = np.array([2e3, 1e5]), 1000.0  # p ~ 1e-324 and smaller: beyond double precision
    log_p = -(nu / 2) * np.log1p(2 * f / nu)
    np.testing.assert_allclose(to_z(f, 2, nu, kind="F"), -special.ndtri_exp(log_p), rtol=1e-9)
    assert stats.f.sf(f[0], 2, nu) == 0.0  # where SciPy's own p has underflowed


def test_large_df_tends_to_normal_and_chi_square():
    t = np.array([0.5, 2.0, 5.0])
    np.testing.assert_allclose(to_z(t, 1, 1e9), t, rtol=1e-7)
    g = np.array([0.2, 1.0, 6.0])
    expected = -special.ndtri_exp(stats.chi2.logsf(3 * g, 3))
    np.testing.assert_allclose(to_z(g, 3, 1e9, kind="F"), expected, rtol=1e-6)


@pytest.mark.parametrize("kind,df1,lo,hi", [("t", 1, 118.0, 236.0), ("t", 1, 2.0, 40.0), ("F", 2, 8.0, 16.0),
                                             ("F", 1, 30.0, 300.0), ("t", 1, 50.0, 50.0)])
def test_table_error_below_tolerance(rng, kind, df1, lo, hi):
    table = z_table(kind, df1, lo, hi)
    assert table.table.shape[0] >= 4 and table.max_error <= 1e-8
    assert table.log_df == (hi / lo > zscore.LOG_RATIO)
    n = 4000
    x = rng.standard_normal(n) * 4 if kind == "t" else np.exp(rng.uniform(-12, 8, n))
    df2 = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    fast = to_z(x, df1, df2, kind=kind, table=table)
    reference = _scipy_z(x, df1, df2, kind)
    finite = np.isfinite(reference)
    np.testing.assert_allclose(fast[finite], reference[finite], rtol=0, atol=2e-8)
    # outside the grid (|v| > 12, G > 144, df2 out of range) the exact path answers
    far = np.array([13.0, 40.0]) if kind == "t" else np.array([200.0, 5e4])
    np.testing.assert_allclose(to_z(far, df1, lo, kind=kind, table=table),
                               to_z(far, df1, lo, kind=kind), rtol=1e-14)


def test_table_too_large_falls_back_to_exact(monkeypatch):
    monkeypatch.setattr(zscore, "MAX_ENTRIES", 100)
    zscore._build.cache_clear()
    try:
        table = z_table("t", 1, 5.0, 6.0)
    finally:
        zscore._build.cache_clear()
    assert table.table.shape == (0, 0)
    x = np.array([-3.0, 0.5, 2.0])
    np.testing.assert_array_equal(to_z(x, 1, 5.5, table=table), to_z(x, 1, 5.5))


def test_reference_and_kernel_agree_with_g_to_z(rng):
    x = rng.standard_normal(50) * 3
    df2 = rng.uniform(3, 30, 50)
    np.testing.assert_allclose(to_z(x, 1, df2), g_to_z(x, 1, df2), rtol=1e-10, atol=1e-12)


def test_block_conversion_keeps_zeros():
    table = z_table("t", 1, 9.0, 9.0)
    block = np.array([[0.0, 1.5, -2.0], [3.0, 0.0, 0.25]], dtype=np.float32)
    expected = np.where(block == 0, 0.0, to_z(block.astype(np.float64), 1, 9.0))
    args = table.arguments()
    _zscore_numba.to_z_block(block, args[0], 9.0, *args[1:])
    np.testing.assert_allclose(block, expected, rtol=2e-7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="'kind' parameter"):
        z_table("z", 1, 2.0, 3.0)
    with pytest.raises(ValueError, match="degrees of freedom range"):
        z_table("t", 1, 5.0, 2.0)
    with pytest.raises(ValueError, match="'kind' parameter"):
        to_z([1.0], 2, 5.0, kind="t")
    with pytest.raises(ValueError, match="built for kind 't'"):
        to_z([1.0], 2, 5.0, kind="F", table=z_table("t", 1, 4.0, 6.0))
