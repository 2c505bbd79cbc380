"""Study figures, sized and lettered for a journal page.

* :func:`regions_by_group_figure`: regional χ by group, covariate-adjusted (the
  values the group tests use), each patient group next to its matched controls,
  significance marks from the Holm-corrected table, units on every panel;
* :func:`clinical_figure`: χ against a clinical variable in the pooled patients,
  as partial residuals (adjusted χ) around the fitted line, so points and line
  agree; slope and Holm p in each panel;
* the atlas and the voxel-wise p maps on thalamus close-ups: :mod:`qsm.slices`.

Every figure is 180 mm wide (a two-column journal page) with no text smaller
than 8 pt, and is saved as PNG (200 dpi) and PDF (vector, fonts embedded) (:func:`save_figure`).
The ``*_figure`` functions return the matplotlib figure, whose artists carry
the data behind it; ``plot_*`` save it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from qsm.regression import (  # noqa: E402
    DEFAULT_CLINICAL_FORMULA,
    DEFAULT_GROUP_FORMULA,
    adjusted_values,
    check_formula,
)

logger = logging.getLogger(__name__)

__all__ = ["WIDTH_MM", "MIN_FONT_PT", "FORMATS", "style", "save_figure",
           "regions_by_group_figure", "clinical_figure", "plot_atlas", "plot_pmaps",
           "plot_regions_by_group", "plot_clinical", "study_figures", "significance_mark"]

#: Figure width (mm): a two-column journal page.
WIDTH_MM = 180.0
WIDTH_IN = WIDTH_MM / 25.4
#: No text smaller than this (points) at WIDTH_MM.
MIN_FONT_PT = 8.0
#: Formats written by :func:`save_figure` (the first is the one linked and embedded).
FORMATS = ("png", "pdf")
_DPI = 200  # PNG: 1417 px across 180 mm; the PDF is the print version
_MAIN_REGIONS = ("thalamus", "anterior", "medial", "lateral", "pulvinar", "lateral_left")
_STYLE = {"font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 9,
          "axes.labelsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
          "legend.fontsize": 8, "figure.titlesize": 10, "axes.spines.top": False,
          "axes.spines.right": False, "svg.fonttype": "none", "pdf.fonttype": 42,
          "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6}
_CONTROL_COLOR = "0.62"
_PATIENT_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")


def style():
    """Context manager with the figures' matplotlib settings (fonts >= 8 pt)."""
    return plt.rc_context(_STYLE)


def save_figure(fig, path, *, formats=FORMATS) -> Path:
    """Save ``fig`` as ``path`` (PNG) and in the other ``formats`` beside it; close it.

    Each file is written under a temporary name and renamed. Returns the path of
    the first format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for fmt in formats:
            target = path.with_suffix(f".{fmt}")
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{fmt}",
                                       dir=target.parent)
            os.close(fd)
            try:
                fig.savefig(tmp, dpi=_DPI, bbox_inches="tight", pad_inches=0.04, format=fmt)
                os.chmod(tmp, 0o666 & ~_umask())
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
            written.append(target)
    finally:
        plt.close(fig)
    return written[0]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def significance_mark(p) -> str:
    """``***`` p < 0.001, ``**`` p < 0.01, ``*`` p < 0.05, ``n.s.`` otherwise."""
    if p is None or not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "n.s."


def _regions(long, regions):
    present = list(dict.fromkeys(long["roi"]))
    chosen = [r for r in (regions or _MAIN_REGIONS) if r in present]
    return chosen or present[:6]


def _grid(n_panels, height):
    ncols = min(3, n_panels)
    nrows = int(np.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(WIDTH_IN, height * nrows), squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n_panels])


def group_adjusted(long: pd.DataFrame, pairs: dict, *, formula=DEFAULT_GROUP_FORMULA,
                   term="patient", group_column="group", regions=None) -> pd.DataFrame:
    """Rows of ``long`` (patients and their controls) with ``chi_adjusted``.

    Per patient group and region, :func:`qsm.regression.adjusted_values` of the
    group model: the difference of the two groups' mean adjusted χ is the table's β.
    """
    parts = []
    for patient, control in pairs.items():
        sub = long[long[group_column].isin([patient, control])].copy()
        sub["patient"] = (sub[group_column] == patient).astype(float)
        sub["pair"] = patient
        for region in (regions or list(dict.fromkeys(sub["roi"]))):
            part = sub[sub["roi"] == region].copy()
            if not len(part):
                continue
            part["chi_adjusted"] = adjusted_values(part, formula, term)[0]
            parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else long.iloc[:0].assign(
        chi_adjusted=np.nan, pair="")


def regions_by_group_figure(long: pd.DataFrame, group_table: pd.DataFrame, pairs: dict, *,
                            formula=DEFAULT_GROUP_FORMULA, term="patient", regions=None,
                            group_column="group", covariates_label=None):
    """Covariate-adjusted regional χ by group, pairs side by side, with significance marks.

    Parameters
    ----------
    long : DataFrame
        :func:`qsm.regression.regional_values` (participants + ``roi, chi``).
    group_table : DataFrame
        :func:`qsm.regression.group_comparisons` of the same data and formula:
        the marks come from its ``p_holm``.
    pairs : dict of str to str
        Patient group -> control group, in display order.
    formula, term : str
        The group model (its covariates are adjusted for).
    regions : sequence of str, optional
        Panels (default: thalamus, anterior, medial, lateral, pulvinar,
        lateral_left, those present).
    covariates_label : str, optional
        How the y axis names the adjustment (default: from the formula).

    Returns
    -------
    matplotlib.figure.Figure
        Per panel, the points of a group are a Line2D labelled with the group;
        their y data are the adjusted χ (ppb).
    """
    regions = _regions(long, regions)
    data = group_adjusted(long, pairs, formula=formula, term=term, group_column=group_column,
                          regions=regions)
    covariates = [n for n in check_formula(formula) if n not in ("chi", "patient", term)]
    adjusted = covariates_label or (f"adjusted for {', '.join(covariates)}" if covariates
                                    else "unadjusted")
    table = group_table.set_index(["patient_group", "region"])
    rng = np.random.default_rng(0)
    with style():
        fig, axes = _grid(len(regions), 2.35)
        for ax, region in zip(axes, regions):
            top = -np.inf
            for k, (patient, control) in enumerate(pairs.items()):
                for j, (group, color) in enumerate(
                        ((control, _CONTROL_COLOR),
                         (patient, _PATIENT_COLORS[k % len(_PATIENT_COLORS)]))):
                    x = 3 * k + j
                    values = data.loc[(data["pair"] == patient) & (data["roi"] == region)
                                      & (data[group_column] == group), "chi_adjusted"].dropna()
                    if not len(values):
                        continue
                    ax.boxplot([values.to_numpy()], positions=[x], widths=0.7,
                               showfliers=False, medianprops=dict(color="black", lw=1),
                               boxprops=dict(lw=0.7), whiskerprops=dict(lw=0.7),
                               capprops=dict(lw=0.7))
                    ax.plot(x + rng.uniform(-0.22, 0.22, len(values)), values.to_numpy(), "o",
                            ms=2.2, alpha=0.65, color=color, mec="none", label=group)
                    top = max(top, float(values.max()))
                if (patient, region) in table.index:
                    p = table.loc[(patient, region), "p_holm"]
                    mark = significance_mark(p)
                    ax.annotate(mark, xy=(3 * k + 0.5, 1.0), xycoords=("data", "axes fraction"),
                                ha="center", va="bottom", fontsize=9 if mark != "n.s." else 8,
                                gid=f"mark-{patient}")
            ax.set_xticks([3 * k + 0.5 for k in range(len(pairs))], list(pairs))
            ax.set_xlim(-0.8, 3 * len(pairs) - 1.2)
            ax.set_title(region, pad=12)
            ax.set_ylabel(f"χ (ppb)\n{adjusted}")
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", ls="", color=_CONTROL_COLOR, label="matched controls")]
        handles += [Line2D([], [], marker="o", ls="", color=_PATIENT_COLORS[k % 6],
                           label=f"{p} patients") for k, p in enumerate(pairs)]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
                   bbox_to_anchor=(0.5, -0.005))
        fig.text(0.5, -0.045, "Marks: Holm-corrected p of patients vs their controls "
                 "(* < 0.05, ** < 0.01, *** < 0.001, n.s. not significant).", ha="center",
                 fontsize=8)
        fig.tight_layout(rect=(0, 0.05, 1, 1), h_pad=1.2, w_pad=1.0)
    return fig


def clinical_figure(long: pd.DataFrame, clinical_table: pd.DataFrame, *,
                    variable="disease_duration", formula=DEFAULT_CLINICAL_FORMULA,
                    regions=None, patient_groups=None, group_column="group", note=None):
    """χ against a clinical variable in the pooled patients: partial residuals and the fit.

    The points are χ adjusted for the model's other terms
    (:func:`qsm.regression.adjusted_values`, i.e. partial residuals on χ's scale)
    and the line is ``intercept + β x`` with β from ``clinical_table``, so a
    least-squares line through the points is the drawn line. ``note``: a line
    printed under the figure (e.g. a caveat).

    Returns
    -------
    matplotlib.figure.Figure
        Per panel, a Line2D per patient group (points) and one labelled ``"fit"``.
    """
    from qsm.report import format_p, variable_label

    label, unit, slope_unit = variable_label(variable)
    regions = _regions(long, regions)
    groups = list(patient_groups) if patient_groups is not None else None
    sub_all = long if groups is None else long[long[group_column].isin(groups)]
    f = formula.replace("{variable}", variable)
    others = [n for n in check_formula(f) if n not in ("chi", variable)]
    with style():
        fig, axes = _grid(len(regions), 2.45)
        for ax, region in zip(axes, regions):
            sub = sub_all[sub_all["roi"] == region]
            row = clinical_table[(clinical_table["variable"] == variable)
                                 & (clinical_table["region"] == region)]
            if not len(sub) or not len(row):
                ax.set_visible(False)
                continue
            adj, intercept = adjusted_values(sub, f, variable)
            sub = sub.assign(chi_adjusted=adj).dropna(subset=["chi_adjusted"])
            for k, (g, part) in enumerate(sub.groupby(group_column, sort=False)):
                order = groups.index(g) if groups and g in groups else k
                ax.plot(part[variable], part["chi_adjusted"], "o", ms=2.4, alpha=0.7,
                        mec="none", color=_PATIENT_COLORS[order % 6], label=str(g))
            row = row.iloc[0]
            x = np.linspace(sub[variable].min(), sub[variable].max(), 50)
            ax.plot(x, intercept + row["beta"] * x, "k-", lw=1.3, label="fit")
            ax.set_title(f"{region}\nβ = {row['beta']:.2f} {slope_unit}\nHolm p = "
                         f"{format_p(row['p_holm'])}".replace("-", "−"), fontsize=8.5)
            ax.set_xlabel(f"{label} ({unit})" if unit else label)
            ax.set_ylabel("χ (ppb)\n" + (f"adjusted for {', '.join(others)}" if others
                                         else "unadjusted"))
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, [n if n != "fit" else "fitted slope" for n in names],
                   loc="lower center", ncol=len(names), frameon=False,
                   bbox_to_anchor=(0.5, -0.005))
        if note:
            fig.text(0.5, -0.045, note, ha="center", fontsize=8, wrap=True, gid="note")
        fig.tight_layout(rect=(0, 0.05, 1, 1), h_pad=1.2, w_pad=1.6)
    return fig


# ------------------------------------------------------------------ saving wrappers
def plot_atlas(labels, affine, path, *, atlas=None, title=None, background_img=None) -> Path:
    """Save :func:`qsm.slices.atlas_figure` (the demo atlas if ``atlas`` is None)."""
    from qsm.atlas import demo_thalamus_atlas
    from qsm.slices import atlas_figure

    return save_figure(atlas_figure(atlas or demo_thalamus_atlas(), labels, affine,
                                    title=title, background_img=background_img), path)


def plot_pmaps(pmaps: dict, affine, path, *, alpha=0.05, **kwargs) -> Path:
    """Save :func:`qsm.slices.pmaps_figure`."""
    from qsm.slices import pmaps_figure

    return save_figure(pmaps_figure(pmaps, affine, alpha=alpha, **kwargs), path)


def plot_regions_by_group(long, group_table, pairs, path, **kwargs) -> Path:
    """Save :func:`regions_by_group_figure`."""
    return save_figure(regions_by_group_figure(long, group_table, pairs, **kwargs), path)


def plot_clinical(long, clinical_table, path, **kwargs) -> Path:
    """Save :func:`clinical_figure`."""
    return save_figure(clinical_figure(long, clinical_table, **kwargs), path)


def study_figures(out_dir, *, atlas, labels, affine, long, pmaps, clinical_table,
                  config, group_table=None, region_mask=None, n_perm=None,
                  background_img=None) -> dict:
    """All figures of a study run; returns ``{name: PNG path}`` (the PDF beside it).

    ``background_img``: the template under the brain slices (default: nilearn's
    bundled MNI152 2009a).
    """
    out = Path(out_dir)
    s, reg = config.study, config.regression
    figs = {"atlas": plot_atlas(labels, affine, out / "atlas.png", atlas=atlas,
                                title=f"Atlas regions ({atlas.space})",
                                background_img=background_img)}
    if pmaps:
        rows = {f"{p} vs {config.groups[p]}": v for p, v in pmaps.items()}
        figs["voxelwise"] = plot_pmaps(rows, affine, out / "voxelwise_tfce_pfwe.png",
                                       alpha=config.voxelwise.alpha, atlas_labels=labels,
                                       region_mask=region_mask, n_perm=n_perm,
                                       background_img=background_img)
    if group_table is not None:
        figs["regions_by_group"] = plot_regions_by_group(
            long, group_table, dict(config.groups), out / "regional_chi_by_group.png",
            formula=reg.group_formula, term=reg.group_term, group_column=s.group_column)
    pooled = f"C({s.group_column})" not in reg.clinical_formula.replace(" ", "")
    for variable in reg.clinical:
        note = None
        if variable.lower() == "edss" and pooled and len(config.groups) > 1:
            note = ("Caveat: EDSS differs between the pooled patient groups, so this slope mixes "
                    "the association within groups with differences between groups; add "
                    f"C({s.group_column}) to the model before reading it as one.")
        figs[f"chi_vs_{variable}"] = plot_clinical(
            long, clinical_table, out / f"chi_vs_{variable}.png", variable=variable,
            formula=reg.clinical_formula, patient_groups=list(config.groups),
            group_column=s.group_column, note=note)
    return figs
