"""Permutation inference for a GLM on voxel data: the drivers and their results.

:func:`permuted_glm` works on a data matrix; :func:`randomise` loads images,
masks them, runs :func:`permuted_glm`'s machinery and keeps the mask so results
go back into images.
"""

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from . import engine
from .checkpoint import handle_signals, open_checkpoint
from ._numba import n_threads as _n_threads
from .design import make_contrasts, make_design
from .executor import LocalExecutor, open_executor, run_chunks
from .glm import contrast_statistic, effect_basis
from .graph import VoxelGraph, graph_from_adjacency, grid_graph
from .loading import load
from .inference import cluster_labels, fdr_bh, fwe_pvalues, pvalues_from_counts, tail_fwe_pvalues
from .permutation import make_schedule
from .tfce import _check_option, _check_params
from .corrcon import correct_across_contrasts as _correct_across_contrasts, same_scale
from .variance_groups import make_welch_job, make_z_converter, resolve_variance_groups
from .welch import welch_statistic
from .zscore import to_z

logger = logging.getLogger(__name__)

__all__ = ["ContrastResult", "RandomiseResult", "permuted_glm", "randomise"]


@dataclass(frozen=True)
class ContrastResult:
    """Observed maps and p-values of one contrast. Every map is (n_voxels,).

    p-values count the unpermuted data in the null: ``p = #{null >= obs} / n_perm``.
    Fields of an analysis not asked for (TFCE, clusters, tail approximation,
    correction across contrasts) are None.

    ``kind`` names the statistic in ``stat``: 't', 'F', or with variance
    groups 'v' (Aspin-Welch, t contrasts) and 'G' (F contrasts). v and G are
    compared through their z scores (``z``; ``df2`` holds each voxel's degrees
    of freedom), and so are t and F when ``correct_across_contrasts`` needs one
    scale. ``p_cfwe`` and the other ``*_cfwe`` fields are FWE p-values over all
    contrasts (PALM's ``_cfwep``).
    """

    name: str
    kind: str
    weights: np.ndarray
    stat: np.ndarray
    p: np.ndarray
    p_fwe: np.ndarray
    p_fdr: np.ndarray
    null_max: np.ndarray
    tfce: np.ndarray | None = None
    tfce_p: np.ndarray | None = None
    tfce_p_fwe: np.ndarray | None = None
    tfce_p_fdr: np.ndarray | None = None
    null_max_tfce: np.ndarray | None = None
    tfce_dh: float | None = None
    cluster_threshold: float | None = None
    cluster_labels: np.ndarray | None = None
    cluster_extent_p_fwe: np.ndarray | None = None
    cluster_mass_p_fwe: np.ndarray | None = None
    null_max_extent: np.ndarray | None = None
    null_max_mass: np.ndarray | None = None
    p_fwe_tail: np.ndarray | None = None
    tfce_p_fwe_tail: np.ndarray | None = None
    z: np.ndarray | None = None
    df2: np.ndarray | None = None
    p_cfwe: np.ndarray | None = None
    tfce_p_cfwe: np.ndarray | None = None
    cluster_extent_p_cfwe: np.ndarray | None = None
    cluster_mass_p_cfwe: np.ndarray | None = None


@dataclass(frozen=True)
class RandomiseResult:
    """The result of :func:`randomise` or :func:`permuted_glm`.

    Attributes
    ----------
    contrasts : tuple of ContrastResult
        t contrasts first, then F contrasts.
    n_perm : int
        Rearrangements used, the identity included.
    exhaustive : bool
        All distinct rearrangements were enumerated.
    n_possible : int
        Number of distinct rearrangements the scheme allows (exact).
    scheme : str
        'freedman-lane', 'permutation', 'sign-flip' or 'freedman-lane+sign-flip'.
    df : int
        Residual degrees of freedom.
    design_names : tuple of str
    masker : voxstats.masker.VolumeMasker or None
        Where the maps' elements come from (randomise only); ``to_img``
        puts maps back through it.
    settings : dict
        Every option, for the record.
    mask_img : nibabel image or None
        The analysis mask of a volume ``masker`` (read-only).
    enumeration : str
        What was enumerated or drawn (e.g. "distinct rearrangements of the
        design's rows within exchangeability blocks (PALM's rule)").
    null_max_across_contrasts : dict or None
        With ``correct_across_contrasts``: the maxima over contrasts of each
        rearrangement ('stat', 'tfce', 'extent', 'mass'; None where not computed).
    variance_groups : voxstats.welch.VarianceGroups or None
    """

    contrasts: tuple
    n_perm: int
    exhaustive: bool
    n_possible: int
    scheme: str
    df: int
    design_names: tuple
    masker: object = None
    settings: dict = field(default_factory=dict)
    enumeration: str = ""
    null_max_across_contrasts: dict | None = None
    variance_groups: object = None

    @property
    def mask_img(self):
        return None if self.masker is None else getattr(self.masker, "mask_img", None)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.contrasts[key]
        for c in self.contrasts:
            if c.name == key:
                return c
        raise KeyError(f"no contrast named {key!r}; contrasts are {[c.name for c in self.contrasts]}")

    def to_img(self, values):
        """A (n_voxels,) map as an image in the input's space (0 outside the mask).

        Goes through ``masker.unmask`` (a 3D NIfTI image for volumes).
        """
        if self.masker is None:
            raise ValueError("to_img needs a mask image; this result comes from a data matrix")
        return self.masker.unmask(values)


def _resolve_scheme(design, permute, sign_flip):
    constant = bool(np.all(design.matrix == design.matrix[0]))
    if permute is None:
        permute = not sign_flip
        if constant and not sign_flip:
            logger.info("The design is the same for every subject (a one-sample test): "
                        "using sign flipping instead of permutations")
            permute, sign_flip = False, True
    if not permute and not sign_flip:
        raise ValueError("permute=False needs sign_flip=True")
    if permute and constant and not sign_flip:
        raise ValueError("design: every subject has the same row, so permutations change nothing; "
                         "use sign_flip=True for a one-sample test")
    return bool(permute), bool(sign_flip)


def _scheme_name(permute, sign_flip, has_nuisance):
    if permute and sign_flip:
        return "freedman-lane+sign-flip" if has_nuisance else "permutation+sign-flip"
    if sign_flip:
        return "sign-flip"
    return "freedman-lane" if has_nuisance else "permutation"


def _spatial_graph(n_voxels, mask, adjacency, connectivity, needed):
    if adjacency is not None:
        if mask is not None:
            raise ValueError("Give either 'mask' or 'adjacency', not both")
        if isinstance(adjacency, VoxelGraph):  # e.g. a mesh graph with vertex areas as weights
            if adjacency.n_voxels != n_voxels:
                raise ValueError(f"adjacency: has {adjacency.n_voxels} nodes but the data have {n_voxels} columns")
            return adjacency
        return graph_from_adjacency(adjacency, n_voxels=n_voxels)
    if hasattr(mask, "graph"):  # a masker (voxstats.masker)
        if mask.n_elements != n_voxels:
            raise ValueError(f"mask: has {mask.n_elements} elements but the data have {n_voxels} columns")
        return mask.graph(connectivity) if needed else None
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if int(mask.sum()) != n_voxels:
            raise ValueError(f"mask: has {int(mask.sum())} voxels but the data have {n_voxels} columns")
        return grid_graph(mask, connectivity)
    if needed:
        raise ValueError("TFCE and cluster inference need the voxels' neighbourhood: give 'mask' "
                         "(3D boolean, columns of data in C order) or 'adjacency' (scipy.sparse)")
    return None


def permuted_glm(data, design, contrasts=None, *, f_contrasts=None, mask=None, adjacency=None,
                 connectivity=6, n_perm=5000, tfce=False, tfce_E=0.5, tfce_H=2.0, tfce_mode="exact",
                 tfce_dh=None, cluster_threshold=None, cluster_threshold_f=None, two_sided=True,
                 demean=False, sign_flip=False, permute=None, exchangeability_blocks=None,
                 whole_blocks=False, tail_approximation=False, variance_groups=None,
                 correct_across_contrasts=False, rng=None, n_jobs=1, chunk_size=None,
                 checkpoint_dir=None, resume=False, executor="local", scheduler=None, copy=True,
                 verbose=None):
    """Permutation inference for a GLM fitted at every voxel of a data matrix.

    Parameters
    ----------
    data : (n_subjects, n_voxels) array-like
        One row per subject. Not modified.
    design : (n_subjects, n_regressors) array-like or pandas.DataFrame
    contrasts : array-like or dict, optional
        t contrasts (see :func:`voxstats.design.make_contrasts`).
    f_contrasts : dict or list, optional
        F contrasts, each a (q, n_regressors) matrix.
    mask : (x, y, z) ndarray of bool or a masker, optional
        Where the data's columns sit on a grid (C order), or the masker
        returned by :func:`voxstats.loading.load`; needed for TFCE and
        clusters unless ``adjacency`` is given.
    adjacency : scipy.sparse matrix or voxstats.graph.VoxelGraph, optional
        (n_voxels, n_voxels) neighbourhood graph (surfaces, any graph). A
        VoxelGraph may carry per-node ``weights`` (e.g. vertex areas): TFCE and
        cluster extents then sum them.
    connectivity : int
        Grid neighbourhood for ``mask``: 6, 18 or 26 (3D), 4 or 8 (2D).
    n_perm : int
        Rearrangements, the identity included. 0, or at least the number of
        distinct rearrangements of the design's rows (subjects with equal
        design rows are interchangeable, PALM's rule), enumerates them all
        (randomise ``-n 0``).
    tfce : bool
        Compute TFCE and its p-values.
    tfce_E, tfce_H, tfce_mode, tfce_dh
        TFCE options (see :func:`voxstats.tfce`). In 'fsl' mode the step is
        ``tfce_dh`` or max(unpermuted map)/100, fixed across rearrangements.
    cluster_threshold, cluster_threshold_f : float, optional
        Cluster-forming thresholds on t (|t| when two-sided) and on F for
        cluster extent and mass (sum of |statistic|) FWE p-values.
    two_sided : bool
        t contrasts: test both signs (|t|, max |t|). False gives FSL randomise's
        one-sided positive test.
    demean : bool
        Demean the regressors (randomise -D).
    sign_flip : bool
        Flip signs (one-sample tests, symmetric errors). Used automatically
        when every subject has the same design row.
    permute : bool, optional
        Shuffle subjects; default True unless ``sign_flip``. ``sign_flip=True,
        permute=True`` shuffles and flips.
    exchangeability_blocks : array-like or ExchangeabilityTree, optional
        ``(n_subjects,)`` block labels (rearrangements stay within blocks),
        PALM's ``(n_subjects, n_levels)`` multi-level ``-eb`` matrix, or a
        :class:`voxstats.exchangeability.ExchangeabilityTree`.
    whole_blocks : bool
        With a block vector: shuffle whole blocks as units instead.
    tail_approximation : bool
        Also give FWE p-values from a generalised Pareto fit to the null's tail
        (``p_fwe_tail``, ``tfce_p_fwe_tail``), marked as approximations.
    variance_groups : None, 'auto' or (n_subjects,) array-like
        PALM ``-vg``: subjects' variance groups. With two or more groups, t
        contrasts are tested with the Aspin-Welch v and F contrasts with the G
        statistic (Winkler et al. 2014; see :mod:`voxstats.welch`), converted
        to z with each voxel's degrees of freedom before any comparison,
        maximum, TFCE or cluster (cluster thresholds are then on z). The
        rearrangements do not change. 'auto' derives the groups from the
        exchangeability blocks as PALM does (each block, or each position
        within whole blocks).
    correct_across_contrasts : bool
        PALM ``-corrcon``: also give FWE p-values over all contrasts
        (``p_cfwe`` and ``*_cfwe``), from the maximum over contrasts of each
        rearrangement's maxima. When the contrasts differ in kind or rank the
        statistics are converted to z first (as PALM adds ``-zstat``), and
        TFCE and cluster thresholds then work on z.
    rng : int, numpy.random.Generator or None
        Seed of the schedule: rearrangement i is computed from it and i alone,
        so every chunk, thread, worker or resumed run sees the same null.
    n_jobs : int
        Threads (-1 for all).
    chunk_size : int, optional
        Rearrangements per chunk; does not change any result.
    checkpoint_dir : str or path-like, optional
        Write each finished chunk there (atomically, with a checksum and the
        run's fingerprint: data, design, contrasts, options, schedule). While
        checkpointing, SIGINT/SIGTERM stop the run after the current chunk with
        :class:`voxstats.checkpoint.RunInterrupted`, keeping what is done.
    resume : bool
        Continue the checkpoint in ``checkpoint_dir``, skipping finished chunks;
        the result is bit-identical to an uninterrupted run. A checkpoint of
        other inputs or options is refused; a corrupt chunk is recomputed.
    executor : {'local', 'dask'}
        Run chunks in this process (``n_jobs`` threads) or as tasks on a
        ``dask.distributed`` cluster (needs the ``distributed`` extra).
    scheduler : str or distributed.Client, optional
        Dask only: the scheduler's address or a client. None starts a
        LocalCluster of ``n_jobs`` worker processes for the run.
    copy : bool
        If False and ``data`` is a writeable C-contiguous float32 matrix, the
        last contrast residualises it in place instead of working on a copy,
        which halves the peak memory; ``data`` then holds residuals afterwards.
    verbose : bool, optional
        Show a progress bar (default: when logging is at INFO or below).

    Returns
    -------
    RandomiseResult

    Notes
    -----
    Freedman-Lane: for each contrast the data are residualised against the
    nuisance space ``R_z Y`` (Winkler et al. 2014, doi:10.1016/j.neuroimage.2014.01.060);
    a rearrangement ``P`` gives ``Y* = P R_z Y + H_z Y``, whose statistic equals
    that of ``P R_z Y``. Observed ``stat`` maps are float64 OLS; the
    comparisons with the null use the identity rearrangement computed by the
    same float32 kernels as every other rearrangement.
    """
    design = make_design(design, demean=demean)
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] != design.n_subjects:
        raise ValueError(f"data: expected shape (n_subjects={design.n_subjects}, n_voxels), got {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError("data: contains NaN or infinite values; mask them out first")
    contrast_list = make_contrasts(contrasts, design, f_contrasts=f_contrasts)
    _check_params(tfce_E, tfce_H, tfce_mode, tfce_dh)
    _check_option("two_sided", two_sided, (True, False))
    for name, value in (("cluster_threshold", cluster_threshold), ("cluster_threshold_f", cluster_threshold_f)):
        if value is not None and (not np.isfinite(value) or value < 0):
            raise ValueError(f"Invalid value for the '{name}' parameter: expected a number >= 0, got {value!r}")
    needs_graph = tfce or cluster_threshold is not None or cluster_threshold_f is not None
    graph = _spatial_graph(data.shape[1], mask, adjacency, connectivity, needs_graph)
    permute, sign_flip = _resolve_scheme(design, permute, sign_flip)
    _check_option("correct_across_contrasts", correct_across_contrasts, (True, False))
    groups = resolve_variance_groups(variance_groups, design.n_subjects,
                                     exchangeability_blocks=exchangeability_blocks, whole_blocks=whole_blocks)
    zstat = bool(correct_across_contrasts and groups is None and not same_scale(contrast_list))
    if zstat:
        logger.info("Contrasts of different kinds or ranks: statistics are converted to z to be corrected "
                    "across contrasts (as PALM -corrcon -zstat)")
    # subjects are interchangeable when they share their design row and, with variance groups, their group
    rows = design.matrix if groups is None else np.column_stack([design.matrix, groups.codes])
    schedule = make_schedule(design.n_subjects, n_perm, permute=permute, sign_flip=sign_flip,
                             exchangeability_blocks=exchangeability_blocks, whole_blocks=whole_blocks,
                             design=rows, rng=rng)
    if schedule.exhaustive:
        logger.info("Exhaustive: all %d distinct rearrangements used", schedule.n_perm)
    chunk_size = engine.default_chunk_size(data.shape[1]) if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"Invalid value for the 'chunk_size' parameter: expected >= 1, got {chunk_size}")
    show = logger.getEffectiveLevel() <= logging.INFO if verbose is None else bool(verbose)
    settings = dict(n_perm=n_perm, tfce=tfce, tfce_E=tfce_E, tfce_H=tfce_H, tfce_mode=tfce_mode,
                    tfce_dh=tfce_dh, connectivity=connectivity, cluster_threshold=cluster_threshold,
                    cluster_threshold_f=cluster_threshold_f, two_sided=two_sided, demean=demean,
                    sign_flip=sign_flip, permute=permute, whole_blocks=whole_blocks,
                    tail_approximation=tail_approximation, n_jobs=n_jobs,
                    variance_groups=None if groups is None else groups.codes.tolist(),
                    correct_across_contrasts=bool(correct_across_contrasts), zstat=zstat)
    store = open_checkpoint(checkpoint_dir, resume=resume, data=data, design=design,
                            contrasts=contrast_list, schedule=schedule, graph=graph, settings=settings,
                            chunk_size=chunk_size, rng=rng)
    chunk_size = chunk_size if store is None else store.chunk_size
    overwritable = (not copy and data.dtype == np.float32 and data.flags.c_contiguous
                    and data.flags.writeable)
    results = []
    held = [] if correct_across_contrasts else None
    with _n_threads(n_jobs) as threads:
        pool = engine.make_pool(threads)
        try:
            bar = tqdm(total=schedule.n_perm * len(contrast_list), disable=not show,
                       desc="permutations", unit="perm")
            with bar, open_executor(executor, scheduler, threads=threads, pool=pool) as runner, \
                    handle_signals(store) as flag:
                for i, contrast in enumerate(contrast_list):
                    threshold = cluster_threshold if contrast.kind == "t" else cluster_threshold_f
                    # the last contrast may residualise the caller's own float32 matrix in place
                    in_place = overwritable and i == len(contrast_list) - 1
                    results.append(_run_contrast(data, design, contrast, schedule, graph, threshold,
                                                 tfce, tfce_E, tfce_H, tfce_mode, tfce_dh, two_sided,
                                                 tail_approximation, chunk_size, threads, pool, bar,
                                                 runner=runner, store=store, flag=flag,
                                                 in_place=in_place, groups=groups, zstat=zstat,
                                                 hold=held))
        finally:
            if pool is not None:
                pool.shutdown()
    combined = None
    if correct_across_contrasts:
        results, combined = _correct_across_contrasts(results, held)
    has_nuisance = any(effect_basis(design, c).nuisance.shape[1] for c in contrast_list)
    return RandomiseResult(contrasts=tuple(results), n_perm=schedule.n_perm,
                           exhaustive=schedule.exhaustive, n_possible=schedule.n_possible,
                           scheme=_scheme_name(permute, sign_flip, has_nuisance), df=design.df,
                           design_names=design.names, settings=settings, enumeration=schedule.rule,
                           null_max_across_contrasts=combined, variance_groups=groups)


def make_job(data, design, contrast, graph, *, threshold=None, tfce=False, E=0.5, H=2.0,
             mode="exact", dh=None, two_sided=True, in_place=False, groups=None, zstat=False,
             sign_flip=False):
    """The engine's view of one contrast: residualised float32 data and its basis.

    With ``in_place`` (a C-contiguous float32 ``data`` only) the data are
    overwritten by their residuals instead of copied, which halves the memory.
    With variance ``groups`` the statistic is v or G (as z); with ``zstat``, t
    or F converted to z.
    """
    basis = effect_basis(design, contrast)
    if in_place and not (data.dtype == np.float32 and data.flags.c_contiguous and data.flags.writeable):
        raise ValueError("in_place residualisation needs a writeable C-contiguous float32 matrix")
    out = data if in_place else np.empty(data.shape, dtype=np.float32)
    residual = basis.residualize(data, out=out)
    sum_sq = np.einsum("ij,ij->j", residual, residual, dtype=np.float64)
    welch = None if groups is None else make_welch_job(design, contrast, groups, sign_flip=sign_flip)
    converter = make_z_converter(contrast.kind, basis.q, basis.df) if zstat and welch is None else None
    kind = contrast.kind if welch is None else welch.kind
    return engine.ContrastJob(name=contrast.name, kind=kind,
                              basis=np.ascontiguousarray(basis.basis, dtype=np.float32), q=basis.q,
                              df=basis.df, data=residual, sum_sq=sum_sq, graph=graph,
                              two_sided=bool(two_sided), tfce=bool(tfce), E=float(E), H=float(H),
                              fsl=mode == "fsl", dh=dh, cluster_threshold=threshold,
                              reduced_basis=engine.reduced_basis(basis.tested, basis.nuisance),
                              welch=welch, zstat=converter)


def _run_contrast(data, design, contrast, schedule, graph, threshold, tfce, E, H, mode, dh,
                  two_sided, tail_approximation, chunk_size, threads, pool, bar, *, runner=None,
                  store=None, flag=None, in_place=False, groups=None, zstat=False, hold=None):
    from dataclasses import replace

    # float64 statistic, before any overwrite
    z = df2 = None
    if groups is None:
        stat, _ = contrast_statistic(data, design, contrast)
        if zstat:
            df2 = np.full(stat.shape, float(design.df))
            z = to_z(stat, contrast.rank, df2, kind=contrast.kind)
    else:
        stat, df2 = welch_statistic(data, design, contrast, groups)
        z = to_z(stat, contrast.rank, df2, kind=contrast.kind)
    job = make_job(data, design, contrast, graph, threshold=threshold, tfce=tfce, E=E, H=H,
                   mode=mode, dh=dh, two_sided=two_sided, in_place=in_place, groups=groups, zstat=zstat,
                   sign_flip=schedule.sign_flip)
    if job.fsl and job.dh is None:
        job = replace(job, dh=engine.fsl_step(job, engine.observed_maps(replace(job, tfce=False),
                                                                        schedule, threads, pool)))
    observed = engine.observed_maps(job, schedule, threads, pool)
    runner = runner if runner is not None else LocalExecutor(threads, pool)
    merged = run_chunks(runner, job, schedule, observed,
                        engine.chunk_bounds(schedule.n_perm, chunk_size),
                        store=None if store is None else store.contrast(job, contrast.weights),
                        flag=flag, bar=bar)
    if hold is not None:
        hold.append((job.tests_both_signs, observed))
    result = assemble(job, contrast, observed, merged, schedule.n_perm, stat,
                      tail_approximation=tail_approximation)
    return replace(result, kind=job.kind, z=z, df2=df2)


def assemble(job, contrast, observed, merged, n_perm, stat, *, tail_approximation=False):
    """Turn the observed maps and the merged null into a ContrastResult.

    ``stat`` is the float64 OLS statistic map reported to the user.
    """
    magnitude = np.abs(observed.stat) if job.tests_both_signs else observed.stat
    p = pvalues_from_counts(merged.counts, n_perm)
    fields = dict(name=contrast.name, kind=contrast.kind, weights=contrast.weights, stat=stat, p=p,
                  p_fwe=fwe_pvalues(magnitude, merged.null_max), p_fdr=fdr_bh(p),
                  null_max=merged.null_max)
    if tail_approximation:
        fields["p_fwe_tail"] = tail_fwe_pvalues(magnitude, merged.null_max)
    if job.tfce:
        tfce_mag = np.abs(observed.tfce) if job.tests_both_signs else observed.tfce
        tfce_p = pvalues_from_counts(merged.tfce_counts, n_perm)
        fields.update(tfce=observed.tfce.astype(np.float64), tfce_p=tfce_p,
                      tfce_p_fwe=fwe_pvalues(tfce_mag, merged.null_max_tfce), tfce_p_fdr=fdr_bh(tfce_p),
                      null_max_tfce=merged.null_max_tfce, tfce_dh=job.dh if job.fsl else None)
        if tail_approximation:
            fields["tfce_p_fwe_tail"] = tail_fwe_pvalues(tfce_mag, merged.null_max_tfce)
    if job.cluster_threshold is not None:
        labels, extent, mass = cluster_labels(observed.stat, job.cluster_threshold, job.graph,
                                              two_sided=job.tests_both_signs)
        p_extent = np.ones(extent.size)
        p_mass = np.ones(mass.size)
        p_extent[1:] = fwe_pvalues(extent[1:], merged.null_max_extent)
        p_mass[1:] = fwe_pvalues(mass[1:], merged.null_max_mass)
        fields.update(cluster_threshold=float(job.cluster_threshold), cluster_labels=labels,
                      cluster_extent_p_fwe=p_extent[labels], cluster_mass_p_fwe=p_mass[labels],
                      null_max_extent=merged.null_max_extent, null_max_mass=merged.null_max_mass)
    return ContrastResult(**fields)


def randomise(imgs, design, contrasts=None, *, mask_img=None, keep_constant=False, **options):
    """Permutation inference on images, like FSL randomise.

    Parameters
    ----------
    imgs : 4D image, list of 3D images, or their file names
        One 3D map per subject: a 4D image (subjects along the 4th axis), a
        list of 3D images or file names, or a text file listing them one per
        line (relative to its folder). All must share shape and affine;
        nothing is resampled. Read by :func:`voxstats.loading.load`.
    design : (n_subjects, n_regressors) array-like or pandas.DataFrame
    contrasts : array-like or dict, optional
        t contrasts.
    mask_img : str or image, optional
        Analysis mask in the images' space: the voxels finite and non-zero.
        Default: FSL randomise's, the voxels not constant across subjects and
        finite in every subject.
    keep_constant : bool
        Without ``mask_img``, keep the voxels constant across subjects too
        (randomise ``--norcmask``).
    surf, areas : optional
        Surface input (GIFTI, FreeSurfer curv or MGH/MGZ per-vertex maps of
        one hemisphere): the mesh the maps are on (``.surf.gii`` or FreeSurfer
        surface) and optional vertex areas (a per-vertex file or a number,
        PALM's ``-s surf area``). See :func:`voxstats.surface_io.load_surface`.
    left_surf, right_surf, left_area, right_area : optional
        CIFTI input (``.dscalar.nii``, ``.dtseries.nii``): each hemisphere's
        mesh and optional areas. See :func:`voxstats.cifti.load_cifti`.
    **options
        Every keyword option of :func:`permuted_glm` (``f_contrasts``,
        ``n_perm``, ``tfce``, ``connectivity``, ``cluster_threshold``, ``rng``,
        ``n_jobs``, ...). ``tfce_E`` defaults by element kind: 0.5 in volumes,
        1 on surfaces (PALM's ``-tfce2D``, CAT12 and HCP practice).

    Returns
    -------
    RandomiseResult
        With ``masker`` set, so that ``result.to_img(result[0].tfce_p_fwe)``
        gives an image.
    """
    for key in ("mask", "adjacency"):
        if key in options:
            raise TypeError(f"randomise() got an unexpected keyword argument '{key}' (use mask_img)")
    from .surface_loading import SURFACE_OPTIONS, tfce_defaults

    surface = {key: options.pop(key) for key in SURFACE_OPTIONS if key in options}
    data, masker = load(imgs, mask_img, keep_constant=keep_constant, **surface)
    spatial = options.get("tfce") or options.get("cluster_threshold") is not None \
        or options.get("cluster_threshold_f") is not None
    if spatial and masker.kind != "volume" and "weights" not in VoxelGraph.__dataclass_fields__:
        raise NotImplementedError("TFCE and clusters on surfaces need area-weighted kernels "
                                  "(VoxelGraph.weights), not in this build yet")
    if options.get("tfce_E") is None:  # E by element kind: 1 on surfaces, 0.5 in volumes
        E = tfce_defaults(masker)
        options["tfce_E"] = E if np.ndim(E) == 0 or options.get("tfce") else 0.5
    # the matrix is ours: the last contrast may overwrite it (peak memory ~1x the data, not 2x)
    result = permuted_glm(data, design, contrasts, mask=masker, copy=False, **options)
    from dataclasses import replace
    return replace(result, masker=masker)
