"""Which reader an analysis' input needs: volume, surface (one hemisphere) or CIFTI.

:func:`voxstats.loading.load` hands surface and CIFTI inputs to
:func:`load_surface_input`, which returns the data matrix and a
:class:`~voxstats.surface_io.SurfaceMasker` or :class:`~voxstats.cifti.CiftiMasker`;
the engine and the writers then treat them like volumes through the masker
protocol (:mod:`voxstats.masker`).

Input kinds, by file name (a text file listing inputs takes the kind of its
entries, which must all be of one kind):

- CIFTI: ``.dscalar.nii``, ``.dtseries.nii``;
- surface: GIFTI (``.gii``, ``.func.gii``, ``.shape.gii``), FreeSurfer ``.mgh``
  and ``.mgz``, and FreeSurfer ``curv`` files (``lh.thickness``: recognised by
  their magic number);
- volume: everything else (NIfTI, ANALYZE).
"""

from __future__ import annotations

import os
from pathlib import Path

from .cifti import is_cifti_path, load_cifti
from .errors import ParameterError
from .surface_io import load_surface, surface_kind

__all__ = ["SURFACE_OPTIONS", "input_kind", "load_surface_input", "tfce_defaults"]

#: Keyword options that only surface and CIFTI inputs take.
SURFACE_OPTIONS = ("surf", "areas", "left_surf", "right_surf", "left_area", "right_area")


def _path_kind(path):
    if is_cifti_path(path):
        return "cifti"
    if str(path).lower().endswith((".nii", ".nii.gz", ".img", ".hdr", ".img.gz")):
        return "volume"
    return "surface" if surface_kind(path) else None


def input_kind(imgs, *, name="imgs"):
    """'volume', 'surface' or 'cifti' for an input as :func:`voxstats.randomise` takes it.

    Parameters
    ----------
    imgs : str, path-like, list of them, or nibabel images
        A file, a text file listing files, or a list.

    Raises
    ------
    voxstats.errors.ParameterError
        A list mixing kinds.
    """
    if isinstance(imgs, (str, os.PathLike)):
        kind = _path_kind(imgs)
        if kind is not None:
            return kind
        if not Path(imgs).is_file():
            return "volume"  # the volume reader reports missing files and folders
        from .loading import read_image_list

        return input_kind(read_image_list(imgs, name=name), name=name)
    try:
        items = list(imgs)
    except TypeError:
        return "volume"
    kinds = {(_path_kind(item) or "volume") if isinstance(item, (str, os.PathLike)) else "volume"
             for item in items}
    if len(kinds) > 1:
        raise ParameterError(name, f"mixes inputs of kinds {', '.join(sorted(kinds))}; give one kind "
                             "(NIfTI volumes, surface files or CIFTI files)")
    return kinds.pop() if kinds else "volume"


def _entries(imgs, name):
    """The list of files behind ``imgs`` (a list file is read)."""
    if isinstance(imgs, (str, os.PathLike)) and _path_kind(imgs) is None and Path(imgs).is_file():
        from .loading import read_image_list

        return [str(p) for p in read_image_list(imgs, name=name)]
    return imgs


def load_surface_input(imgs, mask_img=None, *, keep_constant=False, surf=None, areas=None, left_surf=None,
                       right_surf=None, left_area=None, right_area=None, name="imgs", mask_name="mask_img"):
    """Read surface or CIFTI inputs: the data matrix and their masker.

    Parameters
    ----------
    imgs : str, path-like or list of them
        Surface data (GIFTI, MGH/MGZ, curv; one hemisphere) or dense CIFTI
        files, or a text file listing them.
    mask_img : str, path-like or array, optional
        Surface: a per-vertex file or ``.label``; CIFTI: a dense CIFTI file.
    keep_constant : bool
        Without ``mask_img``, keep elements constant across subjects.
    surf, areas
        Surface input: the hemisphere's mesh and optional vertex areas
        (see :func:`voxstats.surface_io.load_surface`).
    left_surf, right_surf, left_area, right_area
        CIFTI input: each hemisphere's mesh and optional areas
        (see :func:`voxstats.cifti.load_cifti`).

    Returns
    -------
    data : (n_subjects, n_elements) ndarray of float32
    masker : SurfaceMasker or CiftiMasker
    """
    kind = input_kind(imgs, name=name)
    entries = _entries(imgs, name)
    if kind == "cifti":
        for option, value in (("surf", surf), ("areas", areas)):
            if value is not None:
                raise ParameterError(option, "CIFTI input takes one mesh per hemisphere: use left_surf and "
                                     "right_surf (left_area, right_area)")
        data, masker = load_cifti(entries, left_surf=left_surf, right_surf=right_surf, left_area=left_area,
                                  right_area=right_area, mask_img=mask_img, keep_constant=keep_constant,
                                  name=name)
    elif kind == "surface":
        for option, value in (("left_surf", left_surf), ("right_surf", right_surf),
                              ("left_area", left_area), ("right_area", right_area)):
            if value is not None:
                raise ParameterError(option, "only for CIFTI input; a surface file (one hemisphere) takes "
                                     "surf and areas")
        if surf is None:
            raise ParameterError("surf", "surface data need the mesh they are on (the .surf.gii or "
                                 "FreeSurfer surface of the common template)")
        data, masker = load_surface(entries, surf, mask_img=mask_img, areas=areas, keep_constant=keep_constant,
                                    name=name, mask_name=mask_name)
    else:
        raise ParameterError(name, "expected surface (GIFTI, MGH/MGZ, curv) or CIFTI files")
    if data.shape[0] < 2:
        raise ParameterError(name, f"expected at least 2 subjects, got {data.shape[0]}")
    return data, masker


def tfce_defaults(masker):
    """TFCE's extent exponent E by element kind: 1 on surfaces (PALM's -tfce2D, CAT12, HCP), 0.5 in volumes.

    Returns a float for volume and surface maskers, and for CIFTI a
    (n_elements,) array (1 on cortical vertices, 0.5 in volume structures).
    """
    import numpy as np

    kind = getattr(masker, "kind", "volume")
    if kind == "surface":
        return 1.0
    if kind == "cifti":
        on_surface = masker.on_surface
        if on_surface.all() or not on_surface.any():
            return 1.0 if on_surface.all() else 0.5
        return np.where(on_surface, 1.0, 0.5)
    return 0.5
