"""Simulate a thalamus QSM cohort with the design of Schweser et al. (2018).

Six groups (CIS, RRMS, SPMS patients and one matched control group each),
demographics, clinical scores and susceptibility (χ, ppb) maps in the MNI152
2009a 2 mm template space, with planted effects that match the study's
findings.  See :func:`simulate_cohort`.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from qsm.atlas import (
    DEMO_SPACE,
    _atomic_write_text,
    _save_img_atomic,
    demo_thalamus_atlas,
    region_masks,
)

logger = logging.getLogger(__name__)

__all__ = ["Effects", "SimulatedCohort", "PATIENT_GROUPS", "CONTROL_OF", "simulate_cohort",
           "expected_effects"]

PATIENT_GROUPS = ("CIS", "RRMS", "SPMS")
#: Control group matched to each patient group.
CONTROL_OF = {g: f"HC_{g}" for g in PATIENT_GROUPS}

# age mean/sd, disease duration gamma (mean, sd), EDSS normal (mean, sd, lo, hi)
_DEMOGRAPHICS = {
    "CIS": dict(age=(32.0, 8.0), duration=(1.0, 0.8), edss=(1.5, 0.8, 0.0, 4.0)),
    "RRMS": dict(age=(42.0, 9.0), duration=(9.0, 6.0), edss=(2.5, 1.2, 0.0, 6.5)),
    "SPMS": dict(age=(54.0, 8.0), duration=(20.0, 8.0), edss=(5.5, 1.0, 3.0, 8.0)),
}
# deep grey matter ellipsoids (centre of the left one in MNI mm, semi-axes mm, χ ppb)
_DEEP_GM = {
    "putamen": ((-25.0, 2.0, 0.0), (5.0, 13.0, 8.0), 60.0),
    "globus_pallidus": ((-19.0, -4.0, -1.0), (3.0, 7.0, 4.0), 150.0),
    "caudate": ((-13.0, 12.0, 10.0), (4.0, 8.0, 7.0), 55.0),
    "red_nucleus": ((-5.0, -20.0, -8.0), (3.0, 3.5, 3.5), 110.0),
    "substantia_nigra": ((-11.0, -17.0, -12.0), (3.0, 6.0, 3.0), 130.0),
}
_THALAMUS_CHI = 25.0      # ppb, nuclear groups other than the pulvinar
_PULVINAR_CHI = 35.0      # ppb


@dataclass(frozen=True)
class Effects:
    """Planted effects (ppb and ppb/year). ``Effects.zero()`` plants none.

    Attributes
    ----------
    rrms_shift : float
        χ shift of RRMS patients in the thalamus outside the pulvinar.
    spms_pulvinar_shift : float
        χ shift of SPMS patients in the pulvinar.
    spms_other_shift : float
        χ shift of SPMS patients in the rest of the thalamus ("mainly pulvinar").
    duration_slope : float
        χ change per year of disease duration (patients) in the pulvinar and the
        left lateral group, around each patient group's mean duration.
    thalamus_duration_slope : float
        The same in the rest of the thalamus (so the whole thalamus declines too).
    age_slope : float
        χ change per year of age in the thalamus and deep grey matter (everyone),
        around age 45; a nuisance that the covariate age removes.
    """

    rrms_shift: float = -5.0
    spms_pulvinar_shift: float = -6.0
    spms_other_shift: float = -1.0
    duration_slope: float = -0.5
    thalamus_duration_slope: float = -0.25
    age_slope: float = 0.1

    @classmethod
    def zero(cls) -> "Effects":
        """No disease effect (the age nuisance is kept)."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class SimulatedCohort:
    """Where a simulated cohort was written.

    Attributes
    ----------
    root : Path
        Output folder (BIDS-derivatives-like).
    participants_path : Path
        ``participants.tsv``.
    participants : DataFrame
        Its content.
    truth_path : Path
        ``ground_truth.json``.
    effect_map_path : Path
        4D NIfTI of the planted effect maps (volumes named in the JSON).
    """

    root: Path
    participants_path: Path
    participants: pd.DataFrame
    truth_path: Path
    effect_map_path: Path


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _gamma(rng, mean, sd, size):
    shape = (mean / sd) ** 2
    return rng.gamma(shape, sd ** 2 / mean, size)


def _demographics(n, rng):
    rows = []
    for group in PATIENT_GROUPS:
        d = _DEMOGRAPHICS[group]
        duration = np.round(np.clip(_gamma(rng, *d["duration"], n), 0.1, 45), 1)
        age = rng.normal(*d["age"], n)
        age = np.round(np.clip(np.maximum(age, duration + 18 + rng.uniform(0, 5, n)), 18, 75), 1)
        sex = rng.permutation(np.where(np.arange(n) < round(0.7 * n), "F", "M"))
        m, s, lo, hi = d["edss"]
        edss = np.clip(np.round(rng.normal(m, s, n) * 2) / 2, lo, hi)
        rows += [dict(group=group, age=age[i], sex=sex[i], disease_duration=duration[i],
                      edss=edss[i]) for i in range(n)]
        c_age = np.round(np.clip(age + rng.normal(0, 1.5, n), 18, 78), 1)
        rows += [dict(group=CONTROL_OF[group], age=c_age[i], sex=sex[i],
                      disease_duration=np.nan, edss=np.nan) for i in range(n)]
    return pd.DataFrame(rows)


def _world_coords(img):
    ijk = np.indices(img.shape[:3], dtype=np.float32).reshape(3, -1)
    return (img.affine[:3, :3] @ ijk + img.affine[:3, 3:]).reshape((3,) + img.shape[:3])


def _baseline(template, brain, atlas_masks):
    """Tissue-dependent baseline χ (ppb) and the iron-rich deep grey matter mask."""
    t = np.asarray(template.get_fdata(), np.float32)
    x, y, z = _world_coords(template)
    # cortex/GM ~ +5, bright white matter down to -25, CSF (dark) 0
    chi = 5.0 - 30.0 * np.clip((t - 0.72) / 0.12, 0.0, 1.0)
    chi[t < 0.45] = 0.0
    deep = np.zeros(t.shape, bool)
    for (cx, cy, cz), (ax, ay, az), value in _DEEP_GM.values():
        for sign in (-1, 1):
            inside = (((x - sign * abs(cx)) / ax) ** 2 + ((y - cy) / ay) ** 2
                      + ((z - cz) / az) ** 2) <= 1
            chi[inside] = value
            deep |= inside
    chi[atlas_masks["thalamus"]] = _THALAMUS_CHI
    chi[atlas_masks["pulvinar"]] = _PULVINAR_CHI
    deep |= atlas_masks["thalamus"]
    chi = ndimage.gaussian_filter(chi, 0.6)
    chi[~brain] = 0.0
    return chi.astype(np.float32), deep


def _effect_maps(masks, effects: Effects):
    rest = masks["thalamus"] & ~masks["pulvinar"]
    rrms = np.where(rest, effects.rrms_shift, 0.0)
    spms = np.where(masks["pulvinar"], effects.spms_pulvinar_shift,
                    np.where(rest, effects.spms_other_shift, 0.0))
    slope = np.where(masks["pulvinar"] | masks["lateral_left"], effects.duration_slope,
                     np.where(masks["thalamus"], effects.thalamus_duration_slope, 0.0))
    return {"CIS": np.zeros_like(rrms), "RRMS": rrms, "SPMS": spms, "duration_slope": slope}


def expected_effects(effects: Effects | None = None, *, atlas=None) -> pd.DataFrame:
    """Planted effects averaged over each atlas region.

    Parameters
    ----------
    effects : Effects or None
    atlas : qsm.atlas.Atlas or None
        The atlas the effects were planted on (default the demo atlas).

    Returns
    -------
    table : DataFrame
        One row per region with columns ``region``, ``CIS``, ``RRMS``,
        ``SPMS`` (mean shift, ppb) and ``duration_slope`` (ppb/year).
    """
    effects = Effects() if effects is None else effects
    masks = region_masks(demo_thalamus_atlas() if atlas is None else atlas)
    maps = _effect_maps(masks, effects)
    rows = [{"region": name, **{k: float(v[m].mean()) for k, v in maps.items()}}
            for name, m in masks.items()]
    return pd.DataFrame(rows)


def _check_effects(effects) -> Effects:
    if effects is None:
        return Effects()
    if isinstance(effects, Effects):
        return effects
    if isinstance(effects, (int, float)) and effects == 0:
        return Effects.zero()
    if isinstance(effects, dict):
        names = {f.name for f in fields(Effects)}
        unknown = sorted(set(effects) - names)
        if unknown:
            raise ValueError(f"Unknown key(s) {unknown} in the 'effects' parameter; allowed "
                             f"keys are {sorted(names)}.")
        return Effects(**{k: float(v) for k, v in effects.items()})
    raise ValueError("Invalid value for the 'effects' parameter: expected None, 0, an Effects "
                     f"or a dict, but got {effects!r} instead.")


def _noise_box(brain, sigma_vox):
    """Slices of the brain's bounding box grown by the smoothing kernel's radius.

    Noise smoothed in this box is, on every brain voxel, bit for bit what it would
    be on the whole grid (a brain voxel's kernel stays inside the box, except
    at the grid's own edge, which both reflect alike), for 38 % less work on the
    MNI 2 mm grid.
    """
    margin = int(3.0 * sigma_vox + 0.5)   # scipy's gaussian_filter radius at truncate=3
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, brain.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _smooth_noise(rng, shape, sigma_vox, sd, box=None):
    """Gaussian noise smoothed with a Gaussian kernel and rescaled to ``sd``.

    The noise is drawn on the whole ``shape`` (the random stream does not
    depend on ``box``); with ``box`` (slices, :func:`_noise_box`) only that
    part is smoothed and returned.
    """
    noise = rng.standard_normal(shape, dtype=np.float32)
    if box is not None:
        noise = noise[box]
    noise = ndimage.gaussian_filter(noise, sigma_vox, truncate=3.0)
    # exact sd of unit white noise after the separable discrete kernel
    impulse = np.zeros(int(8 * sigma_vox) * 2 + 3)
    impulse[impulse.size // 2] = 1.0
    kernel = ndimage.gaussian_filter1d(impulse, sigma_vox, truncate=3.0)
    factor = float(np.sum(kernel ** 2)) ** 1.5
    return noise * np.float32(sd / factor)


def _random_warp(rng, shape, *, max_shift_vox=2.0, max_rot_deg=4.0, warp_vox=1.0):
    """Sampling coordinates of a random rigid transform + smooth displacement."""
    center = (np.asarray(shape) - 1) / 2
    angles = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
           @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    shift = rng.uniform(-max_shift_vox, max_shift_vox, 3)
    coarse = [max(2, s // 12) for s in shape]
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = rot @ (grid - center[:, None]) + center[:, None] + shift[:, None]
    for axis in range(3):
        field = rng.normal(0, warp_vox, coarse).astype(np.float32)
        field = ndimage.zoom(field, [s / c for s, c in zip(shape, coarse)], order=1)
        coords[axis] += field[tuple(slice(0, s) for s in shape)].reshape(-1)
    return coords


_PLANTING_REGIONS = ("thalamus", "pulvinar", "lateral_left")


def _planting_atlas(atlas, template):
    """The atlas the effects are planted on: on nilearn's 2 mm grid, with the needed regions."""
    if atlas is None:
        return demo_thalamus_atlas(resolution=2)
    same = (atlas.labels_img.shape == template.shape
            and np.allclose(atlas.labels_img.affine, template.affine, atol=1e-4))
    if not same:
        raise ValueError(f"Invalid value for the 'atlas' parameter: its labels (shape "
                         f"{atlas.labels_img.shape}, space {atlas.space}) must be on nilearn's "
                         f"2 mm MNI152 grid {template.shape}; carry it there first, e.g. "
                         "qsm.atlas_transfer.transfer_atlas(atlas, template, resolution=2).")
    missing = [r for r in _PLANTING_REGIONS if r not in atlas.region_names]
    if missing:
        raise ValueError(f"Invalid value for the 'atlas' parameter: the effects are planted in "
                         f"the regions {list(_PLANTING_REGIONS)}; the atlas lacks {missing}.")
    return atlas


def simulate_cohort(out_dir, *, n_per_group: int = 40, effects=None, noise_sd: float = 6.0,
                    smoothness_mm: float = 6.0, subject_sd: float = 1.5,
                    reference_offset_sd: float = 3.0, native: bool = False, atlas=None,
                    rng=None, verbose=None) -> SimulatedCohort:
    """Simulate the six-group QSM thalamus cohort and write it to ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Output folder; created if needed. It receives
        ``sub-XXX/anat/sub-XXX_space-MNI152NLin2009aSym_Chimap.nii.gz`` (χ in
        ppb on the full 99 x 117 x 95 MNI152 2009a 2 mm grid, zero outside the
        brain mask), ``participants.tsv`` (``participant_id, group, age, sex,
        disease_duration, edss, chi_path`` with paths relative to the TSV, plus
        ``structural_path`` when ``native``), ``ground_truth.json`` and
        ``ground_truth_effects.nii.gz``.
    n_per_group : int
        Subjects in each of the six groups (CIS, RRMS, SPMS, HC_CIS, HC_RRMS,
        HC_SPMS); controls are matched 1:1 to patients on sex and age (± 1.5 y).
    effects : Effects, dict, 0 or None
        Planted effects; ``None`` the defaults of :class:`Effects`, ``0`` none.
    noise_sd : float
        Standard deviation (ppb) of the spatially smooth voxel noise.
    smoothness_mm : float
        FWHM (mm) of the Gaussian kernel smoothing the noise.
    subject_sd : float
        Standard deviation (ppb) of a per-subject shift of the thalamus.
    reference_offset_sd : float
        Standard deviation (ppb) of a per-subject offset of the whole brain (the
        QSM reference ambiguity that referencing removes).
    atlas : qsm.atlas.Atlas or None
        The atlas whose regions carry the thalamus baseline and the planted
        effects (``thalamus``, ``pulvinar``, ``lateral_left``), on nilearn's 2 mm
        grid; default the demo atlas. E.g. THOMAS carried to nilearn's template
        by :func:`qsm.atlas_transfer.transfer_atlas`, to test the study on real
        nucleus geometry.
    native : bool
        Also write each subject in a "native" space: the χ map and a T1-like
        structural image (the template intensity) resampled through a random
        rigid transform plus a smooth displacement field (≤ ~4 mm). Then
        ``chi_path`` points to the native χ map (``space-native``),
        ``structural_path`` to the structural image and ``template_chi_path`` to
        the template-space map.
    rng : int or numpy.random.Generator, optional
        Seed.
    verbose : bool or None
        Show a progress bar (default: when logging is at INFO or lower).

    Returns
    -------
    cohort : SimulatedCohort

    Notes
    -----
    χ_s(v) = baseline(v) + age_slope·(age_s − 45)·deep(v) + effect_g(v)
    + duration_slope(v)·(duration_s − mean duration of g) + subject_s·thal(v)
    + noise_s(v) + offset_s, inside the brain mask; 0 outside. The baseline is
    tissue dependent (white matter down to −25 ppb, cortex +5, CSF 0, thalamus
    25 and pulvinar 35 ppb, putamen 60, caudate 55, globus pallidus 150, red
    nucleus 110, substantia nigra 130 ppb, made of ellipsoids at their MNI
    coordinates). Duration slopes act around each group's mean duration, so the
    group shifts are exactly the planted ones.
    """
    from nilearn import datasets
    from voxstats.progress import progress_bar as tqdm

    if not isinstance(n_per_group, (int, np.integer)) or n_per_group < 2:
        raise ValueError(f"Invalid value for the 'n_per_group' parameter: expected an integer "
                         f">= 2, but got {n_per_group!r} instead.")
    effects = _check_effects(effects)
    rng = _rng(rng)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = datasets.load_mni152_template(resolution=2)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=2).dataobj) > 0
    atlas = _planting_atlas(atlas, template)
    masks = region_masks(atlas)
    baseline, deep = _baseline(template, brain, masks)
    maps = _effect_maps(masks, effects)
    maps32 = {k: v.astype(np.float32) for k, v in maps.items()}   # converted once, not per subject
    thal = masks["thalamus"]

    people = _demographics(int(n_per_group), rng)
    width = max(3, len(str(len(people))))
    people.insert(0, "participant_id", [f"sub-{i + 1:0{width}d}" for i in range(len(people))])
    mean_duration = people.groupby("group")["disease_duration"].mean()
    sigma = smoothness_mm / 2.0 / np.sqrt(8 * np.log(2))
    affine = template.affine
    intensity = np.asarray(template.get_fdata(), np.float32)
    box = _noise_box(brain, sigma)
    chi_paths, struct_paths, tpl_paths = [], [], []
    if verbose is None:
        verbose = logger.getEffectiveLevel() <= logging.INFO
    # images are written on two more threads while the next subject is drawn (zlib releases the
    # GIL; compressing a map costs about as much as drawing it); the random stream and the files
    # are the same as written in line
    with ThreadPoolExecutor(max_workers=2) as writer:
        pending = deque()

        def save(img, path):
            pending.append(writer.submit(_save_img_atomic, img, path))
            while len(pending) > 3:  # a few maps in flight, not the cohort in memory
                pending.popleft().result()

        for row in tqdm(people.itertuples(index=False), total=len(people), disable=not verbose,
                        desc="simulating subjects"):
            sub = row.participant_id
            chi = baseline + np.float32(effects.age_slope * (row.age - 45.0)) * deep
            if row.group in maps:
                chi = chi + maps32[row.group]
                dd = row.disease_duration - mean_duration[row.group]
                chi = chi + np.float32(dd) * maps32["duration_slope"]
            chi = chi + np.float32(rng.normal(0, subject_sd)) * thal
            chi[box] += _smooth_noise(rng, chi.shape, sigma, noise_sd, box)   # 0 outside later
            chi = chi + np.float32(rng.normal(0, reference_offset_sd))
            chi[~brain] = 0.0
            anat = out / sub / "anat"
            rel = Path(sub) / "anat" / f"{sub}_space-{DEMO_SPACE}_Chimap.nii.gz"
            save(nib.Nifti1Image(chi.astype(np.float32, copy=False), affine), out / rel)
            if native:
                coords = _random_warp(rng, chi.shape)
                nat = ndimage.map_coordinates(chi, coords, order=1).reshape(chi.shape)
                t1 = ndimage.map_coordinates(intensity * 1000.0, coords, order=1).reshape(chi.shape)
                t1 += rng.normal(0, 10.0, t1.shape).astype(np.float32) * (t1 > 0)
                nat_rel = Path(sub) / "anat" / f"{sub}_space-native_Chimap.nii.gz"
                t1_rel = Path(sub) / "anat" / f"{sub}_T1w.nii.gz"
                save(nib.Nifti1Image(nat.astype(np.float32), affine), out / nat_rel)
                save(nib.Nifti1Image(t1.astype(np.float32), affine), out / t1_rel)
                chi_paths.append(nat_rel.as_posix())
                struct_paths.append(t1_rel.as_posix())
                tpl_paths.append(rel.as_posix())
            else:
                chi_paths.append(rel.as_posix())
            anat.mkdir(parents=True, exist_ok=True)
        while pending:
            pending.popleft().result()
    people["chi_path"] = chi_paths
    if native:
        people["structural_path"] = struct_paths
        people["template_chi_path"] = tpl_paths
    tsv = out / "participants.tsv"
    _atomic_write_text(tsv, people.to_csv(sep="\t", index=False, na_rep="n/a",
                                          float_format="%.6g"))
    names = ["CIS", "RRMS", "SPMS", "duration_slope"]
    effect_path = out / "ground_truth_effects.nii.gz"
    _save_img_atomic(nib.Nifti1Image(np.stack([maps[k] for k in names], -1).astype(np.float32),
                                     affine), effect_path)
    truth = {
        "description": "Planted effects of the simulated QSM thalamus cohort (chi in ppb).",
        "space": DEMO_SPACE,
        "effects": asdict(effects),
        "effect_map": effect_path.name,
        "effect_map_volumes": names,
        "group_mean_duration": {g: float(mean_duration[g]) for g in PATIENT_GROUPS},
        "noise": dict(noise_sd=noise_sd, smoothness_mm=smoothness_mm, subject_sd=subject_sd,
                      reference_offset_sd=reference_offset_sd),
        "baseline_ppb": {"thalamus": _THALAMUS_CHI, "pulvinar": _PULVINAR_CHI,
                         **{k: v[2] for k, v in _DEEP_GM.items()}},
        "native": bool(native),
        "atlas": atlas.description,
        "expected_region_effects": expected_effects(effects, atlas=atlas)
        .to_dict(orient="records"),
    }
    truth_path = out / "ground_truth.json"
    _atomic_write_text(truth_path, json.dumps(truth, indent=2))
    logger.info("Simulated %d subjects into %s", len(people), out)
    return SimulatedCohort(out, tsv, people, truth_path, effect_path)
