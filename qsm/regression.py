"""Regional regressions of χ with statsmodels formulas.

* :func:`group_comparisons`: per region and patient group, ``chi ~ patient +
  age + C(sex)`` on the patients and their matched controls (``patient`` is 1
  for patients, 0 for controls).
* :func:`clinical_regressions`: within patients, ``chi ~ <variable> + age +
  C(sex)`` per region and clinical variable (disease duration, EDSS, ...).

Both report β, standard error, t, p, 95 % CI and the partial correlation of
the term of interest, with Holm and Benjamini-Hochberg FDR corrections across
regions (within each patient group or variable). Any statsmodels/patsy formula
with the response ``chi`` is accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.stats.multitest import multipletests

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_GROUP_FORMULA", "DEFAULT_CLINICAL_FORMULA", "RESULT_COLUMNS", "fit_term",
           "group_comparisons", "clinical_regressions", "regional_values"]

DEFAULT_GROUP_FORMULA = "chi ~ patient + age + C(sex)"
#: ``{variable}`` is replaced by each clinical variable.
DEFAULT_CLINICAL_FORMULA = "chi ~ {variable} + age + C(sex)"
RESULT_COLUMNS = ("term", "n", "df_resid", "beta", "se", "t", "p", "ci_low", "ci_high",
                  "partial_r")


def fit_term(data: pd.DataFrame, formula: str, term: str, *, alpha: float = 0.05) -> dict:
    """Fit an OLS formula and report one term.

    Parameters
    ----------
    data : DataFrame
        Columns used by the formula (rows with missing values are dropped).
    formula : str
        statsmodels/patsy formula, e.g. ``"chi ~ disease_duration + age + C(sex)"``.
    term : str
        Name of the parameter of interest as statsmodels names it (e.g.
        ``"disease_duration"`` or ``"C(group)[T.RRMS]"``).
    alpha : float
        1 - confidence level of the interval.

    Returns
    -------
    result : dict
        ``term, n, df_resid, beta, se, t, p, ci_low, ci_high, partial_r`` where
        ``partial_r = t / sqrt(t**2 + df_resid)``.
    """
    try:
        fit = smf.ols(formula, data=data).fit()
    except Exception as exc:  # patsy errors are diverse; re-raise with the formula named
        raise ValueError(f"Cannot fit the formula {formula!r}: {exc}") from exc
    if term not in fit.params.index:
        raise ValueError(f"The term {term!r} is not a parameter of the formula {formula!r}; "
                         f"its parameters are {list(fit.params.index)}.")
    t = float(fit.tvalues[term])
    ci = fit.conf_int(alpha=alpha).loc[term]
    return {
        "term": term, "n": int(fit.nobs), "df_resid": float(fit.df_resid),
        "beta": float(fit.params[term]), "se": float(fit.bse[term]), "t": t,
        "p": float(fit.pvalues[term]), "ci_low": float(ci.iloc[0]), "ci_high": float(ci.iloc[1]),
        "partial_r": t / np.sqrt(t * t + fit.df_resid) if fit.df_resid > 0 else np.nan,
    }


def regional_values(roi_table: pd.DataFrame, participants: pd.DataFrame, *,
                    statistic: str = "mean", id_column: str = "participant_id") -> pd.DataFrame:
    """Long table of one regional statistic joined with the participants.

    Parameters
    ----------
    roi_table : DataFrame
        Output of :func:`qsm.roi.cohort_region_stats` (``subject, roi, ...``).
    participants : DataFrame
        One row per subject with ``id_column``.
    statistic : str
        Column of ``roi_table`` used as ``chi`` (e.g. ``"mean"``, ``"median"``).

    Returns
    -------
    long : DataFrame
        The participants' columns plus ``roi`` and ``chi``.
    """
    if statistic not in roi_table.columns or statistic in ("subject", "roi"):
        raise ValueError(f"Invalid value for the 'statistic' parameter. Allowed values are "
                         f"'mean', 'median', 'min', 'max', 'std', but got {statistic!r} instead.")
    if id_column not in participants.columns:
        raise ValueError(f"The participants table lacks the column {id_column!r}.")
    values = roi_table[["subject", "roi", statistic]].rename(columns={statistic: "chi"})
    merged = participants.merge(values, left_on=id_column, right_on="subject", how="inner")
    missing = set(participants[id_column]) - set(values["subject"])
    if missing:
        raise ValueError(f"No regional values for {len(missing)} participant(s), e.g. "
                         f"{sorted(missing)[0]!r}.")
    return merged.drop(columns="subject") if id_column != "subject" else merged


def _correct(results: pd.DataFrame, family: Sequence[str]) -> pd.DataFrame:
    results = results.copy()
    results["p_holm"] = np.nan
    results["p_fdr"] = np.nan
    for _, part in results.groupby(list(family), sort=False):
        idx = part.index
        p = part["p"].to_numpy()
        ok = np.isfinite(p)
        if ok.any():
            holm = np.full(p.shape, np.nan)
            fdr = np.full(p.shape, np.nan)
            holm[ok] = multipletests(p[ok], method="holm")[1]
            fdr[ok] = multipletests(p[ok], method="fdr_bh")[1]
            results.loc[idx, "p_holm"] = holm
            results.loc[idx, "p_fdr"] = fdr
    return results


def _regions(long: pd.DataFrame, regions):
    available = list(dict.fromkeys(long["roi"]))
    if regions is None:
        return available
    unknown = [r for r in regions if r not in available]
    if unknown:
        raise ValueError(f"Unknown region(s) {unknown}; the ROI table holds {available}.")
    return list(regions)


def group_comparisons(long: pd.DataFrame, pairs: Mapping[str, str], *,
                      group_column: str = "group", formula: str = DEFAULT_GROUP_FORMULA,
                      term: str = "patient", regions: Sequence[str] | None = None,
                      alpha: float = 0.05) -> pd.DataFrame:
    """Compare each patient group with its control group in every region.

    Parameters
    ----------
    long : DataFrame
        Output of :func:`regional_values` (participants + ``roi, chi``).
    pairs : mapping of str to str
        Patient group -> its control group, e.g. ``{"RRMS": "HC_RRMS"}``.
    group_column : str
        Column holding the group labels.
    formula : str
        Formula fitted on the patients and their controls; the column
        ``patient`` (1 = patient, 0 = control) is provided.
    term : str
        Parameter reported (default ``"patient"``: patients minus controls).
    regions : sequence of str, optional
        Regions to test (default all in ``long``); the correction family.
    alpha : float
        1 - confidence level.

    Returns
    -------
    table : DataFrame
        ``patient_group, control_group, region, term, n, df_resid, beta, se, t,
        p, ci_low, ci_high, partial_r, p_holm, p_fdr``; corrections across
        regions within each patient group.
    """
    regions = _regions(long, regions)
    rows = []
    for patient, control in pairs.items():
        sub = long[long[group_column].isin([patient, control])].copy()
        if sub.empty:
            raise ValueError(f"No subjects in the groups {patient!r}/{control!r}.")
        sub["patient"] = (sub[group_column] == patient).astype(float)
        for region in regions:
            res = fit_term(sub[sub["roi"] == region], formula, term, alpha=alpha)
            rows.append({"patient_group": patient, "control_group": control, "region": region,
                         **res})
    return _correct(pd.DataFrame(rows), ["patient_group", "term"])


def clinical_regressions(long: pd.DataFrame, patient_groups: Sequence[str], *,
                         variables: Sequence[str] = ("disease_duration",),
                         group_column: str = "group",
                         formula: str = DEFAULT_CLINICAL_FORMULA,
                         regions: Sequence[str] | None = None,
                         alpha: float = 0.05) -> pd.DataFrame:
    """Regress regional χ on clinical variables within the (pooled) patients.

    Parameters
    ----------
    long : DataFrame
        Output of :func:`regional_values`.
    patient_groups : sequence of str
        Groups pooled as "patients".
    variables : sequence of str
        Clinical columns, each tested in its own model (the term of interest).
    formula : str
        Formula with ``{variable}`` standing for each clinical variable.
    regions, alpha
        As in :func:`group_comparisons`.

    Returns
    -------
    table : DataFrame
        ``variable, region, term, n, df_resid, beta, se, t, p, ci_low, ci_high,
        partial_r, p_holm, p_fdr``; corrections across regions per variable.
    """
    regions = _regions(long, regions)
    sub = long[long[group_column].isin(list(patient_groups))]
    if sub.empty:
        raise ValueError(f"No subjects in the patient groups {list(patient_groups)}.")
    rows = []
    for variable in variables:
        if variable not in sub.columns:
            raise ValueError(f"The participants table lacks the clinical column {variable!r}.")
        f = formula.replace("{variable}", variable)
        for region in regions:
            res = fit_term(sub[sub["roi"] == region], f, variable, alpha=alpha)
            rows.append({"variable": variable, "region": region, **res})
    return _correct(pd.DataFrame(rows), ["variable"])
