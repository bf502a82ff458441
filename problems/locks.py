"""Lock files: one run at a time on an output folder.

``with output_lock(folder): …`` creates ``<folder>.lock`` beside the folder (not inside:
the folder itself may be swapped whole by :func:`layerprune.problems.atomic.atomic_folder`)
with ``os.open(O_CREAT | O_EXCL)``, so of two runs exactly one creates it. It holds one
JSON line: pid, host, start time, command. A second run on the same folder is refused with
an error naming the first run's pid; a lock whose pid is dead (on this host) is stale: it
is taken over with a one-line warning. The lock is removed when the ``with`` block ends,
also on an exception or ``KeyboardInterrupt``; a SIGKILL leaves it, and it is stale then.
Known limit: two runs that find the same stale lock at the same instant may both take it
over (the later one's removal can hit the earlier one's fresh lock, in the window between
reading the dead pid and removing the file); a lock held by a live run is otherwise never removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from layerprune.problems.atomic import pid_alive

EMPTY_LOCK_GRACE_S = 10.0  # a lock file still empty after this long lost its writer


class LockError(ValueError):
    """The output is locked by another live run."""


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: ``<folder>.lock`` in its parent."""
    f = Path(folder).expanduser().resolve()  # as the writers resolve it: one lock through any symlink
    return f.parent / f"{f.name}.lock"


def read_lock(path: str | os.PathLike) -> dict | None:
    """The lock's contents, or None when it is missing or not (yet) readable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _stale(path: Path, info: dict | None) -> bool:
    if info is None:  # empty or torn: its writer died between create and write, or is writing now
        try:
            return time.time() - path.stat().st_mtime > EMPTY_LOCK_GRACE_S
        except FileNotFoundError:
            return True
    if info.get("host") != socket.gethostname():
        return False  # cannot tell whether a pid on another host lives
    return not pid_alive(int(info.get("pid", -1)))


def _warn(message: str) -> None:
    print(f"layerprune: warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, *, command: str | None = None,
                error: type[Exception] = LockError, warn: Callable[[str], None] = _warn) -> Iterator[Path]:
    """Hold ``<folder>.lock`` for the ``with`` body; ``error`` (default :class:`LockError`) when
    another live run holds it. ``command`` is recorded (default: this process's argv)."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": command if command is not None else " ".join(sys.argv)}
    payload = (json.dumps(record) + "\n").encode()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            info = read_lock(path)
            if not _stale(path, info):
                who = f"pid {info['pid']} on {info.get('host')}, started {info.get('started')}" if info else "a run"
                cmd = f": {info.get('command')}" if info and info.get("command") else ""
                raise error(f"{folder} is in use by another run ({who}{cmd}); wait for it to end, "
                            f"or delete {path} if that run is gone") from None
            pid = info.get("pid") if info else "unknown"
            warn(f"taking over the stale lock {path} (pid {pid} is not running)")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        break
    else:
        raise error(f"could not take the lock {path}: other runs keep creating it")
    try:
        yield path
    finally:
        if (read_lock(path) or {}).get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
