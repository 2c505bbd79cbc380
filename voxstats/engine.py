"""The permutation engine: statistics of chunks of rearrangements, reduced to what inference needs.

For one contrast, the data are residualised once against the nuisance space
(Freedman-Lane). A rearrangement ``P`` (a permutation with optional sign flips)
then needs only the projections of ``P @ W`` on an orthonormal basis ``B`` of
the model space, and ``B.T @ P @ W = (P.T @ B).T @ W``: the rearrangement moves
the small basis, not the data. Projections of several rearrangements come from
one matrix product.

A chunk of the schedule (rearrangements ``start`` to ``stop - 1``) is reduced
to per-rearrangement maxima and per-voxel exceedance counts. Merging chunks is
exact and order-independent (:class:`NullAccumulator` adds the counts as chunks
arrive, so memory does not grow with the number of rearrangements). Products
are computed in groups of ``GROUP`` rearrangements aligned on the global index
and in fixed voxel blocks, each by a single-threaded BLAS call, so every number
is bit-identical whatever the chunk size or the number of threads.

Ties. Rearrangements that are equal in exact arithmetic (relabellings of equal
design rows, or of groups that the contrast treats alike) must give equal
statistics, or the count of null values >= the observed one depends on
rounding. The basis is float64, its rows for equal design rows are made
bit-identical, each rearrangement's numbers depend on its own row only, and
the observed maps are the identity rearrangement computed by the same kernels.
When the design has repeated rows (groups: the designs whose rearrangements
can tie) and at most 10**9 distinct rearrangements (so that one equal to the
unpermuted data can be drawn), projections and statistics are computed in
float64 and rounded to float32, as FSL randomise computes in double and
compares in float, so twins round to the same value. With all design rows
distinct (a continuous covariate), no two rearrangements are equal in exact
arithmetic unless the covariate's values were placed symmetrically on purpose;
with more distinct rearrangements, a random schedule draws a twin of the
unpermuted data with probability below (twins) x n_perm / 1e9. The products are
then float32 (about twice as fast).
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _engine_numba, _tfce_numba
from ._pool import AdaptivePool
from .glm import f_to_z
from .tfce import fsl_step as _fsl_step
from .tfce import _check_params, batch_tfce, extent_total, kernel_options
from .variance_groups import welch_maps

logger = logging.getLogger(__name__)

GROUP = 32  # rearrangements per matrix product
CONSTANT_BLOCK = 65536  # voxels per pass of the constant-voxel test
PRECISE_LIMIT = 10**9  # distinct rearrangements up to which ties are worth float64 products
VOXEL_BLOCK = 4096  # voxels per matrix product (its projections stay in cache)
EXCEEDANCE_BLOCK = 32768  # voxels per task of the exceedance counts
TASK_VOXELS = 1 << 18  # voxels (rows x voxels) per task of cluster labelling


@dataclass(frozen=True)
class ContrastJob:
    """What any chunk of rearrangements needs to know about one contrast.

    Attributes
    ----------
    name : str
    kind : {'t', 'F'}
    basis : (n_subjects, p) ndarray of float64
        Orthonormal basis [tested, nuisance] of the model space. When the
        nuisance space holds the constant vector, it is the last column.
    q : int
        Dimension of the tested space (rank of the contrast).
    df : int
    data : (n_subjects, n_voxels) ndarray of float32
        Data residualised against the nuisance space; 0 in inactive voxels.
    sum_sq : (n_voxels,) ndarray of float64
        Column sums of squares of ``data``.
    graph : VoxelGraph or None
        Neighbourhood for TFCE.
    two_sided : bool
        t contrasts only: test |t| (F is always one-sided).
    tfce : bool
    E, H : float
    fsl : bool
        FSL's stepped TFCE, with step ``dh``.
    dh : float or None
        Fixed TFCE step (FSL mode); None until the observed map sets it; 0 when
        the observed map has nothing to enhance (TFCE is then 0 everywhere).
    cluster_threshold : float or None
        Cluster-forming threshold of the extent (and, unless
        ``mass_threshold`` is set, of the mass).
    reduced : bool
        The constant vector is the basis' last column. A permutation without
        sign flips keeps the residualised data orthogonal to it, so its
        projection on the constant is 0: it is left out (set to exactly 0).
    cluster_graph : VoxelGraph or None
        Neighbourhood for clusters (26-connected by default, as randomise).
    mass_threshold : float or None
        Cluster-forming threshold of the mass when it differs from the extent's.
    active : (n_voxels,) ndarray of bool or None
        Voxels that take part in the maxima (None: all). Inactive voxels
        (constant across subjects) have statistic 0 in every rearrangement.
    smoother : voxstats.variance_smoothing.VarianceSmoother or None
        t contrasts: the statistic is the pseudo-t with smoothed variance
        (randomise ``-v``).
    voxelwise : voxstats.voxelwise.VoxelwiseBasis or None
        Per-voxel bases (randomise ``--vxl``); ``basis`` is then unused.
    precise : bool
        Projections in float64 (the design has repeated rows, so rearrangements
        can tie); float32 otherwise.
    twopass : {0, 1, 2}
        randomise ``--twopass`` (see :mod:`voxstats.twopass`): 1 adds the first
        pass' per-voxel sums to each chunk, 2 the normalised statistics' null.
    twopass_quantum : float
        The power of two TFCE values are rounded to in the first pass' sums.
    norm_extent, norm_tfce : (n_voxels,) ndarray or None
        Second pass: the per-voxel means that normalise cluster sizes and TFCE.
    welch : voxstats.variance_groups.WelchJob or None
        Variance groups: the statistic is v (kind 'v') or G (kind 'G'),
        computed as z by :func:`voxstats.variance_groups.welch_maps`.
    zstat : voxstats.variance_groups.ZConverter or None
        Convert t or F to z right after computing it (every map, TFCE and
        cluster then works on z), as PALM ``-zstat``.
    """

    name: str
    kind: str
    basis: np.ndarray
    q: int
    df: int
    data: np.ndarray
    sum_sq: np.ndarray
    graph: object
    two_sided: bool
    tfce: bool
    E: float
    H: float
    fsl: bool
    dh: float | None
    cluster_threshold: float | None
    reduced: bool = False
    cluster_graph: object = None
    mass_threshold: float | None = None
    active: np.ndarray | None = None
    smoother: object = None
    voxelwise: object = None
    precise: bool = True
    twopass: int = 0
    twopass_quantum: float = 1.0
    norm_extent: np.ndarray | None = None
    norm_tfce: np.ndarray | None = None
    welch: object = None
    zstat: object = None

    @property
    def n_voxels(self):
        return self.data.shape[1]

    @property
    def tests_both_signs(self):
        return self.kind in ("t", "v") and self.two_sided

    @property
    def clusters(self):
        """(extent threshold, mass threshold), or None without cluster inference."""
        if self.cluster_threshold is None and self.mass_threshold is None:
            return None
        extent = self.cluster_threshold
        return extent, extent if self.mass_threshold is None else self.mass_threshold


@dataclass(frozen=True)
class ChunkResult:
    """The reduction of rearrangements ``start`` to ``stop - 1`` for one contrast."""

    start: int
    stop: int
    null_max: np.ndarray
    counts: np.ndarray
    null_max_tfce: np.ndarray | None = None
    tfce_counts: np.ndarray | None = None
    null_max_extent: np.ndarray | None = None
    null_max_mass: np.ndarray | None = None
    extent_size_sum: np.ndarray | None = None
    extent_count: np.ndarray | None = None
    tfce_qsum: np.ndarray | None = None
    tfce_count: np.ndarray | None = None
    null_max_clustern: np.ndarray | None = None
    null_max_tfcen: np.ndarray | None = None
    tfcen_counts: np.ndarray | None = None


@dataclass(frozen=True)
class Observed:
    """The identity rearrangement's maps, as the kernels compute them (float32)."""

    stat: np.ndarray
    tfce: np.ndarray | None


def constant_voxels(data):
    """(n_voxels,) bool: voxels whose value is the same in every subject (exactly, as randomise)."""
    out = np.empty(data.shape[1], dtype=bool)
    for start in range(0, data.shape[1], CONSTANT_BLOCK):
        block = data[:, start:start + CONSTANT_BLOCK]
        out[start:start + block.shape[1]] = np.all(block == block[0], axis=0)
    return out


def has_repeated_rows(matrix):
    """True when two subjects share a design row: rearrangements can then tie exactly."""
    return np.unique(np.asarray(matrix), axis=0).shape[0] < np.shape(matrix)[0]


def precise_products(design, schedule):
    """float64 products when rearrangements can tie and a tie with the unpermuted data can be drawn.

    Ties need repeated design rows. With more than ``PRECISE_LIMIT`` distinct
    rearrangements a random schedule draws one equal to the unpermuted data with
    probability below (its few twins) x n_perm / 1e9, and float32 products
    (about twice as fast) are used.
    """
    return has_repeated_rows(design.matrix) and (schedule.exhaustive or schedule.n_possible <= PRECISE_LIMIT)


def inclusive_threshold(threshold):
    """The strict kernel threshold that keeps float32 values >= ``threshold``.

    FSL randomise forms clusters of voxels at or above the (float32) threshold;
    the kernels test ``value > t``. For float32 values, ``value > prev(t)`` is
    ``value >= t``, where prev is the float32 just below ``t``.
    """
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def canonical_basis(basis, design_matrix):
    """``basis`` (float64) with bit-identical rows wherever the design rows are equal.

    Any basis of the model space is ``M @ A``, so equal rows of ``M`` give equal
    rows in exact arithmetic; the SVD may leave them a few ulps apart, which
    would break ties between relabellings of those rows.
    """
    basis = np.array(basis, dtype=np.float64)
    _, first, inverse = np.unique(np.asarray(design_matrix), axis=0, return_index=True,
                                  return_inverse=True)
    return np.ascontiguousarray(basis[first[np.ravel(inverse)]])


def order_basis(tested, nuisance):
    """[tested, nuisance] with the constant vector last when it is nuisance.

    Returns
    -------
    basis : (n, p) ndarray of float64
    reduced : bool
        True when the last column is the constant vector.
    """
    n = tested.shape[0]
    constant = np.full(n, 1 / np.sqrt(n))
    if nuisance.shape[1] == 0 or np.linalg.norm(constant - nuisance @ (nuisance.T @ constant)) > 1e-8:
        return np.hstack([tested, nuisance]), False
    rest = nuisance - np.outer(constant, constant @ nuisance)
    u, s, _ = np.linalg.svd(rest, full_matrices=False)
    # nuisance is orthonormal: the directions kept have singular value 1, the constant's is ~0
    rest = u[:, s > 0.5]
    return np.hstack([tested, rest, constant[:, np.newaxis]]), True


def _rearranged_rows(job, permutation, signs):
    """(P.T @ B).T for Y*_i = signs_i * W[permutation_i]: a (p, n) float64 matrix.

    Without sign flips the constant column (``job.reduced``) gives exactly 0.
    """
    inverse = np.empty_like(permutation)
    inverse[permutation] = np.arange(permutation.size)
    rows = (job.basis[inverse] * signs[inverse, np.newaxis]).T.copy()
    if job.reduced and not np.any(signs < 0):
        rows[-1] = 0.0
    return rows


def _group_statistics(job, perms, signs, pool, out, width):
    """Statistic maps of one group of rearrangements into ``out`` (GROUP, n_voxels).

    ``width`` columns of the basis are used (the constant is dropped when no
    rearrangement of the group flips signs). Voxels are taken in fixed blocks;
    for each, one single-threaded float64 BLAS product gives the projections
    (GROUP * width, block) and a compiled kernel turns them into t or F while
    they are still in cache.
    """
    if job.welch is not None:
        return welch_maps(job.welch, job.data, job.sum_sq, perms, signs, pool, out)
    dtype = np.float64 if job.precise else np.float32
    a = np.ascontiguousarray(np.vstack([_rearranged_rows(job, perms[b], signs[b])[:width]
                                        for b in range(perms.shape[0])]), dtype=dtype)
    f_test = job.kind == "F"
    smoothing = job.smoother is not None and not f_test
    if smoothing:
        effect = np.empty(out.shape)
        variance = np.empty(out.shape)

    def block(start):
        stop = min(start + VOXEL_BLOCK, job.n_voxels)
        proj = a @ job.data[:, start:stop].astype(dtype, copy=False)
        if smoothing:
            _engine_numba.t_components(proj, job.sum_sq[start:stop], float(job.df), width,
                                       effect[:, start:stop], variance[:, start:stop])
        else:
            _engine_numba.stats_from_projection(proj, job.sum_sq[start:stop], float(job.df), width,
                                                job.q, f_test, out[:, start:stop])
            if job.zstat is not None:
                job.zstat.convert(out[:, start:stop])

    starts = range(0, job.n_voxels, VOXEL_BLOCK)
    if pool is None:
        for s in starts:
            block(s)
    else:
        list(pool.map(block, starts))
    if smoothing:
        out[:] = job.smoother.pseudo_t(effect, variance)


def _padded_group(schedule, lo, hi, n):
    """Rows ``lo`` to ``hi - 1`` of the schedule, padded with the identity past its end."""
    perms = np.tile(np.arange(n, dtype=np.int64), (hi - lo, 1))
    signs = np.ones((hi - lo, n), dtype=np.int8)
    last = min(hi, schedule.n_perm)
    if last > lo:
        p, s = schedule.rows(lo, last)
        perms[:last - lo], signs[:last - lo] = p, s
    return perms, signs


def statistics(job, schedule, start, stop, pool=None):
    """Statistic maps of rearrangements ``start`` to ``stop - 1``: (k, n_voxels) float32."""
    n = job.data.shape[0]
    out = np.empty((stop - start, job.n_voxels), dtype=np.float32)
    group_stats = np.empty((GROUP, job.n_voxels), dtype=np.float32)
    for g in range(start // GROUP, (stop - 1) // GROUP + 1):
        lo, hi = g * GROUP, (g + 1) * GROUP
        perms, signs = _padded_group(schedule, lo, hi, n)
        # a rearrangement's numbers depend on its own row only; the constant's
        # column is computed only when some row of the group flips signs
        if job.voxelwise is not None:
            from .voxelwise import group_statistics

            group_statistics(job.voxelwise, job.data, job.sum_sq, job.df, job.kind, perms, signs,
                             group_stats)
        else:
            width = job.basis.shape[1]
            if job.reduced and not np.any(signs < 0):
                width -= 1
            _group_statistics(job, perms, signs, pool, group_stats, width)
        first, last = max(lo, start), min(hi, stop)
        out[first - start:last - start] = group_stats[first - lo:last - lo]
    return out


def _enhanceable(job, stats):
    """The maps TFCE is applied to: t itself, or F converted to z (v, G and -zstat maps are z)."""
    if job.kind == "t" or job.welch is not None or job.zstat is not None:
        return stats
    return f_to_z(stats, job.q, job.df).astype(np.float32)


def tfce_maps(job, stats, pool=None, *, check=False):
    """TFCE of a batch of statistic maps (float32, same shape), rows dealt to ``pool``'s threads.

    ``check`` (the unpermuted map): refuse a step count or heights the kernels
    cannot handle (:func:`voxstats.tfce._check_params`), before any permutation.
    In FSL mode with a step of 0 (nothing to enhance in the unpermuted map)
    every map's TFCE is 0, as in randomise.
    """
    if job.fsl and not job.dh:
        return np.zeros(stats.shape, dtype=np.float32)
    enhanced = _enhanceable(job, stats)
    if check:
        top = float(np.abs(enhanced).max()) if enhanced.size else 0.0
        _check_params(job.E, job.H, "fsl" if job.fsl else "exact", job.dh, max_height=top,
                      n_elements=extent_total(job.graph))
    return batch_tfce(enhanced, job.graph, E=job.E, H=job.H, fsl=job.fsl, dh=job.dh,
                      two_sided=job.tests_both_signs, pool=pool)


def observed_maps(job, schedule, n_threads, pool=None):
    """Maps of the identity rearrangement (row 0 of the schedule)."""
    stat = statistics(job, schedule, 0, 1, pool)
    enhanced = tfce_maps(job, stat, pool, check=True)[0] if job.tfce else None
    return Observed(stat=stat[0], tfce=enhanced)


def fsl_step(job, observed):
    """FSL's fixed TFCE step: max of the unpermuted (enhanced) map / 100, in single precision.

    0 when that map has no positive value (no |value| when two-sided): FSL
    randomise then writes TFCE 0 for every rearrangement.
    """
    enhanced = _enhanceable(job, observed.stat[np.newaxis])[0]
    if job.active is not None:
        enhanced = enhanced[job.active]
    if enhanced.size == 0:
        return 0.0
    top = float(np.abs(enhanced).max() if job.tests_both_signs else max(enhanced.max(), 0.0))
    return _fsl_step(top) if top > 0 else 0.0


def _active(job):
    return np.ones(job.n_voxels, dtype=bool) if job.active is None else job.active


def _exceedances(job, maps, observed, pool=None):
    """Per-voxel counts of maps >= observed, and each map's maximum (|.| if two-sided).

    Voxels go in blocks of EXCEEDANCE_BLOCK, dealt to ``pool``'s threads; block
    maxima combine by max, so the result does not depend on the threads. Only
    active voxels take part in the maxima (0 when none does).
    """
    n_maps, n_vox = maps.shape
    counts = np.zeros(n_vox, dtype=np.int64)
    observed = np.ascontiguousarray(observed, dtype=np.float32)
    active = _active(job)
    starts = range(0, n_vox, EXCEEDANCE_BLOCK)
    maxima = np.full((max(len(starts), 1), n_maps), -np.inf, dtype=np.float32)

    def block(i):
        lo = starts[i]
        _engine_numba.exceedances(maps, observed, job.tests_both_signs, active, lo,
                                  min(lo + EXCEEDANCE_BLOCK, n_vox), counts, maxima[i])

    _deal(pool, block, range(len(starts)))
    best = maxima.max(axis=0)
    return counts, np.where(np.isfinite(best), best, 0.0).astype(np.float64)


def _cluster_maxima(job, stats, threshold, pool=None):
    """Largest cluster extent and mass of each map (sums of the graph's weights, if any).

    Groups of maps are dealt to ``pool``'s threads (same results whatever the threads).
    """
    n_maps, n_vox = stats.shape
    extent = np.zeros(n_maps)
    mass = np.zeros(n_maps)
    weights, _ = kernel_options(job.cluster_graph, False)
    step = max(1, -(-TASK_VOXELS // max(n_vox, 1)))
    limit = inclusive_threshold(threshold)

    def rows(lo):
        _tfce_numba.cluster_maxima_rows(stats, lo, min(lo + step, n_maps), limit, job.tests_both_signs,
                                        job.cluster_graph.neighbours, weights, extent, mass)

    _deal(pool, rows, range(0, n_maps, step))
    return extent, mass


def _deal(pool, task, items):
    """Run ``task`` on every item, on ``pool``'s threads (dynamically) or here."""
    items = list(items)
    if pool is None or len(items) < 2:
        for item in items:
            task(item)
    else:
        list(pool.map(task, items))


def run_chunk(job, schedule, start, stop, observed, n_threads, pool=None):
    """Reduce rearrangements ``start`` to ``stop - 1`` to maxima and exceedance counts."""
    stats = statistics(job, schedule, start, stop, pool)
    result = {}
    result["counts"], result["null_max"] = _exceedances(job, stats, observed.stat, pool)
    enhanced = None
    if job.tfce:
        enhanced = tfce_maps(job, stats, pool)
        result["tfce_counts"], result["null_max_tfce"] = _exceedances(job, enhanced, observed.tfce, pool)
    if job.clusters is not None:
        extent_thr, mass_thr = job.clusters
        extent, mass = _cluster_maxima(job, stats, extent_thr, pool)
        if mass_thr != extent_thr:
            _, mass = _cluster_maxima(job, stats, mass_thr, pool)
        result["null_max_extent"], result["null_max_mass"] = extent, mass
    if job.twopass:
        from . import twopass

        if job.twopass == 1:
            result.update(twopass.first_pass(job, stats, enhanced, n_threads))
        else:
            result.update(twopass.second_pass(job, stats, enhanced, observed, n_threads))
    return ChunkResult(start=start, stop=stop, **result)


_PER_REARRANGEMENT = ("null_max", "null_max_tfce", "null_max_extent", "null_max_mass", "null_max_clustern",
                      "null_max_tfcen")
_PER_VOXEL = ("counts", "tfce_counts", "tfcen_counts", "extent_size_sum", "extent_count", "tfce_qsum",
              "tfce_count")


class NullAccumulator:
    """Chunk results merged as they arrive (any order): O(n_perm + n_voxels) memory.

    Per-voxel counts are added at once (integer sums, exact in any order), and
    per-rearrangement maxima are written at their place, so that nothing of a
    chunk is kept after :meth:`add`. The per-rearrangement arrays are
    allocated without being written (the coverage mask is zeroed lazily by the
    system), so resident memory follows the rearrangements merged so far.
    """

    def __init__(self, n_perm):
        self.n_perm = int(n_perm)
        self._covered = np.zeros(self.n_perm, dtype=bool)
        self._arrays = {}

    def add(self, chunk):
        """Merge one ChunkResult; overlapping an earlier chunk is an error."""
        if chunk.start < 0 or chunk.stop > self.n_perm or chunk.start >= chunk.stop:
            raise ValueError(f"chunk {chunk.start}..{chunk.stop} is outside the schedule 0..{self.n_perm}")
        if self._covered[chunk.start:chunk.stop].any():
            raise ValueError(f"chunks do not tile the schedule: overlap at rearrangement "
                             f"{chunk.start + int(np.argmax(self._covered[chunk.start:chunk.stop]))}")
        self._covered[chunk.start:chunk.stop] = True
        for name in _PER_REARRANGEMENT:
            value = getattr(chunk, name)
            if value is None:
                continue
            if name not in self._arrays:
                # np.empty, not np.full: the pages are touched as chunks fill them, so memory
                # grows with the rearrangements done, not with n_perm (-n 2e9); result() checks
                # that every rearrangement was written before any value is read.
                self._arrays[name] = np.empty(self.n_perm)
            self._arrays[name][chunk.start:chunk.stop] = value
        for name in _PER_VOXEL:
            value = getattr(chunk, name)
            if value is None:
                continue
            if name not in self._arrays:
                self._arrays[name] = np.zeros(np.shape(value), dtype=np.int64)
            self._arrays[name] += value

    @property
    def n_done(self):
        return int(self._covered.sum())

    def result(self):
        """One ChunkResult covering 0..n_perm-1 (every rearrangement must be there)."""
        if not self._covered.all():
            gap = int(np.argmin(self._covered))
            raise ValueError(f"chunks cover {self.n_done} of {self.n_perm} rearrangements "
                             f"(gap at rearrangement {gap})")
        return ChunkResult(start=0, stop=self.n_perm, **{k: self._arrays.get(k) for k in
                                                         _PER_REARRANGEMENT + _PER_VOXEL})


def merge_chunks(chunks, n_perm):
    """Merge chunk results (any order) into one ChunkResult covering 0..n_perm-1."""
    accumulator = NullAccumulator(n_perm)
    for chunk in chunks:
        accumulator.add(chunk)
    return accumulator.result()


class ChunkBounds(Sequence):
    """The (start, stop) chunks of 0..n_perm-1, computed on access (no list, whatever n_perm)."""

    def __init__(self, n_perm, chunk_size):
        self.n_perm, self.chunk_size = int(n_perm), int(chunk_size)
        self._starts = range(0, self.n_perm, self.chunk_size)

    def __len__(self):
        return len(self._starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        lo = self._starts[i]
        return (lo, min(lo + self.chunk_size, self.n_perm))

    def __eq__(self, other):
        return list(self) == list(other) if isinstance(other, (list, tuple, ChunkBounds)) else NotImplemented


def chunk_bounds(n_perm, chunk_size):
    """The (start, stop) chunks splitting 0..n_perm-1 into chunks of ``chunk_size`` (a lazy sequence)."""
    return ChunkBounds(n_perm, chunk_size)


def default_chunk_size(n_voxels):
    """Rearrangements per chunk: a multiple of GROUP, about 12 million values per batch."""
    size = int(np.clip(12_000_000 // max(n_voxels, 1), GROUP, 256))
    return max(GROUP, size - size % GROUP)


def make_pool(n_threads):
    """Threads for the engine's tasks (None for one thread).

    An :class:`~voxstats._pool.AdaptivePool`: it runs a batch of tasks on its
    threads only while that is faster than one thread (a busy machine may give
    the process no more CPU for more threads); results are the same either way.
    """
    return AdaptivePool(n_threads) if n_threads > 1 else None
