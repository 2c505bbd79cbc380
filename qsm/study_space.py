"""The study's space: its template, its reference masks and its atlas, from the config.

* :func:`study_template`: the template the χ maps are (or will be) in: the
  ``[normalization]`` template of a native-space study (nilearn's MNI152
  2009a, a packaged template by space name, or the user's image, with its χ
  channel when given), else the packaged template of ``[study] space``.
* :func:`reference_mask`: the brain or white-matter reference region on the χ
  maps' grid, from the user's masks (``[referencing] brain_mask``/``wm_mask``)
  or from the study's template (its brain mask; its white matter by
  :func:`qsm.reference.template_wm_mask`), never silently from another space.
* :func:`load_study_atlas`: the demo atlas, a published atlas by name, or the
  user's files (a JSON sidecar written by :func:`qsm.atlas_transfer.save_transferred`
  supplies the space and unions of a transferred atlas).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from qsm.atlas import Atlas, demo_thalamus_atlas, load_atlas
from qsm.template import SPACE_TEMPLATES, Template, load_space_template, load_template

logger = logging.getLogger(__name__)

__all__ = ["study_template", "reference_mask", "load_study_atlas", "same_grid",
           "resampled_mask"]


def same_grid(a, b) -> bool:
    """Same shape (first three axes) and affine (to 1e-4 mm)."""
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=1e-4)


def resampled_mask(mask_img, img, resample: bool, name: str) -> np.ndarray:
    """``mask_img`` on ``img``'s grid as a bool array (nearest neighbour, only if ``resample``)."""
    if same_grid(mask_img, img):
        return np.asarray(mask_img.dataobj) > 0
    if not resample:
        raise ValueError(f"The reference mask ({name}) and the χ maps are not on the same "
                         "grid; set [atlas] resample = true to allow nearest-neighbour "
                         "resampling.")
    from nilearn.image import resample_to_img

    logger.info("Resampling the reference mask (%s) to the χ maps' grid (nearest neighbour)",
                name)
    out = resample_to_img(mask_img, img, interpolation="nearest", force_resample=True,
                          copy_header=True)
    return np.asarray(out.dataobj) > 0


def study_template(config) -> Template | None:
    """The study's template (see the module notes); None for an unknown space without masks."""
    s, n = config.study, config.normalization
    chi = config.path(n.template_chi) if n.template_chi else None
    if s.space == "native":
        if n.template in SPACE_TEMPLATES:
            tpl = load_space_template(n.template, resolution=n.template_resolution)
        elif n.template:
            return load_template(config.path(n.template), config.path(n.template_mask),
                                 space=n.template_space, chi_img=chi)
        else:
            tpl = load_template(resolution=n.template_resolution)
        if chi is not None:
            tpl = load_template(tpl.img, tpl.mask_img, space=tpl.space, chi_img=chi)
        return tpl
    if s.space in SPACE_TEMPLATES:
        return load_space_template(s.space)
    return None


def reference_mask(config, img, template) -> tuple[np.ndarray | None, str]:
    """The configured reference region on ``img``'s grid, and a description of it.

    Parameters
    ----------
    config : qsm.config.StudyConfig
    img : nibabel image
        A χ map of the study (its grid).
    template : Template or None
        From :func:`study_template`.

    Raises
    ------
    ValueError
        No mask can be had for this space, or grids differ without ``[atlas] resample``.
    """
    from qsm.reference import template_wm_mask

    r = config.referencing
    region, resample = r.region, config.atlas.resample
    if region == "none":
        return None, "none"
    if region not in ("brain", "wm"):
        path = config.path(region)
        return resampled_mask(nib.load(str(path)), img, resample, str(path)), str(path)
    user = r.brain_mask if region == "brain" else r.wm_mask
    if user:
        path = config.path(user)
        return resampled_mask(nib.load(str(path)), img, resample, str(path)), str(path)
    if template is None:
        raise ValueError(f"{config.source}: no template ships for [study] space "
                         f"{config.study.space!r}, so the {region} reference mask must be given: "
                         f"set [referencing] {'brain_mask' if region == 'brain' else 'wm_mask'}.")
    zoom = float(np.sqrt((np.asarray(img.affine)[:3, 0] ** 2).sum()))
    if not same_grid(template.img, img) and template.space in SPACE_TEMPLATES:
        try:   # the packaged template at the maps' voxel size may be their very grid
            candidate = load_space_template(template.space, resolution=zoom)
        except ValueError:
            candidate = None
        if candidate is not None and same_grid(candidate.img, img):
            template = candidate
    if not same_grid(template.img, img):
        if not resample:
            raise ValueError(f"{config.source}: the study template ({template.space}, shape "
                             f"{template.shape}) and the χ maps (shape {img.shape[:3]}) are not "
                             "on the same grid; set [atlas] resample = true for nearest-"
                             "neighbour resampling of its masks, or give [referencing] masks.")
        from qsm.template import resample_template

        template = resample_template(template, zoom)
    if region == "brain":
        mask = resampled_mask(template.mask_img, img, resample, f"{template.space} brain mask")
        return mask, f"{template.space} template brain mask"
    wm = template_wm_mask(template.img, template.mask_img)
    return (resampled_mask(wm, img, resample, f"{template.space} white matter"),
            f"{template.space} template white matter, eroded once")


def load_study_atlas(config) -> Atlas:
    """The atlas of ``[atlas]``: published by name, the user's files, or the demo atlas."""
    from qsm.published_atlases import load_published_atlas

    a = config.atlas
    if a.name:
        return load_published_atlas(a.name, space=a.space or None,
                                    path=config.path(a.labels_img) if a.labels_img else None)
    if a.labels_img:
        img = config.path(a.labels_img)
        sidecar = _sidecar(img)
        unions = dict(a.unions)
        space = a.space
        if sidecar is not None:
            unions = {**{k: tuple(v) for k, v in sidecar.get("Unions", {}).items()}, **unions}
            space = space or sidecar.get("Space", "")
        return load_atlas(img, config.path(a.label_table), space=space,
                          structure=a.structure or None, unions=unions)
    return demo_thalamus_atlas()


def _sidecar(img_path: Path):
    name = Path(img_path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            path = Path(img_path).with_name(name[: -len(ext)] + ".json")
            if path.is_file():
                try:
                    return json.loads(path.read_text())
                except json.JSONDecodeError as exc:
                    raise ValueError(f"Atlas sidecar {path} is not valid JSON: {exc}") from None
    return None
