"""Variance smoothing: the pseudo-t of FSL randomise ``-v``.

With few subjects the residual variance of each voxel is noisy. randomise's
``-v sigma`` smooths the variance map with a Gaussian of ``sigma`` mm (inside
the mask, renormalised by the smoothed mask) and divides the effect by the
smoothed standard deviation instead of the voxel's own. The pseudo-t has no
parametric distribution; its permutation distribution is built the same way
for every rearrangement.

FSL's ``smooth``: per axis a Gaussian of ``sigma / voxel size`` voxels,
truncated at ``2 * int(sigma_vox - 0.001) + 3`` voxels either side, normalised
to sum 1, applied separably with zeros outside the volume.

References
----------
Holmes AP, Blair RC, Watson JDG, Ford I (1996). Nonparametric analysis of
statistic images from functional mapping experiments. J Cereb Blood Flow Metab
16:7-22. doi:10.1097/00004647-199601000-00002 (the pseudo-t).
"""

import numpy as np
from scipy import ndimage

__all__ = ["VarianceSmoother", "fsl_gaussian_kernel"]

_BATCH = 8  # maps smoothed at once (bounds the memory of the cropped volumes)


def fsl_gaussian_kernel(sigma_vox):
    """FSL's 1D smoothing kernel for a Gaussian of ``sigma_vox`` voxels (newimage ``smooth``)."""
    radius = int(sigma_vox - 0.001) * 2 + 3
    j = np.arange(-radius, radius + 1, dtype=np.float64)
    if sigma_vox > 1e-6:
        kernel = np.exp(-(j * j) / (2.0 * sigma_vox * sigma_vox))
    else:
        kernel = (j == 0).astype(np.float64)
    return kernel / kernel.sum()


class VarianceSmoother:
    """Smooths variance maps on a 3D mask, as randomise ``-v``.

    Parameters
    ----------
    mask : (x, y, z) ndarray of bool
        The analysis mask; maps are (n_maps, mask.sum()) in C order.
    sigma_mm : float
        Standard deviation of the Gaussian, mm (> 0).
    voxel_size : sequence of 3 floats
        Voxel dimensions, mm.
    """

    def __init__(self, mask, sigma_mm, voxel_size):
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 3:
            raise ValueError(f"variance_smoothing: needs a 3D grid mask, got a {mask.ndim}D mask")
        if not np.isfinite(sigma_mm) or sigma_mm <= 0:
            raise ValueError(f"Invalid value for the 'variance_smoothing' parameter: expected a sigma "
                             f"> 0 mm, got {sigma_mm!r}")
        voxel_size = np.asarray(voxel_size, dtype=np.float64)
        if voxel_size.shape != (3,) or not np.all(voxel_size > 0):
            raise ValueError(f"voxel_size: expected 3 positive voxel dimensions in mm, got {voxel_size}")
        self.sigma_mm = float(sigma_mm)
        self.kernels = [fsl_gaussian_kernel(self.sigma_mm / d) for d in voxel_size]
        # crop to the mask's bounding box plus the kernels' reach: outside it everything is 0
        where = np.argwhere(mask)
        lo = np.maximum(where.min(axis=0) - [k.size // 2 for k in self.kernels], 0)
        hi = np.minimum(where.max(axis=0) + 1 + [k.size // 2 for k in self.kernels], mask.shape)
        self._box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        self._mask = mask[self._box]
        self.normaliser = self._smooth(self._mask[np.newaxis].astype(np.float64))[0][self._mask]

    def _smooth(self, volumes):
        for axis, kernel in enumerate(self.kernels, start=1):
            volumes = ndimage.correlate1d(volumes, kernel, axis=axis, mode="constant", cval=0.0)
        return volumes

    def smooth(self, variance):
        """Smoothed variance, renormalised by the smoothed mask: (n_maps, n_voxels) float64."""
        variance = np.atleast_2d(np.asarray(variance, dtype=np.float64))
        out = np.empty(variance.shape)
        for start in range(0, variance.shape[0], _BATCH):
            part = variance[start:start + _BATCH]
            volumes = np.zeros((part.shape[0],) + self._mask.shape)
            volumes[:, self._mask] = part
            out[start:start + part.shape[0]] = self._smooth(volumes)[:, self._mask] / self.normaliser
        return out

    def pseudo_t(self, effect, variance):
        """effect / sqrt(smoothed variance); 0 where the voxel's own variance is 0 (as randomise)."""
        smoothed = self.smooth(variance)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.asarray(effect, dtype=np.float64) / np.sqrt(smoothed)
        t[~((np.asarray(variance) > 0) & (smoothed > 0))] = 0.0
        return t
