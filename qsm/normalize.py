"""Bring a cohort's χ maps into template space: the ``qsm.normalize`` API.

For each subject, :func:`normalize_cohort` registers the subject to the
template with the chosen drive (:mod:`qsm.drives`: structural, χ alone, the
MuSus-100 hybrid contrast, or both as two channels;
:func:`qsm.registration.register`), optionally on a coarser working grid,
resamples χ onto the output grid, re-references it (:mod:`qsm.reference`) and
writes, in BIDS-derivative naming under ``out_dir/sub-<id>/[ses-<id>/]anat``:

* ``sub-<id>[_ses-<id>]_space-<space>_Chimap.nii.gz`` (ppb) and the normalized structural;
* the transforms (ITK affine ``.mat`` and ITK/ANTs warp fields);
* a JSON sidecar (engine, drive, parameters, software versions, units, reference
  region and offset, data coverage, quality figures and floor, the list of
  outputs) -- written last, so its presence with all listed outputs marks a
  complete subject, skipped on rerun;
* a QC PNG in ``sub-<id>/figures``: the normalized structural image (or the
  χ map when there is none) with the template's edges, and close-ups of the
  thalamus.

**Voxels without data.** A χ map is zero outside its reconstructed field of
view. Its support is resampled with it and χ is the interpolation of the
voxels *with* data only (normalized interpolation: ``interp(χ) / interp(support)``);
where less than half of the interpolation weight has data the output is 0,
"no data". Referencing then uses voxels with data only, and leaves no-data
voxels at 0.

``out_dir/normalization_quality.tsv`` lists, per subject, the normalized mutual
information and the correlation with the template inside its mask (of the
structural image with ``template.img``, or of χ with the template's χ channel
for a χ-only subject), their robust z-scores (median/MAD), ``below_floor``
(|r| under the drive's absolute floor, :data:`qsm.drives.QC_FLOORS`: a failed
registration whatever the cohort) and ``outlier`` (below the floor, or a
robust z below ``-outlier_z``), and the data coverage of the template brain.

:func:`build_template` (:mod:`qsm.study_template`) builds a study-specific
template (ANTs-style: average, then shape update by the average inverse warp).
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from qsm.cohort import Cohort, bids_prefix
from qsm.drives import DRIVES, HYBRID_MU_PPM, QC_FLOORS, default_nonlinear, support_mask
from qsm.errors import ListedError, log_listed
from qsm.qc import save_qc_png, thalamus_region
from qsm.reference import REGIONS, rereference
from qsm.registration import register
from qsm.study_template import build_template  # noqa: F401  (re-exported)
from qsm.template import Template, load_template, output_grid
from qsm.transforms import atomic_write_text, check_interpolation, save_img_atomic
from qsm.units import check_units, to_ppb

logger = logging.getLogger(__name__)

QUALITY_TSV = "normalization_quality.tsv"


@dataclass(frozen=True)
class NormalizationResult:
    """What :func:`normalize_cohort` produced.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per subject: the cohort columns, output paths (``chi_template_path``,
        ``structural_template_path``, ``sidecar_path``, ``qc_path``), ``nmi``,
        ``correlation``, their robust z-scores, ``below_floor``, ``outlier``,
        ``offset`` (ppb), ``coverage`` (fraction of the template brain with
        data) and ``status`` (``"normalized"`` or ``"existing"``).
    cohort : Cohort
        The normalized cohort: ``chi_path``/``structural_path`` point to the
        template-space images (χ in ppb), clinical columns kept.
    template : Template
    quality_path : Path
    """

    table: pd.DataFrame
    cohort: Cohort
    template: Template
    quality_path: Path


def _show_progress(verbose):
    if verbose is None:
        return logger.getEffectiveLevel() <= logging.INFO
    return bool(verbose)


def _versions():
    import dipy
    import nitransforms

    import qsm

    out = {"qsm": qsm.__version__, "python": platform.python_version(), "numpy": np.__version__,
           "nibabel": nib.__version__, "dipy": dipy.__version__,
           "nitransforms": nitransforms.__version__}
    try:
        import ants

        out["antspyx"] = ants.__version__
    except ImportError:
        pass
    return out


def _structural_suffix(path):
    name = Path(path).name.split(".")[0]
    suffix = name.rsplit("_", 1)[-1] if "_" in name else "T1w"
    return suffix if suffix.isalnum() else "T1w"


# ----------------------------------------------------------------------- quality metrics
def similarity(img_data, template_data, mask, *, bins=64):
    """Correlation and normalized mutual information inside ``mask``.

    NMI is Studholme's ``(H(A) + H(B)) / H(A, B)`` (1 = independent, 2 = identical)
    on a ``bins`` x ``bins`` joint histogram.

    Returns
    -------
    dict with ``correlation`` and ``nmi`` (floats)
    """
    a = np.asarray(img_data, dtype=np.float64)[mask]
    b = np.asarray(template_data, dtype=np.float64)[mask]
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return {"correlation": float("nan"), "nmi": float("nan")}
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    p = joint / joint.sum()

    def entropy(q):
        q = q[q > 0]
        return -np.sum(q * np.log(q))

    nmi = (entropy(p.sum(0)) + entropy(p.sum(1))) / entropy(p.ravel())
    return {"correlation": float(np.corrcoef(a, b)[0, 1]), "nmi": float(nmi)}


def robust_z(values):
    """(x - median) / (1.4826 MAD); zeros when the MAD is 0 or NaN values only."""
    x = np.asarray(values, dtype=float)
    med = np.nanmedian(x) if np.isfinite(x).any() else np.nan
    mad = 1.4826 * np.nanmedian(np.abs(x - med)) if np.isfinite(x).any() else np.nan
    if not np.isfinite(mad) or mad == 0:
        return np.zeros_like(x)
    return (x - med) / mad


# --------------------------------------------------------------------------- one subject
def _outputs(out_dir, subject, session, space, structural_path):
    prefix = bids_prefix(subject, session)
    anat = out_dir / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    suffix = _structural_suffix(structural_path) if structural_path is not None else "T1w"
    return prefix, anat, {
        "chi": anat / f"{prefix}_space-{space}_Chimap.nii.gz",
        "structural": anat / f"{prefix}_space-{space}_{suffix}.nii.gz",
        "sidecar": anat / f"{prefix}_space-{space}_Chimap.json",
        "qc": out_dir / f"sub-{subject}" / "figures" / f"{prefix}_space-{space}_desc-normalization_qc.png",
    }


def _complete(sidecar, out_dir):
    if not sidecar.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if all((out_dir / rel).exists() for rel in meta.get("Outputs", [])):
        return meta
    return None


def chi_to_template(registration, chi_img, *, reference, interpolation="linear"):
    """Resample a χ map into template space, keeping voxels without data at "no data".

    χ is interpolated from its voxels with data only (``interp(χ) /
    interp(support)``, the support being the finite non-zero voxels); output
    voxels where less than half of the interpolation weight has data are 0.

    Parameters
    ----------
    registration : qsm.registration.Registration
    chi_img : nibabel image
        χ map in subject space (0 = no data).
    reference : nibabel image or (shape, affine)
        Output grid.
    interpolation : {'linear', 'cubic', 'quintic'}

    Returns
    -------
    chi : nibabel.Nifti1Image (float32)
    support : (x, y, z) bool ndarray
        Output voxels with data.
    """
    data = np.asarray(chi_img.dataobj, dtype=np.float32)
    support = support_mask(data)
    clean = np.where(support, data, 0.0).astype(np.float32)
    num = registration.transform(nib.Nifti1Image(clean, chi_img.affine),
                                 interpolation=interpolation, reference=reference)
    den = registration.transform(nib.Nifti1Image(support.astype(np.float32), chi_img.affine),
                                 interpolation=interpolation, reference=reference)
    affine = num.affine
    num, den = np.asarray(num.dataobj), np.asarray(den.dataobj)
    have = den >= 0.5
    out = np.zeros(num.shape, np.float32)
    out[have] = num[have] / den[have]
    return nib.Nifti1Image(out, affine), have


def _quality(struct_tpl, chi_tpl, grid, template, drive, floor):
    """Similarity of the normalized image with its template counterpart, and the floor check."""
    if struct_tpl is not None:
        q = similarity(struct_tpl.dataobj, grid.img.dataobj, grid.mask())
        image = "structural"
    elif grid.chi_img is not None:
        q = similarity(chi_tpl.dataobj, grid.chi_img.dataobj, grid.mask())
        image = "chi"
    else:
        q, image = {"correlation": float("nan"), "nmi": float("nan")}, None
    floor = QC_FLOORS[drive if struct_tpl is not None else "chi"] if floor is None else floor
    below = bool(np.isfinite(q["correlation"]) and abs(q["correlation"]) < floor)
    return {**q, "below_floor": below}, image, float(floor)


def _normalize_one(row, out_dir, template, grid, settings, seed):
    space = template.space
    prefix, anat, paths = _outputs(out_dir, row["subject"], row["session"], space,
                                   row["structural_path"])
    meta = None if settings["overwrite"] else _complete(paths["sidecar"], out_dir)
    if meta is not None:
        q = meta["Quality"]
        return {"status": "existing", "nmi": q["nmi"], "correlation": q["correlation"],
                "below_floor": bool(q.get("below_floor", False)),
                "offset": meta["ReferenceOffset"], "coverage": meta.get("DataCoverage", np.nan),
                **{k: p for k, p in paths.items()}}
    anat.mkdir(parents=True, exist_ok=True)
    paths["qc"].parent.mkdir(parents=True, exist_ok=True)
    raw = nib.load(row["chi_path"])
    chi_img = nib.Nifti1Image(to_ppb(raw.dataobj, settings["units"]), raw.affine)
    struct_path = row["structural_path"]
    struct_img = nib.load(struct_path) if struct_path is not None else None
    drive = settings["drive"]
    if struct_img is None and drive != "chi":
        raise ValueError(f"Subject '{prefix}': drive={drive!r} needs a structural image, but "
                         "the cohort has none for this subject (use drive='chi').")
    contrast = _structural_suffix(struct_path) if struct_path is not None else None
    nonlinear = (default_nonlinear(drive, contrast) if settings["nonlinear"] is None
                 else settings["nonlinear"])
    reg = register(struct_img if drive != "chi" else None, template, chi_img=chi_img,
                   drive=drive, engine=settings["engine"], nonlinear=nonlinear,
                   hybrid_mu=settings["hybrid_mu"], chi_units="ppb", params=settings["params"],
                   rng=seed, resolution=settings["registration_resolution"])
    chi_tpl, have = chi_to_template(reg, chi_img, reference=grid.img,
                                    interpolation=settings["interpolation"])
    brain = grid.mask()
    coverage = float((have & brain).sum() / max(int(brain.sum()), 1))
    ref = rereference(chi_tpl, mask_img=grid.mask_img, region=settings["reference"],
                      region_mask_img=settings["reference_mask_img"], template_img=grid.img,
                      statistic=settings["reference_statistic"])
    save_img_atomic(ref.img, paths["chi"])
    outputs = [paths["chi"]]
    struct_tpl = None
    if struct_img is not None:
        struct_tpl = reg.transform(struct_img, interpolation="linear", reference=grid.img)
        save_img_atomic(struct_tpl, paths["structural"])
        outputs.append(paths["structural"])
    else:
        paths["structural"] = None
    quality, quality_image, floor = _quality(struct_tpl, ref.img, grid, template, drive,
                                             settings["qc_floor"])
    shown = struct_tpl if struct_tpl is not None else ref.img
    save_qc_png(shown, grid.img, grid.mask_img, paths["qc"],
                thalamus_mask=thalamus_region(grid.shape, grid.affine),
                title=(f"{prefix} -> {space} ({drive}): r {quality['correlation']:.3f}, NMI "
                       f"{quality['nmi']:.3f}{' BELOW FLOOR' if quality['below_floor'] else ''}"
                       f"; coverage {coverage:.0%}"))
    outputs.append(paths["qc"])
    xfms = reg.save(anat, prefix, space=space)
    outputs += [p for p in xfms.values() if p is not None]
    meta = {
        "SpatialReference": space,
        "Sources": [str(row["chi_path"])] + ([str(struct_path)] if struct_path is not None else []),
        "Units": "ppb",
        "InputUnits": settings["units"],
        "RegistrationEngine": settings["engine"],
        "RegistrationDrive": drive,
        "RegistrationParameters": {k: (list(v) if isinstance(v, tuple) else v)
                                   for k, v in reg.parameters.items()},
        "Seed": int(seed),
        "Interpolation": settings["interpolation"],
        "OutputResolution": settings["resolution"],
        "ReferenceRegion": ref.region,
        "ReferenceStatistic": ref.statistic,
        "ReferenceOffset": ref.offset,
        "ReferenceVoxels": ref.n_voxels,
        "DataCoverage": coverage,
        "NoDataValue": 0.0,
        "Transforms": {k: (str(p.relative_to(out_dir)) if p is not None else None)
                       for k, p in xfms.items()},
        "TransformOrder": "antsApplyTransforms -t warp -t affine (warp first on template points)",
        "Quality": {**quality, "image": quality_image, "floor": floor},
        "SoftwareVersions": _versions(),
        "Outputs": [str(Path(p).relative_to(out_dir)) for p in outputs],
    }
    atomic_write_text(paths["sidecar"], json.dumps(meta, indent=2, allow_nan=True) + "\n")
    logger.info("%s normalized (r %.3f, NMI %.3f, coverage %.0f%%)", prefix,
                quality["correlation"], quality["nmi"], 100 * coverage)
    return {"status": "normalized", "nmi": quality["nmi"], "correlation": quality["correlation"],
            "below_floor": quality["below_floor"], "offset": ref.offset, "coverage": coverage,
            **paths}


@dataclass(frozen=True)
class _Grid:
    img: nib.Nifti1Image
    mask_img: nib.Nifti1Image
    shape: tuple
    affine: np.ndarray
    chi_img: nib.Nifti1Image | None = None

    def mask(self):
        return np.asarray(self.mask_img.dataobj) > 0


def _grid(template, resolution):
    shape, affine = output_grid(template, resolution)
    if resolution is None:
        return _Grid(template.img, template.mask_img, template.shape, template.affine,
                     template.chi_img)
    from qsm.transforms import grid_world, sample

    logger.info("Output grid %s at %g mm: resampling the template (linear) and its mask "
                "(nearest neighbour) onto it", shape, resolution)
    pts = grid_world(shape, affine)
    img = nib.Nifti1Image(sample(template.img.dataobj, template.affine, pts, order=1)
                          .astype(np.float32), affine)
    mask = nib.Nifti1Image(sample(template.mask_img.dataobj, template.affine, pts, order=0)
                           .astype(np.uint8), affine)
    chi = None
    if template.chi_img is not None:
        chi = nib.Nifti1Image(sample(template.chi_img.dataobj, template.affine, pts, order=1)
                              .astype(np.float32), affine)
    return _Grid(img, mask, shape, affine, chi)


# ------------------------------------------------------------------------------- cohort
def normalize_cohort(cohort, out_dir, *, template=None, engine="dipy", drive="structural",
                     nonlinear=None, resolution=None, registration_resolution=None,
                     reference="whole_brain", reference_mask_img=None, reference_statistic="mean",
                     interpolation="linear", hybrid_mu=HYBRID_MU_PPM, units="ppb", params=None,
                     outlier_z=3.5, qc_floor=None, n_jobs=1, rng=None, verbose=None,
                     overwrite=False):
    """Normalize every subject's χ map to a template (see the module notes for outputs).

    Parameters
    ----------
    cohort : Cohort
        From :func:`qsm.cohort.load_cohort` (``require_structural=False`` for ``drive='chi'``).
    out_dir : str or Path
        BIDS-derivatives output folder.
    template : Template or None
        Default: nilearn's bundled MNI152 2009a (symmetric) at 2 mm. Its
        ``chi_img`` (ppb) is needed by the drives 'chi', 'hybrid' and 'multichannel'.
    engine : {'dipy', 'ants'}
    drive : {'structural', 'chi', 'hybrid', 'multichannel'}
        See :mod:`qsm.drives`.
    nonlinear : bool or None
        SyN after the affine stages; None = the drive's measured default
        (:func:`qsm.drives.default_nonlinear`: affine only for a GRE magnitude
        against a T1 template).
    resolution : float or None
        Isotropic output voxel size in mm (same field of view); None = template grid.
    registration_resolution : float or None
        Register on a coarser working grid of this voxel size (mm); the output
        grid is unchanged. None = the template grid.
    reference : {'whole_brain', 'csf', 'wm', 'mask'}
        Reference region for χ (see :mod:`qsm.reference`; 'wm' from the template).
    reference_mask_img : nibabel image or None
        Region mask on the output grid for ``reference='mask'``.
    reference_statistic : {'mean', 'median'}
    interpolation : {'linear', 'cubic', 'quintic'}
        For χ ('nearest' is for labels and refused here).
    hybrid_mu : float
        μ of the hybrid contrast per ppm of χ (default 400, MuSus-100).
    units : {'ppb', 'ppm'}
        Units of the input χ maps; outputs are in ppb. Maps whose robust range is
        implausible for this unit, or far from the cohort's, are refused first
        (:func:`qsm.units.check_units`).
    params : dict or None
        Engine parameter overrides (see :data:`qsm.registration.DIPY_DEFAULTS`).
    outlier_z : float
        Flag subjects whose NMI or correlation robust z-score is below ``-outlier_z``.
    qc_floor : float or None
        Absolute floor of |r| (default :data:`qsm.drives.QC_FLOORS` per drive).
    n_jobs : int
        Subjects processed in parallel (joblib; -1 = all cores).
    rng : int, numpy.random.Generator or None
        Per-subject seeds are drawn from it up front (results do not depend on ``n_jobs``).
    verbose : bool or None
        Progress bar; None = when logging is at INFO or more verbose.
    overwrite : bool
        Redo subjects whose outputs are complete (default: skip them).

    Returns
    -------
    NormalizationResult
    """
    if not isinstance(cohort, Cohort):
        raise TypeError(f"'cohort' must be a qsm.cohort.Cohort, got {type(cohort).__name__}.")
    for name, value, allowed in (("reference", reference, REGIONS), ("drive", drive, DRIVES)):
        if value not in allowed:
            raise ValueError(f"Invalid value for the '{name}' parameter. Allowed values are "
                             f"{', '.join(repr(r) for r in allowed)}, but got {value!r} instead.")
    check_interpolation(interpolation)
    if interpolation == "nearest":
        raise ValueError("Invalid value for the 'interpolation' parameter for χ maps. Allowed "
                         "values are 'linear', 'cubic', 'quintic', but got 'nearest' instead.")
    template = load_template(resolution=2) if template is None else template
    if drive != "structural" and template.chi_img is None:
        raise ValueError(f"drive={drive!r} needs a template with a χ channel: give one "
                         "(--template-chi) or build a study template (--build-template).")
    missing = [s for s, p in zip(cohort.subjects, cohort.table["structural_path"]) if p is None]
    if missing and drive != "chi":
        raise ListedError(f"drive={drive!r} needs a structural image for every subject; none "
                          f"for {len(missing)} of {len(cohort)}: ", missing,
                          " (use drive='chi').", sep=", ")
    grid = _grid(template, resolution)
    check_units(list(cohort.table["chi_path"]), units, subjects=cohort.subjects)
    if reference_mask_img is not None:
        reference_mask_img = (nib.load(reference_mask_img)
                              if isinstance(reference_mask_img, (str, Path)) else reference_mask_img)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"engine": engine, "drive": drive, "nonlinear": nonlinear,
                "hybrid_mu": float(hybrid_mu), "params": params, "interpolation": interpolation,
                "reference": reference, "reference_mask_img": reference_mask_img,
                "reference_statistic": reference_statistic, "overwrite": overwrite,
                "resolution": resolution, "registration_resolution": registration_resolution,
                "units": units, "qc_floor": qc_floor}
    rng = np.random.default_rng(rng)
    seeds = rng.integers(2**31 - 1, size=len(cohort))
    rows = list(cohort)
    results = _run_parallel(
        [(row, out_dir, template, grid, settings, int(seed)) for row, seed in zip(rows, seeds)],
        n_jobs=n_jobs, verbose=verbose)
    table = cohort.table.copy()
    for key, col in (("chi", "chi_template_path"), ("structural", "structural_template_path"),
                     ("sidecar", "sidecar_path"), ("qc", "qc_path")):
        table[col] = [r[key] for r in results]
    for key in ("nmi", "correlation", "below_floor", "offset", "coverage", "status"):
        table[key] = [r[key] for r in results]
    table["below_floor"] = table["below_floor"].astype(bool)
    table["nmi_z"] = robust_z(table["nmi"])
    table["correlation_z"] = robust_z(table["correlation"])
    table["outlier"] = (table["below_floor"] | (table["nmi_z"] < -outlier_z)
                        | (table["correlation_z"] < -outlier_z))
    quality = table[["subject", "session", "nmi", "correlation", "nmi_z", "correlation_z",
                     "below_floor", "outlier", "offset", "coverage", "status"]].copy()
    quality.insert(0, "participant_id", ["sub-" + s for s in quality.pop("subject")])
    quality_path = out_dir / QUALITY_TSV
    atomic_write_text(quality_path, quality.to_csv(sep="\t", index=False, na_rep="n/a"))
    for column, what in (("below_floor", "Failed registrations (|r| below the drive's floor)"),
                         ("outlier", f"Registration outliers (below the floor or robust z < "
                                     f"-{outlier_z:g})")):
        if table[column].any():
            flagged = [cohort.subjects[i] for i in np.flatnonzero(table[column])]
            log_listed(logger, logging.WARNING, f"{what}: {len(flagged)} subject(s): %s",
                       flagged)
    normalized = table.drop(columns=["chi_path", "structural_path"]).rename(
        columns={"chi_template_path": "chi_path", "structural_template_path": "structural_path"})
    core = ["subject", "session", "chi_path", "structural_path"]
    normalized = normalized[core + [c for c in normalized.columns if c not in core]]
    return NormalizationResult(table=table, cohort=Cohort(table=normalized, source=out_dir),
                               template=template, quality_path=quality_path)


def _run_parallel(jobs, *, n_jobs, verbose):
    from voxstats.progress import progress_bar as tqdm

    bar = tqdm(total=len(jobs), desc="normalize", unit="subject", disable=not _show_progress(verbose))
    try:
        if n_jobs == 1 or len(jobs) <= 1:
            out = []
            for job in jobs:
                out.append(_normalize_one(*job))
                bar.update()
            return out
        from joblib import Parallel, delayed

        out = []
        for res in Parallel(n_jobs=n_jobs, return_as="generator")(
                delayed(_normalize_one)(*job) for job in jobs):
            out.append(res)
            bar.update()
        return out
    finally:
        bar.close()
