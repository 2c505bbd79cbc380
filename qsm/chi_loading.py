"""Each subject's χ map as the study reads it: read, checked, converted, re-referenced, tabulated.

``qsm.pipeline.run_study`` calls these once per subject (reading one map ahead
on a thread, :mod:`qsm.read_ahead`); every problem is a one-line error naming
the subject and the file.
"""

import nibabel as nib
import numpy as np

import voxstats.image
from qsm.coverage import coverage_table, has_data
from qsm.reference import rereference
from qsm.roi import region_stats
from qsm.units import to_ppb


def _rereference(data, affine, region_mask, statistic, path):
    """χ minus its reference offset (qsm.reference, on the map's non-zero finite voxels).

    ``region_mask``: (x, y, z) bool array, or its uint8 image (built once per cohort).
    """
    support = np.isfinite(data) & (data != 0)
    if not hasattr(region_mask, "dataobj"):
        region_mask = nib.Nifti1Image(region_mask.astype(np.uint8), affine)
    try:
        res = rereference(nib.Nifti1Image(data, affine),
                          mask_img=nib.Nifti1Image(support.astype(np.uint8), affine),
                          region="mask", statistic=statistic, region_mask_img=region_mask)
    except ValueError as exc:
        raise ValueError(f"χ map {path}: cannot re-reference ({exc})") from None
    return np.asarray(res.img.dataobj, dtype=np.float32), res.offset, res.n_voxels


def _read_chi(path, subject, *, header_only=False):
    """A χ map (image, float32 data); any unreadable file is one error naming it."""
    try:
        img = nib.load(str(path))
        kind = img.get_data_dtype().kind
    except Exception as exc:  # nibabel raises many types for broken files
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"χ map {path} of {subject} cannot be read as an image ({why}).") \
            from None
    if kind not in "iuf":
        what = {"c": "complex", "V": "RGB or structured", "b": "boolean"}.get(kind, kind)
        raise ValueError(f"χ map {path} of {subject} holds {what} values; expected real "
                         "numbers (ppb).")
    if header_only:
        return img
    try:
        return img, np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel, gzip and zlib raise many types for broken files
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"χ map {path} of {subject} cannot be read as an image ({why}).") \
            from None


def _load_one(config, sub, path, img, data, first, first_path, vox_mask, units, masks,
              mask_indices, ref_mask, box, coverage, refs, ref_voxels, tables):
    """Check, convert and re-reference one χ map; append its rows; its crop (or None)."""
    voxstats.image.check_same_space(first, img, str(first_path), str(path))
    if data.ndim != 3:
        raise ValueError(f"χ map {path} must be 3D, got shape {data.shape}.")
    if vox_mask is not None:
        bad = int((~np.isfinite(data[vox_mask])).sum())
        if bad:
            raise ValueError(f"χ map {path} of {sub} has {bad} NaN or infinite value(s) in "
                             f"the [voxelwise] region {config.voxelwise.region!r}.")
    data = to_ppb(data, units)
    have = has_data(data, ignore_zeros=config.roi.ignore_zeros)
    coverage.append(coverage_table(sub, have, masks, indices=mask_indices))
    ref, n_ref = 0.0, 0
    if ref_mask is not None:
        data, ref, n_ref = _rereference(data, first.affine, ref_mask,
                                        config.referencing.statistic, path)
    data[~have] = np.nan   # no data, whatever value referencing would give it
    refs.append(ref)
    ref_voxels.append(n_ref)
    table = region_stats(data, masks, ignore_zeros=False,   # no data is NaN by now
                         trim_percentile=config.roi.trim_percentile or None)
    table.insert(0, "subject", sub)
    tables.append(table)
    return data[box].copy() if box is not None else None
