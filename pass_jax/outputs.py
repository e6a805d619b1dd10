"""Outputs that never clobber a user's files and never appear half-written.

Every file or directory a command writes (`convert`, `train`, `bench --json/--plot`, `eval
humaneval --json`, exported look-ahead parameters) goes through here:
- `check_file` / `check_dir` run before any model is loaded, so a bad path fails in a second, not
  after an hour of work. A non-empty target is refused unless the user says `--overwrite` (or it is
  the command's own, recognised by a marker file it wrote).
- `atomic_file` / `atomic_dir` write into a temporary sibling and rename it into place when
  complete: a kill mid-write leaves the old state or nothing.
- `locked` holds an exclusive lock (`fcntl.flock` on a hidden `.NAME.lock` sibling) for as long as a
  command writes a target, so a second writer of the same run directory, convert destination or
  cache entry is refused with one line instead of interleaving with the first.
- `write_errors` turns a full disk (ENOSPC, EDQUOT, however deep a library wrapped it) into one
  `OutputError` line naming the file system and the space needed; `check_space` refuses up front.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from .errors import PassJaxError

# Test hook: a writer whose target has this file name stops just before its rename, with the new
# output complete in the temporary sibling, so a test can SIGKILL it at the worst moment.
PAUSE_ENV = "PASS_JAX_TEST_PAUSE_WRITE"


class OutputError(PassJaxError):
    """An output path that cannot or must not be written."""


def local_path(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().absolute()


def _writable_ancestor(path: Path, flag: str) -> None:
    """The nearest existing ancestor must be a writable directory (the rest is created)."""
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{flag} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: directory {ancestor} is not writable")


def check_file(path: str | os.PathLike, flag: str, overwrite: bool = False) -> Path:
    """An output file: its directory must exist, and an existing non-empty file needs `overwrite`."""
    path = local_path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a directory; give a file path")
    if not path.parent.is_dir():
        raise OutputError(f"{flag} {path}: directory {path.parent} does not exist")
    _writable_ancestor(path, flag)
    if not overwrite and path.exists() and path.stat().st_size:
        raise OutputError(f"{flag} {path} already exists; add --overwrite to replace it, or choose another path")
    return path


def check_dir(path, flag: str, overwrite: bool = False, marker: str | None = None):
    """An output directory (created with its parents): a non-empty one needs `overwrite`, unless it
    holds `marker`, the file by which a command recognises a directory it made itself.
    `path` may be a gs:// path (an `etils.epath.Path`), where only the emptiness check applies."""
    if isinstance(path, (str, os.PathLike)) and not str(path).startswith("gs://"):
        path = local_path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a directory")
    own = marker is not None and (path / marker).is_file()
    if path.is_dir() and not overwrite and not own and any(path.iterdir()):
        raise OutputError(f"{flag} {path} is not empty; add --overwrite to replace it, or choose a new directory")
    if isinstance(path, Path):
        _writable_ancestor(path, flag)
    return path


def check_files_in(path: str | os.PathLike, names, flag: str, overwrite: bool = False) -> Path:
    """A directory (created if missing) that receives the files `names`: other files in it stay, and
    existing files of those names need `overwrite`."""
    path = check_dir(path, flag, overwrite=True)
    if path.is_dir():
        for name in names:
            check_file(path / name, flag, overwrite)
    return path


def _pause_for_tests(path) -> None:
    if os.environ.get(PAUSE_ENV) == path.name:
        print(f"{PAUSE_ENV}: paused before renaming into {path}", file=sys.stderr, flush=True)
        time.sleep(600)


def _temporary_sibling(path: Path) -> Path:
    # The suffix stays last: np.savez and savefig choose their format by it. A fixed name (no pid)
    # lets the next write clear what a killed one left.
    return path.with_name(f".{path.stem}.partial{path.suffix}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends, it replaces `path` in one rename."""
    path = local_path(path)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb+") as written:  # on disk before the rename makes it visible
            os.fsync(written.fileno())
        _pause_for_tests(path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def remove(path) -> None:
    """Delete a file or directory tree (local or gs://), if it exists."""
    if path.is_dir() and isinstance(path, Path):
        # A writer's background threads (Orbax's, cut off by Ctrl-C) may still add a file while the tree
        # goes: "Directory not empty" (a fresh-clone CI run); try again briefly.
        for attempt in range(5):
            try:
                shutil.rmtree(path)
                return
            except OSError as err:
                if err.errno != errno.ENOTEMPTY or attempt == 4:
                    raise
                time.sleep(0.2)
    elif path.is_dir():
        path.rmtree()
    elif path.exists():
        path.unlink()


@contextlib.contextmanager
def atomic_dir(path, is_writer: bool = True) -> Iterator:
    """Yield a temporary sibling directory to fill; when the block ends it replaces `path`.

    Replacing an existing directory takes two renames (the old one aside, the new one in): a kill
    between them leaves the old one beside the target as `.NAME.old`, never a mix. Every process of
    a multi-host job fills the same sibling; only `is_writer` (process 0) clears and renames.
    On gs:// there is no directory rename: the directory is written in place, and the caller writes
    its completion marker last.
    """
    if not isinstance(path, Path):  # gs://
        if is_writer and path.exists():
            remove(path)
        yield path
        return
    tmp = path.with_name(f".{path.name}.partial")
    if is_writer:
        remove(tmp)  # a killed writer's leftover
        sync_processes("atomic_dir cleared")
    try:
        yield tmp
        if is_writer:
            _pause_for_tests(path)
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                remove(old)
                path.rename(old)
                tmp.rename(path)
                remove(old)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.rename(path)
    except BaseException as err:
        if is_writer:  # a library's background threads may still write into tmp after `finally`
            atexit.register(lambda: tmp.exists() and remove(tmp))  # the interpreter joins them first
            if isinstance(err, KeyboardInterrupt):
                _after_interrupt()
        raise
    finally:
        if is_writer and tmp.exists():
            remove(tmp)


def _after_interrupt() -> None:
    """Ctrl-C while a library's background threads (Orbax's) still write: their failures are not news
    (one "interrupted" line says it)."""
    def quiet(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR

    logging.getLogger("absl").addFilter(quiet)
    logging.getLogger("asyncio").addFilter(quiet)
    sys.unraisablehook = lambda unraisable: None
    threading.excepthook = lambda args: None


# --- locks ------------------------------------------------------------------------------------------

_held: dict[Path, list] = {}  # lock file -> [open file, depth]: re-entrant within one process


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        return "another process"
    return f"another process (pid {pid})" if pid.isdigit() else "another process"


@contextlib.contextmanager
def locked(path, flag: str) -> Iterator[None]:
    """Hold an exclusive lock on the output `path` (a file or directory, existing or not) for the block;
    refuse at once with one line when another process holds it. The lock is `fcntl.flock` on the hidden
    sibling `.NAME.lock`, released by the kernel when its holder dies (no stale locks after a kill) and
    removed when the block ends. Nothing on gs:// (no flock there; one writer is the user's job)."""
    if not isinstance(path, Path):
        yield
        return
    path = local_path(path)
    lock = lock_path(path)
    if lock in _held:
        _held[lock][1] += 1
        try:
            yield
        finally:
            _held[lock][1] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutputError(f"{flag} {path} is busy: {_holder(lock)} is writing it; wait for it to finish, "
                              "or choose another path") from None
        try:  # the holder before us may have removed the file after we opened it: lock the one on disk
            if os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    _held[lock] = [handle, 1]
    try:
        yield
    finally:
        del _held[lock]
        with contextlib.suppress(OSError):
            lock.unlink()  # while still locked, so a waiter's inode check sees it gone
        handle.close()


# --- a full disk --------------------------------------------------------------------------------------

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_MESSAGES = ("No space left on device", "Disk quota exceeded", "ENOSPC", "RESOURCE_EXHAUSTED: Disk")


def is_no_space(err: BaseException | None) -> bool:
    """Whether `err`, or any exception it was raised from or during, is a full disk. Libraries
    (Orbax, TensorStore, asyncio) wrap the OSError or keep only its text, so both are checked."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
            return True
        if any(message in str(err) for message in NO_SPACE_MESSAGES):
            return True
        for inner in getattr(err, "exceptions", ()):  # ExceptionGroup
            if is_no_space(inner):
                return True
        err = err.__cause__ or err.__context__
    return False


def _mount_point(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.0f} MB" if nbytes >= 1e6 else f"{nbytes / 1e6:.1f} MB"


def no_space_error(path, needed: int | None = None) -> OutputError:
    """The one line for a full disk under `path`: the file system, what is needed and what is free."""
    path = local_path(path)
    mount = _mount_point(path)
    try:
        free = shutil.disk_usage(mount).free
    except OSError:
        free = None
    have = f", {_mb(free)} free" if free is not None else ""
    need = f": {_mb(needed)} needed{have}" if needed else (f" ({_mb(free)} free)" if free is not None else "")
    return OutputError(f"no space left on {mount} (writing {path}){need}; free some space or write elsewhere")


def check_space(path, needed: int) -> None:
    """Refuse before a long write when the file system of `path` has less than `needed` bytes free."""
    if not isinstance(path, Path):
        return
    try:
        free = shutil.disk_usage(_mount_point(local_path(path))).free
    except OSError:
        return
    if free < needed:
        raise no_space_error(path, needed)


@contextlib.contextmanager
def write_errors(path, needed: int | None = None) -> Iterator[None]:
    """A full disk while the block writes `path` becomes one `OutputError` line (the caller's
    `atomic_*` removes its temporary); every other error propagates unchanged. Orbax's background
    threads log each failed write with its traceback (dozens of lines per array): those reports of a
    full disk are dropped, for the rest of the process once the block has failed (they keep coming)."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    for logger in loggers:
        logger.addFilter(_not_no_space)
    # TensorStore's callbacks into an abandoned writer's closed event loop print "Event loop is closed"
    # through sys.excepthook (PyErr_Print) or as unraisable exceptions, a traceback each, while the
    # failed save unwinds.
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
    sys.excepthook = lambda kind, value, tb: None if _closed_loop(value) else excepthook(kind, value, tb)
    sys.unraisablehook = lambda u: None if _closed_loop(u.exc_value) else unraisablehook(u)
    try:
        yield
    except OutputError:
        raise
    except Exception as err:
        if isinstance(path, Path) and is_no_space(err):
            raise no_space_error(path, needed) from err  # the filters stay: the reports keep coming
        raise
    for logger in loggers:
        logger.removeFilter(_not_no_space)
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def _closed_loop(err) -> bool:
    return isinstance(err, RuntimeError) and "Event loop is closed" in str(err)


def _not_no_space(record: logging.LogRecord) -> bool:
    return not (is_no_space(record.exc_info[1] if record.exc_info else None)
                or any(message in record.getMessage() for message in NO_SPACE_MESSAGES))


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-host job (nothing in a single process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
