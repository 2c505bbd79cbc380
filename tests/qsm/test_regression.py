"""Tests of qsm.regression against direct statsmodels calls and hand computations."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

from qsm.regression import (
    adjusted_values,
    check_formula,
    clinical_regressions,
    fit_term,
    group_comparisons,
    regional_values,
)


@pytest.fixture
def long():
    rng = np.random.default_rng(0)
    n = 30
    groups = ["RRMS"] * n + ["HC_RRMS"] * n + ["SPMS"] * n + ["HC_SPMS"] * n
    people = pd.DataFrame({
        "participant_id": [f"sub-{i:03d}" for i in range(4 * n)],
        "group": groups,
        "age": rng.normal(45, 10, 4 * n),
        "sex": rng.choice(["F", "M"], 4 * n),
        "disease_duration": np.where(np.char.startswith(np.array(groups), "HC"), np.nan,
                                     rng.gamma(3, 3, 4 * n)),
    })
    people["edss"] = np.where(people.disease_duration.isna(), np.nan,
                              rng.normal(3, 1, 4 * n))
    rows = []
    for region, shift in (("a", -4.0), ("b", 0.0), ("c", -1.0)):
        chi = (20 + shift * people.group.isin(["RRMS", "SPMS"]) + 0.1 * people.age
               - 0.3 * people.disease_duration.fillna(0) * (region == "a")
               + rng.normal(0, 2, 4 * n))
        rows.append(pd.DataFrame({"subject": people.participant_id, "roi": region, "mean": chi,
                                  "median": chi + 1}))
    return regional_values(pd.concat(rows), people)


def test_fit_term_equals_statsmodels(long):
    data = long[long.roi == "a"]
    res = fit_term(data, "chi ~ age + C(sex)", "age", alpha=0.1)
    fit = smf.ols("chi ~ age + C(sex)", data=data).fit()
    assert res["beta"] == pytest.approx(fit.params["age"], rel=1e-12)
    assert res["se"] == pytest.approx(fit.bse["age"], rel=1e-12)
    assert res["t"] == pytest.approx(fit.tvalues["age"], rel=1e-12)
    assert res["p"] == pytest.approx(fit.pvalues["age"], rel=1e-12)
    ci = fit.conf_int(alpha=0.1).loc["age"]
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((ci[0], ci[1]), rel=1e-12)
    assert res["n"] == len(data)
    with pytest.raises(ValueError, match="term 'nope' is not a parameter"):
        fit_term(data, "chi ~ age", "nope")
    with pytest.raises(ValueError, match="'chi ~ bogus' names 'bogus', which the data do not"):
        fit_term(data, "chi ~ bogus", "bogus")


def test_partial_correlation_equals_residual_correlation(long):
    data = long[(long.roi == "a") & long.group.isin(["RRMS", "SPMS"])]
    res = fit_term(data, "chi ~ disease_duration + age + C(sex)", "disease_duration")
    z = sm.add_constant(np.column_stack([data.age, data.sex == "M"]).astype(float))
    rx = sm.OLS(data.disease_duration.to_numpy(), z).fit().resid
    ry = sm.OLS(data.chi.to_numpy(), z).fit().resid
    assert res["partial_r"] == pytest.approx(np.corrcoef(rx, ry)[0, 1], rel=1e-10)


def test_group_comparisons_direct_statsmodels_and_corrections(long):
    table = group_comparisons(long, {"RRMS": "HC_RRMS", "SPMS": "HC_SPMS"})
    assert len(table) == 6
    sub = long[long.group.isin(["SPMS", "HC_SPMS"]) & (long.roi == "c")].copy()
    sub["is_patient"] = (sub.group == "SPMS").astype(float)
    fit = smf.ols("chi ~ is_patient + age + C(sex)", data=sub).fit()
    row = table[(table.patient_group == "SPMS") & (table.region == "c")].iloc[0]
    assert row.beta == pytest.approx(fit.params["is_patient"], rel=1e-12)
    assert row.p == pytest.approx(fit.pvalues["is_patient"], rel=1e-12)
    assert row.control_group == "HC_SPMS" and row.n == 60
    # Holm and BH by hand within each patient group
    for _, fam in table.groupby("patient_group"):
        p = fam.p.to_numpy()
        order = np.argsort(p)
        m = len(p)
        holm = np.maximum.accumulate(np.minimum((m - np.arange(m)) * p[order], 1))
        expected = np.empty(m)
        expected[order] = holm
        assert np.allclose(fam.p_holm, expected)
        bh = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
        expected[order] = np.minimum(bh, 1)
        assert np.allclose(fam.p_fdr, expected)
    strong = table[(table.patient_group == "RRMS") & (table.region == "a")].iloc[0]
    assert strong.beta < -2 and strong.p_holm < 0.01


def test_clinical_regressions_and_user_formula(long):
    table = clinical_regressions(long, ["RRMS", "SPMS"], variables=["disease_duration", "edss"])
    assert list(table.variable.unique()) == ["disease_duration", "edss"]
    data = long[long.group.isin(["RRMS", "SPMS"]) & (long.roi == "a")]
    fit = smf.ols("chi ~ edss + age + C(sex)", data=data).fit()
    row = table[(table.variable == "edss") & (table.region == "a")].iloc[0]
    assert row.t == pytest.approx(fit.tvalues["edss"], rel=1e-12)
    dd = table[(table.variable == "disease_duration") & (table.region == "a")].iloc[0]
    assert dd.beta < 0 and dd.p < 0.001 and dd.n == 60
    # a user formula with an extra covariate, patsy syntax
    user = clinical_regressions(long, ["RRMS", "SPMS"],
                                formula="chi ~ {variable} + age + C(sex) + C(group)",
                                regions=["b"])
    fit = smf.ols("chi ~ disease_duration + age + C(sex) + C(group)",
                  data=long[long.group.isin(["RRMS", "SPMS"]) & (long.roi == "b")]).fit()
    assert user.beta.item() == pytest.approx(fit.params["disease_duration"], rel=1e-12)
    with pytest.raises(ValueError, match="lacks the clinical column 'iq'"):
        clinical_regressions(long, ["RRMS"], variables=["iq"])
    with pytest.raises(ValueError, match=r"Unknown region\(s\) \['z'\]"):
        clinical_regressions(long, ["RRMS"], regions=["z"])


def test_regional_values_checks(long):
    roi = pd.DataFrame({"subject": ["sub-000"], "roi": ["a"], "mean": [1.0]})
    people = pd.DataFrame({"participant_id": ["sub-000", "sub-001"], "group": ["A", "B"]})
    with pytest.raises(ValueError, match="No regional values for 1 participant"):
        regional_values(roi, people)
    with pytest.raises(ValueError, match="'statistic' parameter"):
        regional_values(roi, people, statistic="mode")
    ok = regional_values(roi, people.iloc[:1])
    assert ok.chi.item() == 1.0 and ok.roi.item() == "a"


@pytest.mark.parametrize("formula", [
    "chi ~ I(__import__('os').system('touch pwned'))",
    "chi ~ np.log(age)", "chi ~ age.real", "chi ~ C(sex)[0]", "chi ~ f'{age}'",
    "chi ~ C(sex, Treatment(__import__('os')))", "chi ~ C(sex, eval)", "chi ~ lambda",
    "chi ~ age; import os", "chi ~ age +", "chi ~ __class__", "chi ~ age(1)", "age ~ chi",
])
def test_formulas_with_code_are_refused_before_patsy(long, formula, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^formula: .*") as exc:
        check_formula(formula)
    assert "\n" not in str(exc.value)
    data = long[long.roi == "a"]
    with pytest.raises(ValueError):
        fit_term(data, formula, "age")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("formula, names", [
    ("chi ~ patient + age + C(sex)", ["chi", "patient", "age", "sex"]),
    ("chi ~ {variable} + age:C(sex) + (age + edss)**2 - 1", ["chi", "{variable}", "age", "sex",
                                                            "edss"]),
    ("chi ~ C(sex, Treatment(reference='M')) + 0", ["chi", "sex"]),
    ("chi~C(group,Sum)+age/edss", ["chi", "group", "age", "edss"]),
])
def test_data_only_formulas_accepted(formula, names):
    assert check_formula(formula) == names
    with pytest.raises(ValueError, match=r"names 'age', which the data do not have"):
        check_formula("chi ~ age", columns=["chi"])


def test_restricted_formula_fits_like_statsmodels(long):
    data = long[long.roi == "a"]
    res = fit_term(data, "chi ~ age + C(sex, Treatment(reference='M'))", "age")
    fit = smf.ols("chi ~ age + C(sex, Treatment(reference='M'))", data=data).fit()
    assert res["beta"] == pytest.approx(fit.params["age"], rel=1e-12)


def test_no_clinical_variables_gives_an_empty_table(long):
    table = clinical_regressions(long, ["RRMS"], variables=[])
    assert len(table) == 0 and {"variable", "region", "beta", "p_holm"} <= set(table.columns)


def test_adjusted_values_agree_with_the_fitted_beta(long):
    """Adjusted χ: the group difference of means and the slope equal the table's β."""
    sub = long[long.group.isin(["SPMS", "HC_SPMS"]) & (long.roi == "c")].copy()
    sub["patient"] = (sub.group == "SPMS").astype(float)
    adj, intercept = adjusted_values(sub, "chi ~ patient + age + C(sex)", "patient")
    beta = fit_term(sub, "chi ~ patient + age + C(sex)", "patient")["beta"]
    diff = adj[sub.patient == 1].mean() - adj[sub.patient == 0].mean()
    assert diff == pytest.approx(beta, rel=1e-10)
    # independent: chi minus the nuisance part from a NumPy least-squares fit
    x = np.column_stack([np.ones(len(sub)), sub.patient, sub.age, sub.sex == "M"]).astype(float)
    b = np.linalg.lstsq(x, sub.chi.to_numpy(), rcond=None)[0]
    z = x[:, 2:]
    np.testing.assert_allclose(adj, sub.chi - (z - z.mean(0)) @ b[2:], rtol=1e-10)
    assert intercept == pytest.approx(b[0] + z.mean(0) @ b[2:], rel=1e-10)
    # continuous term with missing values: the adjusted points lie around the model's line
    pat = long[long.group.isin(["RRMS", "SPMS"]) & (long.roi == "a")].copy()
    pat.loc[pat.index[:3], "disease_duration"] = np.nan
    formula = "chi ~ disease_duration + age + C(sex) + C(group)"
    adj, intercept = adjusted_values(pat, formula, "disease_duration")
    assert adj.iloc[:3].isna().all() and adj.iloc[3:].notna().all()
    ok = adj.notna()
    slope, icpt = np.polyfit(pat.disease_duration[ok], adj[ok], 1)
    assert slope == pytest.approx(fit_term(pat, formula, "disease_duration")["beta"], rel=1e-9)
    assert icpt == pytest.approx(intercept, rel=1e-9)
