"""Permutation inference for a GLM on voxel data: the drivers.

:func:`permuted_glm` works on a data matrix; :func:`randomise` loads images,
masks them, runs :func:`permuted_glm`'s machinery and keeps the mask so results
go back into images. The result types live in :mod:`voxstats.results`.
"""

import logging
import os
from dataclasses import replace

import numpy as np
from .progress import progress_bar as tqdm

from . import engine, voxelwise
from .checkpoint import handle_signals, open_checkpoint
from ._numba import n_threads as _n_threads
from .design import make_contrasts, make_design
from .executor import LocalExecutor, open_executor, run_chunks
from .glm import contrast_statistic, effect_basis
from .graph import VoxelGraph, graph_from_adjacency, grid_graph
from .loading import load
from .permutation import make_schedule
from .results import ContrastResult, RandomiseResult, assemble
from .tfce import _check_option, _check_params
from .corrcon import correct_across_contrasts as _correct_across_contrasts, same_scale
from .variance_groups import make_welch_job, make_z_converter, resolve_variance_groups
from .welch import welch_statistic
from .zscore import to_z

logger = logging.getLogger(__name__)

__all__ = ["ContrastResult", "RandomiseResult", "permuted_glm", "randomise"]

_FULL_CONNECTIVITY = {2: 8, 3: 26}


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


def _cluster_graph(n_voxels, mask, adjacency, connectivity, tfce_graph):
    """The neighbourhood of cluster inference: the full grid neighbourhood unless told otherwise."""
    if adjacency is not None:
        if connectivity is not None:
            raise ValueError("The 'cluster_connectivity' parameter applies to a grid 'mask'; "
                             "with 'adjacency' the graph's edges are the neighbourhood")
        return tfce_graph
    if mask is None:
        return _spatial_graph(n_voxels, mask, adjacency, 6, True)  # raises
    if hasattr(mask, "graph"):  # a masker: a volume's grid, or a mesh's own neighbourhood
        connectivity = 26 if connectivity is None else connectivity
        if tfce_graph is not None and tfce_graph.connectivity == connectivity:
            return tfce_graph
        return _spatial_graph(n_voxels, mask, None, connectivity, True)
    ndim = np.ndim(mask)
    connectivity = _FULL_CONNECTIVITY.get(ndim, 26) if connectivity is None else connectivity
    if tfce_graph is not None and tfce_graph.connectivity == connectivity:
        return tfce_graph
    return _spatial_graph(n_voxels, mask, None, connectivity, True)


def _check_threshold(name, value):
    if value is not None and (not np.isfinite(value) or value <= 0):
        raise ValueError(f"Invalid value for the '{name}' parameter: expected a number > 0, got {value!r}")


def _read_blocks(blocks):
    if isinstance(blocks, (str, os.PathLike)):
        from .design_files import read_blocks

        if not os.path.isfile(blocks):
            raise ValueError(f"exchangeability_blocks: no such file {str(blocks)!r} "
                             "(a string names a file: FSL design.grp or CSV/TSV)")
        return read_blocks(blocks)
    return blocks


def _read_tree(tree, blocks):
    """``exchangeability_tree`` as ``exchangeability_blocks`` takes it (a PALM ``-eb`` CSV is read)."""
    if blocks is not None:
        raise ValueError("exchangeability_tree and exchangeability_blocks: give one of them "
                         "(exchangeability_blocks also takes a tree or PALM's matrix)")
    if not isinstance(tree, (str, os.PathLike)):
        return tree   # a tree or PALM's matrix: checked by exchangeability.as_tree with the blocks
    from .design_files import read_exchangeability_blocks

    if not os.path.isfile(tree):
        raise ValueError(f"exchangeability_tree: no such file {str(tree)!r} (a string names PALM's -eb CSV)")
    return read_exchangeability_blocks(tree)


def permuted_glm(data, design, contrasts=None, *, f_contrasts=None, mask=None, adjacency=None,
                 connectivity=6, cluster_connectivity=None, n_perm=5000, tfce=False, tfce_E=0.5,
                 tfce_H=2.0, tfce_mode="exact", tfce_dh=None, cluster_threshold=None,
                 cluster_threshold_f=None, cluster_mass_threshold=None, cluster_mass_threshold_f=None,
                 two_sided=True, demean=False, sign_flip=False, permute=None,
                 exchangeability_blocks=None, exchangeability_tree=None, whole_blocks=False,
                 tail_approximation=False, variance_groups=None, correct_across_contrasts=False, effective_design=None,
                 variance_smoothing=None, voxel_size=None, voxelwise_evs=None, glm_output=False,
                 twopass=False, rng=None, n_jobs=1,
                 chunk_size=None, checkpoint_dir=None, resume=False, executor="local",
                 scheduler=None, copy=True, verbose=None):
    """Permutation inference for a GLM fitted at every voxel of a data matrix.

    Parameters
    ----------
    data : (n_subjects, n_voxels) array-like
        One row per subject. Not modified (unless ``copy=False``).
    design : (n_subjects, n_regressors) array-like, pandas.DataFrame, str or path
        A file name is read as the command line reads ``-d`` (FSL
        ``design.mat`` or CSV/TSV with a header; see
        :func:`voxstats.design.make_design`).
    contrasts : array-like, dict, str or path, optional
        t contrasts (see :func:`voxstats.design.make_contrasts`); a file name
        is read as ``-t`` (``design.con`` or CSV/TSV).
    f_contrasts : dict, list, str or path, optional
        F contrasts, each a (q, n_regressors) matrix; a file name is read as
        ``-f`` (``design.fts`` or CSV/TSV naming t contrasts).
    mask : (x, y, z) ndarray of bool or a masker, optional
        Where the data's columns sit on a grid (C order), or the masker
        returned by :func:`voxstats.loading.load`; needed for TFCE and
        clusters unless ``adjacency`` is given.
    adjacency : scipy.sparse matrix or voxstats.graph.VoxelGraph, optional
        (n_voxels, n_voxels) neighbourhood graph (surfaces, any graph). A
        VoxelGraph may carry per-node ``weights`` (e.g. vertex areas): TFCE and
        cluster extents then sum them.
    connectivity : int
        TFCE's grid neighbourhood for ``mask``: 6, 18 or 26 (3D), 4 or 8 (2D).
    cluster_connectivity : int, optional
        The grid neighbourhood of cluster inference. Default: 26 in 3D (8 in
        2D), as FSL randomise, which labels clusters 26-connected whatever its
        TFCE connectivity, and as ``voxstats cluster``.
    n_perm : int
        Rearrangements, the identity included. 0, or at least the number of
        distinct rearrangements of the design's rows (subjects with equal
        design rows are interchangeable, PALM's rule), enumerates them all
        (randomise ``-n 0``).
    tfce : bool
        Compute TFCE and its p-values.
    tfce_E, tfce_H, tfce_mode, tfce_dh
        TFCE options (see :func:`voxstats.tfce`). In 'fsl' mode the step is
        ``tfce_dh`` or max(unpermuted map)/100, fixed across rearrangements
        (and TFCE is 0 everywhere when that maximum is not positive, as in
        randomise).
    cluster_threshold, cluster_threshold_f : float, optional
        Cluster-forming thresholds (> 0) on t (|t| when two-sided) and on F for
        cluster extent and mass (sum of |statistic|) FWE p-values. Voxels at or
        above the threshold form clusters (inclusive, as FSL randomise).
    cluster_mass_threshold, cluster_mass_threshold_f : float, optional
        A different threshold for the mass (randomise ``-C`` and ``-S`` beside
        ``-c`` and ``-F``); default: the extent's.
    two_sided : bool
        t contrasts: test both signs (|t|, max |t|). False gives FSL randomise's
        one-sided positive test. Each contrast's result says which
        (``ContrastResult.tail``).
    demean : bool
        randomise ``-D``: demean the regressors and the data (see
        :func:`voxstats.design.make_design`; df = n - rank - 1).
    sign_flip : bool
        Flip signs (one-sample tests, symmetric errors). Used automatically
        when every subject has the same design row.
    permute : bool, optional
        Shuffle subjects; default True unless ``sign_flip``. ``sign_flip=True,
        permute=True`` shuffles and flips.
    exchangeability_blocks : array-like, ExchangeabilityTree, str or path, optional
        ``(n_subjects,)`` block labels (rearrangements stay within blocks),
        PALM's ``(n_subjects, n_levels)`` multi-level ``-eb`` matrix, or a
        :class:`voxstats.exchangeability.ExchangeabilityTree`. A file name is
        read as ``-e`` (``design.grp``).
    exchangeability_tree : ExchangeabilityTree, (n_subjects, n_levels) array-like, str or path, optional
        PALM's multi-level exchangeability blocks (``-eb``) by their own name:
        a tree, PALM's matrix (negative indices shuffle within, positive as
        whole blocks), or PALM's ``-eb`` CSV. The same as passing it as
        ``exchangeability_blocks``; give one of the two (Winkler et al. 2015,
        NeuroImage 123:253-268, doi:10.1016/j.neuroimage.2015.05.092).
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
    effective_design : (n_subjects, k) array-like, str or path, optional
        randomise ``--effective_design``: the design whose rows decide which
        subjects are interchangeable (equal rows), and so which rearrangements
        are distinct, instead of ``design``'s. A file name is read as ``-d``.
    variance_smoothing : float, optional
        randomise ``-v``: for t contrasts, the pseudo-t whose variance is
        smoothed by a Gaussian of this sigma (mm) inside the mask, for every
        rearrangement (see :mod:`voxstats.variance_smoothing`). ``stat`` is then
        the pseudo-t. Needs a 3D ``mask``.
    voxel_size : sequence of 3 floats, optional
        Voxel dimensions of ``mask`` in mm, for ``variance_smoothing``
        (default 1 mm; :func:`randomise` takes them from the images).
    voxelwise_evs : dict, optional
        randomise ``--vxl``/``--vxf``: ``{regressor: (n_subjects, n_voxels) array}``
        replacing that design column (0-based index or name) voxel by voxel
        (see :mod:`voxstats.voxelwise`; a slower path). ``stat`` is then the
        engine's statistic (float32 precision).
    twopass : bool
        randomise ``--twopass``: for t contrasts with cluster extent or TFCE, a
        second pass over the permutations gives cluster-normalised statistics
        (``ContrastResult.twopass``; see :mod:`voxstats.twopass`).
    glm_output : bool
        Also return the unpermuted GLM's estimates (``result.glm``: PE, COPE,
        VARCOPE and residual variance, as randomise ``--glm_output``).
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
        Show a progress bar per contrast (default: when logging is at INFO or
        below).

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
    same kernels as every other rearrangement, in float64 rounded to float32,
    so that rearrangements equal in exact arithmetic tie exactly (see
    :mod:`voxstats.engine`). Voxels constant across subjects (any value) have
    statistic 0, p = 1, TFCE 0 and take no part in any maximum. Memory does
    not grow with ``n_perm``: chunks are merged as they arrive.
    """
    if voxelwise_evs is not None:
        design = voxelwise.probe_design(design, voxelwise_evs, demean)
    else:
        design = make_design(design, demean=demean)
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] != design.n_subjects:
        raise ValueError(f"data: expected shape (n_subjects={design.n_subjects}, n_voxels), got {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError("data: contains NaN or infinite values; mask them out first")
    contrast_list = make_contrasts(contrasts, design, f_contrasts=f_contrasts)
    _check_params(tfce_E, tfce_H, tfce_mode, tfce_dh)
    _check_option("two_sided", two_sided, (True, False))
    thresholds = {"t": (cluster_threshold, cluster_mass_threshold),
                  "F": (cluster_threshold_f, cluster_mass_threshold_f)}
    for name, value in (("cluster_threshold", cluster_threshold), ("cluster_threshold_f", cluster_threshold_f),
                        ("cluster_mass_threshold", cluster_mass_threshold),
                        ("cluster_mass_threshold_f", cluster_mass_threshold_f)):
        _check_threshold(name, value)
    clusters = any(v is not None for pair in thresholds.values() for v in pair)
    smoother = None
    if variance_smoothing is not None:
        from .variance_smoothing import VarianceSmoother

        grid = getattr(mask, "mask", mask)  # a volume masker's grid, or a boolean mask
        if grid is None or np.ndim(grid) != 3:
            raise ValueError("variance_smoothing needs the voxels' grid: give 'mask' (3D boolean)")
        if voxel_size is None and hasattr(mask, "affine"):
            voxel_size = np.linalg.norm(np.asarray(mask.affine)[:3, :3], axis=0)
        smoother = VarianceSmoother(grid, variance_smoothing, (1.0, 1.0, 1.0) if voxel_size is None
                                    else voxel_size)
    graph = _spatial_graph(data.shape[1], mask, adjacency, connectivity, tfce or clusters)
    cluster_graph = (_cluster_graph(data.shape[1], mask, adjacency, cluster_connectivity, graph)
                     if clusters else None)
    permute, sign_flip = _resolve_scheme(design, permute, sign_flip)
    _check_option("correct_across_contrasts", correct_across_contrasts, (True, False))
    exchangeability_blocks = _read_blocks(exchangeability_blocks)
    if exchangeability_tree is not None:
        exchangeability_blocks = _read_tree(exchangeability_tree, exchangeability_blocks)
    groups = resolve_variance_groups(variance_groups, design.n_subjects,
                                     exchangeability_blocks=exchangeability_blocks, whole_blocks=whole_blocks)
    if groups is not None and (variance_smoothing is not None or voxelwise_evs is not None):
        raise ValueError("variance_groups cannot be combined with variance_smoothing or voxelwise_evs")
    zstat = bool(correct_across_contrasts and groups is None and not same_scale(contrast_list))
    if zstat:
        logger.info("Contrasts of different kinds or ranks: statistics are converted to z to be corrected "
                    "across contrasts (as PALM -corrcon -zstat)")
    rows = design.matrix
    if effective_design is not None:
        rows = make_design(effective_design, allow_rank_deficient=True).matrix
        if rows.shape[0] != design.n_subjects:
            raise ValueError(f"effective_design: expected {design.n_subjects} rows (one per subject), "
                             f"got {rows.shape[0]}")
    # subjects are interchangeable when they share their design row and, with variance groups, their group
    if groups is not None:
        rows = np.column_stack([rows, groups.codes])
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
                    tfce_dh=tfce_dh, connectivity=connectivity,
                    cluster_connectivity=None if cluster_graph is None else cluster_graph.connectivity,
                    cluster_threshold=cluster_threshold, cluster_threshold_f=cluster_threshold_f,
                    cluster_mass_threshold=cluster_mass_threshold,
                    cluster_mass_threshold_f=cluster_mass_threshold_f, two_sided=two_sided,
                    demean=demean, sign_flip=sign_flip, permute=permute, whole_blocks=whole_blocks,
                    tail_approximation=tail_approximation, variance_smoothing=variance_smoothing,
                    voxel_size=None if voxel_size is None else [float(v) for v in voxel_size],
                    twopass=bool(twopass),
                    effective_design=None if effective_design is None else rows.tolist(),
                    variance_groups=None if groups is None else groups.codes.tolist(),
                    correct_across_contrasts=bool(correct_across_contrasts), zstat=zstat,
                    voxelwise_evs=None if voxelwise_evs is None else {
                        "columns": sorted(str(k) for k in voxelwise_evs),
                        "digest": voxelwise.digest(voxelwise_evs)},
                    n_jobs=n_jobs)
    store = open_checkpoint(checkpoint_dir, resume=resume, data=data, design=design,
                            contrasts=contrast_list, schedule=schedule, graph=graph, settings=settings,
                            chunk_size=chunk_size, rng=rng)
    chunk_size = chunk_size if store is None else store.chunk_size
    overwritable = (not copy and data.dtype == np.float32 and data.flags.c_contiguous
                    and data.flags.writeable)
    if voxelwise_evs is not None and (variance_smoothing is not None or glm_output):
        raise ValueError("voxelwise_evs cannot be combined with variance_smoothing or glm_output yet")
    glm = None
    if glm_output:
        from .glm import glm_estimates
        from .results import GLMOutput

        glm = GLMOutput(*glm_estimates(data, design, [c for c in contrast_list if c.kind == "t"]))
    constant = engine.constant_voxels(data)
    if constant.any():
        logger.info("%d voxels are constant across subjects: statistic 0, p = 1, left out of every "
                    "maximum", int(constant.sum()))
    results = []
    held = [] if correct_across_contrasts else None
    with _n_threads(n_jobs) as threads:
        pool = engine.make_pool(threads)
        try:
            with open_executor(executor, scheduler, threads=threads, pool=pool) as runner, \
                    handle_signals(store) as flag:
                for i, contrast in enumerate(contrast_list):
                    extent_thr, mass_thr = thresholds["t" if contrast.kind == "t" else "F"]
                    # the last contrast may residualise the caller's own float32 matrix in place
                    in_place = overwritable and i == len(contrast_list) - 1
                    desc = f"{contrast.name} ({i + 1}/{len(contrast_list)})"
                    with tqdm(total=schedule.n_perm, disable=not show, desc=desc, unit="perm") as bar:
                        results.append(_run_contrast(
                            data, design, contrast, schedule, graph, tfce, tfce_E, tfce_H, tfce_mode,
                            tfce_dh, two_sided, tail_approximation, chunk_size, threads, pool, bar,
                            runner=runner, store=store, flag=flag, in_place=in_place,
                            cluster_graph=cluster_graph, threshold=extent_thr,
                            mass_threshold=mass_thr, constant=constant, smoother=smoother,
                            voxelwise_evs=voxelwise_evs, twopass=twopass,
                            precise=engine.precise_products(design, schedule), groups=groups, zstat=zstat,
                            hold=held, sign_flip=schedule.sign_flip))
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
                           design_names=design.names, settings=settings, schedule=schedule, glm=glm,
                           enumeration=schedule.rule, null_max_across_contrasts=combined,
                           variance_groups=groups)


def make_job(data, design, contrast, graph, *, threshold=None, tfce=False, E=0.5, H=2.0,
             mode="exact", dh=None, two_sided=True, in_place=False, cluster_graph=None,
             mass_threshold=None, constant=None, smoother=None, voxelwise_evs=None, precise=None,
             groups=None, zstat=False, sign_flip=False):
    """The engine's view of one contrast: residualised float32 data and its basis.

    With ``in_place`` (a C-contiguous float32 ``data`` only) the data are
    overwritten by their residuals instead of copied, which halves the memory.
    With variance ``groups`` the statistic is v or G (as z); with ``zstat``, t
    or F converted to z.
    ``constant`` (n_voxels,) marks voxels constant across subjects (computed
    here when None); they and the voxels that residualising leaves at 0 are
    inactive: statistic 0 in every rearrangement, in no maximum.
    """
    basis = effect_basis(design, contrast)
    if in_place and not (data.dtype == np.float32 and data.flags.c_contiguous and data.flags.writeable):
        raise ValueError("in_place residualisation needs a writeable C-contiguous float32 matrix")
    constant = engine.constant_voxels(np.asarray(data)) if constant is None else constant
    out = data if in_place else np.empty(data.shape, dtype=np.float32)
    vbasis = None
    if voxelwise_evs is not None:
        vbasis = voxelwise.voxelwise_basis(design, contrast, voxelwise_evs, data.shape[1])
        residual = voxelwise.residualize(data, vbasis, out=out)
    else:
        residual = basis.residualize(data, out=out)
    if constant.any():
        residual[:, constant] = 0.0
    sum_sq = np.einsum("ij,ij->j", residual, residual, dtype=np.float64)
    active = sum_sq > 0
    ordered, reduced = engine.order_basis(basis.tested, basis.nuisance)
    welch = None if groups is None else make_welch_job(design, contrast, groups, sign_flip=sign_flip)
    converter = make_z_converter(contrast.kind, basis.q, basis.df) if zstat and welch is None else None
    kind = contrast.kind if welch is None else welch.kind
    return engine.ContrastJob(name=contrast.name, kind=kind,
                              basis=engine.canonical_basis(ordered, design.matrix), q=basis.q,
                              df=basis.df if vbasis is None else vbasis.df, data=residual, sum_sq=sum_sq, graph=graph,
                              two_sided=bool(two_sided), tfce=bool(tfce), E=float(E) if np.ndim(E) == 0 else np.asarray(E, dtype=np.float64),
                              H=float(H),
                              fsl=mode == "fsl", dh=dh, cluster_threshold=threshold, reduced=reduced,
                              cluster_graph=cluster_graph, mass_threshold=mass_threshold,
                              active=None if active.all() else active,
                              smoother=smoother if contrast.kind == "t" else None, voxelwise=vbasis,
                              precise=engine.has_repeated_rows(design.matrix) if precise is None else precise,
                              welch=welch, zstat=converter)


def _run_contrast(data, design, contrast, schedule, graph, tfce, E, H, mode, dh, two_sided,
                  tail_approximation, chunk_size, threads, pool, bar, *, runner=None, store=None,
                  flag=None, in_place=False, cluster_graph=None, threshold=None, mass_threshold=None,
                  constant=None, smoother=None, voxelwise_evs=None, twopass=False, precise=None,
                  groups=None, zstat=False, hold=None, sign_flip=False):
    # the float64 statistic, before any overwrite
    z = df2 = None
    if groups is None:
        stat, _ = contrast_statistic(data, design, contrast)
        if zstat:
            df2 = np.full(stat.shape, float(design.df))
            z = to_z(stat, contrast.rank, df2, kind=contrast.kind)
    else:
        stat, df2 = welch_statistic(data, design, contrast, groups)
        z = to_z(stat, contrast.rank, df2, kind=contrast.kind)
    if threshold is None and mass_threshold is not None:  # mass only: the extent comes for free
        threshold, mass_threshold = mass_threshold, None
    job = make_job(data, design, contrast, graph, threshold=threshold, tfce=tfce, E=E, H=H,
                   mode=mode, dh=dh, two_sided=two_sided, in_place=in_place,
                   cluster_graph=cluster_graph, mass_threshold=mass_threshold, constant=constant,
                   smoother=smoother, voxelwise_evs=voxelwise_evs, precise=precise, groups=groups,
                   zstat=zstat, sign_flip=sign_flip)
    if job.fsl and job.dh is None:
        job = replace(job, dh=engine.fsl_step(job, engine.observed_maps(replace(job, tfce=False),
                                                                        schedule, threads, pool)))
    observed = engine.observed_maps(job, schedule, threads, pool)
    if job.smoother is not None or job.voxelwise is not None:  # pseudo-t, or a design per voxel
        stat = observed.stat.astype(np.float64)
    runner = runner if runner is not None else LocalExecutor(threads, pool)
    bounds = engine.chunk_bounds(schedule.n_perm, chunk_size)
    twopass = twopass and contrast.kind == "t" and (job.tfce or job.cluster_threshold is not None)
    if twopass:
        from . import twopass as two

        top = 0.0 if observed.tfce is None else float(np.abs(observed.tfce).max(initial=0.0))
        job = replace(job, twopass=1, twopass_quantum=two.quantum(top, schedule.n_perm))
    merged = run_chunks(runner, job, schedule, observed, bounds,
                        store=None if store is None else store.contrast(job, contrast.weights),
                        flag=flag, bar=bar)
    if hold is not None:
        hold.append((job.tests_both_signs, observed))
    result = assemble(job, contrast, observed, merged, schedule.n_perm, stat,
                      tail_approximation=tail_approximation)
    result = replace(result, kind=job.kind, z=z, df2=df2)
    if not twopass:
        return result
    first = two.normalisers(job, merged)
    second_job = replace(job, twopass=2, norm_extent=first.cluster_mean, norm_tfce=first.tfce_mean)
    if bar is not None:
        bar.reset(total=schedule.n_perm)
        bar.set_description(f"{contrast.name}, second pass")
    merged2 = run_chunks(runner, second_job, schedule, observed, bounds,
                         store=None if store is None else store.contrast(
                             replace(second_job, name=f"{job.name} (second pass)"), contrast.weights),
                         flag=flag, bar=bar)
    return replace(result, twopass=two.result(second_job, observed, merged2, first, schedule.n_perm, threads))


def randomise(imgs, design, contrasts=None, *, mask_img=None, keep_constant=False, **options):
    """Permutation inference on images, like FSL randomise.

    Parameters
    ----------
    imgs : 4D image, list of 3D images, or their file names
        One 3D map per subject: a 4D image (subjects along the 4th axis), a
        list of 3D images or file names, or a text file listing them one per
        line (relative to its folder). All must share shape and affine;
        nothing is resampled. Read by :func:`voxstats.loading.load`.
    design : (n_subjects, n_regressors) array-like, pandas.DataFrame, str or path
        A file name is read as ``voxstats randomise -d`` reads it (FSL
        ``design.mat``, or CSV/TSV with a header).
    contrasts : array-like, dict, str or path, optional
        t contrasts; a file name is read as ``-t`` (``design.con`` or CSV/TSV).
    mask_img : str or image, optional
        Analysis mask in the images' space: the voxels finite and non-zero.
        Default: FSL randomise's, the voxels not constant across subjects and
        finite in every subject.
    keep_constant : bool
        Without ``mask_img``, keep the voxels constant across subjects too
        (randomise ``--norcmask``); they get statistic 0 and p = 1.
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
        ``n_jobs``, ...). ``f_contrasts`` and ``exchangeability_blocks`` may be
        file names (``design.fts``, ``design.grp``); ``voxelwise_evs`` values
        may be 4D images (one volume per subject) or their file names, masked
        like ``imgs``. ``tfce_E`` defaults by element kind: 0.5 in volumes, 1 on
        surfaces (PALM's ``-tfce2D``, CAT12 and HCP practice).

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
    if options.get("tfce_E") is None:  # E by element kind: 1 on surfaces, 0.5 in volumes
        options["tfce_E"] = tfce_defaults(masker)
    if options.get("voxelwise_evs") is not None:
        options["voxelwise_evs"] = {key: voxelwise.masked_values(value, masker, key)
                                    for key, value in options["voxelwise_evs"].items()}
    # the matrix is ours: the last contrast may overwrite it (peak memory ~1x the data, not 2x)
    result = permuted_glm(data, design, contrasts, mask=masker, copy=False, **options)
    return replace(result, masker=masker)
