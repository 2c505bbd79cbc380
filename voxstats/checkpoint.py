"""Checkpoints of long permutation runs: chunk files that survive a kill, and clean interruption.

A checkpoint directory holds one ``manifest.json`` with the run's fingerprint
and one folder per contrast with one file per finished chunk of the schedule::

    DIR/manifest.json
    DIR/t-A_B-1f2e3d4c/chunk-0000000-0000064.npz
    DIR/t-A_B-1f2e3d4c/chunk-0000064-0000128.npz

The fingerprint hashes everything a chunk's numbers depend on: the data matrix
(so the input images and the mask), the design, the contrasts, the options,
the voxels' neighbourhood graph and the permutation schedule's definition
(generator version, seed-derived key, number of rearrangements, exchangeability
tree and design rows), which determines every one of its rows. Threads, executor and chunk size are not part of it: they change no
number. A chunk file is written to a temporary name in the same folder,
flushed to disk, then renamed, so a run killed at any moment leaves either a
complete file or none. Each file carries a checksum of its content and the
fingerprint of its contrast: a file whose checksum fails is reported and
recomputed; a file or manifest from another run is refused, never mixed in.
"""

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np

from . import engine
from .errors import ParameterError
from .outputs import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["Checkpoint", "ChunkRanges", "RunInterrupted", "handle_signals", "open_checkpoint", "recorded_seed"]

FORMAT = "voxstats-checkpoint-1"
MANIFEST = "manifest.json"
_CHUNK_RE = re.compile(r"^chunk-(\d+)-(\d+)\.npz$")
_TMP_PREFIX = ".tmp-"
_ARRAYS = [f.name for f in fields(engine.ChunkResult) if f.name not in ("start", "stop")]
# Options that change no number, left out of the fingerprint.
_NOT_FINGERPRINTED = ("n_jobs", "tail_approximation")


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a checkpointed run; finished chunks are kept.

    A KeyboardInterrupt, so that ``except Exception`` does not swallow it.
    """

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum

    @property
    def signal_name(self):
        """'SIGINT' or 'SIGTERM'."""
        return signal.Signals(self.signum).name


def _digest(*parts):
    """blake2b of strings, bytes and arrays (dtype and shape included)."""
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(f"{part.dtype.str}{part.shape}".encode())
            h.update(np.ascontiguousarray(part).view(np.uint8).reshape(-1).data)
        elif isinstance(part, bytes):
            h.update(part)
        else:
            h.update(str(part).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _graph_extras(graph):
    """What else about a graph changes results: extent weights, the volume border (FSL TFCE)."""
    extras = []
    if getattr(graph, "weights", None) is not None:
        extras += ["weights", graph.weights]
    border = getattr(graph, "border", None)
    if border is not None and border.any():
        extras += ["border", border]
    return extras


def run_fingerprint(data, design, contrasts, schedule, graph, settings):
    """The run's fingerprint, component by component: {component: hex digest}.

    Parameters
    ----------
    data : (n_subjects, n_voxels) ndarray
    design : voxstats.design.Design
    contrasts : list of voxstats.design.Contrast
    schedule : voxstats.permutation.PermutationSchedule
    graph : voxstats.graph.VoxelGraph or None
    settings : dict
        The options of :func:`voxstats.permuted_glm`.
    """
    options = {k: _jsonable(v) for k, v in sorted(settings.items()) if k not in _NOT_FINGERPRINTED}
    return {
        "data": _digest(np.asarray(data)),
        "design": _digest(np.asarray(design.matrix, dtype=np.float64), json.dumps(list(design.names))),
        "contrasts": _digest(*[p for c in contrasts
                               for p in (c.name, c.kind, np.asarray(c.weights, dtype=np.float64))]),
        "options": _digest(json.dumps(options, sort_keys=True, default=str)),
        "schedule": _digest(json.dumps(schedule.definition(), sort_keys=True)),
        "neighbourhood": "none" if graph is None else _digest(graph.indptr, graph.indices, *_graph_extras(graph)),
    }


def _write_atomic(path, write):
    """Call ``write(handle)`` on a temporary file in ``path``'s folder, fsync, rename to ``path``.

    The file is created honouring the umask (see :func:`voxstats.outputs.atomic_write`).
    """
    atomic_write(path, write, temporary_prefix=_TMP_PREFIX)


def _expected_arrays(job):
    """{array name: 'perm' (one value per rearrangement), 'voxel' (one count per voxel, 0..k)
    or 'sum' (one non-negative integer per voxel)}."""
    names = {"null_max": "perm", "counts": "voxel"}
    if job.tfce:
        names.update(null_max_tfce="perm", tfce_counts="voxel")
    if getattr(job, "clusters", None) is not None or job.cluster_threshold is not None:
        names.update(null_max_extent="perm", null_max_mass="perm")
    if getattr(job, "twopass", 0) == 1:  # --twopass, first pass: per-voxel sums
        if job.cluster_threshold is not None:
            names.update(extent_size_sum="sum", extent_count="voxel")
        if job.tfce:
            names.update(tfce_qsum="sum", tfce_count="voxel")
    elif getattr(job, "twopass", 0) == 2:  # second pass: normalised statistics
        if job.norm_extent is not None:
            names.update(null_max_clustern="perm")
        if job.norm_tfce is not None:
            names.update(null_max_tfcen="perm", tfcen_counts="voxel")
    return names


class _ContrastStore:
    """The chunk files of one contrast."""

    def __init__(self, folder, fingerprint, n_voxels, expected=None):
        self.folder = folder
        self.fingerprint = fingerprint
        self.n_voxels = n_voxels
        self.expected = expected or {"null_max": "perm", "counts": "voxel"}
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, start, stop):
        return self.folder / f"chunk-{start:07d}-{stop:07d}.npz"

    @staticmethod
    def _checksum(meta, arrays):
        return _digest(meta, *[p for name in sorted(arrays) for p in (name, arrays[name])])

    def save(self, chunk):
        """Write one ChunkResult atomically, with its checksum."""
        arrays = {name: getattr(chunk, name) for name in _ARRAYS if getattr(chunk, name) is not None}
        meta = json.dumps({"format": FORMAT, "fingerprint": self.fingerprint,
                           "start": chunk.start, "stop": chunk.stop}, sort_keys=True)
        checksum = self._checksum(meta, arrays)
        _write_atomic(self.path(chunk.start, chunk.stop),
                      lambda handle: np.savez(handle, meta=np.array(meta), checksum=np.array(checksum),
                                              **arrays))

    def _read(self, path, start, stop):
        """A valid ChunkResult, or raise ValueError saying what is wrong."""
        try:
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
                content = {key: npz[key] for key in npz.files}
        except Exception as exc:  # zip, header and truncation errors come in many types
            raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
        if "meta" not in content or "checksum" not in content:
            raise ValueError("no metadata or checksum")
        meta = str(content.pop("meta"))
        checksum = str(content.pop("checksum"))
        if self._checksum(meta, content) != checksum:
            raise ValueError("checksum mismatch")
        info = json.loads(meta)
        if info.get("fingerprint") != self.fingerprint:
            raise _ForeignChunk(f"{path} belongs to another run (its fingerprint differs from this "
                                "run's); refusing to mix it in. Use an empty checkpoint directory.")
        if (info.get("start"), info.get("stop")) != (start, stop):
            raise ValueError(f"it covers {info.get('start')}..{info.get('stop')}, not {start}..{stop}")
        self._check_arrays(content, stop - start)
        return engine.ChunkResult(start=start, stop=stop, **content)

    def _check_arrays(self, content, k):
        """Names, dtypes, shapes and values of a chunk's arrays, or ValueError saying which is wrong."""
        if set(content) != set(self.expected):
            raise ValueError(f"arrays {sorted(content)}, expected {sorted(self.expected)}")
        for name, kind in self.expected.items():
            array = content[name]
            if kind == "perm":
                if array.dtype.kind != "f" or array.shape != (k,):
                    raise ValueError(f"{name}: expected {k} floats, got {array.dtype} of shape {array.shape}")
                if not np.all(np.isfinite(array)):
                    raise ValueError(f"{name}: NaN or infinite values")
            else:
                if array.dtype.kind not in "iu" or array.shape != (self.n_voxels,):
                    raise ValueError(f"{name}: expected {self.n_voxels} integer counts, got {array.dtype} "
                                     f"of shape {array.shape}")
                if array.size and (array.min() < 0 or (kind == "voxel" and array.max() > k)):
                    raise ValueError(f"{name}: counts outside 0..{k}")

    def _stored_indices(self, bounds):
        """Sorted indices into ``bounds`` of the chunks that have a file here (one directory listing).

        Files of other chunkings (which a resumed run never produces) and
        temporary files left by an interrupted write are ignored; the latter
        are removed.
        """
        chunk_size = getattr(bounds, "chunk_size", None)
        if chunk_size is None:  # a plain list of bounds (small): look each one up
            where = {tuple(b): i for i, b in enumerate(bounds)}
        found = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if entry.name.startswith(_TMP_PREFIX):
                    logger.debug("Removing %s, left by an interrupted write", entry.path)
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                    continue
                match = _CHUNK_RE.match(entry.name)
                if match is None:
                    continue
                start, stop = int(match[1]), int(match[2])
                if chunk_size is None:
                    index = where.get((start, stop))
                elif start % chunk_size == 0 and start // chunk_size < len(bounds):
                    index = start // chunk_size
                else:
                    index = None
                if index is None or tuple(bounds[index]) != (start, stop):
                    logger.debug("Ignoring %s: not a chunk of this run's chunking", entry.path)
                    continue
                found.append(index)
        return np.unique(np.asarray(found, dtype=np.int64))

    def resume(self, bounds, add):
        """Pass each valid stored chunk of ``bounds`` to ``add``; return the chunks still to run.

        Parameters
        ----------
        bounds : voxstats.engine.ChunkBounds or sequence of (start, stop)
        add : callable
            Called with each valid stored :class:`voxstats.engine.ChunkResult`,
            one at a time (so a caller merging them holds one chunk's arrays).

        Returns
        -------
        ChunkRanges
            The (start, stop) pairs of ``bounds`` without a valid file, held
            as ranges of chunk indices: its size grows with the number of
            gaps, not with the number of chunks (``-n 2e9`` has millions).
            Corrupt files are reported, removed and counted as still to run.
        """
        valid = []
        for index in self._stored_indices(bounds):
            start, stop = bounds[int(index)]
            path = self.path(start, stop)
            try:
                chunk = self._read(path, start, stop)
            except _ForeignChunk as exc:
                raise ValueError(str(exc)) from None
            except ValueError as exc:
                logger.warning("Checkpoint chunk %s is corrupt (%s); recomputing it", path, exc)
                path.unlink()
                continue
            add(chunk)
            del chunk
            valid.append(index)
        return ChunkRanges.complement(bounds, np.asarray(valid, dtype=np.int64))


class ChunkRanges(Sequence):
    """Some chunks of a :class:`voxstats.engine.ChunkBounds`, held as ranges of chunk indices.

    A sequence of (start, stop) pairs like the bounds it is taken from, in
    order, but its memory grows with the number of ranges, not of chunks.

    Parameters
    ----------
    bounds : voxstats.engine.ChunkBounds or sequence of (start, stop)
    ranges : (n_ranges, 2) int array
        Half-open ranges [first, last) of chunk indices into ``bounds``, sorted and disjoint.
    """

    def __init__(self, bounds, ranges):
        self.bounds = bounds
        self.ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        self._ends = np.cumsum(self.ranges[:, 1] - self.ranges[:, 0])

    @classmethod
    def complement(cls, bounds, indices):
        """The chunks of ``bounds`` whose index is not in ``indices`` (sorted, unique)."""
        edges = np.concatenate([[-1], indices, [len(bounds)]])
        gaps = np.flatnonzero(np.diff(edges) > 1)
        return cls(bounds, np.column_stack([edges[gaps] + 1, edges[gaps + 1]]))

    def __len__(self):
        return int(self._ends[-1]) if self._ends.size else 0

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("chunk index out of range")
        r = int(np.searchsorted(self._ends, i, side="right"))
        before = int(self._ends[r - 1]) if r else 0
        return self.bounds[int(self.ranges[r, 0]) + i - before]

    def __iter__(self):
        for first, last in self.ranges:
            for index in range(int(first), int(last)):
                yield self.bounds[index]

    def __repr__(self):
        shown = ", ".join(f"{a}..{b - 1}" for a, b in self.ranges[:5])
        more = ", ..." if len(self.ranges) > 5 else ""
        return f"ChunkRanges({len(self)} chunks: indices {shown}{more})"


class _ForeignChunk(ValueError):
    pass


class Checkpoint:
    """An open checkpoint directory (see :func:`open_checkpoint`).

    Attributes
    ----------
    directory : pathlib.Path
    chunk_size : int
        Rearrangements per chunk; a resumed run keeps the recorded one.
    fingerprint : dict
        {component: hex digest} of the run.
    """

    def __init__(self, directory, chunk_size, fingerprint):
        self.directory = directory
        self.chunk_size = chunk_size
        self.fingerprint = fingerprint

    def contrast(self, job, weights):
        """The chunk store of one contrast (by kind and name; its options in its fingerprint)."""
        key = _digest(json.dumps(self.fingerprint, sort_keys=True), job.kind, job.name,
                      np.asarray(weights, dtype=np.float64), job.tfce, job.E, job.H, job.fsl,
                      repr(job.dh), repr(job.cluster_threshold), job.two_sided)
        safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", job.name)[:40]
        folder = self.directory / f"{job.kind}-{safe}-{_digest(job.kind, job.name)[:8]}"
        return _ContrastStore(folder, key, job.n_voxels, _expected_arrays(job))


def _describe(directory, theirs, ours):
    differ = [k for k in ours if theirs.get(k) != ours[k]] or ["fingerprint"]
    names = differ[0] if len(differ) == 1 else f"{', '.join(differ[:-1])} and {differ[-1]}"
    verb = "differs" if len(differ) == 1 else "differ"
    return ParameterError("checkpoint_dir", f"{directory} holds a checkpoint of a different run (the {names} "
                          f"{verb}); refusing to mix it in. Use another (or an empty) directory, or delete this one.")


def open_checkpoint(directory, *, resume, data, design, contrasts, schedule, graph, settings,
                    chunk_size, rng=None):
    """Open (or start) a checkpoint directory for one run; None when ``directory`` is None.

    Parameters
    ----------
    directory : str, path-like or None
    resume : bool
        Continue the checkpoint found there. Without it, a directory that
        already holds a checkpoint is an error (nothing is overwritten).
    data, design, contrasts, schedule, graph, settings
        What the run's numbers depend on (see :func:`run_fingerprint`).
    chunk_size : int
        Used when starting; a resumed run keeps the recorded chunk size.
    rng : optional
        Recorded when it is an int seed, so that a command line can reuse it.

    Returns
    -------
    Checkpoint or None
    """
    if directory is None:
        if resume:
            raise ValueError("resume=True needs a checkpoint_dir")
        return None
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint_dir: {directory} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError("checkpoint_dir", f"cannot create {directory} ({exc.strerror or exc})") from None
    fingerprint = run_fingerprint(data, design, contrasts, schedule, graph, settings)
    manifest_path = directory / MANIFEST
    if manifest_path.exists():
        manifest = _read_manifest(manifest_path)
        if not resume:  # whatever run it holds: continuing is asked for, never assumed
            raise ParameterError("checkpoint_dir", f"{directory} already holds a checkpoint; pass resume=True "
                                 "(--resume) to continue it with the same inputs and options, or use an empty "
                                 "directory")
        if manifest.get("fingerprint") != fingerprint:
            raise _describe(directory, manifest.get("fingerprint") or {}, fingerprint)
        recorded = int(manifest["chunk_size"])
        if recorded != chunk_size:
            logger.info("Resuming with the recorded chunk size %d (not %d); results are the same",
                        recorded, chunk_size)
        logger.info("Resuming the checkpoint in %s", directory)
        return Checkpoint(directory, recorded, fingerprint)
    if any(directory.iterdir()):
        raise ValueError(f"checkpoint_dir {directory} is not empty and holds no voxstats checkpoint; "
                         "use an empty or new directory")
    if resume:
        logger.info("No checkpoint in %s yet; starting from the beginning", directory)
    seed = int(rng) if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) else None
    manifest = {"format": FORMAT, "fingerprint": fingerprint, "chunk_size": int(chunk_size),
                "n_perm": int(schedule.n_perm), "seed": seed,
                "contrasts": [{"name": c.name, "kind": c.kind} for c in contrasts]}
    text = json.dumps(manifest, indent=2) + "\n"
    try:
        _write_atomic(manifest_path, lambda handle: handle.write(text.encode("utf-8")))
    except OSError as exc:
        raise ParameterError("checkpoint_dir", str(exc)) from None
    return Checkpoint(directory, int(chunk_size), fingerprint)


def _read_manifest(path):
    """A checkpoint manifest, checked key by key; ParameterError('checkpoint_dir') saying what is wrong."""

    def bad(what):
        return ParameterError("checkpoint_dir", f"{path} is not a valid voxstats checkpoint manifest "
                              f"({what}); use another directory, or delete this one")

    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    except ValueError as exc:
        raise bad(f"not JSON: {exc}") from None
    except OSError as exc:
        raise bad(f"unreadable: {exc.strerror or exc}") from None
    if not isinstance(manifest, dict):
        raise bad(f"expected a JSON object, got a {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise bad(f"format {manifest.get('format')!r}, expected {FORMAT!r}")

    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)

    checks = {
        "fingerprint": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                        "an object of digests"),
        "chunk_size": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        "n_perm": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
        "seed": (lambda v: v is None or (is_int(v) and v >= 0), "an integer >= 0 or null"),
        "contrasts": (lambda v: isinstance(v, list), "a list"),
    }
    for key, (valid, expected) in checks.items():
        if key not in manifest:
            raise bad(f"no '{key}'")
        if not valid(manifest[key]):
            raise bad(f"'{key}' must be {expected}, got {manifest[key]!r}")
    return manifest


def recorded_seed(directory):
    """The int seed recorded in a checkpoint directory's manifest, or None.

    Raises
    ------
    voxstats.errors.ParameterError
        The manifest exists but is not a valid checkpoint manifest.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    return _read_manifest(path)["seed"]


class _Flag:
    def __init__(self, directory):
        self.directory = directory
        self.signum = None

    def check(self, done, total):
        """Raise RunInterrupted if a signal came; ``done`` of ``total`` chunks are kept."""
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            raise RunInterrupted(f"interrupted by {name} with {done} of {total} chunks of this contrast "
                                 f"done and kept in {self.directory}; run again with resume=True "
                                 "(--resume) and the same inputs and options to continue", self.signum)


@contextlib.contextmanager
def handle_signals(checkpoint):
    """Turn SIGINT and SIGTERM into a clean stop between chunks while checkpointing.

    Yields an object whose ``check(done, total)`` raises :class:`RunInterrupted`
    once a signal has arrived. A second signal abandons the current chunk at
    once. Outside the main thread, or without a checkpoint, nothing is installed
    and ``check`` never raises.
    """
    flag = _Flag(None if checkpoint is None else checkpoint.directory)
    if checkpoint is None or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is not None:
            raise RunInterrupted(f"interrupted again by {signal.Signals(signum).name}; finished chunks "
                                 f"are kept in {flag.directory}; run again with resume=True "
                                 "(--resume) to continue", signum)
        flag.signum = signum
        logger.warning("%s received: stopping after the current chunk (send it again to stop now)",
                       signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
