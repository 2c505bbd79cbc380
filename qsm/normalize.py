"""Bring a cohort's χ maps into template space: the ``qsm.normalize`` API.

For each subject, :func:`normalize_cohort` registers the driving image
(structural, χ or a hybrid) to the template (:func:`qsm.registration.register`),
resamples χ (linear or a spline, on request) and the structural image (linear)
onto the output grid, re-references χ (:mod:`qsm.reference`) and writes, in
BIDS-derivative naming under ``out_dir/sub-<id>/[ses-<id>/]anat``:

* ``sub-<id>[_ses-<id>]_space-<space>_Chimap.nii.gz`` and the normalized structural;
* the transforms (ITK affine ``.mat`` and ITK/ANTs warp fields);
* a JSON sidecar (engine, parameters, software versions, reference region and
  offset, quality figures, the list of outputs) -- written last, so its
  presence with all listed outputs marks a complete subject, skipped on rerun;
* a QC PNG in ``sub-<id>/figures`` (normalized structural with template edges).

``out_dir/normalization_quality.tsv`` lists, per subject, the normalized mutual
information and the correlation with the template inside its mask, their robust
z-scores (median/MAD) and an ``outlier`` flag (z below ``-outlier_z``).

:func:`build_template` builds a study-specific (structural + χ) template by
iterative group-wise averaging, starting from the MNI template.
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
from qsm.reference import REGIONS, rereference
from qsm.registration import register
from qsm.template import Template, load_template, output_grid
from qsm.transforms import atomic_write_text, check_interpolation, save_img_atomic, write_atomic

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
        ``correlation``, their robust z-scores, ``outlier`` and ``status``
        (``"normalized"`` or ``"existing"``).
    cohort : Cohort
        The normalized cohort: ``chi_path``/``structural_path`` point to the
        template-space images, clinical columns kept.
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


# ------------------------------------------------------------------------------ QC figure
def save_qc_png(structural_img, template_img, mask_img, path, *, title=""):
    """Three orthogonal slices of the normalized structural with template edges (red)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    data = np.asarray(structural_img.dataobj, dtype=np.float32)
    tpl = np.asarray(template_img.dataobj, dtype=np.float32)
    mask = np.asarray(mask_img.dataobj) > 0
    centre = [int(round(c)) for c in np.argwhere(mask).mean(axis=0)] if mask.any() else \
        [s // 2 for s in data.shape]
    levels = list(np.percentile(tpl[mask], [40, 80])) if mask.any() else [tpl.mean()]
    vmax = np.percentile(data[mask], 99) if mask.any() else data.max()
    fig = Figure(figsize=(9, 3.4), dpi=80)
    for k, axis in enumerate(range(3)):
        ax = fig.add_subplot(1, 3, k + 1)
        sl = [slice(None)] * 3
        sl[axis] = centre[axis]
        ax.imshow(np.rot90(data[tuple(sl)]), cmap="gray", vmin=0, vmax=vmax)
        t = np.rot90(tpl[tuple(sl)])
        if np.ptp(t) > 0:
            ax.contour(t, levels=sorted(set(levels)), colors="r", linewidths=0.6)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    write_atomic(path, lambda p: fig.savefig(p, format="png"))
    return path


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


def _normalize_one(row, out_dir, template, grid, settings, seed):
    space = template.space
    prefix, anat, paths = _outputs(out_dir, row["subject"], row["session"], space,
                                   row["structural_path"])
    meta = None if settings["overwrite"] else _complete(paths["sidecar"], out_dir)
    if meta is not None:
        return {"status": "existing", **meta["Quality"], "offset": meta["ReferenceOffset"],
                **{k: p for k, p in paths.items()}}
    anat.mkdir(parents=True, exist_ok=True)
    paths["qc"].parent.mkdir(parents=True, exist_ok=True)
    chi_img = nib.load(row["chi_path"])
    struct_path = row["structural_path"]
    struct_img = nib.load(struct_path) if struct_path is not None else None
    if struct_img is None and settings["drive"] != "chi":
        raise ValueError(f"Subject '{prefix}': drive={settings['drive']!r} needs a structural "
                         "image, but the cohort has none for this subject.")
    reg = register(struct_img if struct_img is not None else chi_img, template, chi_img=chi_img,
                   drive=settings["drive"], engine=settings["engine"],
                   nonlinear=settings["nonlinear"], hybrid_weight=settings["hybrid_weight"],
                   params=settings["params"], rng=seed)
    chi_tpl = reg.transform(chi_img, interpolation=settings["interpolation"], reference=grid)
    ref = rereference(chi_tpl, mask_img=grid.mask_img, region=settings["reference"],
                      region_mask_img=settings["reference_mask_img"], template_img=grid.img,
                      statistic=settings["reference_statistic"])
    save_img_atomic(ref.img, paths["chi"])
    outputs = [paths["chi"]]
    quality = {"nmi": float("nan"), "correlation": float("nan")}
    if struct_img is not None:
        struct_tpl = reg.transform(struct_img, interpolation="linear", reference=grid)
        save_img_atomic(struct_tpl, paths["structural"])
        outputs.append(paths["structural"])
        quality = similarity(struct_tpl.dataobj, grid.img.dataobj, grid.mask())
        save_qc_png(struct_tpl, grid.img, grid.mask_img, paths["qc"],
                    title=f"{prefix} -> {space}: NMI {quality['nmi']:.3f}, r {quality['correlation']:.3f}")
        outputs.append(paths["qc"])
    else:
        paths["structural"] = paths["qc"] = None
    xfms = reg.save(anat, prefix, space=space)
    outputs += [p for p in xfms.values() if p is not None]
    meta = {
        "SpatialReference": space,
        "Sources": [str(row["chi_path"])] + ([str(struct_path)] if struct_path is not None else []),
        "RegistrationEngine": settings["engine"],
        "RegistrationParameters": {k: (list(v) if isinstance(v, tuple) else v)
                                   for k, v in reg.parameters.items()},
        "Seed": int(seed),
        "Interpolation": settings["interpolation"],
        "OutputResolution": settings["resolution"],
        "ReferenceRegion": ref.region,
        "ReferenceStatistic": ref.statistic,
        "ReferenceOffset": ref.offset,
        "ReferenceVoxels": ref.n_voxels,
        "Transforms": {k: (str(p.relative_to(out_dir)) if p is not None else None)
                       for k, p in xfms.items()},
        "TransformOrder": "antsApplyTransforms -t warp -t affine (warp first on template points)",
        "Quality": quality,
        "SoftwareVersions": _versions(),
        "Outputs": [str(Path(p).relative_to(out_dir)) for p in outputs],
    }
    atomic_write_text(paths["sidecar"], json.dumps(meta, indent=2, allow_nan=True) + "\n")
    logger.info("%s normalized (NMI %.3f)", prefix, quality["nmi"])
    return {"status": "normalized", **quality, "offset": ref.offset, **paths}


@dataclass(frozen=True)
class _Grid:
    img: nib.Nifti1Image
    mask_img: nib.Nifti1Image
    shape: tuple
    affine: np.ndarray

    def mask(self):
        return np.asarray(self.mask_img.dataobj) > 0


def _grid(template, resolution):
    shape, affine = output_grid(template, resolution)
    if resolution is None:
        return _Grid(template.img, template.mask_img, template.shape, template.affine)
    from qsm.transforms import grid_world, sample

    logger.info("Output grid %s at %g mm: resampling the template (linear) and its mask "
                "(nearest neighbour) onto it", shape, resolution)
    pts = grid_world(shape, affine)
    img = nib.Nifti1Image(sample(template.img.dataobj, template.affine, pts, order=1)
                          .astype(np.float32), affine)
    mask = nib.Nifti1Image(sample(template.mask_img.dataobj, template.affine, pts, order=0)
                           .astype(np.uint8), affine)
    return _Grid(img, mask, shape, affine)


# ------------------------------------------------------------------------------- cohort
def normalize_cohort(cohort, out_dir, *, template=None, engine="dipy", drive="structural",
                     nonlinear=True, resolution=None, reference="whole_brain",
                     reference_mask_img=None, reference_statistic="mean",
                     interpolation="linear", hybrid_weight=0.5, params=None, outlier_z=3.5,
                     n_jobs=1, rng=None, verbose=None, overwrite=False):
    """Normalize every subject's χ map to a template (see the module notes for outputs).

    Parameters
    ----------
    cohort : Cohort
        From :func:`qsm.cohort.load_cohort`.
    out_dir : str or Path
        BIDS-derivatives output folder.
    template : Template or None
        Default: nilearn's bundled MNI152 2009a at 2 mm.
    engine : {'dipy', 'ants'}
    drive : {'structural', 'chi', 'hybrid'}
    nonlinear : bool
        SyN after the affine stages.
    resolution : float or None
        Isotropic output voxel size in mm (same field of view); None = template grid.
    reference : {'whole_brain', 'csf', 'wm', 'mask'}
        Reference region for χ (see :mod:`qsm.reference`).
    reference_mask_img : nibabel image or None
        Region mask on the output grid for ``reference='mask'``.
    reference_statistic : {'mean', 'median'}
    interpolation : {'linear', 'cubic', 'quintic'}
        For χ ('nearest' is for labels and refused here).
    hybrid_weight : float
    params : dict or None
        Engine parameter overrides (see :data:`qsm.registration.DIPY_DEFAULTS`).
    outlier_z : float
        Flag subjects whose NMI or correlation robust z-score is below ``-outlier_z``.
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
    if reference not in REGIONS:
        raise ValueError(f"Invalid value for the 'reference' parameter. Allowed values are "
                         f"{', '.join(repr(r) for r in REGIONS)}, but got {reference!r} instead.")
    check_interpolation(interpolation)
    if interpolation == "nearest":
        raise ValueError("Invalid value for the 'interpolation' parameter for χ maps. Allowed "
                         "values are 'linear', 'cubic', 'quintic', but got 'nearest' instead.")
    template = load_template(resolution=2) if template is None else template
    grid = _grid(template, resolution)
    if reference_mask_img is not None:
        reference_mask_img = (nib.load(reference_mask_img)
                              if isinstance(reference_mask_img, (str, Path)) else reference_mask_img)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"engine": engine, "drive": drive, "nonlinear": nonlinear,
                "hybrid_weight": hybrid_weight, "params": params, "interpolation": interpolation,
                "reference": reference, "reference_mask_img": reference_mask_img,
                "reference_statistic": reference_statistic, "overwrite": overwrite,
                "resolution": resolution}
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
    for key in ("nmi", "correlation", "offset", "status"):
        table[key] = [r[key] for r in results]
    table["nmi_z"] = robust_z(table["nmi"])
    table["correlation_z"] = robust_z(table["correlation"])
    table["outlier"] = (table["nmi_z"] < -outlier_z) | (table["correlation_z"] < -outlier_z)
    quality = table[["subject", "session", "nmi", "correlation", "nmi_z", "correlation_z",
                     "outlier", "offset", "status"]].copy()
    quality.insert(0, "participant_id", ["sub-" + s for s in quality.pop("subject")])
    quality_path = out_dir / QUALITY_TSV
    atomic_write_text(quality_path, quality.to_csv(sep="\t", index=False, na_rep="n/a"))
    if table["outlier"].any():
        logger.warning("Registration outliers (robust z < -%g): %s", outlier_z,
                       ", ".join(cohort.subjects[i] for i in np.flatnonzero(table["outlier"])))
    normalized = table.drop(columns=["chi_path", "structural_path"]).rename(
        columns={"chi_template_path": "chi_path", "structural_template_path": "structural_path"})
    core = ["subject", "session", "chi_path", "structural_path"]
    normalized = normalized[core + [c for c in normalized.columns if c not in core]]
    return NormalizationResult(table=table, cohort=Cohort(table=normalized, source=out_dir),
                               template=template, quality_path=quality_path)


def _run_parallel(jobs, *, n_jobs, verbose):
    from tqdm.auto import tqdm

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


# ---------------------------------------------------------------------- study template
def build_template(cohort, *, n_iterations=3, template=None, space="study", engine="dipy",
                   drive="structural", nonlinear=True, params=None, rng=None, verbose=None):
    """Iterative group-wise template: register all, average, repeat.

    Each iteration registers every subject to the current template, resamples
    its structural image (scaled to unit median inside the mask) and its χ map
    linearly onto the template grid and averages them; the averages become the
    next template (``img`` and ``chi_img``; the brain mask stays the starting
    template's). Starts from the MNI template.

    Parameters
    ----------
    cohort : Cohort
    n_iterations : int
    template : Template or None
        Starting template (default: bundled MNI 2 mm).
    space : str
        Space name of the result.
    engine, drive, nonlinear, params
        As in :func:`qsm.registration.register` (``drive='hybrid'`` uses the
        χ channel from the second iteration on).
    rng : int, numpy.random.Generator or None
    verbose : bool or None

    Returns
    -------
    Template
    """
    from tqdm.auto import tqdm

    if int(n_iterations) < 1:
        raise ValueError(f"Invalid value for the 'n_iterations' parameter: expected an integer "
                         f">= 1, but got {n_iterations!r} instead.")
    current = load_template(resolution=2) if template is None else template
    mask = current.mask()
    rng = np.random.default_rng(rng)
    seeds = rng.integers(2**31 - 1, size=(int(n_iterations), len(cohort)))
    ref_scale = np.median(np.asarray(current.img.dataobj)[mask])
    for it in range(int(n_iterations)):
        s_sum = np.zeros(current.shape)
        c_sum = np.zeros(current.shape)
        for k, row in enumerate(tqdm(list(cohort), desc=f"template iteration {it + 1}",
                                     disable=not _show_progress(verbose))):
            struct, chi = nib.load(row["structural_path"]), nib.load(row["chi_path"])
            reg = register(struct, current, chi_img=chi, drive=drive, engine=engine,
                           nonlinear=nonlinear, params=params, rng=int(seeds[it, k]))
            s = np.asarray(reg.transform(struct).dataobj, dtype=np.float64)
            med = np.median(s[mask])
            s_sum += s * (ref_scale / med if med > 0 else 1.0)
            c_sum += np.asarray(reg.transform(chi).dataobj, dtype=np.float64)
        current = Template(img=nib.Nifti1Image((s_sum / len(cohort)).astype(np.float32),
                                               current.affine),
                           mask_img=current.mask_img, space=space,
                           chi_img=nib.Nifti1Image((c_sum / len(cohort)).astype(np.float32),
                                                   current.affine))
        logger.info("Template iteration %d/%d done", it + 1, n_iterations)
    return current
