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

__all__ = ["SURFACE_OPTIONS", "count_maps", "input_kind", "load_surface_input", "load_surface_map",
           "output_suffix", "surface_tfce", "tfce_defaults"]

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

        return input_kind(read_image_list(imgs, name=name, warn=False), name=name)
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


def _entries(imgs, name, *, warn=False):
    """The list of files behind ``imgs`` (a list file is read; ``warn`` only when loading)."""
    if isinstance(imgs, (str, os.PathLike)) and _path_kind(imgs) is None and Path(imgs).is_file():
        from .loading import read_image_list

        return [str(p) for p in read_image_list(imgs, name=name, warn=warn)]
    return imgs


def _first_file(imgs, name):
    entries = _entries(imgs, name)
    return entries if isinstance(entries, (str, os.PathLike)) else list(entries)[0]


def output_suffix(imgs, *, name="imgs"):
    """File ending of the maps written for these inputs: the input's format.

    ``.nii.gz`` for volumes, ``.dscalar.nii`` for CIFTI, ``.func.gii`` for
    GIFTI, the input's ``.mgh``/``.mgz`` for MGH, ``.mgz`` for ``curv`` files.
    """
    kind = input_kind(imgs, name=name)
    if kind == "volume":
        return ".nii.gz"
    if kind == "cifti":
        return ".dscalar.nii"
    first = str(_first_file(imgs, name))
    fmt = surface_kind(first)
    if fmt == "gifti":
        return ".func.gii"
    if fmt == "mgh":
        return ".mgh" if first.lower().endswith(".mgh") else ".mgz"
    return ".mgz"


def count_maps(imgs, *, name="imgs"):
    """Number of maps (subjects) in surface or CIFTI inputs: files, data arrays, frames or CIFTI rows."""
    import nibabel as nib

    from .surface_io import load_surface_data

    entries = _entries(imgs, name)
    files = [entries] if isinstance(entries, (str, os.PathLike)) else list(entries)
    total = 0
    for i, path in enumerate(files):
        label = name if len(files) == 1 else f"{name}[{i}]"
        if is_cifti_path(path):
            try:
                img = nib.load(path)
            except Exception as err:
                raise ParameterError(label, f"cannot read {path} as CIFTI-2 ({type(err).__name__}: {err})") from None
            if not isinstance(img, nib.Cifti2Image) or len(img.shape) != 2:
                raise ParameterError(label, f"{path} is not a dense CIFTI-2 file")
            total += img.shape[0]
        elif str(path).lower().endswith((".mgh", ".mgz")):
            try:  # the header only (nibabel's MGH loader would leave the file open)
                with nib.openers.ImageOpener(str(path)) as handle:
                    shape = nib.freesurfer.mghformat.MGHHeader.from_fileobj(handle).get_data_shape()
            except Exception as err:
                raise ParameterError(label, f"cannot read {path} as per-vertex data ({err})") from None
            total += shape[3] if len(shape) == 4 else 1
        else:
            total += load_surface_data(path, name=label)[0].shape[0]
    return total


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
    entries = _entries(imgs, name, warn=True)
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


def load_surface_map(img, mask_img=None, *, surf=None, areas=None, left_surf=None, right_surf=None,
                     left_area=None, right_area=None, name="imgs", mask_name="mask_img"):
    """One map on a surface or over CIFTI grayordinates, and its masker.

    The masker keeps the elements that are finite (and inside ``mask_img``,
    when given); see :func:`load_surface_input` for the other parameters.

    Returns
    -------
    values : (n_elements,) ndarray of float64
    masker : SurfaceMasker or CiftiMasker
    """
    import numpy as np

    from .cifti import CiftiMasker, _meshes, load_cifti_data
    from .surface import load_mesh
    from .surface_io import SurfaceMasker, load_surface_data, read_vertex_mask, vertex_areas_of

    kind = input_kind(img, name=name)
    if kind == "cifti":
        data, _, models = load_cifti_data(img, name=name)
        names = {"left_surf": "left_surf", "right_surf": "right_surf", "left_area": "left_area",
                 "right_area": "right_area"}
        meshes, vertex_areas = _meshes(models, left_surf, right_surf, left_area, right_area, names)
        if mask_img is not None:
            mask_values, _, mask_models = load_cifti_data(mask_img, name=mask_name)
            if mask_models != models:
                raise ParameterError(mask_name, f"{mask_img} has other brain models than {img}")
            inside = np.isfinite(mask_values[0]) & (mask_values[0] != 0)
    elif kind == "surface":
        if surf is None:
            raise ParameterError("surf", "a surface map needs the mesh it is on")
        data, _, fmt = load_surface_data(img, name=name)
        mesh = load_mesh(surf, name="surf")
        if data.shape[1] != mesh.n_vertices:
            raise ParameterError("surf", f"{mesh.name} has {mesh.n_vertices} vertices but {img} has {data.shape[1]}")
        if mask_img is not None:
            inside = read_vertex_mask(mask_img, mesh.n_vertices, name=mask_name)
    else:
        raise ParameterError(name, "expected a surface (GIFTI, MGH/MGZ, curv) or CIFTI file")
    if data.shape[0] != 1:
        raise ParameterError(name, f"expected one map, got {data.shape[0]} in {img}")
    mask = np.isfinite(data[0])
    if mask_img is not None:
        mask &= inside
    if kind == "cifti":
        masker = CiftiMasker(brain_models=models, mask=mask, meshes=meshes, areas=vertex_areas)
    else:
        masker = SurfaceMasker(mesh=mesh, mask=mask, areas=vertex_areas_of(mesh, areas), fmt=fmt)
    return data[0, mask].astype(np.float64), masker


def surface_tfce(values, masker, *, connectivity=6, E=None, H=2.0, mode="exact", dh=None, two_sided=True):
    """TFCE of (n_elements,) values through a surface or CIFTI masker's graph (vertex areas as extents).

    ``E`` None takes :func:`tfce_defaults` (1 on surfaces, 0.5 in volume
    structures). Other conventions as :func:`voxstats.tfce`.
    """
    from .tfce import _check_params, tfce_values

    E = tfce_defaults(masker) if E is None else E
    _check_params(E, H, mode, dh)
    return tfce_values(values, masker.graph(connectivity), E=E, H=H, mode=mode, dh=dh, two_sided=two_sided)
