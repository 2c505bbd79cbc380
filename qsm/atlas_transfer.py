"""Carry an atlas from the template space it was made in to a study's template.

"MNI space" is not one space: an atlas published on the ICBM 2009c template
(THOMAS) or on FSL's MNI152 (Najdenovska, as shipped) sits millimetres away
from the same structures on nilearn's symmetric 2009a template. Resampling
only changes the grid; :func:`transfer_atlas` registers the atlas space's T1
template to the study template (:func:`qsm.registration.register`, structural
drive, on a coarse working grid by default) and moves the labels through that
mapping with nearest-neighbour interpolation.

Quality control (:class:`AtlasTransfer` ``qc``):

* ``dice_direct`` / ``centroid_shift_mm``: overlap of the transferred
  structure (default the whole thalamus) with, and distance of its centroid
  from, the same labels resampled by world coordinates alone (no
  registration). Between close spaces the registration should move the
  thalamus by about a millimetre, not by centimetres.
* ``dice_reference`` / ``centroid_distance_reference_mm`` (when a reference
  segmentation in the target space is given, e.g. the same atlas published
  there, or a thalamus segmentation of the study template): the transfer's
  agreement with it; also per hemisphere (``_left``/``_right``).
* a PNG close-up of the thalamus on the target template with the transferred
  (yellow), directly resampled (cyan) and reference (magenta) outlines.

:func:`save_transferred` writes BIDS-like files that ``[atlas] labels_img``,
``label_table`` and ``space`` of a study config take as they are (the JSON
sidecar carries the unions, the QC figures and the provenance).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from qsm.atlas import Atlas, load_atlas, region_masks, save_atlas
from qsm.registration import Registration, register
from qsm.template import Template, load_space_template, output_grid
from qsm.transforms import atomic_write_text, grid_world, sample

logger = logging.getLogger(__name__)

__all__ = ["AtlasTransfer", "transfer_atlas", "save_transferred"]


@dataclass(frozen=True)
class AtlasTransfer:
    """An atlas carried to a target template, with its quality figures.

    Attributes
    ----------
    atlas : Atlas
        The transferred atlas (labels on the target grid, ``space`` = target's).
    registration : Registration
        Source template -> target template (target points to source points).
    source_space : str
    qc : dict
        ``structure``, ``dice_direct``, ``centroid_shift_mm`` and, with a
        reference, ``dice_reference`` and ``centroid_distance_reference_mm``,
        each also per hemisphere (``..._left``, ``..._right``).
    qc_path : Path or None
        The PNG close-up, when written.
    """

    atlas: Atlas
    registration: Registration
    source_space: str
    qc: dict = field(default_factory=dict)
    qc_path: Path | None = None


def _centroid(mask, affine):
    return nib.affines.apply_affine(affine, np.argwhere(mask).mean(axis=0))


def _dice(a, b):
    total = int(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total else float("nan")


def _compare(name, mask, other, affine, x, out):
    """Dice and centroid distance, whole and per side of x = 0 (``x``: world x of the grid)."""
    for suffix, side in (("", None), ("_left", x < 0), ("_right", x > 0)):
        m, o = (mask, other) if side is None else (mask & side, other & side)
        if m.any() and o.any():
            out[f"dice_{name}{suffix}"] = _dice(m, o)
            key = "centroid_shift_mm" if name == "direct" else "centroid_distance_reference_mm"
            out[key + suffix] = float(np.linalg.norm(_centroid(m, affine) - _centroid(o, affine)))


#: Margin (mm) around the labels' box in which the transfer resamples (the labels sit far
#: inside it unless the registration moves them by centimetres, which the QC would show).
CROP_MARGIN_MM = 25.0


def _label_box(labels_img, shape, affine):
    """Slices of the output grid covering the labels' bounding box plus the margin."""
    data = np.asarray(labels_img.dataobj)
    idx = np.argwhere(data != 0)
    if idx.size == 0:
        raise ValueError("The atlas has no labelled voxel.")
    corners = np.array([[a, b, c] for a in (idx[:, 0].min(), idx[:, 0].max())
                        for b in (idx[:, 1].min(), idx[:, 1].max())
                        for c in (idx[:, 2].min(), idx[:, 2].max())], dtype=float)
    world = nib.affines.apply_affine(labels_img.affine, corners)
    vox = nib.affines.apply_affine(np.linalg.inv(affine), world)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    margin = CROP_MARGIN_MM / zooms
    lo = np.maximum(np.floor(vox.min(axis=0) - margin), 0).astype(int)
    hi = np.minimum(np.ceil(vox.max(axis=0) + margin) + 1, shape).astype(int)
    if np.any(hi <= lo):
        raise ValueError("The atlas' labels fall outside the target grid.")
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _structure_mask(atlas, labels, structure):
    if structure in atlas.region_names:
        return region_masks(atlas, regions=[structure], labels_data=labels)[structure]
    return labels > 0


def transfer_atlas(atlas, target, *, source_template=None, structure="thalamus",
                   reference_labels_img=None, resolution=None, engine="dipy", nonlinear=True,
                   registration_resolution=2.0, params=None, rng=0, qc_png=None):
    """Register the atlas' template to ``target`` and carry the labels (nearest neighbour).

    Parameters
    ----------
    atlas : Atlas
        E.g. :func:`qsm.published_atlases.load_published_atlas`.
    target : Template or str
        The study template, or a packaged template space name
        (:data:`qsm.template.SPACE_TEMPLATES`).
    source_template : Template or None
        The T1 template of ``atlas.space``; default the packaged one
        (:func:`qsm.template.load_space_template`).
    structure : str
        Region whose transfer the QC measures (default ``'thalamus'``; all
        labels if the atlas has no such region).
    reference_labels_img : str, Path, nibabel image or None
        A segmentation in the target space to compare with (non-zero = the structure).
    resolution : float or None
        Output voxel size (mm) on the target's field of view; None = the target grid.
    engine, nonlinear, params, rng
        As in :func:`qsm.registration.register`.
    registration_resolution : float or None
        Working grid of the registration (mm; default 2, coarser than a 1 mm output).
    qc_png : str, Path or None
        Where to write the close-up PNG.

    Returns
    -------
    AtlasTransfer

    Raises
    ------
    ValueError
        No template ships for ``atlas.space`` and none is given, or the
        reference segmentation is empty.
    """
    from qsm.qc import thalamus_closeup_png

    if isinstance(target, str):
        target = load_space_template(target)
    if not isinstance(target, Template):
        raise TypeError(f"'target' must be a qsm.template.Template or a space name, got "
                        f"{type(target).__name__}.")
    source = load_space_template(atlas.space) if source_template is None else source_template
    shape, affine = output_grid(target, resolution)
    affine = np.asarray(affine, dtype=float)
    logger.info("Registering the %s template to the %s template (%s, working grid %s mm)",
                source.space, target.space, "SyN" if nonlinear else "affine",
                registration_resolution or "template")
    reg = register(source.img, target, drive="structural", engine=engine, nonlinear=nonlinear,
                   params=params, rng=rng, resolution=registration_resolution)
    # the labels cover a small part of the grid: work in their box (+ CROP_MARGIN_MM)
    box = _label_box(atlas.labels_img, shape, affine)
    sub_shape = tuple(b.stop - b.start for b in box)
    sub_affine = affine.copy()
    sub_affine[:3, 3] = affine[:3, :3] @ [b.start for b in box] + affine[:3, 3]
    sub = reg.transform(atlas.labels_img, interpolation="nearest",
                        reference=(sub_shape, sub_affine))
    labels = np.zeros(shape, np.int32)
    labels[box] = np.asarray(sub.dataobj)
    moved = load_atlas(nib.Nifti1Image(labels, affine), atlas.labels, space=target.space,
                       unions=dict(atlas.unions),
                       description=(f"{atlas.description} Transferred from {atlas.space} to "
                                    f"{target.space} by registering the templates "
                                    f"({reg.engine}, nonlinear={bool(nonlinear)}) and "
                                    "nearest-neighbour resampling."))
    world = grid_world(sub_shape, sub_affine)
    direct = np.rint(sample(np.asarray(atlas.labels_img.dataobj), atlas.labels_img.affine,
                            world, order=0)).astype(np.int32)
    mask = _structure_mask(moved, labels[box], structure)
    qc = {"structure": structure if structure in moved.region_names else "all labels",
          "source_space": atlas.space, "target_space": target.space}
    faces = [np.take(labels[box], i, axis=a) for a in range(3) for i in (0, -1)]
    if any(f.any() for f in faces):
        logger.warning("Transferred labels touch the edge of their %g mm box: the registration "
                       "moved them unusually far; check the QC.", CROP_MARGIN_MM)
    _compare("direct", mask, _structure_mask(atlas, direct, structure), sub_affine,
             world[..., 0], qc)
    outlines = [(mask, "y"), (_structure_mask(atlas, direct, structure), "c")]
    if reference_labels_img is not None:
        ref = (nib.load(str(reference_labels_img))
               if isinstance(reference_labels_img, (str, Path)) else reference_labels_img)
        ref_data = np.asarray(ref.dataobj)
        ref_mask = sample(ref_data, ref.affine, world, order=0) > 0
        if not ref_mask.any():
            raise ValueError("The reference segmentation has no voxel on the target grid.")
        _compare("reference", mask, ref_mask, sub_affine, world[..., 0], qc)
        outlines.append((ref_mask, "m"))
    path = None
    if qc_png is not None and mask.any():
        bg = nib.Nifti1Image(sample(np.asarray(target.img.dataobj), target.affine, world,
                                    order=1).astype(np.float32), sub_affine)
        path = thalamus_closeup_png(
            bg, qc_png, outlines=outlines,
            title=(f"{qc['structure']}: {atlas.space} -> {target.space}; Dice vs direct "
                   f"{qc.get('dice_direct', float('nan')):.2f}, centroid shift "
                   f"{qc.get('centroid_shift_mm', float('nan')):.1f} mm"
                   + (f"; Dice vs reference {qc['dice_reference']:.2f}"
                      if "dice_reference" in qc else "")),
            names=["transferred", "resampled without registration", "reference"][
                :len(outlines)])
    logger.info("Atlas transfer QC: %s", {k: (round(v, 3) if isinstance(v, float) else v)
                                          for k, v in qc.items()})
    return AtlasTransfer(atlas=moved, registration=reg, source_space=atlas.space, qc=qc,
                         qc_path=path)


def save_transferred(result, out_dir, *, prefix=None):
    """Write a transferred atlas: labels, label table, JSON sidecar and the transforms.

    Files (in ``out_dir``): ``<prefix>_dseg.nii.gz``, ``<prefix>_dseg.tsv``,
    ``<prefix>_dseg.json`` (``Space``, ``SourceSpace``, ``Unions``, ``QC``,
    ``Description``, registration parameters) and the registration's ITK
    transforms ``xfm/<prefix>_from-<source>_to-<target>_...`` (see
    :meth:`qsm.registration.Registration.save`).

    Returns
    -------
    dict of str to Path
        ``labels_img``, ``label_table``, ``sidecar`` (and ``qc_png`` if any).
    """
    out_dir = Path(out_dir)
    space = result.atlas.space
    prefix = prefix or f"space-{space}_atlas-transferred"
    img, tsv = save_atlas(result.atlas, out_dir, prefix=prefix)
    xfms = result.registration.save(out_dir / "xfm", prefix, space=space,
                                    source=result.source_space)
    meta = {"Space": space, "SourceSpace": result.source_space,
            "Unions": {k: list(v) for k, v in result.atlas.unions.items()},
            "QC": result.qc, "Description": result.atlas.description,
            "RegistrationEngine": result.registration.engine,
            "RegistrationParameters": {k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in result.registration.parameters.items()},
            "Transforms": {k: (str(p.relative_to(out_dir)) if p is not None else None)
                           for k, p in xfms.items()}}
    sidecar = out_dir / f"{prefix}_dseg.json"
    atomic_write_text(sidecar, json.dumps(meta, indent=2, allow_nan=True) + "\n")
    paths = {"labels_img": img, "label_table": tsv, "sidecar": sidecar}
    if result.qc_path is not None:
        paths["qc_png"] = Path(result.qc_path)
    return paths
