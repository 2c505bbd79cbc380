"""Voxel-wise regressors (FSL randomise ``--vxl``/``--vxf``): a design per voxel.

Some regressors vary from voxel to voxel (each subject's grey-matter density,
say): column ``j`` of the design is replaced at voxel ``v`` by the subjects'
values of a regressor image at ``v``. Each voxel then has its own
[tested, nuisance] basis (Winkler et al. 2014's partition, computed for every
voxel in batches), its own Freedman-Lane residuals, and a rearrangement's
statistic at ``v`` is computed from ``P`` applied to that voxel's basis.

This is a slower path than the shared-design engine: its cost per
rearrangement is O(n_voxels * n_subjects * n_regressors) array work in NumPy
rather than one matrix product, and the bases take n_voxels * n_subjects *
n_regressors * 4 bytes (``bench/bench_voxelwise.py`` measures it).
"""

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from . import _engine_numba
from .design import make_design
from .image import check_img, check_same_space

logger = logging.getLogger(__name__)

__all__ = ["VoxelwiseBasis", "digest", "masked_values", "probe_design", "voxelwise_basis"]

_BLOCK = 2048  # voxels per batch of per-voxel linear algebra


@dataclass(frozen=True)
class VoxelwiseBasis:
    """Per-voxel orthonormal bases [tested, nuisance] of one contrast.

    Attributes
    ----------
    basis : (n_subjects, p, n_voxels) ndarray of float32
        Column ``v`` holds voxel ``v``'s orthonormal basis (subjects x p).
    q : int
        Dimension of the tested space.
    df : int
        Residual degrees of freedom (the same at every usable voxel).
    usable : (n_voxels,) ndarray of bool
        Voxels whose design has the expected rank; the others get statistic 0.
    """

    basis: np.ndarray
    q: int
    df: int
    usable: np.ndarray


def _check_evs(evs, design, n_voxels):
    """{column index: (n_subjects, n_voxels) float64 array}, validated."""
    out = {}
    for key, values in evs.items():
        if isinstance(key, str):
            if key not in design.names:
                raise ValueError(f"voxelwise_evs: unknown regressor {key!r}; design has {list(design.names)}")
            column = design.names.index(key)
        else:
            column = int(key)
            if not 0 <= column < design.n_regressors:
                raise ValueError(f"voxelwise_evs: regressor index {key} is outside the design's "
                                 f"{design.n_regressors} columns (0-based)")
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (design.n_subjects, n_voxels):
            raise ValueError(f"voxelwise_evs[{key!r}]: expected shape ({design.n_subjects}, {n_voxels}) "
                             f"(subjects, voxels), got {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"voxelwise_evs[{key!r}]: NaN or infinite values inside the mask")
        out[column] = values
    if not out:
        raise ValueError("voxelwise_evs: expected at least one voxel-wise regressor")
    return out


def _orthonormal_batch(matrices, rank):
    """Orthonormal bases (b, n, rank) of a batch of column spans, and which have that rank."""
    if matrices.shape[2] == 0 or rank == 0:
        return np.zeros(matrices.shape[:2] + (0,)), np.ones(matrices.shape[0], dtype=bool)
    u, s, _ = np.linalg.svd(matrices, full_matrices=False)
    tol = 1e-10 * np.maximum(s[:, :1], 1e-300)
    ranks = np.sum(s > tol, axis=1)
    return u[:, :, :rank], ranks == rank


def voxelwise_basis(design, contrast, evs, n_voxels):
    """Per-voxel bases for ``contrast`` with the columns of ``evs`` replaced voxel by voxel.

    Parameters
    ----------
    design : voxstats.design.Design
    contrast : voxstats.design.Contrast
    evs : dict of {int or str: (n_subjects, n_voxels) array}
        Regressor (0-based column index or name) -> its values at every voxel.
        With a demeaned design (``-D``) they are demeaned too.
    n_voxels : int

    Returns
    -------
    VoxelwiseBasis
    """
    evs = _check_evs(evs, design, n_voxels)
    base, c = design.model(contrast.weights)
    n, p = base.shape
    q = contrast.rank
    null_c = linalg.null_space(c)
    # the rank a voxel's model should have: the base design's with the EVs as generic columns
    probe = base.copy()
    rng = np.random.default_rng(0)
    for column in evs:
        probe[:, column] = rng.standard_normal(n)
    full_rank = int(np.linalg.matrix_rank(probe))
    nuisance_rank = int(np.linalg.matrix_rank(probe @ null_c))
    basis = np.zeros((n, q + nuisance_rank, n_voxels), dtype=np.float32)
    usable = np.zeros(n_voxels, dtype=bool)
    for start in range(0, n_voxels, _BLOCK):
        stop = min(start + _BLOCK, n_voxels)
        model = np.repeat(base[np.newaxis], stop - start, axis=0)
        for column, values in evs.items():
            block = values[:, start:stop].T
            model[:, :, column] = block - block.mean(axis=1, keepdims=True) if design.demeaned else block
        ok = np.linalg.matrix_rank(model) == full_rank
        nuisance, ok_z = _orthonormal_batch(model @ null_c, nuisance_rank)
        a = model @ (np.linalg.pinv(np.swapaxes(model, 1, 2) @ model) @ c.T)  # (b, n, q)
        a = a - nuisance @ (np.swapaxes(nuisance, 1, 2) @ a)
        if q == 1:
            norm = np.linalg.norm(a[:, :, 0], axis=1)
            ok_t = norm > 1e-10 * np.sqrt(n)
            tested = a / np.where(ok_t, norm, 1.0)[:, np.newaxis, np.newaxis]
        else:
            tested, ok_t = _orthonormal_batch(a, q)
        usable[start:stop] = ok & ok_z & ok_t
        basis[:, :, start:stop] = np.transpose(np.concatenate([tested, nuisance], axis=2), (1, 2, 0))
    if not usable.all():
        logger.warning("%d voxels have a rank-deficient voxel-wise design (a voxel-wise regressor "
                       "constant or collinear there): statistic 0", int((~usable).sum()))
    return VoxelwiseBasis(basis=basis, q=q, df=n - full_rank, usable=usable)


def residualize(data, vbasis, *, out=None):
    """Each voxel's data with its own nuisance space projected out (float32)."""
    out = np.empty(data.shape, dtype=np.float32) if out is None else out
    q = vbasis.q
    for start in range(0, data.shape[1], _BLOCK):
        stop = min(start + _BLOCK, data.shape[1])
        y = np.asarray(data[:, start:stop], dtype=np.float64).T  # (b, n)
        z = np.transpose(vbasis.basis[:, q:, start:stop], (2, 0, 1)).astype(np.float64)  # (b, n, r)
        y = y - np.einsum("bnr,br->bn", z, np.einsum("bnr,bn->br", z, y))
        y[~vbasis.usable[start:stop]] = 0.0
        out[:, start:stop] = y.T
    return out


def group_statistics(vbasis, data, sum_sq, df, kind, perms, signs, out):
    """Statistic maps (rows of ``out``) of rearrangements ``perms``/``signs`` with per-voxel bases."""
    p = vbasis.basis.shape[1]
    n_maps = perms.shape[0]
    for start in range(0, data.shape[1], _BLOCK):
        stop = min(start + _BLOCK, data.shape[1])
        basis = np.ascontiguousarray(vbasis.basis[:, :, start:stop])
        w = np.ascontiguousarray(data[:, start:stop])
        proj = np.empty((n_maps * p, stop - start))
        for m in range(n_maps):
            _engine_numba.voxelwise_projection(basis, w, perms[m], signs[m], proj[m * p:(m + 1) * p])
        _engine_numba.stats_from_projection(proj, sum_sq[start:stop], float(df), p, vbasis.q,
                                            kind == "F", out[:, start:stop])


def probe_design(design, evs, demean):
    """The design with its voxel-wise columns replaced by generic values, for the checks.

    With ``--vxl`` the design file holds placeholders in those columns (often a
    copy of another column); the design is validated, and contrasts checked for
    estimability, as a voxel's design would be.
    """
    import pandas as pd

    base = make_design(design, allow_rank_deficient=True)
    matrix = np.array(base.matrix)
    rng = np.random.default_rng(0)
    for key in evs:
        column = base.names.index(key) if isinstance(key, str) and key in base.names else key
        if not isinstance(column, (int, np.integer)) or not 0 <= column < base.n_regressors:
            raise ValueError(f"voxelwise_evs: unknown regressor {key!r}; design has {list(base.names)} "
                             "(give a name or a 0-based column index)")
        matrix[:, column] = rng.standard_normal(base.n_subjects)
    return make_design(pd.DataFrame(matrix, columns=list(base.names)), demean=demean)


def digest(arrays):
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(arrays, key=str):
        values = np.ascontiguousarray(arrays[key], dtype=np.float64)
        h.update(f"{key}{values.shape}".encode())
        h.update(values.view(np.uint8).reshape(-1).data)
    return h.hexdigest()


def masked_values(value, masker, key):
    """A voxel-wise regressor as (n_subjects, n_voxels): a 4D image (or its file name) is masked."""
    if isinstance(value, (str, os.PathLike)) or hasattr(value, "affine"):
        if not hasattr(masker, "mask_img"):
            raise ValueError(f"voxelwise_evs[{key!r}]: images need volume inputs; give an array "
                             "(n_subjects, n_elements) instead")
        img = check_img(value, name=f"voxelwise_evs[{key!r}]", ndim=4)
        check_same_space(masker.mask_img, img, "the analysis mask", f"voxelwise_evs[{key!r}]")
        return np.asarray(img.dataobj, dtype=np.float64)[masker.mask].T
    return value
