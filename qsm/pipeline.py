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
from contextlib import closing
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
    region_masks,
    save_atlas,
)
from qsm.coverage import incomplete_subjects
from qsm.errors import ListedError, log_listed
from qsm.config import StudyConfig, check_participants, load_config, read_participants
from qsm.chi_loading import _load_one, _read_chi
from qsm.read_ahead import read_ahead
from qsm.regression import clinical_regressions, group_comparisons, regional_values
from qsm.roi import write_stats_table
from qsm.units import _FACTOR, check_unit_ranges, robust_range

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
        The analysed participants, with ``reference_region``, ``reference_statistic``,
        ``reference_ppb`` (the offset subtracted by :func:`qsm.reference.rereference`)
        and ``reference_voxels``; for a native-space study also ``native_chi_path``,
        ``normalization_offset_ppb`` and the registration quality (``chi_path`` then
        points to the normalized map).
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
    from qsm.study_space import load_study_atlas

    return load_study_atlas(config)


def _same_grid(a, b) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=1e-4)


def _study_reference_mask(config: StudyConfig, img, native):
    """Reference region on the maps' grid, from the user's masks or the study's template."""
    from qsm.study_space import reference_mask, study_template
    from qsm.template import resample_template

    if config.referencing.region == "none":
        return None, "none"
    if native is not None:
        template = native.template
        if config.normalization.resolution:
            template = resample_template(template, config.normalization.resolution)
    else:
        template = study_template(config)
    return reference_mask(config, img, template)


def _drop_incomplete(config: StudyConfig, rows, crops, tables, coverage):
    """Stop on (or leave out) subjects without data in too much of the voxel-wise region."""
    s, r = config.study, config.roi
    region = config.voxelwise.region if config.voxelwise.enabled else "thalamus"
    bad = incomplete_subjects(coverage, region, r.max_missing_fraction)
    if not bad:
        return rows, crops, tables, {}
    listed = [f"{k} ({v:.0%})" for k, v in bad.items()]
    if r.on_missing == "stop":
        raise ListedError(f"{config.source}: {len(listed)} subject(s) without data in more than "
                          f"{r.max_missing_fraction:.0%} of the {region} ([roi] "
                          "max_missing_fraction): ", listed,
                          ". Fix their maps, raise the limit, or set [roi] on_missing = "
                          "\"exclude\" to leave them out (see coverage.tsv).", sep=", ")
    keep = ~rows[s.id_column].astype(str).isin(list(bad)).to_numpy()
    log_listed(logger, logging.WARNING, f"Left out {len(listed)} subject(s) ([roi] on_missing = "
               "exclude): %s", listed)
    rows = rows[keep].reset_index(drop=True)
    check_participants(config, rows, whole_table=False)
    crops = [c for c, k in zip(crops, keep) if k]
    tables = [t for t, k in zip(tables, keep) if k]
    return rows, crops, tables, bad


def _coverage_summary(config, selected, rows, coverage, excluded, vox_info, atlas, native):
    """What the report says about coverage and the subjects left out (qsm.report_coverage)."""
    from qsm.report_coverage import CoverageSummary

    s, r = config.study, config.roi
    ids = [str(x) for x in selected[s.id_column]]
    groups = dict(zip(ids, selected[s.group_column].astype(str)))
    region = config.voxelwise.region if config.voxelwise.enabled else "thalamus"
    left_out = []
    if native is not None:   # invalid inputs skipped, or subjects not normalized
        reasons = {k.subject: k.reason for k in native.cohort.skipped}
        done = {_subject_key(x) for x in rows[s.id_column]}
        for sub in ids:
            if _subject_key(sub) not in done:
                left_out.append({"subject": sub, "group": groups[sub], "reason": reasons.get(
                    _subject_key(sub), "not normalized (see qsm.log)")})
    for sub, fraction in excluded.items():
        left_out.append({"subject": sub, "group": groups.get(sub, ""), "reason":
                         f"no data in {fraction:.1%} of the {region} (more than [roi] "
                         f"max_missing_fraction = {r.max_missing_fraction:.0%})"})
    flagged = []
    if "registration_outlier" in rows.columns:
        for _, row in rows[rows["registration_outlier"].astype(bool)].iterrows():
            flagged.append({"subject": str(row[s.id_column]), "group": str(row[s.group_column]),
                            "reason": f"registration QC: r = {row['registration_correlation']:.2f}"
                                      f", NMI = {row['registration_nmi']:.3f} (below the floor "
                                      "or an outlier; normalization_quality.tsv)"})
    return CoverageSummary(
        table=coverage, region=region, groups=groups, label_regions=list(atlas.labels["name"]),
        max_missing_fraction=r.max_missing_fraction, on_missing=r.on_missing,
        ignore_zeros=r.ignore_zeros, voxelwise_mask=vox_info, excluded=left_out,
        flagged=flagged, n_listed=len(selected))


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
    native = _native_inputs(config, rows, atlas) if config.study.space == "native" else None
    _check_atlas_space(config, atlas, native)
    # the units of standard-space maps are checked by run_study as it reads them (once);
    # native maps are checked by qsm.normalize
    return rows, atlas, native


def _check_atlas_space(config: StudyConfig, atlas: Atlas, native) -> None:
    """A user atlas must be tagged with the space the χ maps are analysed in.

    "MNI" spaces (ICBM152 2009a/b/c, the 6th generation of FSL) differ by
    millimetres, so a different name is an error, never silently resampled. The
    demo atlas is built on nilearn's bundled template grid (checked by grid).
    """
    if not (config.atlas.labels_img or config.atlas.name):
        return
    if native is not None:
        data_space, where = native.template.space, "the [normalization] template"
    else:
        data_space, where = config.study.space, "[study] space"
    if atlas.space != data_space:
        raise ValueError(
            f"{config.source}: the atlas {config.atlas.name or config.atlas.labels_img} is in "
            f"space {atlas.space!r} but the χ maps are in {data_space!r} ({where}). Template "
            f"spaces differ by millimetres; carry the atlas over with `qsm atlas transfer` "
            f"(then [atlas] labels_img/label_table/space = its outputs), or use an atlas made "
            f"in {data_space!r} (or correct [atlas] space / [study] space if a tag is wrong).")


def _subject_key(participant_id) -> str:
    label = str(participant_id).strip()
    return label[4:] if label.startswith("sub-") else label


@dataclass(frozen=True)
class _NativeInputs:
    cohort: object          # qsm.cohort.Cohort of the analysed rows
    template: object        # qsm.template.Template
    reference: str          # qsm.reference region for qsm.normalize
    reference_mask_img: object


def _native_inputs(config: StudyConfig, rows: pd.DataFrame, atlas: Atlas) -> _NativeInputs:
    """Cohort (analysed subjects), template and reference of a native-space study.

    Everything that can fail is checked here, before any registration: the
    registration engine, every subject's files (:func:`qsm.cohort.load_cohort`),
    the template and the reference region on the output grid.
    """
    from qsm.cohort import Cohort, load_cohort
    from qsm.study_space import resampled_mask, study_template
    from qsm.template import output_grid

    s, n = config.study, config.normalization
    if n.engine == "ants":
        try:
            import ants  # noqa: F401
        except ImportError:
            raise ValueError(f"{config.source}: [normalization] engine = 'ants' needs the "
                             "optional antspyx package (pip install antspyx); or use engine = "
                             "'dipy'.") from None
    cohort = load_cohort(config.path(s.participants), subject_column=s.id_column,
                         chi_column=s.chi_column, structural_column="structural_path",
                         require_structural=n.drive != "chi", skip_bad=n.skip_bad)
    wanted = {_subject_key(x) for x in rows[s.id_column]}
    keep = cohort.table["subject"].isin(wanted).to_numpy()
    cohort = Cohort(table=cohort.table[keep].reset_index(drop=True), source=cohort.source,
                    skipped=tuple(k for k in cohort.skipped if k.subject in wanted))
    template = study_template(config)
    shape, affine = output_grid(template, n.resolution or None)
    grid = nib.Nifti1Image(np.zeros(shape, np.uint8), affine)
    if not config.atlas.resample and not _same_grid(atlas.labels_img, grid):
        raise ValueError(f"{config.source}: the atlas (shape {atlas.labels_img.shape}) is not on "
                         f"the normalization output grid (shape {tuple(shape)}); set "
                         "[normalization] resolution/template to the atlas grid, or [atlas] "
                         "resample = true for nearest-neighbour resampling of the atlas.")
    r = config.referencing
    user = {"brain": r.brain_mask, "wm": r.wm_mask}.get(r.region, r.region)
    mask_img = None
    if r.region in ("brain", "wm") and not user:
        reference = "whole_brain" if r.region == "brain" else "wm"   # from the template
    else:
        reference = "mask"
        path = config.path(user)
        mask = resampled_mask(nib.load(str(path)), grid, config.atlas.resample, str(path))
        mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    return _NativeInputs(cohort, template, reference, mask_img)


def _normalize(config: StudyConfig, rows: pd.DataFrame, native: _NativeInputs, out: Path,
               verbose) -> tuple[pd.DataFrame, object]:
    """Run :func:`qsm.normalize.normalize_cohort`; rows then point to the normalized χ maps.

    Adds ``native_chi_path``, ``normalization_offset_ppb`` (the reference
    offset removed by qsm.normalize), ``registration_nmi``,
    ``registration_correlation`` and ``registration_outlier``.
    """
    from qsm.normalize import normalize_cohort

    s, n = config.study, config.normalization
    logger.info("Normalizing %d subjects to %s (%s, nonlinear=%s, n_jobs=%d)",
                len(native.cohort), native.template.space, n.engine, n.nonlinear, n.n_jobs)
    result = normalize_cohort(
        native.cohort, out / n.out_subdir, template=native.template, engine=n.engine,
        drive=n.drive, nonlinear=None if n.nonlinear == "auto" else n.nonlinear,
        resolution=n.resolution or None,
        registration_resolution=n.registration_resolution or None,
        reference=native.reference, reference_mask_img=native.reference_mask_img,
        reference_statistic=config.referencing.statistic, interpolation=n.interpolation,
        hybrid_mu=n.hybrid_mu, units=config.study.units, params=dict(n.dipy_params) or None,
        outlier_z=n.outlier_z, qc_floor=n.qc_floor or None, n_jobs=n.n_jobs, rng=n.seed,
        verbose=verbose, overwrite=n.overwrite)
    table = result.table
    index = {sub: i for i, sub in enumerate(table["subject"])}
    keep = np.array([_subject_key(x) in index for x in rows[s.id_column]])
    if not keep.all():
        log_listed(logger, logging.WARNING, f"Not normalized (skipped as invalid): "
                   f"{int((~keep).sum())} subject(s): %s", rows.loc[~keep, s.id_column])
    rows = rows[keep].reset_index(drop=True)
    idx = [index[_subject_key(x)] for x in rows[s.id_column]]
    rows = rows.assign(**{
        "native_chi_path": rows[s.chi_column].to_numpy(),
        s.chi_column: [str(table["chi_template_path"][i]) for i in idx],
        "normalization_offset_ppb": table["offset"].to_numpy()[idx],
        "registration_nmi": table["nmi"].to_numpy()[idx],
        "registration_correlation": table["correlation"].to_numpy()[idx],
        "registration_outlier": table["outlier"].to_numpy()[idx],
    })
    check_participants(config, rows, whole_table=False)  # group sizes after skipped subjects
    return rows, result


_REFERENCING_COLUMNS = ("native_chi_path", "normalization_offset_ppb", "registration_nmi",
                        "registration_correlation", "registration_outlier", "reference_region",
                        "reference_statistic", "reference_ppb", "reference_voxels")


def _write_referencing(rows: pd.DataFrame, config: StudyConfig, path: Path) -> None:
    """Per subject: the reference offsets removed (and, when native, registration quality)."""
    s = config.study
    cols = [s.id_column, s.group_column, s.chi_column] + [c for c in _REFERENCING_COLUMNS
                                                          if c in rows.columns]
    write_stats_table(rows[cols], path)


def _referencing_summary(rows: pd.DataFrame, config: StudyConfig, description: str) -> dict:
    out = {"region": config.referencing.region, "statistic": config.referencing.statistic,
           "mask": description, "table": "referencing.tsv",
           "offset_ppb_mean": float(np.mean(rows["reference_ppb"])),
           "offset_ppb_sd": float(np.std(rows["reference_ppb"]))}
    if "normalization_offset_ppb" in rows.columns:
        out["normalization_offset_ppb_mean"] = float(np.mean(rows["normalization_offset_ppb"]))
        out["note"] = ("qsm.normalize re-referenced each map in template space first "
                       "(normalization_offset_ppb, also in its sidecars); reference_ppb is the "
                       "pipeline's second, residual offset on the same region.")
    return out


def _normalization_summary(result, native, out: Path) -> dict | None:
    if result is None:
        return None
    table = result.table
    return {"space": result.template.space, "n_subjects": int(len(table)),
            "n_normalized": int((table["status"] == "normalized").sum()),
            "n_existing": int((table["status"] == "existing").sum()),
            "outliers": [str(x) for x in table.loc[table["outlier"], "subject"]],
            "quality_tsv": str(Path(result.quality_path).relative_to(out)),
            "skipped": [k.reason for k in native.cohort.skipped]}


def _write_img(values_full, affine, path):
    _save_img_atomic(nib.Nifti1Image(values_full.astype(np.float32), affine), path)


_MAP_DESCRIPTIONS = {
    "t": "t statistic of patients minus controls (negative: lower χ in patients)",
    "tfce": "TFCE of the t map, both signs (negative: lower χ in patients)",
    "pfwe": "family-wise error corrected p-value (plain p: small is significant; 1 outside "
            "the analysis mask)",
}


def _write_sidecar(path, name, patient, control, v, n_perm, scheme):
    """JSON sidecar (BIDS style) that makes a map self-describing.

    ``p_convention`` follows the key ``voxstats cluster`` reads: ``"p"`` for
    plain p-values (randomise's maps store ``"1-p"``).
    """
    meta = {"Description": _MAP_DESCRIPTIONS[name], "patient_group": patient,
            "control_group": control, "region": v.region, "covariates": list(v.covariates),
            "n_perm": n_perm, "permutation_scheme": scheme, "tfce": bool(v.tfce),
            "two_sided": bool(v.two_sided), "connectivity": int(v.connectivity)}
    if name == "pfwe":
        meta.update(p_convention="p", correction="FWE (maximum statistic)",
                    statistic="tfce" if v.tfce else "t", alpha=float(v.alpha),
                    sign_from=f"{patient}_vs_{control}_stat-t.nii.gz")
    _atomic_write_text(path, json.dumps(meta, indent=2) + "\n")


def check_out_dir(out_dir, flag: str = "out_dir") -> Path:
    """The output folder as an absolute path; an existing file there is an error.

    Outputs are written, and looked up again, relative to this one absolute
    folder, whatever the working directory and the participants table's folder.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out_dir} is a file, not a folder.")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {out_dir}: {parent} is a file, not a folder.")
            break
    return out


def run_study(config, out_dir, *, verbose=None, timings=None) -> StudyResult:
    """Run the whole thalamus QSM study.

    Parameters
    ----------
    config : StudyConfig, str, Path or dict
        A validated config or something :func:`qsm.config.load_config` reads.
    out_dir : str or Path
        Output folder (created). Receives (for ``[study] space = "native"``) the
        normalized BIDS derivatives of :func:`qsm.normalize.normalize_cohort` in
        ``normalized/`` (``[normalization] out_subdir``), ``atlas/``,
        ``referencing.tsv`` (reference offsets per subject), ``cohort_qsmstats.tsv``,
        ``regression_groups.tsv``, ``regression_clinical.tsv``, ``voxelwise/``
        (per patient group: t, TFCE and TFCE FWE p maps in the χ maps' space, each
        with a JSON sidecar, the p maps plain p with ``"p_convention": "p"``, and
        ``voxelwise_regions.tsv``), ``figures/`` (PNG and PDF), ``report.md``, the
        self-contained ``report.html`` and ``provenance.json``. A relative path is
        taken relative to the working directory; an existing file is an error.
    verbose : bool or None
        Progress bars (default: when logging is at INFO or lower).
    timings : dict of str to float, optional
        Seconds spent before this call (e.g. ``{"simulation": 12.3}``); they are
        reported with the run's own stages and counted in ``total``.

    Returns
    -------
    result : StudyResult
    """
    from voxstats.progress import progress_bar as tqdm

    if not isinstance(config, StudyConfig):
        config = load_config(config)
    if verbose is None:
        verbose = logger.getEffectiveLevel() <= logging.INFO
    earlier = {k: float(v) for k, v in (timings or {}).items()}
    timings = dict(earlier)
    t0 = time.perf_counter()
    s = config.study
    out = check_out_dir(out_dir)
    rows, atlas, native = _check_before_work(config)
    from qsm.report import load_truth

    truth = load_truth(config)
    normalization = None
    selected = rows
    if native is not None:
        out.mkdir(parents=True, exist_ok=True)
        rows, normalization = _normalize(config, rows, native, out, verbose)
        timings["normalization"] = time.perf_counter() - t0

    # ---- load, reference, regional statistics, crop for the voxel-wise step
    t1 = time.perf_counter()
    folder = config.path(s.participants).parent
    paths = [Path(p) if Path(p).is_absolute() else folder / p for p in rows[s.chi_column]]
    first = _read_chi(paths[0], rows[s.id_column].iloc[0], header_only=True)
    labels = atlas_labels_in_space(atlas, first, resample=config.atlas.resample,
                                   img_name=str(paths[0]))
    masks = region_masks(atlas, labels_data=labels)
    ref_mask, ref_description = _study_reference_mask(config, first, native)
    vox_mask = masks.get(config.voxelwise.region) if config.voxelwise.enabled else None
    box = _bbox(vox_mask, _MARGIN) if vox_mask is not None else None
    units = "ppb" if native is not None else s.units   # qsm.normalize writes ppb
    crops, refs, ref_voxels, tables, coverage = [], [], [], [], []
    # Units (qsm.units) are checked on the maps as read here, each read once. Their
    # error comes first, as if checked before this loop: a subject's other error is
    # raised only after every map's range was measured and the units passed.
    check = native is None   # qsm.normalize checked the native maps' units
    ranges, failure = [], None
    mask_indices = {name: np.flatnonzero(mask) for name, mask in masks.items()}
    ref_mask_img = (None if ref_mask is None   # built once, not per subject
                    else nib.Nifti1Image(ref_mask.astype(np.uint8), first.affine))

    def read(item):  # on the read-ahead thread: the file and its robust range
        img, data = _read_chi(item[1], item[0])
        return img, data, (robust_range(data) * _FACTOR[s.units] if check else None)

    subjects = list(zip(rows[s.id_column], paths))
    with closing(read_ahead(read, subjects)) as maps:   # stops the reader on any error
        for (sub, path), (img, data, robust) in tqdm(zip(subjects, maps), total=len(subjects),
                                                     disable=not verbose, desc="loading χ maps"):
            if check:
                ranges.append(robust)
            if failure is not None:
                continue
            try:
                crop = _load_one(config, sub, path, img, data, first, paths[0], vox_mask, units,
                                 masks, mask_indices, ref_mask_img, box, coverage, refs, ref_voxels,
                                 tables)
            except ValueError as exc:
                if not check:
                    raise
                failure = exc
                continue
            if crop is not None:
                crops.append(crop)
    if check:
        check_unit_ranges(ranges, s.units, subjects=list(rows[s.id_column]), names=paths)
    if failure is not None:
        raise failure
    out.mkdir(parents=True, exist_ok=True)
    save_atlas(atlas, out / "atlas", prefix=f"space-{atlas.space}_atlas-thalamus")
    rows = rows.assign(reference_region=config.referencing.region,
                       reference_statistic=config.referencing.statistic,
                       reference_ppb=refs, reference_voxels=ref_voxels)
    coverage = pd.concat(coverage, ignore_index=True)
    write_stats_table(coverage, out / "coverage.tsv")
    rows, crops, tables, excluded = _drop_incomplete(config, rows, crops, tables, coverage)
    vox_info = None
    if vox_mask is not None:
        common = np.logical_and.reduce([np.isfinite(c) for c in crops])
        for c in crops:
            c[~np.isfinite(c)] = 0.0   # outside the analysed mask
        in_region = int(vox_mask.sum())
        vox_mask = vox_mask.copy()
        vox_mask[box] &= common
        vox_info = {"region": config.voxelwise.region, "region_voxels": in_region,
                    "analysed_voxels": int(vox_mask.sum()),
                    "dropped_no_data": in_region - int(vox_mask.sum())}
        if vox_info["dropped_no_data"]:
            logger.warning("Voxel-wise mask: %d of %d %s voxels lack data in at least one "
                           "subject and are left out (coverage.tsv)", vox_info["dropped_no_data"],
                           in_region, config.voxelwise.region)
    _write_referencing(rows, config, out / "referencing.tsv")
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

    figs = figures.study_figures(
        out / "figures", atlas=atlas, labels=labels, affine=first.affine, long=long,
        pmaps=pmaps, clinical_table=clinical_table, config=config, group_table=group_table,
        region_mask=vox_mask,
        n_perm=int(vox_table["n_perm"].max()) if vox_table is not None else None,
        background_img=native.template.img if native is not None else None)
    timings["figures"] = time.perf_counter() - t4
    timings["total"] = time.perf_counter() - t0 + sum(earlier.values())
    summary = _coverage_summary(config, selected, rows, coverage, excluded, vox_info, atlas,
                                native)
    provenance = {"config": config.to_dict(), "config_source": config.source,
                  "n_subjects": int(len(rows)), "timings_s": timings,
                  "referencing": _referencing_summary(rows, config, ref_description),
                  "units": {"declared": s.units, "analysed": "ppb"},
                  "coverage": {"table": "coverage.tsv", "voxelwise_mask": vox_info,
                               "excluded_subjects": list(excluded),
                               "left_out": summary.excluded,
                               "max_missing_fraction": config.roi.max_missing_fraction},
                  "normalization": _normalization_summary(normalization, native, out),
                  "versions": report.versions()}
    _atomic_write_text(out / "provenance.json", json.dumps(provenance, indent=2, default=str))
    report_path = report.write_report(out / "report.md", config=config, participants=rows,
                                      group_table=group_table, clinical_table=clinical_table,
                                      voxelwise_table=vox_table, figures=figs, timings=timings,
                                      truth=truth, coverage=summary)
    logger.info("Study finished in %.1f s; report: %s", timings["total"], report_path)
    return StudyResult(out, rows, roi_table, group_table, clinical_table, vox_table, figs,
                       report_path, timings)


def _voxelwise(config, rows, crops, box, affine, shape, vox_mask, masks, out, verbose):
    v = config.voxelwise
    s = config.study
    crop_affine = _crop_affine(affine, box)
    mask_crop = vox_mask[box]
    results, pmaps = [], {}
    from voxstats.progress import progress_bar as tqdm

    bar = tqdm(total=len(config.groups) * v.n_perm, disable=not verbose, unit="perm",
               desc="voxel-wise permutations")
    for k, (patient, control) in enumerate(config.groups.items()):
        bar.set_description(f"voxel-wise {patient} vs {control}")
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
            n_jobs=v.n_jobs, verbose=False)
        bar.update(v.n_perm)
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
            stem = out / f"{patient}_vs_{control}_stat-{name}"
            _write_img(vol, affine, stem.with_name(stem.name + ".nii.gz"))
            _write_sidecar(stem.with_name(stem.name + ".json"), name, patient, control, v,
                           int(res.n_perm), res.scheme)
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
    bar.set_description(f"voxel-wise, {len(config.groups)} patient groups")
    bar.close()
    table = pd.DataFrame(results)
    table["frac_sig"] = (table.n_sig_lower + table.n_sig_higher) / table.n_voxels.clip(lower=1)
    write_stats_table(table, out / "voxelwise_regions.tsv")
    return table, pmaps
