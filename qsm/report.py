"""Markdown report of a study run: settings, cohort, tables, figures, versions."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from qsm.atlas import _atomic_write_text

__all__ = ["markdown_table", "versions", "write_report"]

_PACKAGES = ("voxstats", "numpy", "scipy", "numba", "nibabel", "nilearn", "statsmodels",
             "pandas", "matplotlib")


def versions() -> dict:
    """Python and package versions."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "unknown")
    return out


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.3f}"
    return str(value)


def markdown_table(df: pd.DataFrame, columns=None) -> str:
    """A pipe table of ``df`` (floats with 3 decimals or 3 significant digits)."""
    columns = list(df.columns if columns is None else columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in df[columns].iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def write_report(path, *, config, participants, group_table, clinical_table,
                 voxelwise_table, figures, timings) -> Path:
    """Write the Markdown report; figure links are relative to the report."""
    path = Path(path)
    s = config.study
    alpha = config.regression.alpha
    cohort = participants.groupby(s.group_column).agg(
        n=(s.id_column, "size"), age_mean=("age", "mean"), age_sd=("age", "std"),
        women=("sex", lambda x: float((x == "F").mean()))) if {"age", "sex"} <= set(
        participants.columns) else participants.groupby(s.group_column).size().to_frame("n")
    cohort = cohort.reset_index()
    for var in config.regression.clinical:
        if var in participants.columns:
            cohort = cohort.merge(participants.groupby(s.group_column)[var].mean()
                                  .rename(f"{var}_mean").reset_index(), on=s.group_column)
    parts = [f"# {s.name}", "",
             f"Config: `{config.source}`; {len(participants)} subjects; total run time "
             f"{timings.get('total', float('nan')):.1f} s.", "", "## Cohort", "",
             markdown_table(cohort), ""]
    if voxelwise_table is not None:
        v = config.voxelwise
        parts += ["## Voxel-wise analysis", "",
                  f"Each patient group vs its controls inside the `{v.region}` mask: GLM with "
                  f"covariates {', '.join(v.covariates)}, Freedman-Lane permutations "
                  f"(n = {v.n_perm}), {'TFCE (E=0.5, H=2, exact) ' if v.tfce else ''}"
                  f"{'two-sided' if v.two_sided else 'one-sided'}, FWE p < {v.alpha}. "
                  "`n_sig_lower`: voxels where patients have lower χ.", "",
                  markdown_table(voxelwise_table, ["patient_group", "region", "n_voxels",
                                                   "n_sig_lower", "n_sig_higher", "frac_sig",
                                                   "min_p_fwe"]), ""]
    parts += ["## Regional group comparisons", "",
              f"Per region and patient group: `{config.regression.group_formula}` "
              f"(term `{config.regression.group_term}`), OLS (statsmodels); Holm and FDR "
              f"across regions within each patient group; alpha = {alpha}.", "",
              markdown_table(group_table, ["patient_group", "region", "n", "beta", "se", "t",
                                           "p", "ci_low", "ci_high", "partial_r", "p_holm",
                                           "p_fdr"]), "",
              "## Clinical regressions (patients)", "",
              f"`{config.regression.clinical_formula}` per clinical variable and region, "
              f"patients of the groups {', '.join(config.groups)} pooled; Holm and FDR across "
              "regions per variable.", "",
              markdown_table(clinical_table, ["variable", "region", "n", "beta", "se", "t", "p",
                                              "ci_low", "ci_high", "partial_r", "p_holm",
                                              "p_fdr"]), "",
              "## Figures", ""]
    for name, fig in figures.items():
        rel = Path(fig).resolve().relative_to(path.parent.resolve()).as_posix()
        parts += [f"### {name}", "", f"![{name}]({rel})", ""]
    parts += ["## Settings", "", "```json", json.dumps(config.to_dict(), indent=2, default=str),
              "```", "", "## Run time (s)", "",
              markdown_table(pd.DataFrame([timings]).round(2)), "", "## Versions", "",
              markdown_table(pd.DataFrame([versions()])), "",
              "The demo atlas is an approximate geometric thalamus parcellation meant for "
              "simulation and demos; use a published thalamic atlas for real data.", ""]
    _atomic_write_text(path, "\n".join(parts))
    return path
