"""Maskers: where the analysed elements (voxels, vertices) come from and go back to.

The engine works on a (n_subjects, n_elements) matrix and a graph of which
elements touch; it never learns which file format the data came from. A
*masker* is the small object that knows: :func:`voxstats.loading.load` returns
one beside the data matrix, :class:`voxstats.RandomiseResult` keeps it, and
every writer goes through it.

The masker protocol
-------------------
A masker is a frozen (immutable) object with:

``kind`` : str
    What the elements are (``"volume"``, ``"surface"``, ``"cifti"``).
``n_elements`` : int
    Number of analysed elements, the data matrix's columns.
``suffix`` : str
    File suffix of the maps it writes (``".nii.gz"`` for volumes).
``graph(connectivity)`` -> :class:`voxstats.graph.VoxelGraph`
    Which elements are neighbours (for TFCE and clusters), elements in column
    order. ``connectivity`` is the neighbourhood asked for (6, 18 or 26 on a
    3D grid); a masker whose elements have one natural neighbourhood (a mesh)
    may ignore it.
``unmask(values)``
    A (n_elements,) map back in the input's layout, 0 outside the mask (a 3D
    NIfTI image for volumes).
``save(values, path)``
    Write ``unmask(values)`` to ``path`` atomically, honouring the umask.
``position(k)`` -> (index, xyz), optional
    Where element ``k`` is: its index in the input (voxel ``(i, j, k)``) and
    its world coordinates in mm; summaries use it to report peaks.

:class:`VolumeMasker` implements it for NIfTI volumes. Surface (GIFTI) and
CIFTI maskers implement the same methods, so that ``voxstats randomise`` and
:func:`voxstats.randomise` run on them unchanged.
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .errors import ParameterError

__all__ = ["VolumeMasker"]


@dataclass(frozen=True, eq=False)
class VolumeMasker:
    """Voxels of a 3D grid inside a mask, numbered in C order.

    Attributes
    ----------
    mask : (x, y, z) ndarray of bool
        The analysed voxels.
    affine : (4, 4) ndarray
        Voxel to world (mm) transform of the grid.
    """

    mask: np.ndarray
    affine: np.ndarray
    kind: ClassVar[str] = "volume"
    suffix: ClassVar[str] = ".nii.gz"

    def __post_init__(self):
        mask = np.asarray(self.mask, dtype=bool)
        if mask.ndim != 3:
            raise ValueError(f"mask: expected a 3D array, got shape {mask.shape}")
        affine = np.asarray(self.affine, dtype=float)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError("affine: expected a finite (4, 4) matrix")
        mask.flags.writeable = False
        affine.flags.writeable = False
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "affine", affine)

    @property
    def n_elements(self):
        """Number of voxels in the mask."""
        return int(self.mask.sum())

    @property
    def shape(self):
        """Shape of the grid."""
        return self.mask.shape

    @property
    def mask_img(self):
        """The mask as a uint8 NIfTI image."""
        import nibabel as nib

        return nib.Nifti1Image(self.mask.astype(np.uint8), self.affine)

    def graph(self, connectivity=6):
        """The voxels' neighbourhood graph: 6, 18 or 26 neighbours on the grid."""
        from .graph import grid_graph

        return grid_graph(self.mask, connectivity)

    def unmask(self, values):
        """A (n_voxels,) map as a 3D NIfTI image, 0 outside the mask.

        Integer values give an int32 image, anything else float32.
        """
        import nibabel as nib

        values = np.asarray(values)
        if values.shape != (self.n_elements,):
            raise ParameterError("values", f"expected shape ({self.n_elements},), got {values.shape}")
        dtype = np.int32 if values.dtype.kind in "biu" else np.float32
        volume = np.zeros(self.mask.shape, dtype=dtype)
        volume[self.mask] = values
        img = nib.Nifti1Image(volume, self.affine)
        img.set_data_dtype(dtype)
        return img

    def save(self, values, path):
        """Write ``unmask(values)`` to ``path`` atomically; returns the path."""
        from .outputs import save_img_atomic

        return save_img_atomic(self.unmask(values), path)

    def position(self, k):
        """Voxel index ``(i, j, k)`` and world coordinates (mm) of element ``k``."""
        flat = np.flatnonzero(self.mask.ravel())[int(k)]
        ijk = tuple(int(v) for v in np.unravel_index(flat, self.mask.shape))
        xyz = tuple(float(v) for v in self.affine[:3, :3] @ ijk + self.affine[:3, 3])
        return ijk, xyz
