"""Checks of what a user gives, run before anything slow (a model load, a calibration pass).

Each raises :class:`~layerprune.layerwise.errors.LayerwiseError` with one line naming the
argument and what is wrong, so the CLI prints ``layerprune: error: …`` and no traceback.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from layerprune.extras import install_command
from layerprune.layerwise.errors import LayerwiseError

GPU_EXTRA = install_command("gpu")


def check_at_least(flag: str, value: int | float | None, minimum: int | float, *, optional: bool = False) -> None:
    """``value`` ≥ ``minimum`` (and finite); ``None`` passes when ``optional``."""
    if value is None and optional:
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or value < minimum or math.isinf(value):
        raise LayerwiseError(f"{flag} must be ≥ {minimum}, got {value!r}")


def check_fraction(flag: str, value: float | None, *, optional: bool = True) -> None:
    """A sparsity in [0, 1)."""
    if value is None and optional:
        return
    if value is None or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise LayerwiseError(f"{flag} must be in [0, 1), got {value!r}")


def check_torch_device(spec: str, flag: str = "--device") -> str:
    """A torch device this machine has: ``cpu``, ``cuda``, ``cuda:N`` (N < the visible GPUs) or ``mps``."""
    import torch

    try:
        dev = torch.device(str(spec))
    except (RuntimeError, TypeError, ValueError):
        raise LayerwiseError(f"{flag} {spec}: not a device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cpu":
        return str(dev)
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise LayerwiseError(f"{flag} {spec}: torch was built without CUDA (install a CUDA build of torch, "
                                 "or use --device cpu)")
        if not torch.cuda.is_available():
            raise LayerwiseError(f"{flag} {spec}: no GPU visible to torch (CUDA_VISIBLE_DEVICES, the driver?)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise LayerwiseError(f"{flag} {spec}: GPU {dev.index} does not exist; {count} visible (0 … {count - 1})")
        return str(dev)
    if dev.type == "mps" and torch.backends.mps.is_available():
        return str(dev)
    raise LayerwiseError(f"{flag} {spec}: not a device this machine has (use cpu, cuda or cuda:N)")


def check_solver_device(spec: str | None, flag: str = "--solver-device") -> str:
    """Where the solver runs: ``cpu``, ``cuda`` or ``cuda:N`` (needs CuPy and that GPU) or None (auto); returns the
    resolved name."""
    from layerprune.problems.backend import resolve_device

    try:
        return resolve_device(spec)
    except RuntimeError:
        raise LayerwiseError(f"{flag} {spec}: the solver on the GPU needs CuPy and a visible GPU "
                             f"({GPU_EXTRA}), or use {flag} cpu") from None
    except ValueError:
        raise LayerwiseError(f"{flag} {spec}: not a solver device (use cpu, cuda or cuda:N)") from None


def check_output_folder(path: str | os.PathLike, flag: str = "--output") -> None:
    """An output folder: absent (it is created) or a folder, and its parent is not a file."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise LayerwiseError(f"{flag} {os.fspath(path)!r} exists and is not a folder")
    _check_parent(p, flag, path)


def check_output_file(path: str | os.PathLike | None, flag: str = "--output") -> None:
    """An output file: absent or a file (not a folder), in a folder that exists or can be made."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise LayerwiseError(f"{flag} {os.fspath(path)!r} is a folder, not a file")
    _check_parent(p, flag, path)


def _check_parent(p: Path, flag: str, given) -> None:
    for parent in p.resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                raise LayerwiseError(f"{flag} {os.fspath(given)!r}: {parent} is a file, not a folder")
            return
