"""Optional dependencies (the ``setup.cfg`` extras): import one, or fail with the command that installs it.

    plt = require("matplotlib.pyplot", "reports")   # MissingExtraError: … pip install 'layerprune[reports]'

Nothing here imports a heavy package at module import time; callers ask at the point of use.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# the extras of setup.cfg and what each brings (kept beside the packages they name there)
EXTRAS = {
    "reports": "cvxpy and matplotlib (lower bounds, plots of `layerprune compare`)",
    "gguf": "gguf (loading .gguf models, the SmolLM2 demo)",
    "eval": "lm-eval (zero-shot tasks: `layerprune eval --tasks`)",
    "data": "datasets and pyarrow (Hugging Face datasets as calibration/evaluation text)",
    "gpu": "cupy-cuda13x (the solvers on a CUDA GPU)",
    "compressed": "compressed-tensors (`--save-format compressed`)",
}


def install_command(extra: str) -> str:
    """The pip command that installs an extra: ``pip install 'layerprune[reports]'``."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}: one of {', '.join(EXTRAS)}")
    return f"pip install 'layerprune[{extra}]'"


class MissingExtraError(ImportError):
    """An optional package is not installed (or cannot be imported); the message names the extra's pip command."""

    def __init__(self, what: str, extra: str, problem: str = "is not installed") -> None:
        self.command = install_command(extra)
        self.extra = extra
        super().__init__(f"{what} {problem}; install it with:  {self.command}")


def require(module: str, extra: str, what: str | None = None) -> ModuleType:
    """``import module`` (dotted names allowed), or :class:`MissingExtraError` naming ``extra``: the
    package missing, one of its own dependencies missing, or an import that fails (mismatched versions)."""
    top = module.split(".")[0]
    name = what or top
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or top
        if missing.split(".")[0] != top:  # the package is there but one of its own dependencies is not
            name = f"{name}'s dependency {missing}"
        raise MissingExtraError(name, extra) from e
    except ImportError as e:
        reason = " ".join(str(e).split())[:200]
        raise MissingExtraError(name, extra, f"cannot be imported ({reason})") from e
