"""Register a subject (structural, χ, hybrid or both) to a template.

What is matched is the drive's business (:mod:`qsm.drives`): the structural
image, χ alone, the MuSus-100 hybrid contrast, or structural and χ as two
channels. ``resolution`` registers on a coarser working grid (the template
and the subject's images smoothed and resampled to it; pyramid levels coarser
than :data:`MAX_LEVEL_MM` are dropped) while outputs can still be resampled
onto any grid.

Engines
-------
``"dipy"`` (default, always installed): centre of mass (of intensities, or of
the brain masks for the χ drive), then translation, rigid and affine stages
maximising Mattes-style mutual information on a seeded random sample of voxels
(:class:`dipy.align.imaffine.AffineRegistration`), then symmetric
diffeomorphic SyN with a local cross-correlation metric
(:class:`dipy.align.imwarp.SymmetricDiffeomorphicRegistration`; two summed
channels for ``'multichannel'``, :mod:`qsm._dipy_multichannel`).

``"ants"`` (optional extra ``voxstats[ants]``): antspyx ``ants.registration``
with ``type_of_transform="SyN"`` (or ``"Affine"``); imported only when used;
single-channel drives only.

Whatever the engine, the result is a :class:`Registration` in one convention
(the ANTs/nitransforms resampling convention): a template point ``x`` (world
mm) maps to the subject point ``A (x + u(x))``, where ``A`` is the affine and
``u`` the forward displacement field on the template grid (zero when
``nonlinear=False``). The inverse maps a subject point ``y`` to ``z + w(z)``
with ``z = A^-1 y`` and ``w`` the inverse field, also on the template grid.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from qsm.drives import DRIVE_DEFAULTS, DRIVES, HYBRID_MU_PPM, driving_images, support_mask
from qsm.transforms import (
    check_interpolation,
    grid_world,
    sample,
    sample_field,
    save_img_atomic,
    write_atomic,
)

logger = logging.getLogger(__name__)

ENGINES = ("dipy", "ants")

#: Default dipy parameters (tuned for ~2 mm templates: about 10-20 s per subject on an idle
#: core). ``channel_weight`` is the χ channel's weight against the structural one
#: (``'multichannel'``).
DIPY_DEFAULTS = {
    "nbins": 32,
    "sampling_proportion": 0.1,
    "affine_level_iters": (100, 30, 0),
    "affine_sigmas": (3.0, 1.0, 0.0),
    "affine_factors": (4, 2, 1),
    "syn_level_iters": (30, 15, 5),
    "syn_cc_radius": 4,
    "syn_sigma_diff": 2.0,
    "channel_weight": 1.0,
}


def _check_option(name, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"Invalid value for the '{name}' parameter. Allowed values are "
            f"{', '.join(repr(a) for a in allowed)}, but got {value!r} instead."
        )


@dataclass(frozen=True)
class Registration:
    """A subject <-> template registration (see the module notes for the convention).

    Attributes
    ----------
    affine : (4, 4) ndarray
        Template world -> subject world affine (applied after the forward field).
    forward_field : (x, y, z, 3) float32 ndarray or None
        Forward displacement ``u`` (mm, RAS+) on the template grid; None if affine only.
    inverse_field : (x, y, z, 3) float32 ndarray or None
        Inverse displacement ``w`` (mm, RAS+) on the template grid.
    template_affine : (4, 4) ndarray
    template_shape : tuple of 3 int
    engine : str
    parameters : dict
        Engine parameters used (for sidecars).
    """

    affine: np.ndarray
    forward_field: np.ndarray | None
    inverse_field: np.ndarray | None
    template_affine: np.ndarray
    template_shape: tuple
    engine: str
    parameters: dict = field(default_factory=dict)

    @property
    def nonlinear(self):
        """bool: whether a displacement field is part of the mapping."""
        return self.forward_field is not None

    def to_subject(self, points):
        """Map template world points (..., 3) to subject world points."""
        points = np.asarray(points, dtype=float)
        if self.forward_field is not None:
            points = points + sample_field(self.forward_field, self.template_affine, points)
        return points @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_template(self, points):
        """Map subject world points (..., 3) to template world points."""
        inv = np.linalg.inv(self.affine)
        z = np.asarray(points, dtype=float) @ inv[:3, :3].T + inv[:3, 3]
        if self.inverse_field is not None:
            z = z + sample_field(self.inverse_field, self.template_affine, z)
        return z

    def transform(self, img, *, interpolation="linear", reference=None):
        """Resample a subject-space image into template space.

        Parameters
        ----------
        img : nibabel image
            3D image in subject space.
        interpolation : {'nearest', 'linear', 'cubic', 'quintic'}
        reference : (shape, affine) tuple, nibabel image or None
            Output grid; default the template grid.

        Returns
        -------
        nibabel.Nifti1Image
        """
        shape, affine = self._grid(reference)
        return _resample(img, self.to_subject(grid_world(shape, affine)), affine, interpolation)

    def inverse_transform(self, img, *, reference, interpolation="nearest"):
        """Resample a template-space image (e.g. labels) onto a subject grid.

        Parameters
        ----------
        img : nibabel image
            3D image in template space.
        reference : nibabel image or (shape, affine)
            The subject grid.
        interpolation : {'nearest', 'linear', 'cubic', 'quintic'}
            ``'nearest'`` by default, for labels.
        """
        shape, affine = self._grid(reference)
        return _resample(img, self.to_template(grid_world(shape, affine)), affine, interpolation)

    def _grid(self, reference):
        if reference is None:
            return self.template_shape, self.template_affine
        if isinstance(reference, tuple):
            return tuple(reference[0]), np.asarray(reference[1], dtype=float)
        return reference.shape[:3], np.asarray(reference.affine, dtype=float)

    def to_nitransforms(self, inverse=False, *, reference=None):
        """The mapping as a :class:`nitransforms.manip.TransformChain`.

        ``inverse=False``: resamples subject images onto the template
        (``[warp, affine]``); ``inverse=True``: template images onto a subject
        grid (``[affine^-1, inverse warp]``), given as ``reference`` (an image;
        default the template grid).
        """
        from nitransforms.linear import Affine
        from nitransforms.manip import TransformChain
        from nitransforms.nonlinear import DenseFieldTransform

        ref = nib.Nifti1Image(np.zeros(self.template_shape, np.uint8), self.template_affine)
        if not inverse:
            chain = [Affine(self.affine, reference=ref)]
            if self.forward_field is not None:
                chain.insert(0, DenseFieldTransform(self.forward_field, reference=ref))
        else:
            chain = [Affine(np.linalg.inv(self.affine),
                            reference=ref if reference is None else reference)]
            if self.inverse_field is not None:
                chain.append(DenseFieldTransform(self.inverse_field, reference=ref))
        return TransformChain(chain)

    def save(self, out_dir, prefix, *, space, source="native"):
        """Write the transforms as ANTs/ITK files readable by ANTs and nitransforms.

        Files: ``<prefix>_from-<source>_to-<space>_mode-image_xfm.mat`` (ITK affine)
        and, if nonlinear, ``<prefix>_from-<source>_to-<space>_mode-image_xfm.nii.gz``
        (forward warp) and ``<prefix>_from-<space>_to-<source>_mode-image_xfm.nii.gz``
        (inverse warp); ``source`` is ``native`` for a subject. Resample a subject image into the template with
        ``[warp, affine]`` (see :mod:`qsm.transforms`).

        Returns
        -------
        dict
            ``{"affine": path, "warp": path or None, "inverse_warp": path or None}``
        """
        from nitransforms.linear import Affine
        from nitransforms.io.itk import ITKDisplacementsField

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        fwd = f"{prefix}_from-{source}_to-{space}_mode-image_xfm"
        paths = {"affine": out_dir / f"{fwd}.mat", "warp": None, "inverse_warp": None}
        write_atomic(paths["affine"], lambda p: Affine(self.affine).to_filename(p, fmt="itk"))
        if self.forward_field is not None:
            for key, data, name in (
                ("warp", self.forward_field, f"{fwd}.nii.gz"),
                ("inverse_warp", self.inverse_field,
                 f"{prefix}_from-{space}_to-{source}_mode-image_xfm.nii.gz"),
            ):
                img = ITKDisplacementsField.to_image(
                    nib.Nifti1Image(np.asarray(data, dtype=np.float32), self.template_affine)
                )
                img.set_data_dtype(np.float32)
                paths[key] = save_img_atomic(img, out_dir / name)
        return paths


def _resample(img, points, affine, interpolation):
    order = check_interpolation(interpolation)
    data = np.asarray(img.dataobj)
    out = sample(data, img.affine, points, order=order)
    if order == 0 and np.issubdtype(data.dtype, np.integer):
        out = np.rint(out).astype(data.dtype)
    elif order == 0:
        out = out.astype(data.dtype)
    else:
        out = out.astype(np.float32)
    return nib.Nifti1Image(out, affine)


# ------------------------------------------------------------------ coarse working grid
def _coarsen(img, resolution, *, order=1):
    """``img`` on a grid of ``resolution`` mm (same field of view), Gaussian pre-smoothed.

    The smoothing brings the image to a FWHM of one new voxel (anti-aliasing);
    nothing is done when the image already has voxels of at least that size.
    """
    from qsm.template import grid_at_resolution

    aff = np.asarray(img.affine, dtype=float)
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    if np.all(zooms >= float(resolution) - 1e-6):
        return img
    shape, affine = grid_at_resolution(img.shape, aff, resolution)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if order > 0:
        from scipy import ndimage as ndi

        fwhm = np.sqrt(np.maximum(float(resolution) ** 2 - zooms ** 2, 0.0)) / zooms
        data = ndi.gaussian_filter(data, fwhm / np.sqrt(8 * np.log(2)))
    out = sample(data, aff, grid_world(shape, affine), order=order)
    return nib.Nifti1Image(out.astype(np.float32), affine)


#: Coarsest pyramid level (voxel size in mm) kept: levels coarser than this are dropped, so a
#: coarse working grid (``resolution``) skips the finest levels rather than adding coarser ones.
MAX_LEVEL_MM = 16.0


def _levels_for_grid(params, voxel_mm):
    """dipy parameters without the pyramid levels coarser than :data:`MAX_LEVEL_MM`."""
    out = dict(params)
    keep = [k for k, f in enumerate(params["affine_factors"]) if voxel_mm * f <= MAX_LEVEL_MM]
    keep = keep or [len(params["affine_factors"]) - 1]
    for key in ("affine_level_iters", "affine_sigmas", "affine_factors"):
        out[key] = tuple(params[key][k] for k in keep)
    syn = tuple(params["syn_level_iters"])
    n = len(syn)
    kept = tuple(it for i, it in enumerate(syn) if voxel_mm * 2 ** (n - 1 - i) <= MAX_LEVEL_MM)
    out["syn_level_iters"] = kept or syn[-1:]
    return out


# ------------------------------------------------------------------------------ engines
@contextlib.contextmanager
def _seeded_global_numpy(rng):
    """dipy's sparse sampling draws from numpy's global state: seed it, then restore."""
    state = np.random.get_state()
    np.random.seed(int(rng.integers(2**32 - 1)))
    try:
        yield
    finally:
        np.random.set_state(state)


def _arr(img):
    return np.ascontiguousarray(np.asarray(img.dataobj), dtype=np.float64)


def _register_dipy(images, *, nonlinear, static_mask, params, rng):
    from dipy.align.imaffine import (
        AffineRegistration,
        MutualInformationMetric,
        transform_centers_of_mass,
    )
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric
    from dipy.align.transforms import (
        AffineTransform3D,
        RigidTransform3D,
        TranslationTransform3D,
    )

    static_img, moving_img = images["static"], images["moving"]
    static_aff = np.asarray(static_img.affine, float)
    moving_aff = np.asarray(moving_img.affine, float)
    static, moving = _arr(static_img), _arr(moving_img)
    current = transform_centers_of_mass(_arr(images["static_init"]), static_aff,
                                        _arr(images["moving_init"]), moving_aff).affine
    metric = MutualInformationMetric(nbins=params["nbins"],
                                     sampling_proportion=params["sampling_proportion"])
    areg = AffineRegistration(metric=metric, level_iters=list(params["affine_level_iters"]),
                              sigmas=list(params["affine_sigmas"]),
                              factors=list(params["affine_factors"]), verbosity=0)
    # dipy ignores masks (with a warning) under sparse sampling
    mask = static_mask if params["sampling_proportion"] is None else None
    stages = [(static, moving, (TranslationTransform3D(), RigidTransform3D(),
                                AffineTransform3D()))]
    if images.get("static_affine_stage") is not None:   # masks first, then the contrast
        stages.insert(0, (_arr(images["static_affine_stage"]),
                          _arr(images["moving_affine_stage"]),
                          (TranslationTransform3D(), RigidTransform3D())))
        stages[1] = (static, moving, (RigidTransform3D(), AffineTransform3D()))
    with _seeded_global_numpy(rng):
        for fixed, mov, transforms in stages:
            for stage in transforms:
                current = areg.optimize(fixed, mov, stage, None, static_grid2world=static_aff,
                                        moving_grid2world=moving_aff, starting_affine=current,
                                        static_mask=mask).affine
                logger.debug("dipy %s stage done", type(stage).__name__)
    if not nonlinear:
        return current, None, None
    if images.get("static2") is not None:
        from qsm._dipy_multichannel import TwoChannelCC

        syn_metric = TwoChannelCC(_arr(images["static2"]), _arr(images["moving2"]), static_aff,
                                  np.asarray(images["moving2"].affine, float),
                                  levels=len(params["syn_level_iters"]),
                                  weights=(1.0, float(params["channel_weight"])),
                                  sigma_diff=params["syn_sigma_diff"],
                                  radius=params["syn_cc_radius"])
    else:
        syn_metric = CCMetric(3, sigma_diff=params["syn_sigma_diff"],
                              radius=params["syn_cc_radius"])
    sdr = SymmetricDiffeomorphicRegistration(metric=syn_metric,
                                             level_iters=list(params["syn_level_iters"]))
    dipy_logger = logging.getLogger("dipy")
    old = dipy_logger.level
    dipy_logger.setLevel(max(old, logging.WARNING))
    try:
        mapping = sdr.optimize(static, moving, static_grid2world=static_aff,
                               moving_grid2world=moving_aff, prealign=current)
    finally:
        dipy_logger.setLevel(old)
    # dipy maps a static point x to prealign @ (x + forward(x)): our convention.
    fwd = np.asarray(mapping.get_forward_field(), dtype=np.float32)
    bwd = np.asarray(mapping.get_backward_field(), dtype=np.float32)
    return current, fwd, bwd

def _import_ants():
    try:
        import ants  # noqa: PLC0415
    except ImportError as err:
        raise ImportError(
            "The 'ants' engine needs antspyx, an optional extra: "
            "pip install 'voxstats[ants]' (or use engine='dipy')."
        ) from err
    return ants


def _register_ants(images, *, nonlinear, static_mask, params, rng):
    import tempfile

    from qsm.transforms import load_transform

    ants = _import_ants()
    static_img, moving_img = images["static"], images["moving"]
    static_aff = np.asarray(static_img.affine, float)
    with tempfile.TemporaryDirectory() as tmp:
        fixed_p, moving_p = Path(tmp) / "fixed.nii.gz", Path(tmp) / "moving.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(static_img.dataobj, np.float32), static_aff), fixed_p)
        nib.save(nib.Nifti1Image(np.asarray(moving_img.dataobj, np.float32), moving_img.affine),
                 moving_p)
        fixed, mov = ants.image_read(str(fixed_p)), ants.image_read(str(moving_p))
        seed = int(rng.integers(2**31 - 1))
        out = ants.registration(fixed, mov, type_of_transform="SyN" if nonlinear else "Affine",
                                outprefix=str(Path(tmp) / "reg_"), random_seed=seed,
                                **params.get("ants_kwargs", {}))
        fwd_files, inv_files = list(out["fwdtransforms"]), list(out["invtransforms"])
        mats = [f for f in fwd_files if f.endswith(".mat")]
        affine = load_transform(mats[0], fmt="itk")[0].matrix
        fwd = bwd = None
        if nonlinear:
            shape = static_img.shape[:3]
            warp = [f for f in fwd_files if f.endswith(".nii.gz")][0]
            iwarp = [f for f in inv_files if f.endswith(".nii.gz")][0]
            fwd = _ants_field_on_grid(warp, shape, static_aff)
            bwd = _ants_field_on_grid(iwarp, shape, static_aff)
    return affine, fwd, bwd


def _ants_field_on_grid(path, shape, affine):
    from qsm.transforms import load_transform

    xfm = load_transform(path, fmt="itk")[0]
    pts = grid_world(shape, affine)
    return (xfm.map(pts.reshape(-1, 3)).reshape(pts.shape) - pts).astype(np.float32)


def register(structural_img, template, *, chi_img=None, drive="structural", engine="dipy",
             nonlinear=None, hybrid_mu=HYBRID_MU_PPM, chi_units="ppb", params=None, rng=None,
             resolution=None):
    """Register a subject to a template.

    Parameters
    ----------
    structural_img : nibabel image or None
        3D magnitude or T1w image in subject space (None only for ``drive='chi'``).
    template : qsm.template.Template
    chi_img : nibabel image or None
        χ map on the structural grid (needed by every drive but ``'structural'``).
    drive : {'structural', 'chi', 'hybrid', 'multichannel'}
        What is matched (see :mod:`qsm.drives`): the structural image to
        ``template.img``; the χ map to ``template.chi_img`` (brain-mask
        initialisation); the MuSus-100 hybrid contrast of both sides; or
        structural and χ as two channels of one SyN.
    engine : {'dipy', 'ants'}
        ``'ants'`` does not offer ``'multichannel'``.
    nonlinear : bool or None
        Add SyN after the affine stages; None = the drive's default
        (:data:`qsm.drives.DRIVE_DEFAULTS`).
    hybrid_mu : float
        μ of the hybrid contrast per ppm of χ (default 400).
    chi_units : {'ppb', 'ppm'}
        Units of the χ maps (subject and template).
    params : dict or None
        Overrides of :data:`DIPY_DEFAULTS` (dipy) or ``{"ants_kwargs": {...}}`` (ants).
    rng : int, numpy.random.Generator or None
        Seeds the random sampling of the mutual-information metric.
    resolution : float or None
        Register on a coarser working grid of this voxel size (mm): the
        template and the subject's images are smoothed and resampled to it, the
        fields live on it, and :meth:`Registration.transform` still resamples
        onto any output grid (e.g. 1 mm). None: the template grid.

    Returns
    -------
    Registration
        ``template_affine``/``template_shape`` are those of the working grid.
    """
    from qsm.template import resample_template

    _check_option("engine", engine, ENGINES)
    _check_option("drive", drive, DRIVES)
    if engine == "ants" and drive == "multichannel":
        raise ValueError("drive='multichannel' is implemented for engine='dipy' only; use "
                         "engine='dipy' or another drive.")
    nonlinear = DRIVE_DEFAULTS[drive]["nonlinear"] if nonlinear is None else bool(nonlinear)
    rng = np.random.default_rng(rng)
    used = dict(DIPY_DEFAULTS) if engine == "dipy" else {}
    unknown = set(params or {}) - set(used) - ({"ants_kwargs"} if engine == "ants" else set())
    if unknown:
        raise ValueError(f"Unknown registration parameter(s) {sorted(unknown)} for engine "
                         f"{engine!r}; allowed: {sorted(used) or ['ants_kwargs']}.")
    used.update(params or {})
    if resolution is not None:
        template = resample_template(template, float(resolution))
        coarse = {"structural": None if structural_img is None else _coarsen(structural_img,
                                                                              resolution),
                  "chi": None if chi_img is None else _coarsen(chi_img, resolution)}
        if chi_img is not None:   # no data stays no data on the coarse grid
            support = _coarsen(nib.Nifti1Image(support_mask(np.asarray(chi_img.dataobj))
                                               .astype(np.float32), chi_img.affine), resolution)
            data = np.asarray(coarse["chi"].dataobj).copy()
            data[np.asarray(support.dataobj) < 0.5] = 0.0
            coarse["chi"] = nib.Nifti1Image(data, coarse["chi"].affine)
        structural_img, chi_img = coarse["structural"], coarse["chi"]
    images = driving_images(drive, structural_img=structural_img, chi_img=chi_img,
                            template=template, hybrid_mu=hybrid_mu, chi_units=chi_units)
    if engine == "dipy":
        used = _levels_for_grid(used, float(min(template.zooms)))
    func = _register_dipy if engine == "dipy" else _register_ants
    affine, fwd, bwd = func(images, nonlinear=nonlinear,
                            static_mask=template.mask().astype(np.int32), params=used, rng=rng)
    used.update({"drive": drive, "nonlinear": bool(nonlinear),
                 "registration_resolution": None if resolution is None else float(resolution)})
    if drive == "hybrid":
        used.update({"hybrid_mu_per_ppm": float(hybrid_mu), "chi_units": chi_units})
    return Registration(affine=np.asarray(affine, dtype=float), forward_field=fwd,
                        inverse_field=bwd, template_affine=template.affine,
                        template_shape=template.shape, engine=engine, parameters=used)
