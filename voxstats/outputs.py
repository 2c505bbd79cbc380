"""Writing results: whole files or none, readable as any other file, checked before the work.

Every file voxstats writes (images, JSON records, TSV tables, checkpoint
chunks) goes through :func:`atomic_write`: the content is written to a hidden
temporary file in the target's folder, flushed to disk, then renamed over the
target, so a crash or a full disk leaves either the complete file or none, never
a truncated file under the final name. The temporary file is created the way
``open(path, "w")`` creates a file (mode ``0o666`` minus the umask: 0644 under
umask 022), not with :func:`tempfile.mkstemp`'s private 0600, so colleagues who
share a lab folder can read the results.

Before any long work a command calls :func:`check_outputs` (every output can be
created, none is overwritten without ``overwrite``) and holds
:func:`output_lock` while it runs, so that a second run writing to the same
outputs at the same time refuses instead of silently replacing the first one's
files.
"""

import contextlib
import datetime
import json
import logging
import os
import secrets
import socket
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["OutputBusyError", "atomic_write", "atomic_write_text", "check_outputs", "output_lock",
           "save_img_atomic"]

_NEW_FILE_MODE = 0o666  # the umask is applied by the system, as for open(path, "w")


class OutputBusyError(OSError):
    """Another running process holds the lock on these outputs."""


def _temporary(path, prefix=None, suffix=""):
    """Create a new empty file beside ``path``: (file descriptor, its path)."""
    prefix = f".{path.name}." if prefix is None else prefix
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f"{prefix}{secrets.token_hex(6)}.tmp{suffix}"
        try:
            return os.open(tmp, flags, _NEW_FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {path}")  # pragma: no cover


def _fsync_folder(folder):
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path, write, *, temporary_prefix=None, temporary_suffix=""):
    """Write ``path`` through a temporary file renamed into place.

    Parameters
    ----------
    path : str or path-like
        The file to create or replace. Its folder is created if needed.
    write : callable
        ``write(handle)`` writes the content to a binary file handle.
    temporary_prefix, temporary_suffix : str
        Name parts of the temporary file (default ``.<name>.<random>.tmp``).

    Returns
    -------
    pathlib.Path
        ``path``.

    Notes
    -----
    The file is created with mode ``0o666`` minus the process's umask.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary(path, temporary_prefix, temporary_suffix)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from None
        raise
    _fsync_folder(path.parent)
    return path


def _cannot_write(path, exc):
    """The same kind of OSError, naming the file that could not be written (not its temporary)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return type(exc)(f"cannot write {path} ({reason})")


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda handle: handle.write(data))


def save_img_atomic(img, path):
    """Save a nibabel image to ``path`` atomically (see :func:`atomic_write`).

    An interrupted write leaves at most a hidden ``.<name>.*.tmp`` file, never a
    truncated image under the final name.
    """
    import nibabel as nib

    path = Path(path)
    name = path.name.lower()
    suffix = ".nii.gz" if name.endswith(".nii.gz") else path.suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary(path, suffix=suffix)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    os.close(fd)
    try:
        nib.save(img, tmp)  # nibabel reopens the file by name: its mode is kept
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from None
        raise
    _fsync_folder(path.parent)
    return path


def check_outputs(paths, *, overwrite=False, flag="output"):
    """Check, before any long work, that every output can be written.

    Parameters
    ----------
    paths : iterable of str or path-like
        The files a run will write.
    overwrite : bool
        Existing files may be replaced.
    flag : str
        How the outputs are named in messages (a parameter or a flag).

    Raises
    ------
    FileExistsError
        An output exists and ``overwrite`` is False.
    OSError
        An output is a folder, or its folder cannot be created or written to.
    """
    folders = {}
    for path in map(Path, paths):
        if path.is_dir():
            raise IsADirectoryError(f"{flag}: {path} is a folder; expected a file name")
        if path.exists() and not overwrite:
            raise FileExistsError(f"Output file {path} exists; use --overwrite to replace it.")
        folders.setdefault(path.parent, path)
    for folder, example in folders.items():
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{flag}: cannot write {example} ({folder} is a file, not a folder)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = _temporary(example)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise PermissionError(f"{flag}: cannot write {example} ({reason} in {folder})") from None


def _lock_path(path):
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _holder(lock):
    try:
        info = json.loads(Path(lock).read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def output_lock(path, *, flag="output"):
    """Hold an exclusive lock on the outputs named after ``path`` while a run writes them.

    The lock is a hidden file ``.<name>.lock`` beside ``path`` locked with
    ``flock``; the system releases it when the process ends, even when it is
    killed, and the file is removed when the run ends normally.

    Raises
    ------
    OutputBusyError
        Another running process holds the lock (its pid, host and start time
        are in the message).
    """
    lock = _lock_path(path)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: exclusive creation only
        fcntl = None
    while True:
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if fcntl is None else 0)
        if lock.parent.exists() and not lock.parent.is_dir():
            raise NotADirectoryError(f"{flag}: cannot write {path} ({lock.parent} is a file, not a folder)")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, flags, _NEW_FILE_MODE)
        except FileExistsError:  # pragma: no cover
            raise OutputBusyError(f"{flag}: {path} is being written by another run ({lock} exists; "
                                  "delete it if no run is writing there)") from None
        except OSError as exc:
            raise PermissionError(f"{flag}: cannot write {path} ({exc.strerror or type(exc).__name__} "
                                  f"in {lock.parent})") from None
        if fcntl is None:  # pragma: no cover
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputBusyError(f"{flag}: {path} is being written by another run ({_holder(lock)}); "
                                  "wait for it to finish or choose another output") from None
        # the file may have been removed by the previous holder between open and flock
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": started}).encode("utf-8"))
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
