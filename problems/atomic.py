"""The one way the project writes files and folders: atomically, durably, without leftovers.

A file is written to a temporary file with a unique name in the target's folder
(``tempfile.mkstemp``), flushed and fsynced, moved over the target with ``os.replace``
(atomic on POSIX: a reader sees the old file or the new one, never a mix), and the folder
is fsynced so the rename survives a power cut. Any exception (``BaseException``: also
``KeyboardInterrupt``) removes the temporary file and leaves the previous content.

A folder (:func:`atomic_folder`) is built in a unique temporary sibling, its files and
itself fsynced, then swapped into place: on Linux with one ``renameat2(RENAME_EXCHANGE)``
(the target is the old folder or the new one at every instant), elsewhere with two
renames. The old folder is removed after the swap.

Temporary names carry the writer's pid: ``.<name>.<pid>.<random>.tmp<suffix>`` (files,
the target's suffix kept so ``np.savez`` and ``savefig`` see the extension they expect),
``….tmpdir`` and ``….old`` (folders). A process killed with SIGKILL cannot clean up;
:func:`sweep_temps` removes what dead writers left in a folder (the commands call it when
they start, after taking their lock).

Fault injection (``benchmarks/faults.py``): with ``LAYERPRUNE_FAULT_AT=<phase>:<glob>[#n]``
the process kills itself (SIGKILL) at the n-th (default first) write whose target name
matches the glob, at ``phase`` ``replace`` (a file's temporary copy complete, before the
rename), ``folder`` (a folder built, before the swap) or ``swap`` (between the two renames
of the fallback swap; with RENAME_EXCHANGE there is no such instant). Unset, it costs one
environment lookup per write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import io
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FAULT_ENV = "LAYERPRUNE_FAULT_AT"
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.(?:tmp|tmpdir|old)(?:\.[^.]*)?$")
_fault_hits: dict[str, int] = {}


# -- fault injection -----------------------------------------------------------------------
def fault_point(phase: str, target: str | os.PathLike) -> None:
    """SIGKILL this process here when ``$LAYERPRUNE_FAULT_AT`` names this phase and target."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    want, _, nth = spec.partition("#")
    want_phase, _, pattern = want.partition(":")
    if want_phase != phase or not fnmatch.fnmatch(Path(target).name, pattern or "*"):
        return
    _fault_hits[spec] = _fault_hits.get(spec, 0) + 1
    if _fault_hits[spec] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# -- durability helpers ------------------------------------------------------------------------
def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file (its content) or a folder (the renames and creations inside it)."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a permission error means it does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_temp_name(name: str) -> bool:
    """True for the names of this module's temporary files and folders."""
    return TEMP_NAME.match(name) is not None


def sweep_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that dead writers left in ``folder``; returns them.

    Only names this module makes whose pid is no longer alive are touched, so a live
    writer's temporary files (another process, another thread of this one) are safe.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = TEMP_NAME.match(entry.name)
        if m is None or pid_alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# -- files ---------------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], Any]) -> Path:
    """Write ``path`` atomically: ``write_fn(temp_path)`` writes the content to a temporary file
    beside it (for ``safetensors.save_file``, ``np.savez``, ``fig.savefig`` …), which is then
    fsynced and renamed over ``path``. The temporary file ends with ``path``'s suffix."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".tmp" + target.suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: give it the mode a plain open() would
    try:
        write_fn(tmp)
        fsync_path(tmp)
        fault_point("replace", target)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_path(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1, **dumps_kw: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, **dumps_kw))


def atomic_append_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Append ``text`` to ``path`` by rewriting it atomically (read, append, replace).

    A crash keeps the file as it was before this append, never a torn last line. Two
    concurrent appenders may lose one of the two rows: one writer per file (a lock).
    """
    target = Path(path)
    old = target.read_bytes() if target.exists() else b""
    return atomic_write_bytes(target, old + text.encode(encoding))


def csv_text(write_rows: Callable[[io.StringIO], Any]) -> str:
    """The text ``write_rows(buffer)`` writes (a ``csv.writer`` over a StringIO, newline='')."""
    buf = io.StringIO(newline="")
    write_rows(buf)
    return buf.getvalue()


# -- folders -------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a))


def _fsync_tree(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        for name in dirs:
            fsync_path(Path(root) / name)
    fsync_path(folder)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder that replaces ``path`` whole: ``with atomic_folder(out) as tmp: …write into tmp…``.

    The body writes into a fresh temporary sibling; on a normal exit its files and itself
    are fsynced and it is swapped into place, then the previous folder (if any) is removed.
    On an exception the temporary folder is removed and ``path`` is untouched. A crash
    leaves the previous folder or the new complete one at ``path`` (plus temporaries that
    :func:`sweep_temps` clears).
    """
    target = Path(path).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{os.fspath(target)!r} exists and is not a folder")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".tmpdir"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700: the mode a plain mkdir would give
    try:
        yield tmp
        _fsync_tree(tmp)
        fault_point("folder", target)
        if not target.exists():
            os.rename(tmp, target)  # nothing to replace
            old = None
        elif _exchange(tmp, target):
            old = tmp  # the previous folder now lives at the temporary name
        else:
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".old"))
            os.replace(target, old)
            try:
                fault_point("swap", target)
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
        fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
