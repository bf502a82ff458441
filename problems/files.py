"""A cheap check that a file is a `LayerProblem` file, reading only its metadata and array headers.

``layerprune compare`` runs it on every file of a folder before any solve, so a stray
``.npz`` is named at once instead of failing the grid half-way.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
from numpy.lib import format as npy

from layerprune.problems.problem import FORMAT_VERSION

ARRAYS = ("weight", "hessian", "metadata")


def _header(f) -> tuple[tuple, np.dtype]:
    version = npy.read_magic(f)
    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, dtype = read(f)
    return shape, dtype


def inspect_problem_file(path: str | os.PathLike) -> dict:
    """The metadata of the problem file at ``path`` (with ``shape``), after checking its layout:
    an ``.npz`` holding a real 2-D ``weight`` (out × in), a real ``hessian`` (in × in) and JSON
    ``metadata`` with a ``format_version`` this version reads. ``FileNotFoundError`` when there is
    no file; otherwise ``ValueError("<path> is not a layerprune problem file: <why>")``."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"no problem file at {name!r}")

    def bad(reason: str) -> ValueError:
        return ValueError(f"{name} is not a layerprune problem file: {reason}")

    try:
        archive = zipfile.ZipFile(name)
    except (zipfile.BadZipFile, OSError):
        raise bad("not an .npz archive") from None
    with archive:
        members = {m.removesuffix(".npy") for m in archive.namelist()}
        for key in ARRAYS:
            if key not in members:
                raise bad(f"no array {key!r} (it holds {', '.join(sorted(members)) or 'nothing'})")
        shapes = {}
        try:
            for key in ("weight", "hessian"):
                with archive.open(f"{key}.npy") as f:
                    shape, dtype = _header(f)
                if dtype.kind not in "fiu":
                    raise bad(f"array {key!r} has dtype {dtype}, not a real number type")
                shapes[key] = shape
            with archive.open("metadata.npy") as f:
                meta = json.loads(str(npy.read_array(f, allow_pickle=False)))
        except (ValueError, OSError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            if str(e).startswith(name):
                raise
            raise bad(f"{type(e).__name__}: {e}") from None
    w, h = shapes["weight"], shapes["hessian"]
    if len(w) != 2 or len(h) != 2 or h[0] != h[1] or h[1] != w[1]:
        raise bad(f"weight {w} and hessian {h} are not (out × in) and (in × in)")
    if not isinstance(meta, dict):
        raise bad("its metadata is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad(f"no integer format_version in its metadata (got {version!r})")
    if version > FORMAT_VERSION:
        raise bad(f"written by a newer layerprune (format {version}; this one reads ≤ {FORMAT_VERSION})")
    return dict(meta, shape=[int(w[0]), int(w[1])])
