"""Regional regressions of χ with statsmodels formulas.

* :func:`group_comparisons`: per region and patient group, ``chi ~ patient +
  age + C(sex)`` on the patients and their matched controls (``patient`` is 1
  for patients, 0 for controls).
* :func:`clinical_regressions`: within patients, ``chi ~ <variable> + age +
  C(sex)`` per region and clinical variable (disease duration, EDSS, ...).

Both report β, standard error, t, p, 95 % CI and the partial correlation of
the term of interest, with Holm and Benjamini-Hochberg FDR corrections across
regions (within each patient group or variable).

Formulas are patsy formulas restricted to data: :func:`check_formula` accepts
the response ``chi``, column names, ``C(column)`` (optionally with a contrast
such as ``Treatment(reference="F")``), numbers and the formula operators
``+ - * / : **`` and parentheses. Anything else (``I(...)``, ``np.log(...)``,
attribute access, strings outside ``C()``) is refused before patsy evaluates
it, since patsy evaluates formula terms as Python code.
"""

from __future__ import annotations

import io
import keyword
import logging
import tokenize
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.stats.multitest import multipletests

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_GROUP_FORMULA", "DEFAULT_CLINICAL_FORMULA", "RESULT_COLUMNS", "check_formula",
           "fit_term", "adjusted_values", "group_comparisons", "clinical_regressions",
           "regional_values"]

DEFAULT_GROUP_FORMULA = "chi ~ patient + age + C(sex)"
#: ``{variable}`` is replaced by each clinical variable.
DEFAULT_CLINICAL_FORMULA = "chi ~ {variable} + age + C(sex)"
RESULT_COLUMNS = ("term", "n", "df_resid", "beta", "se", "t", "p", "ci_low", "ci_high",
                  "partial_r")

#: patsy contrasts allowed as the second argument of ``C()``.
_CONTRASTS = ("Treatment", "Sum", "Diff", "Helmert", "Poly")
_BINARY = ("+", "-", "*", "/", ":", "**")
_ALLOWED = ("may contain only the response chi, '~', column names, C(column) (optionally "
            "with a contrast such as Treatment(reference='F')), numbers, the operators "
            "+ - * / : ** and parentheses")


class _FormulaParser:
    """Recursive-descent parser of the restricted formula grammar (see check_formula)."""

    def __init__(self, formula: str, where: str):
        self.where, self.formula = where, formula
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(formula).readline))
        except (tokenize.TokenError, SyntaxError, IndentationError):
            self.fail("it is not a formula")
        self.tokens = [t for t in tokens if t.type not in (tokenize.NEWLINE, tokenize.NL,
                                                           tokenize.ENDMARKER)
                       and t.string.strip()]
        self.i = 0
        self.names: list[str] = []

    def fail(self, why):
        raise ValueError(f"{self.where}: {self.formula!r} {_ALLOWED}; {why}.")

    def peek(self, ahead=0):
        j = self.i + ahead
        return self.tokens[j].string if j < len(self.tokens) else ""

    def take(self, expected=None):
        if self.i >= len(self.tokens):
            self.fail("it ends too early" if expected is None else f"expected {expected!r} "
                      "at its end")
        tok = self.tokens[self.i]
        if expected is not None and tok.string != expected:
            self.fail(f"expected {expected!r}, got {tok.string!r}")
        self.i += 1
        return tok

    def name(self, tok):
        if (tok.type != tokenize.NAME or keyword.iskeyword(tok.string)
                or tok.string.startswith("__")):
            self.fail(f"got {tok.string!r}")
        return tok.string

    def parse(self):
        response = self.name(self.take())
        self.take("~")
        self.expr()
        if self.i < len(self.tokens):
            self.fail(f"got {self.peek()!r}")
        return response, list(dict.fromkeys(self.names))

    def expr(self):
        self.term()
        while self.peek() in _BINARY:
            self.take()
            self.term()

    def term(self):
        if self.peek() in ("-", "+"):
            self.take()
        tok = self.take()
        if tok.string == "(":
            self.expr()
            self.take(")")
        elif tok.type == tokenize.NUMBER:
            pass
        elif tok.string == "C" and self.peek() == "(":
            self.categorical()
        else:
            name = self.name(tok)
            if self.peek() == "(":
                self.fail(f"got the call {name}(...)")
            self.names.append(name)

    def categorical(self):
        self.take("(")
        self.names.append(self.name(self.take()))
        if self.peek() == ",":
            self.take(",")
            contrast = self.take().string
            if contrast not in _CONTRASTS:
                self.fail(f"got the contrast {contrast!r} (allowed: {', '.join(_CONTRASTS)})")
            if self.peek() == "(":
                self.take("(")
                if self.peek() != ")":
                    if self.peek() == "reference" and self.peek(1) == "=":
                        self.take(), self.take()
                    self.literal()
                self.take(")")
        self.take(")")

    def literal(self):
        if self.peek() == "-":
            self.take()
        tok = self.take()
        plain_string = tok.type == tokenize.STRING and tok.string[0] in "'\""
        if not (plain_string or tok.type == tokenize.NUMBER):
            self.fail(f"got {tok.string!r} where a reference level (a string or number) "
                      "belongs")


def check_formula(formula: str, *, columns=None, where: str = "formula") -> list[str]:
    """Check that a formula is data only, before patsy evaluates it.

    patsy evaluates every term of a formula as Python code (``I(...)`` or any
    function call runs), so a formula from a config file could run anything.
    This accepts the grammar ``chi ~ terms`` where a term is a column name, a
    number, ``C(column)`` or ``C(column, Contrast)``/``C(column,
    Contrast(reference=level))`` with ``Contrast`` one of ``Treatment, Sum,
    Diff, Helmert, Poly``, joined by ``+ - * / : **`` and parentheses.

    Parameters
    ----------
    formula : str
        e.g. ``"chi ~ patient + age + C(sex)"``. ``{variable}`` (the clinical
        formula's placeholder) counts as a column name.
    columns : iterable of str, optional
        If given, every name used must be one of them.
    where : str
        What the formula is, for the message (e.g. ``"study.toml: [regression]
        group_formula"``).

    Returns
    -------
    names : list of str
        The column names the formula uses (response first), each once.

    Raises
    ------
    ValueError
        One line naming ``where``, the formula and the offending part.
    """
    if not isinstance(formula, str):
        raise ValueError(f"{where}: expected a formula string, got {formula!r}.")
    parser = _FormulaParser(formula.replace("{variable}", "variable_placeholder_"), where)
    parser.formula = formula
    response, names = parser.parse()
    if response != "chi":
        raise ValueError(f"{where}: {formula!r} must have the response 'chi' (regional χ), "
                         f"got {response!r}.")
    names = ["chi"] + [("{variable}" if n == "variable_placeholder_" else n) for n in names]
    if columns is not None:
        columns = set(columns) | {"{variable}"}
        unknown = [n for n in names if n not in columns]
        if unknown:
            raise ValueError(f"{where}: {formula!r} names {', '.join(map(repr, unknown))}, "
                             "which the data do not have.")
    return list(dict.fromkeys(names))


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
    fit = _fit(data, formula, term)
    t = float(fit.tvalues[term])
    ci = fit.conf_int(alpha=alpha).loc[term]
    return {
        "term": term, "n": int(fit.nobs), "df_resid": float(fit.df_resid),
        "beta": float(fit.params[term]), "se": float(fit.bse[term]), "t": t,
        "p": float(fit.pvalues[term]), "ci_low": float(ci.iloc[0]), "ci_high": float(ci.iloc[1]),
        "partial_r": t / np.sqrt(t * t + fit.df_resid) if fit.df_resid > 0 else np.nan,
    }


def _fit(data: pd.DataFrame, formula: str, term: str):
    check_formula(formula, columns=data.columns)
    try:
        fit = smf.ols(formula, data=data).fit()
    except Exception as exc:  # patsy errors are diverse; re-raise with the formula named
        raise ValueError(f"Cannot fit the formula {formula!r}: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    if term not in fit.params.index:
        raise ValueError(f"The term {term!r} is not a parameter of the formula {formula!r}; "
                         f"its parameters are {list(fit.params.index)}.")
    return fit


def adjusted_values(data: pd.DataFrame, formula: str, term: str) -> tuple[pd.Series, float]:
    """χ adjusted for every regressor of the formula but the intercept and ``term``.

    With the OLS fit ``chi = X b + e`` and the nuisance columns ``Z`` of ``X``
    (all but ``Intercept`` and ``term``), the adjusted value of subject ``s`` is
    ``chi_s - (Z_s - mean(Z)) b_Z``: χ at the sample's mean covariates (for a
    categorical covariate, its mean indicator), plus the residual. Regressing
    the adjusted values on ``term`` (with an intercept) gives back exactly the
    model's β for ``term``, so a plot of them agrees with the tables: for a
    0/1 ``term`` (``patient``) the difference of the two groups' mean adjusted
    values is β; for a continuous one (disease duration) they scatter around
    the line ``intercept + β x``. These are the partial residuals of ``term``
    (component plus residual, Larsen & McCleary 1972,
    doi:10.1080/00401706.1972.10488966) shifted to χ's scale.

    Parameters
    ----------
    data : DataFrame
        As for :func:`fit_term` (rows with missing values are dropped by the fit).
    formula : str
        As for :func:`fit_term`.
    term : str
        The parameter kept, as statsmodels names it (a main effect).

    Returns
    -------
    adjusted : Series
        Adjusted χ (ppb), indexed like ``data``; NaN for rows the fit dropped.
    intercept : float
        The line's value at ``term`` = 0: ``b_Intercept + mean(Z) b_Z``.
    """
    fit = _fit(data, formula, term)
    names = list(fit.model.exog_names)
    nuisance = [i for i, name in enumerate(names) if name not in ("Intercept", term)]
    exog = np.asarray(fit.model.exog, dtype=float)
    params = np.asarray(fit.params, dtype=float)
    z, bz = exog[:, nuisance], params[nuisance]
    zbar = z.mean(axis=0)
    values = np.asarray(fit.model.endog, dtype=float) - (z - zbar) @ bz
    adjusted = pd.Series(np.nan, index=data.index, dtype=float)
    adjusted.loc[fit.model.data.row_labels] = values
    intercept = (float(fit.params["Intercept"]) if "Intercept" in names else 0.0)
    return adjusted, intercept + float(zbar @ bz)


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
    if not len(variables):
        return pd.DataFrame(columns=["variable", "region", *RESULT_COLUMNS, "p_holm", "p_fdr"])
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
