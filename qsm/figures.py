"""Study figures (PNG, matplotlib Agg and nilearn plotting).

* the atlas on the template,
* per patient group, TFCE FWE p maps on axial slices through the thalamus,
* regional χ by group (box + strip plots),
* χ against disease duration with fitted lines per region.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["plot_atlas", "plot_pmaps", "plot_regions_by_group", "plot_clinical",
           "study_figures"]

#: Axial slices (MNI z, mm) through the thalamus.
THALAMUS_CUTS = (0, 4, 8, 12)
_MAIN_REGIONS = ("thalamus", "anterior", "medial", "lateral", "pulvinar", "lateral_left")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


def _template():
    from nilearn import datasets

    return datasets.load_mni152_template(resolution=2)


def plot_atlas(labels, affine, path, *, title="Demo thalamus atlas") -> Path:
    """Atlas labels over the MNI152 template on axial slices through the thalamus."""
    from nilearn import plotting

    fig = plt.figure(figsize=(10, 3))
    plotting.plot_roi(nib.Nifti1Image(labels.astype(np.int32), affine), bg_img=_template(),
                      display_mode="z", cut_coords=THALAMUS_CUTS, cmap="tab10", title=title,
                      figure=fig, draw_cross=False)
    return _save(fig, Path(path))


def plot_pmaps(pmaps: dict, affine, path, *, alpha=0.05) -> Path:
    """Signed −log10 TFCE FWE p per patient group (negative: lower χ in patients).

    Parameters
    ----------
    pmaps : dict of str to ((x, y, z) ndarray, (x, y, z) ndarray)
        Patient group -> (FWE p map, t map).
    """
    from nilearn import plotting

    n = max(1, len(pmaps))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False)
    vmax = -np.log10(1.0 / 10000)
    for ax, (group, (p, t)) in zip(axes[:, 0], pmaps.items()):
        logp = -np.log10(np.clip(p, 1e-12, 1.0)) * np.sign(t)
        if not np.any(p < alpha):  # nothing to overlay: show the slices, say so
            plotting.plot_anat(_template(), display_mode="z", cut_coords=THALAMUS_CUTS,
                               axes=ax, title=f"{group}: no voxel with TFCE FWE p<{alpha}",
                               draw_cross=False)
            continue
        plotting.plot_stat_map(nib.Nifti1Image(logp.astype(np.float32), affine),
                               bg_img=_template(), display_mode="z", cut_coords=THALAMUS_CUTS,
                               threshold=-np.log10(alpha), vmax=min(vmax, 4.0), axes=ax,
                               title=f"{group}: signed -log10 TFCE FWE p (p<{alpha})",
                               cmap="cold_hot", draw_cross=False, colorbar=True)
    return _save(fig, Path(path))


def plot_regions_by_group(long: pd.DataFrame, path, *, regions=_MAIN_REGIONS,
                          group_column="group", order=None) -> Path:
    """Box and strip plots of regional χ by group, one panel per region."""
    regions = [r for r in regions if r in set(long["roi"])]
    order = order or sorted(long[group_column].unique())
    fig, axes = plt.subplots(1, len(regions), figsize=(3.2 * len(regions), 3.6), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, region in zip(axes[0], regions):
        sub = long[long["roi"] == region]
        values = [sub.loc[sub[group_column] == g, "chi"].dropna().to_numpy() for g in order]
        ax.boxplot(values, showfliers=False)
        ax.set_xticks(range(1, len(order) + 1), order)
        for i, v in enumerate(values, start=1):
            ax.plot(i + rng.uniform(-0.15, 0.15, v.size), v, ".", alpha=0.5, ms=3)
        ax.set_title(region)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    axes[0, 0].set_ylabel("χ (ppb)")
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_clinical(long: pd.DataFrame, clinical_table: pd.DataFrame, path, *,
                  variable="disease_duration", regions=_MAIN_REGIONS, patient_groups=None,
                  group_column="group") -> Path:
    """χ against a clinical variable in patients, with the fitted slope per region.

    The line is the model's slope for the variable through the means (other
    covariates at their mean).
    """
    regions = [r for r in regions if r in set(long["roi"])]
    fig, axes = plt.subplots(1, len(regions), figsize=(3.2 * len(regions), 3.4), squeeze=False)
    sub_all = long if patient_groups is None else long[long[group_column].isin(patient_groups)]
    for ax, region in zip(axes[0], regions):
        sub = sub_all[(sub_all["roi"] == region)].dropna(subset=[variable, "chi"])
        for g, part in sub.groupby(group_column):
            ax.plot(part[variable], part["chi"], ".", ms=4, alpha=0.6, label=g)
        row = clinical_table[(clinical_table["variable"] == variable)
                             & (clinical_table["region"] == region)]
        if len(row) and len(sub):
            row = row.iloc[0]
            x = np.linspace(sub[variable].min(), sub[variable].max(), 10)
            y = sub["chi"].mean() + row["beta"] * (x - sub[variable].mean())
            ax.plot(x, y, "k-", lw=2)
            ax.set_title(f"{region}\nβ={row['beta']:.2f}, p_holm={row['p_holm']:.2g}",
                         fontsize=9)
        ax.set_xlabel(variable)
    axes[0, 0].set_ylabel("χ (ppb)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, Path(path))


def study_figures(out_dir, *, atlas, labels, affine, long, pmaps, clinical_table,
                  config) -> dict:
    """All figures of a study run; returns ``{name: path}``."""
    out = Path(out_dir)
    order = []
    for patient, control in config.groups.items():
        order += [control, patient]
    figs = {"atlas": plot_atlas(labels, affine, out / "atlas.png", title=atlas.space)}
    if pmaps:
        figs["voxelwise"] = plot_pmaps(pmaps, affine, out / "voxelwise_tfce_pfwe.png",
                                       alpha=config.voxelwise.alpha)
    figs["regions_by_group"] = plot_regions_by_group(
        long, out / "regional_chi_by_group.png", group_column=config.study.group_column,
        order=order)
    for variable in config.regression.clinical:
        figs[f"chi_vs_{variable}"] = plot_clinical(
            long, clinical_table, out / f"chi_vs_{variable}.png", variable=variable,
            patient_groups=list(config.groups), group_column=config.study.group_column)
    return figs
