"""The thalamus study end to end: :func:`run_study`.

cohort checks → (normalization when native) → referencing → voxel-wise
analysis per patient group vs its controls inside the thalamus mask
(``voxstats.randomise``: TFCE, Freedman–Lane, covariates, both signs) → ROI
tables → regressions → figures → report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

import voxstats
import voxstats.image
from qsm.atlas import (
    Atlas,
    _atomic_write_text,
    _save_img_atomic,
    atlas_labels_in_space,
    demo_thalamus_atlas,
    load_atlas,
    region_masks,
    save_atlas,
)
from qsm.config import StudyConfig, check_participants, load_config, read_participants
from qsm.regression import clinical_regressions, group_comparisons, regional_values
from qsm.roi import region_stats, write_stats_table

logger = logging.getLogger(__name__)

__all__ = ["StudyResult", "run_study", "voxelwise_design"]

_MARGIN = 2  # voxels around the analysis mask kept in the cropped voxel-wise data


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` produced.

    Attributes
    ----------
    out_dir : Path
    participants : DataFrame
        The analysed participants (with ``reference_ppb``, the subtracted reference).
    roi_table : DataFrame
        ``subject, roi, num_voxels, min, max, median, mean, std``.
    group_table, clinical_table : DataFrame
        See :func:`qsm.regression.group_comparisons` / ``clinical_regressions``.
    voxelwise_table : DataFrame or None
        Per patient group and atlas region: voxels, significant voxels (TFCE
        FWE p < alpha) with lower and higher χ in patients, min FWE p.
    figures : dict of str to Path
    report_path : Path
    timings : dict of str to float
        Seconds per stage.
    """

    out_dir: Path
    participants: pd.DataFrame
    roi_table: pd.DataFrame
    group_table: pd.DataFrame
    clinical_table: pd.DataFrame
    voxelwise_table: pd.DataFrame | None
    figures: dict
    report_path: Path
    timings: dict


def _load_study_atlas(config: StudyConfig) -> Atlas:
    a = config.atlas
    if a.labels_img:
        return load_atlas(config.path(a.labels_img), config.path(a.label_table), space=a.space,
                          structure=a.structure or None)
    return demo_thalamus_atlas()


def _reference_mask(config: StudyConfig, img) -> np.ndarray | None:
    region = config.referencing.region
    if region == "none":
        return None
    if region in ("brain", "wm"):
        from nilearn import datasets

        loader = (datasets.load_mni152_brain_mask if region == "brain"
                  else datasets.load_mni152_wm_mask)
        mask_img = loader(resolution=2)
        name = f"nilearn MNI152 {region} mask"
    else:
        mask_img = nib.load(str(config.path(region)))
        name = str(config.path(region))
    same = (mask_img.shape[:3] == img.shape[:3]
            and np.allclose(mask_img.affine, img.affine, atol=1e-4))
    if not same:
        if not config.atlas.resample:
            raise ValueError(f"The reference mask ({name}) and the χ maps are not on the same "
                             "grid; set [atlas] resample = true to allow nearest-neighbour "
                             "resampling.")
        from nilearn.image import resample_to_img

        mask_img = resample_to_img(mask_img, img, interpolation="nearest",
                                   force_resample=True, copy_header=True)
    return np.asarray(mask_img.dataobj) > 0


def voxelwise_design(rows: pd.DataFrame, patient: str, covariates, *,
                     group_column: str = "group") -> pd.DataFrame:
    """Design matrix of one patient group vs its controls.

    Columns: ``intercept``, ``patient`` (1 patients, 0 controls), numeric
    covariates demeaned, categorical covariates as 0/1 indicators of every
    level but the first (sorted).

    Parameters
    ----------
    rows : DataFrame
        Patients and their controls.
    patient : str
        The patient group label.
    covariates : sequence of str

    Returns
    -------
    design : (n_subjects, n_regressors) DataFrame
    """
    design = pd.DataFrame({"intercept": 1.0,
                           "patient": (rows[group_column] == patient).astype(float).to_numpy()})
    for col in covariates:
        values = rows[col]
        if pd.api.types.is_numeric_dtype(values):
            design[col] = (values - values.mean()).to_numpy(float)
        else:
            levels = sorted(values.astype(str).unique())
            for level in levels[1:]:
                design[f"{col}[{level}]"] = (values.astype(str) == level).astype(float).to_numpy()
    return design


def _bbox(mask, margin):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _crop_affine(affine, box):
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    return affine @ shift


def _check_before_work(config: StudyConfig):
    participants = read_participants(config)
    rows = check_participants(config, participants)
    atlas = _load_study_atlas(config)
    if config.voxelwise.enabled and config.voxelwise.region not in atlas.region_names:
        raise ValueError(f"{config.source}: invalid value for [voxelwise] region. Allowed "
                         f"values are {', '.join(map(repr, atlas.region_names))}, but got "
                         f"{config.voxelwise.region!r} instead.")
    if config.study.space == "native":
        try:
            from qsm import normalize  # noqa: F401
        except ImportError:
            raise ValueError(f"{config.source}: [study] space = 'native' needs qsm.normalize, "
                             "which is not available in this installation.") from None
    return rows, atlas


def _normalize(config: StudyConfig, rows: pd.DataFrame, out: Path, verbose) -> pd.DataFrame:
    from qsm.normalize import normalize_cohort

    logger.info("Normalizing %d subjects to the template", len(rows))
    result = normalize_cohort(config.path(config.study.participants), out / "normalized",
                              verbose=verbose)
    table = result if isinstance(result, pd.DataFrame) else getattr(result, "participants")
    rows = rows.drop(columns=[config.study.chi_column]).merge(
        table[[config.study.id_column, config.study.chi_column]], on=config.study.id_column)
    return rows


def _write_img(values_full, affine, path):
    _save_img_atomic(nib.Nifti1Image(values_full.astype(np.float32), affine), path)


def run_study(config, out_dir, *, verbose=None) -> StudyResult:
    """Run the whole thalamus QSM study.

    Parameters
    ----------
    config : StudyConfig, str, Path or dict
        A validated config or something :func:`qsm.config.load_config` reads.
    out_dir : str or Path
        Output folder (created). Receives ``atlas/``, ``cohort_qsmstats.tsv``,
        ``regression_groups.tsv``, ``regression_clinical.tsv``, ``voxelwise/``
        (per patient group: t, TFCE and TFCE FWE p maps in the χ maps' space,
        and ``voxelwise_regions.tsv``), ``figures/``, ``report.md`` and
        ``provenance.json``.
    verbose : bool or None
        Progress bars (default: when logging is at INFO or lower).

    Returns
    -------
    result : StudyResult
    """
    from tqdm.auto import tqdm

    if not isinstance(config, StudyConfig):
        config = load_config(config)
    if verbose is None:
        verbose = logger.getEffectiveLevel() <= logging.INFO
    timings = {}
    t0 = time.perf_counter()
    s = config.study
    rows, atlas = _check_before_work(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if s.space == "native":
        rows = _normalize(config, rows, out, verbose)
        timings["normalization"] = time.perf_counter() - t0
    save_atlas(atlas, out / "atlas", prefix=f"space-{atlas.space}_atlas-thalamus")

    # ---- load, reference, regional statistics, crop for the voxel-wise step
    t1 = time.perf_counter()
    folder = config.path(s.participants).parent
    paths = [Path(p) if Path(p).is_absolute() else folder / p for p in rows[s.chi_column]]
    first = nib.load(str(paths[0]))
    labels = atlas_labels_in_space(atlas, first, resample=config.atlas.resample,
                                   img_name=str(paths[0]))
    masks = region_masks(atlas, labels_data=labels)
    ref_mask = _reference_mask(config, first)
    vox_mask = masks.get(config.voxelwise.region) if config.voxelwise.enabled else None
    box = _bbox(vox_mask, _MARGIN) if vox_mask is not None else None
    crops, refs, tables = [], [], []
    for sub, path in tqdm(list(zip(rows[s.id_column], paths)), disable=not verbose,
                          desc="loading χ maps"):
        img = nib.load(str(path))
        voxstats.image.check_same_space(first, img, str(paths[0]), str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.ndim != 3:
            raise ValueError(f"χ map {path} must be 3D, got shape {data.shape}.")
        ref = 0.0
        if ref_mask is not None:
            inside = data[ref_mask]
            inside = inside[np.isfinite(inside) & (inside != 0)]
            ref = float(inside.mean()) if inside.size else 0.0
            data = np.where(data != 0, data - np.float32(ref), np.float32(0))
        refs.append(ref)
        table = region_stats(data, masks, ignore_zeros=config.roi.ignore_zeros,
                             trim_percentile=config.roi.trim_percentile or None)
        table.insert(0, "subject", sub)
        tables.append(table)
        if box is not None:
            crops.append(data[box].copy())
    rows = rows.assign(reference_ppb=refs)
    roi_table = pd.concat(tables, ignore_index=True)
    write_stats_table(roi_table, out / "cohort_qsmstats.tsv")
    timings["load_reference_roi"] = time.perf_counter() - t1

    # ---- voxel-wise analysis
    vox_table = None
    pmaps = {}
    if vox_mask is not None:
        t2 = time.perf_counter()
        vox_table, pmaps = _voxelwise(config, rows, crops, box, first.affine, first.shape,
                                      vox_mask, masks, out / "voxelwise", verbose)
        timings["voxelwise"] = time.perf_counter() - t2

    # ---- regressions
    t3 = time.perf_counter()
    reg = config.regression
    long = regional_values(roi_table, rows, statistic=config.roi.statistic,
                           id_column=s.id_column)
    group_table = group_comparisons(long, dict(config.groups), group_column=s.group_column,
                                    formula=reg.group_formula, term=reg.group_term,
                                    alpha=reg.alpha)
    clinical_table = clinical_regressions(long, list(config.groups), variables=reg.clinical,
                                          group_column=s.group_column,
                                          formula=reg.clinical_formula, alpha=reg.alpha)
    write_stats_table(group_table, out / "regression_groups.tsv")
    write_stats_table(clinical_table, out / "regression_clinical.tsv")
    timings["regressions"] = time.perf_counter() - t3

    # ---- figures and report
    t4 = time.perf_counter()
    from qsm import figures, report

    figs = figures.study_figures(out / "figures", atlas=atlas, labels=labels,
                                 affine=first.affine, long=long, pmaps=pmaps,
                                 clinical_table=clinical_table, config=config)
    timings["figures"] = time.perf_counter() - t4
    timings["total"] = time.perf_counter() - t0
    provenance = {"config": config.to_dict(), "config_source": config.source,
                  "n_subjects": int(len(rows)), "timings_s": timings,
                  "versions": report.versions()}
    _atomic_write_text(out / "provenance.json", json.dumps(provenance, indent=2, default=str))
    report_path = report.write_report(out / "report.md", config=config, participants=rows,
                                      group_table=group_table, clinical_table=clinical_table,
                                      voxelwise_table=vox_table, figures=figs, timings=timings)
    logger.info("Study finished in %.1f s; report: %s", timings["total"], report_path)
    return StudyResult(out, rows, roi_table, group_table, clinical_table, vox_table, figs,
                       report_path, timings)


def _voxelwise(config, rows, crops, box, affine, shape, vox_mask, masks, out, verbose):
    v = config.voxelwise
    s = config.study
    crop_affine = _crop_affine(affine, box)
    mask_crop = vox_mask[box]
    results, pmaps = [], {}
    for k, (patient, control) in enumerate(config.groups.items()):
        sel = rows[s.group_column].isin([patient, control]).to_numpy()
        sub = rows[sel].reset_index(drop=True)
        data = np.stack([c for c, keep in zip(crops, sel) if keep], axis=-1)
        design = voxelwise_design(sub, patient, v.covariates, group_column=s.group_column)
        weights = np.zeros(design.shape[1])
        weights[list(design.columns).index("patient")] = 1.0
        logger.info("Voxel-wise %s vs %s: %d subjects, %d voxels, %d permutations", patient,
                    control, len(sub), int(mask_crop.sum()), v.n_perm)
        res = voxstats.randomise(
            nib.Nifti1Image(data, crop_affine), design, {f"{patient}-{control}": weights},
            mask_img=nib.Nifti1Image(mask_crop.astype(np.uint8), crop_affine),
            n_perm=v.n_perm, tfce=v.tfce, two_sided=v.two_sided,
            connectivity=v.connectivity, rng=np.random.default_rng([v.seed, k]),
            n_jobs=v.n_jobs, verbose=verbose)
        c = res[0]
        p_fwe = c.tfce_p_fwe if v.tfce else c.p_fwe
        full = {}
        for name, values in (("t", c.stat), ("tfce", c.tfce), ("pfwe", p_fwe)):
            if values is None:
                continue
            vol = np.zeros(shape, np.float32)
            vol[box] = np.asarray(res.to_img(values).dataobj)
            if name == "pfwe":
                vol[~vox_mask] = 1.0
            full[name] = vol
            _write_img(vol, affine, out / f"{patient}_vs_{control}_stat-{name}.nii.gz")
        pmaps[patient] = (full["pfwe"], full["t"])
        sig = (full["pfwe"] < v.alpha) & vox_mask
        for region, m in masks.items():
            m = m & vox_mask
            results.append({
                "patient_group": patient, "control_group": control, "region": region,
                "n_voxels": int(m.sum()),
                "n_sig_lower": int((sig & m & (full["t"] < 0)).sum()),
                "n_sig_higher": int((sig & m & (full["t"] > 0)).sum()),
                "min_p_fwe": float(full["pfwe"][m].min()) if m.any() else np.nan,
                "n_perm": int(res.n_perm), "scheme": res.scheme,
            })
    table = pd.DataFrame(results)
    table["frac_sig"] = (table.n_sig_lower + table.n_sig_higher) / table.n_voxels.clip(lower=1)
    write_stats_table(table, out / "voxelwise_regions.tsv")
    return table, pmaps
