"""voxstats.glm against statsmodels, and the engine's Freedman-Lane statistics vs explicit refits."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from scipy.linalg import null_space

from voxstats import engine, permuted_glm
from voxstats._reference import permuted_t_reference
from voxstats.design import make_contrasts, make_design
from voxstats.glm import contrast_statistic, effect_basis, f_to_z, glm_estimates
from voxstats.permutation import make_schedule
from voxstats.randomise import make_job


def _problem(seed, n=15, p=4, n_vox=12):
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    y = x @ rng.standard_normal((p, n_vox)) * 0.5 + rng.standard_normal((n, n_vox)) * rng.uniform(0.5, 3, n_vox)
    c = rng.standard_normal(p)
    f = rng.standard_normal((2, p))
    return x, y, c, f


@pytest.mark.parametrize("seed", range(5))
def test_t_and_f_match_statsmodels(seed):
    x, y, c, f = _problem(seed)
    design = make_design(x)
    t_con, f_con = make_contrasts(c, design, f_contrasts=[f])
    t, df = contrast_statistic(y, design, t_con)
    fval, _ = contrast_statistic(y, design, f_con)
    assert df == x.shape[0] - x.shape[1]
    for v in range(y.shape[1]):
        fit = sm.OLS(y[:, v], x).fit()
        assert t[v] == pytest.approx(float(fit.t_test(c[np.newaxis]).tvalue.squeeze()), rel=1e-8)
        assert fval[v] == pytest.approx(float(fit.f_test(f).fvalue), rel=1e-8)
        assert fit.df_resid == df


def test_dataframe_design_matches_statsmodels():
    x, y, _, _ = _problem(11, n=20)
    frame = pd.DataFrame(x, columns=["intercept", "group", "age", "sex"])
    design = make_design(frame)
    t_con, f_con = make_contrasts({"group": 1.0, "age": -0.5}, design,
                                  f_contrasts={"g+a": [[0, 1, 0, 0], [0, 0, 1, 0]]})
    t, _ = contrast_statistic(y, design, t_con)
    fval, _ = contrast_statistic(y, design, f_con)
    for v in range(y.shape[1]):
        fit = sm.OLS(y[:, v], frame).fit()
        assert t[v] == pytest.approx(float(fit.t_test("group - 0.5 * age = 0").tvalue.squeeze()), rel=1e-8)
        assert fval[v] == pytest.approx(float(fit.f_test("group = 0, age = 0").fvalue), rel=1e-8)


@pytest.mark.filterwarnings("ignore:The design matrix is rank-deficient:statsmodels.tools.sm_exceptions.SingularMatrixWarning")
def test_rank_deficient_design_matches_statsmodels_pinv():
    rng = np.random.default_rng(5)
    n = 14
    group = np.repeat([0.0, 1.0], n // 2)
    x = np.column_stack([np.ones(n), group, 1 - group, rng.standard_normal(n)])
    y = rng.standard_normal((n, 6))
    design = make_design(x, allow_rank_deficient=True)
    (t_con,) = make_contrasts([0, 1, -1, 0], design)
    t, df = contrast_statistic(y, design, t_con)
    assert df == n - 3
    for v in range(y.shape[1]):
        fit = sm.OLS(y[:, v], x).fit(method="pinv")
        assert t[v] == pytest.approx(float(fit.t_test([0, 1, -1, 0]).tvalue.squeeze()), rel=1e-8)


def test_degenerate_voxels_give_zero_not_nan():
    rng = np.random.default_rng(2)
    n = 10
    x = np.column_stack([np.ones(n), rng.standard_normal(n)])
    y = rng.standard_normal((n, 5))
    y[:, 0] = 0.0  # all zero
    y[:, 1] = 3.7  # constant
    y[:, 2] = x @ [1.0, 2.0]  # exact fit, zero residual
    design = make_design(x)
    t_con, f_con = make_contrasts([0, 1], design, f_contrasts=[[[0, 1]]])
    for contrast in (t_con, f_con):
        value, _ = contrast_statistic(y, design, contrast)
        assert np.all(np.isfinite(value))
        np.testing.assert_array_equal(value[:3], 0.0)
        assert np.all(value[3:] != 0)


def test_wrong_number_of_subjects():
    design = make_design(np.column_stack([np.ones(6), np.arange(6.0)]))
    (con,) = make_contrasts([0, 1], design)
    with pytest.raises(ValueError, match=r"data has 5 subjects \(rows\) but the design has 6"):
        contrast_statistic(np.ones((5, 3)), design, con)


def test_f_to_z_matches_scipy_and_does_not_saturate():
    f = np.array([0.0, 0.3, 1.0, 4.0, 25.0])
    z = f_to_z(f, 2, 20)
    expected = stats.norm.isf(stats.f.sf(f, 2, 20))
    np.testing.assert_allclose(z[1:], expected[1:], rtol=1e-10)
    assert z[0] == 0
    big = f_to_z(np.array([1e4, 1e5, 1e6]), 1, 30)
    assert np.all(np.isfinite(big)) and np.all(np.diff(big) > 0)
    # F(1, df) is t**2: z of F equals the two-sided z of t
    t = 3.1
    assert f_to_z(np.array([t * t]), 1, 12)[0] == pytest.approx(stats.norm.isf(2 * stats.t.sf(t, 12) / 1), rel=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_effect_basis_partition(seed):
    x, _, c, f = _problem(seed)
    design = make_design(x)
    for contrast in make_contrasts(c, design, f_contrasts=[f]):
        basis = effect_basis(design, contrast)
        b = basis.basis
        np.testing.assert_allclose(b.T @ b, np.eye(b.shape[1]), atol=1e-12)
        assert basis.q == contrast.rank and basis.nuisance.shape[1] == x.shape[1] - contrast.rank
        # together they span the model space
        proj = b @ b.T
        np.testing.assert_allclose(proj @ x, x, atol=1e-10)
        # the nuisance space is the model space under H0: M beta with C beta = 0
        under_h0 = x @ null_space(contrast.weights)
        z = basis.nuisance
        np.testing.assert_allclose(z @ (z.T @ under_h0), under_h0, atol=1e-10)
    # for a t contrast the tested direction points to positive c @ beta
    t_con = make_contrasts(c, design)[0]
    basis = effect_basis(design, t_con)
    y = x @ (np.linalg.pinv(t_con.weights) @ [[1.0]])  # c @ beta = 1 > 0
    assert float(basis.tested[:, 0] @ y[:, 0]) > 0


def _rearranged(y, basis, perm, signs):
    """P R_z Y (with signs) + H_z Y, explicitly."""
    z = basis.nuisance
    fitted = z @ (z.T @ y)
    return (y - fitted)[perm] * signs[:, np.newaxis] + fitted



def _fl_problem(nuisance):
    """Data, design and contrasts; the t contrast's nuisance space is the constant or more."""
    rng = np.random.default_rng(31)
    n = 14
    x = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    y = x @ [[2.0] * 9, [0.8] * 9, [1.5] * 9] + rng.standard_normal((n, 9))
    if nuisance == "constant":
        x = x[:, :2]
    design = make_design(x)
    t_con, f_con = make_contrasts(np.eye(x.shape[1])[1], design,
                                  f_contrasts=[np.eye(x.shape[1])[1:]])
    return y, design, t_con, f_con


CASES = [(nuisance, sign_flip, permute) for nuisance in ("constant", "constant+covariate")
         for sign_flip, permute in ((False, True), (True, False), (True, True))]


@pytest.mark.parametrize("nuisance,sign_flip,permute", CASES)
def test_freedman_lane_t_matches_explicit_refit(nuisance, sign_flip, permute):
    y, design, t_con, _ = _fl_problem(nuisance)
    n = y.shape[0]
    schedule = make_schedule(n, 40, permute=permute, sign_flip=sign_flip, rng=4)
    job = make_job(y, design, t_con, None)
    got = engine.statistics(job, schedule, 0, schedule.n_perm)
    assert got.dtype == np.float32 and got.shape == (schedule.n_perm, 9)
    for i in range(schedule.n_perm):
        want = permuted_t_reference(y, design, t_con, schedule.permutations[i], schedule.signs[i])
        np.testing.assert_allclose(got[i], want, rtol=2e-4, atol=2e-4)
    # row 0 is the identity: the observed statistics
    np.testing.assert_allclose(got[0], contrast_statistic(y, design, t_con)[0], rtol=1e-4)


@pytest.mark.parametrize("nuisance,sign_flip,permute", CASES)
def test_freedman_lane_f_matches_explicit_refit(nuisance, sign_flip, permute):
    y, design, _, f_con = _fl_problem(nuisance)
    n = y.shape[0]
    schedule = make_schedule(n, 40, permute=permute, sign_flip=sign_flip, rng=4)
    job = make_job(y, design, f_con, None)
    got = engine.statistics(job, schedule, 0, schedule.n_perm)
    basis = effect_basis(design, f_con)
    for i in range(schedule.n_perm):
        rearranged = _rearranged(y, basis, schedule.permutations[i], schedule.signs[i])
        want = contrast_statistic(rearranged, design, f_con)[0]
        np.testing.assert_allclose(got[i], want, rtol=5e-4, atol=5e-4)


def test_freedman_lane_f_with_nuisance_beyond_the_constant():
    y, design, _, _ = _fl_problem("constant+covariate")
    (f_con,) = make_contrasts(None, design, f_contrasts=[[[0, 1, 0]]])
    schedule = make_schedule(y.shape[0], 30, rng=9)
    job = make_job(y, design, f_con, None)
    got = engine.statistics(job, schedule, 0, schedule.n_perm)
    basis = effect_basis(design, f_con)
    for i in range(schedule.n_perm):
        rearranged = _rearranged(y, basis, schedule.permutations[i], schedule.signs[i])
        np.testing.assert_allclose(got[i], contrast_statistic(rearranged, design, f_con)[0], rtol=5e-4, atol=5e-4)


def test_statistics_of_a_sub_range_equal_the_whole():
    rng = np.random.default_rng(8)
    n = 12
    x = np.column_stack([np.ones(n), rng.standard_normal(n)])
    y = rng.standard_normal((n, 30))
    design = make_design(x)
    (con,) = make_contrasts([0, 1], design)
    schedule = make_schedule(n, 50, rng=1)
    job = make_job(y, design, con, None)
    whole = engine.statistics(job, schedule, 0, 50)
    for start, stop in ((0, 1), (3, 11), (17, 50), (49, 50)):
        np.testing.assert_array_equal(engine.statistics(job, schedule, start, stop), whole[start:stop])


@pytest.mark.parametrize("sign_flip", [False, True])
def test_constant_voxels_give_zero_in_every_rearrangement(sign_flip):
    # the constant is nuisance: residualising a constant voxel leaves rounding noise,
    # which must not turn into statistics in the permuted maps
    rng = np.random.default_rng(13)
    n = 11
    x = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    y = rng.standard_normal((n, 6))
    y[:, 0] = 2.0
    y[:, 1] = -123.456
    y[:, 2] = 0.0
    design = make_design(x)
    t_con, f_con = make_contrasts([0, 1, 0], design, f_contrasts=[[[0, 1, 0], [0, 0, 1]]])
    schedule = make_schedule(n, 30, sign_flip=sign_flip, permute=True, rng=0)
    for con in (t_con, f_con):
        job = make_job(y, design, con, None)
        np.testing.assert_array_equal(job.data[:, :3], 0.0)
        maps = engine.statistics(job, schedule, 0, 30)
        np.testing.assert_array_equal(maps[:, :3], 0.0)
        assert np.all(maps[:, 3:] != 0)


def test_demeaning_covariates_keeps_t_with_an_intercept():
    x, y, _, _ = _problem(4, n=16)
    plain, demeaned = make_design(x), make_design(x, demean=True)
    for weights in ([0, 1, 0, 0], [0, 1, -1, 0.5]):
        t_plain = contrast_statistic(y, plain, make_contrasts(weights, plain)[0])[0]
        t_demeaned = contrast_statistic(y, demeaned, make_contrasts(weights, demeaned)[0])[0]
        np.testing.assert_allclose(t_demeaned, t_plain, rtol=1e-10)


def test_demean_is_randomise_D_against_statsmodels_on_demeaned_data():
    """randomise -D demeans the data and every EV and takes df = n - rank - 1.

    Before: only the design was demeaned, a regression through the origin
    without an intercept column (t off by up to 1.6 at 996/1000 voxels here).
    """
    rng = np.random.default_rng(10)
    n = 10
    age = rng.uniform(20, 60, n)
    y = 5.0 + 0.05 * np.outer(age, rng.standard_normal(1000)) + rng.standard_normal((n, 1000))
    design = make_design(age[:, np.newaxis], demean=True)
    assert design.df == n - 2
    t_con, f_con = make_contrasts([1.0], design, f_contrasts=[[[1.0]]])
    t, df = contrast_statistic(y, design, t_con)
    fval, _ = contrast_statistic(y, design, f_con)
    yd, xd = y - y.mean(axis=0), (age - age.mean())[:, np.newaxis]
    for v in range(0, 1000, 37):
        fit = sm.OLS(yd[:, v], xd).fit()  # demeaned data on the demeaned EV, df n - 1
        want = fit.tvalues[0] * np.sqrt((n - 2) / (n - 1))  # randomise's df: n - rank - 1
        assert t[v] == pytest.approx(want, rel=1e-9)
        assert fval[v] == pytest.approx(want ** 2, rel=1e-9)
    # the permutation engine's observed map is the same statistic
    res = permuted_glm(y, age[:, np.newaxis], [1.0], demean=True, n_perm=20, rng=0)
    np.testing.assert_allclose(res[0].stat, t, rtol=1e-12)
    assert res.df == n - 2


def test_demean_zeroes_the_intercept_and_names_D_when_rank_deficient():
    rng = np.random.default_rng(11)
    n = 12
    x = np.column_stack([np.ones(n), rng.standard_normal(n)])
    design = make_design(x, demean=True)  # the intercept becomes 0 and drops out, as in randomise
    np.testing.assert_array_equal(design.matrix[:, 0], 0.0)
    y = rng.standard_normal((n, 5))
    t_with, _ = contrast_statistic(y, design, make_contrasts([0, 1], design)[0])
    t_plain, _ = contrast_statistic(y, make_design(x), make_contrasts([0, 1], make_design(x))[0])
    np.testing.assert_allclose(t_with, t_plain, rtol=1e-10)  # an intercept was there already
    with pytest.raises(ValueError, match=r"contrast 'tstat1': weights \['x0'\], which demeaning "
                                         r"\(demean=True, randomise -D\) turns into a column of zeros"):
        make_contrasts([1, 0], design)
    cells = np.repeat(np.eye(2), n // 2, axis=0)  # cell means: g1 + g2 = 1
    with pytest.raises(ValueError, match=r"design: becomes rank-deficient under demeaning \(demean=True, "
                                         r"randomise -D\); drop -D or a column \(rank 1 < 2"):
        make_design(cells, demean=True)
    with pytest.raises(ValueError, match=r"every column .* is constant, so demeaning"):
        make_design(np.ones((n, 1)), demean=True)


@pytest.mark.parametrize("demean", [False, True])
def test_glm_estimates_match_statsmodels(demean):
    """randomise --glm_output: PE, COPE, VARCOPE, sigma^2 (RSS / (n - rank X), also under -D)."""
    x, y, c, _ = _problem(21, n=14)
    if demean:
        x = x[:, 1:]  # -D: no intercept column; data and EVs demeaned
    design = make_design(x, demean=demean)
    cons = make_contrasts(np.vstack([c[-x.shape[1]:], np.eye(x.shape[1])[0]]), design)
    pe, cope, varcope, s2 = glm_estimates(y, design, cons)
    xm = x - x.mean(0) if demean else x
    for v in range(y.shape[1]):
        fit = sm.OLS(y[:, v] - y[:, v].mean() if demean else y[:, v], xm).fit()
        np.testing.assert_allclose(pe[:, v], fit.params, rtol=1e-5)
        assert s2[v] == pytest.approx(fit.mse_resid, rel=1e-5)
        for k, con in enumerate(cons):
            test = fit.t_test(con.weights)
            assert cope[k, v] == pytest.approx(float(test.effect.squeeze()), rel=1e-5, abs=1e-6)
            assert varcope[k, v] == pytest.approx(float(test.sd.squeeze()) ** 2, rel=1e-5)
    res = permuted_glm(y, x, cons[0].weights, demean=demean, glm_output=True, n_perm=10, rng=0)
    np.testing.assert_array_equal(res.glm.pe, pe)
    assert res.glm.cope.shape == (1, y.shape[1])


def test_f_contrast_with_dependent_rows_tests_their_row_space():
    """randomise accepts design.fts selecting [1 -1] and [-1 1]: an F on one dimension, F = t^2."""
    x, y, _, _ = _problem(30, n=16)
    design = make_design(x)
    (f_con,) = make_contrasts(None, design, f_contrasts=[[[0, 1, -1, 0], [0, -1, 1, 0], [0, 2, -2, 0]]])
    assert f_con.rank == 1
    fval, _ = contrast_statistic(y, design, f_con)
    for v in range(y.shape[1]):
        want = sm.OLS(y[:, v], x).fit().f_test(np.array([[0, 1, -1, 0]]))
        assert fval[v] == pytest.approx(float(np.squeeze(want.fvalue)), rel=1e-9)
    res = permuted_glm(y, x, None, f_contrasts=[f_con.weights], n_perm=30, rng=0)
    np.testing.assert_allclose(res[0].stat, fval, rtol=1e-12)
    t_res = permuted_glm(y, x, [0, 1, -1, 0], n_perm=30, rng=0)
    np.testing.assert_allclose(res[0].null_max, t_res[0].null_max ** 2, rtol=1e-5)
