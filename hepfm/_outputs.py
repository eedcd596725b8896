"""One policy for every path hepfm writes: checked before work, locked while written, errors in one line.

* ``prepare_output`` refuses a path whose parent is a file, a path of the wrong type (a folder
  where a file goes or the reverse), an existing output without ``--overwrite``, and
  ``--overwrite`` onto anything that is not the same kind of hepfm output (an event store is
  never replaced by latents, a user's folder never by anything).
* ``output_lock`` takes an exclusive ``fcntl.flock`` on ``.NAME.lock`` beside the output for as
  long as it is written (and removes the file after); a second writer is refused at once in one
  line. The kernel drops the lock when the process dies, so a killed run never leaves a stale
  lock (only an empty, unlocked file that the next writer reuses).
* ``os_error_line`` turns a full disk, a read-only or forbidden folder (ENOSPC, EDQUOT, EFBIG,
  EROFS, EACCES, EPERM) and a path blocked by a file (ENOTDIR, EEXIST, EISDIR) into one line
  naming the path; writers write through a temporary name and a rename (or chunk by chunk with a
  resumable record), so what was already written is never lost.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ._errors import HepfmError

__all__ = [
    "FS_REFUSALS",
    "KINDS",
    "output_kind",
    "prepare_output",
    "output_lock",
    "acquire_lock",
    "release_lock",
    "OutputLock",
    "os_error_line",
    "as_os_error",
    "check_parents",
]

#: What each kind of output is, in words.
KINDS = {
    "event-store": "a hepfm event store",
    "latents": "a hepfm latents store",
    "run": "a hepfm run folder",
    "eval": "a hepfm evaluation folder",
    "plots": "a folder of hepfm plots",
    "model-folder": "a hepfm model folder",
    "shards": "a hepfm folder of shards",
    "file": "a file",
}

_DISK = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system (or the file-size limit)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way",
    errno.EISDIR: "is a folder, a file was expected",
}


#: errno values that mean "the file system refused", reported in one line by the CLI.
FS_REFUSALS = frozenset(_DISK)


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind of hepfm output at ``path`` (a key of ``KINDS``), or ``None`` for anything else."""
    path = Path(path)
    if path.is_file():
        return "file"
    if not path.is_dir():
        return None
    meta = path / "zarr.json"
    if meta.is_file():
        try:
            fmt = (json.loads(meta.read_text()).get("attributes") or {}).get("hepfm") or {}
        except (OSError, ValueError, AttributeError):
            return None
        return {"hepfm-event-store": "event-store", "hepfm-latents": "latents"}.get(
            fmt.get("format") if isinstance(fmt, dict) else None
        )
    if (path / "checkpoints").is_dir() or (path / "task.yaml").is_file():
        return "run"
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return "model-folder"
    if (path / "hepfm-dataset.json").is_file() or any(path.glob("shard-*.zarr")):
        return "shards"
    if (path / "metrics.json").is_file() or (path / "plots").is_dir():  # plots come first: an interrupted one
        return "eval"
    if any(path.glob("*.png")) and all(p.suffix in (".png", ".lock") or p.is_dir() for p in path.iterdir()):
        return "plots"
    return None


def check_parents(path: str | os.PathLike) -> None:
    """Refuse a path below an existing file (``out.h5/latents.zarr``), naming the file."""
    for parent in Path(path).parents:
        if parent.exists():
            if not parent.is_dir():
                raise HepfmError(f"{path}: cannot write here, {parent} is a file, not a folder")
            return


def prepare_output(path: str | os.PathLike, kind: str, overwrite: bool = False, resume: bool = False) -> str:
    """Check an output path before any work; return ``new``, ``overwrite`` or ``exists``.

    Args:
        path: The output.
        kind: What will be written there (a key of ``KINDS``).
        overwrite: The user asked to replace an existing output (only one of the same kind).
        resume: An existing output of the same kind may be continued (returns ``exists``).

    Raises:
        HepfmError: One line naming the path and what is in the way.
    """
    path = Path(path)
    check_parents(path)
    if not path.exists() and not path.is_symlink():
        return "new"
    found = output_kind(path)
    if kind == "file":
        if path.is_dir():
            raise HepfmError(f"{path}: is a folder; a file is written here (choose a file name)")
        if overwrite or resume:
            return "overwrite" if overwrite else "exists"
        raise HepfmError(f"{path}: exists; choose another output or pass --overwrite")
    if not path.is_dir():
        raise HepfmError(f"{path}: exists and is a file; {KINDS[kind]} is written here (choose another path)")
    if found == kind:
        if overwrite:
            return "overwrite"
        if resume:
            return "exists"
        raise HepfmError(f"{path}: {KINDS[kind]} already exists; choose another output or pass --overwrite")
    if not any(p.name != f".{path.name}.lock" for p in path.iterdir()):
        return "new"  # an empty folder
    if found is None:
        raise HepfmError(
            f"{path}: exists and is a folder that hepfm did not write; refusing to touch it (choose another output)"
        )
    raise HepfmError(f"{path}: exists and is {KINDS[found]}, not {KINDS[kind]}; refusing to replace it")


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on an output while it is written (see module docstring)."""
    lock = acquire_lock(path)
    try:
        yield Path(path)
    finally:
        release_lock(lock)


class OutputLock:
    """An exclusive ``flock`` on an output's lock file; ``release`` is idempotent."""

    def __init__(self, path: Path, fd: int, lock_file: Path) -> None:
        self.path, self._fd, self.lock_file = path, fd, lock_file

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if _HELD.get(str(self.path)) is self:
                del _HELD[str(self.path)]
            with contextlib.suppress(OSError):
                os.unlink(self.lock_file)  # while still locked: a waiter re-checks the inode it locked
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)


#: Locks this process holds, by output: a new writer in the same process takes over an
#: abandoned one (the lock keeps other processes out).
_HELD: dict[str, OutputLock] = {}


def acquire_lock(path: str | os.PathLike) -> OutputLock:
    """Take the output's lock (``release_lock`` it; the process's exit releases it too).

    Raises:
        HepfmError: Another process holds it; one line naming the output and the lock file.
    """
    path = Path(path)
    check_parents(path)
    key = str(path.absolute())
    if key in _HELD:
        _HELD[key].release()
    lock = _lock_path(path)
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise HepfmError(os_error_line(exc, lock)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HepfmError(
                f"{path}: another hepfm process is writing it (lock {lock}); "
                "wait for it to end or choose another output"
            ) from None
        try:  # the holder before us may have removed the file between our open and our lock: lock the new one
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    held = OutputLock(Path(key), fd, lock)
    _HELD[key] = held
    return held


def release_lock(lock: OutputLock | None) -> None:
    """Release a lock taken by ``acquire_lock`` and remove its file (a killed process leaves an unlocked file)."""
    if lock is not None:
        lock.release()


def as_os_error(exc: BaseException, path: str | os.PathLike) -> OSError | None:
    """The ``OSError`` inside a library's own error (safetensors, HDF5 report ``os error 28``/``errno = 28``)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    match = re.search(r"(?:os error|errno =) (\d+)", str(exc))
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, os.strerror(code), str(path))


def os_error_line(exc: OSError, fallback: str | os.PathLike | None = None) -> str:
    """One line for a file-system refusal: the path, what the system said, and that nothing was lost."""
    where = exc.filename or fallback or "output"
    what = _DISK.get(exc.errno, exc.strerror or str(exc))
    hint = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "; what was written before is kept: free space and rerun the same command to continue"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "; choose a writable output"
    return f"{where}: {what} ({errno.errorcode.get(exc.errno, exc.errno)}){hint}"
