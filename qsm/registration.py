"""Register a subject's structural (or hybrid structural+χ) image to a template.

Engines
-------
``"dipy"`` (default, always installed): centre of mass, then translation,
rigid and affine stages maximising Mattes-style mutual information on a
seeded random sample of voxels (:class:`dipy.align.imaffine.AffineRegistration`),
then symmetric diffeomorphic SyN with a local cross-correlation metric
(:class:`dipy.align.imwarp.SymmetricDiffeomorphicRegistration`).

``"ants"`` (optional extra ``voxstats[ants]``): antspyx ``ants.registration``
with ``type_of_transform="SyN"`` (or ``"Affine"``); imported only when used.

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
DRIVES = ("structural", "chi", "hybrid")

#: Default dipy parameters (tuned for ~2 mm templates: about 10-20 s per subject).
DIPY_DEFAULTS = {
    "nbins": 32,
    "sampling_proportion": 0.1,
    "affine_level_iters": (100, 30, 0),
    "affine_sigmas": (3.0, 1.0, 0.0),
    "affine_factors": (4, 2, 1),
    "syn_level_iters": (30, 15, 5),
    "syn_cc_radius": 4,
    "syn_sigma_diff": 2.0,
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

    def save(self, out_dir, prefix, *, space):
        """Write the transforms as ANTs/ITK files readable by ANTs and nitransforms.

        Files: ``<prefix>_from-native_to-<space>_mode-image_xfm.mat`` (ITK affine)
        and, if nonlinear, ``<prefix>_from-native_to-<space>_mode-image_xfm.nii.gz``
        (forward warp) and ``<prefix>_from-<space>_to-native_mode-image_xfm.nii.gz``
        (inverse warp). Resample a subject image into the template with
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
        fwd = f"{prefix}_from-native_to-{space}_mode-image_xfm"
        paths = {"affine": out_dir / f"{fwd}.mat", "warp": None, "inverse_warp": None}
        write_atomic(paths["affine"], lambda p: Affine(self.affine).to_filename(p, fmt="itk"))
        if self.forward_field is not None:
            for key, data, name in (
                ("warp", self.forward_field, f"{fwd}.nii.gz"),
                ("inverse_warp", self.inverse_field,
                 f"{prefix}_from-{space}_to-native_mode-image_xfm.nii.gz"),
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


# ----------------------------------------------------------------------- driving images
def _robust_unit(data, mask=None):
    vals = data[mask] if mask is not None else data[data != 0]
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return np.zeros_like(data, dtype=np.float32)
    lo, hi = np.percentile(vals, [1, 99])
    scale = hi - lo if hi > lo else 1.0
    return ((data - lo) / scale).astype(np.float32)


def driving_image(structural_img, chi_img=None, *, drive="structural", hybrid_weight=0.5):
    """Build the image that drives the registration.

    Parameters
    ----------
    structural_img : nibabel image
        Magnitude or T1w image in subject space.
    chi_img : nibabel image or None
        χ map on the same grid (required for ``drive='chi'`` and ``'hybrid'``).
    drive : {'structural', 'chi', 'hybrid'}
        ``'hybrid'`` = robust-scaled structural minus ``hybrid_weight`` times
        the χ map scaled by its 99th percentile of absolute values: iron-rich
        deep grey matter (positive χ) darkens, sharpening the thalamus and
        basal ganglia boundaries in T1-like contrast.
    hybrid_weight : float

    Returns
    -------
    nibabel.Nifti1Image (float32)
    """
    _check_option("drive", drive, DRIVES)
    s = np.asarray(structural_img.dataobj, dtype=np.float32)
    if drive == "structural":
        return nib.Nifti1Image(s, structural_img.affine)
    if chi_img is None:
        raise ValueError(f"drive={drive!r} needs the subject's χ map ('chi_img'), got None.")
    c = np.nan_to_num(np.asarray(chi_img.dataobj, dtype=np.float32))
    if drive == "chi":
        return nib.Nifti1Image(c, chi_img.affine)
    absmax = np.percentile(np.abs(c[c != 0]), 99) if np.any(c != 0) else 1.0
    hybrid = _robust_unit(s) - hybrid_weight * np.clip(c / absmax, -1, 1)
    hybrid[s == 0] = 0
    return nib.Nifti1Image(hybrid.astype(np.float32), structural_img.affine)


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


def _register_dipy(static, static_aff, moving, moving_aff, *, nonlinear, static_mask, params, rng):
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

    static = np.ascontiguousarray(static, dtype=np.float64)
    moving = np.ascontiguousarray(moving, dtype=np.float64)
    current = transform_centers_of_mass(static, static_aff, moving, moving_aff).affine
    metric = MutualInformationMetric(nbins=params["nbins"],
                                     sampling_proportion=params["sampling_proportion"])
    areg = AffineRegistration(metric=metric, level_iters=list(params["affine_level_iters"]),
                              sigmas=list(params["affine_sigmas"]),
                              factors=list(params["affine_factors"]), verbosity=0)
    # dipy ignores masks (with a warning) under sparse sampling
    mask = static_mask if params["sampling_proportion"] is None else None
    with _seeded_global_numpy(rng):
        for stage in (TranslationTransform3D(), RigidTransform3D(), AffineTransform3D()):
            current = areg.optimize(static, moving, stage, None, static_grid2world=static_aff,
                                    moving_grid2world=moving_aff, starting_affine=current,
                                    static_mask=mask).affine
            logger.debug("dipy %s stage done", type(stage).__name__)
    if not nonlinear:
        return current, None, None
    sdr = SymmetricDiffeomorphicRegistration(
        metric=CCMetric(3, sigma_diff=params["syn_sigma_diff"], radius=params["syn_cc_radius"]),
        level_iters=list(params["syn_level_iters"]),
    )
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


def _register_ants(static, static_aff, moving, moving_aff, *, nonlinear, static_mask, params, rng):
    import tempfile

    from qsm.transforms import load_transform

    ants = _import_ants()
    with tempfile.TemporaryDirectory() as tmp:
        fixed_p, moving_p = Path(tmp) / "fixed.nii.gz", Path(tmp) / "moving.nii.gz"
        nib.save(nib.Nifti1Image(static.astype(np.float32), static_aff), fixed_p)
        nib.save(nib.Nifti1Image(moving.astype(np.float32), moving_aff), moving_p)
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
            warp = [f for f in fwd_files if f.endswith(".nii.gz")][0]
            iwarp = [f for f in inv_files if f.endswith(".nii.gz")][0]
            fwd = _ants_field_on_grid(warp, static.shape, static_aff)
            bwd = _ants_field_on_grid(iwarp, static.shape, static_aff)
    return affine, fwd, bwd


def _ants_field_on_grid(path, shape, affine):
    from qsm.transforms import load_transform

    xfm = load_transform(path, fmt="itk")[0]
    pts = grid_world(shape, affine)
    return (xfm.map(pts.reshape(-1, 3)).reshape(pts.shape) - pts).astype(np.float32)


def register(structural_img, template, *, chi_img=None, drive="structural", engine="dipy",
             nonlinear=True, hybrid_weight=0.5, params=None, rng=None):
    """Register a subject to a template.

    Parameters
    ----------
    structural_img : nibabel image
        3D magnitude or T1w image in subject space.
    template : qsm.template.Template
    chi_img : nibabel image or None
        χ map on the structural grid (for ``drive='chi'`` or ``'hybrid'``).
    drive : {'structural', 'chi', 'hybrid'}
        Image that drives the registration (see :func:`driving_image`). The
        template side is ``template.img`` for ``'structural'``, the χ channel
        for ``'chi'`` (required), and the hybrid of both for ``'hybrid'`` when
        the template has a χ channel (``template.img`` otherwise).
    engine : {'dipy', 'ants'}
    nonlinear : bool
        Add SyN after the affine stages.
    hybrid_weight : float
    params : dict or None
        Overrides of :data:`DIPY_DEFAULTS` (dipy) or ``{"ants_kwargs": {...}}`` (ants).
    rng : int, numpy.random.Generator or None
        Seeds the random sampling of the mutual-information metric.

    Returns
    -------
    Registration
    """
    _check_option("engine", engine, ENGINES)
    _check_option("drive", drive, DRIVES)
    rng = np.random.default_rng(rng)
    moving = driving_image(structural_img, chi_img, drive=drive, hybrid_weight=hybrid_weight)
    if drive == "structural":
        static_img = template.img
    elif template.chi_img is None:
        if drive == "chi":
            raise ValueError("drive='chi' needs a template with a χ channel (template.chi_img); "
                             "build one with qsm.normalize.build_template, or use "
                             "drive='structural' or 'hybrid'.")
        logger.info("drive='hybrid' with a template without χ channel: matching to template.img")
        static_img = template.img
    else:
        static_img = driving_image(template.img, template.chi_img, drive=drive,
                                   hybrid_weight=hybrid_weight)
    used = dict(DIPY_DEFAULTS) if engine == "dipy" else {}
    unknown = set(params or {}) - set(used) - ({"ants_kwargs"} if engine == "ants" else set())
    if unknown:
        raise ValueError(f"Unknown registration parameter(s) {sorted(unknown)} for engine "
                         f"{engine!r}; allowed: {sorted(used) or ['ants_kwargs']}.")
    used.update(params or {})
    static = np.asarray(static_img.dataobj, dtype=np.float32)
    moving_data = np.asarray(moving.dataobj, dtype=np.float32)
    func = _register_dipy if engine == "dipy" else _register_ants
    affine, fwd, bwd = func(static, template.affine, moving_data, np.asarray(moving.affine, float),
                            nonlinear=nonlinear, static_mask=template.mask().astype(np.int32),
                            params=used, rng=rng)
    used.update({"drive": drive, "nonlinear": bool(nonlinear)})
    if drive == "hybrid":
        used["hybrid_weight"] = hybrid_weight
    return Registration(affine=np.asarray(affine, dtype=float), forward_field=fwd,
                        inverse_field=bwd, template_affine=template.affine,
                        template_shape=template.shape, engine=engine, parameters=used)
