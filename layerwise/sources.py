"""Text held in record files and Hugging Face datasets, read as a list of texts.

Forms (beside the built-in names and plain text files of :mod:`layerprune.layerwise.data`):

* ``.jsonl`` — one JSON value a line (blank lines skipped): a record with a text field, or a string.
* ``.json`` — a list of records or of strings, or a dict holding exactly one such list
  (``{"data": [...]}``) among its values.
* ``.parquet`` — a string column (read with pyarrow).
* ``hf:NAME[:CONFIG[:SPLIT]]`` — ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)``, offline,
  from the user's datasets cache; the split defaults to ``train`` for calibration and ``test``
  (C4: ``validation``) for evaluation. WikiText-2 and C4 are loaded as the SparseGPT paper does
  (:mod:`layerprune.layerwise.protocols`).

The text field (``--text-field``) is :data:`TEXT_FIELD` unless chosen. A record without it is an
error naming the line or record number and the fields the record has.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerprune.extras import MissingExtraError, install_command
from layerprune.extras import require as extras_require
from layerprune.layerwise.errors import LayerwiseError, MissingPackageError
from layerprune.layerwise.protocols import C4_NAMES, C4_SHARDS, WIKITEXT2_DEFAULT_CONFIG, WIKITEXT_NAMES

TEXT_FIELD = "text"
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
DATA_EXTRA = install_command("data")
HF_PREFIX = "hf:"
ROLES = ("calibration", "evaluation")


def require(module: str, what: str) -> Any:
    """``extras.require`` for the ``data`` extra, its failure as a one-line :class:`MissingPackageError`."""
    try:
        return extras_require(module, "data", what)
    except MissingExtraError:
        raise MissingPackageError(what, DATA_EXTRA) from None


# -- record files ----------------------------------------------------------------------
def is_record_file(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a ``.jsonl``/``.json``/``.parquet`` file (by its suffix)."""
    return Path(source).suffix.lower() in RECORD_SUFFIXES


def record_text(record: Any, field: str, where: str) -> str:
    """The text of one record (a string is its own text); ``where`` names it in errors."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise LayerwiseError(f"{where} is a JSON {type(record).__name__}, not a record with a {field!r} field or a string")
    if field not in record:
        fields = ", ".join(repr(k) for k in record) or "none"
        raise LayerwiseError(f"{where} has no {field!r} field (its fields: {fields}); choose one with --text-field")
    value = record[field]
    if not isinstance(value, str):
        raise LayerwiseError(f"{where}: field {field!r} is a JSON {type(value).__name__}, not text")
    return value


def read_jsonl(path: str | os.PathLike, field: str = TEXT_FIELD) -> list[str]:
    """The texts of a JSON Lines file, one per non-blank line."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise LayerwiseError(f"{os.fspath(path)}: line {number} is not JSON ({e.msg})") from None
            texts.append(record_text(record, field, f"{os.fspath(path)}: line {number}"))
    return texts


def json_items(data: Any, path: str) -> list:
    """The list a JSON file holds: the file's top-level list, or a dict's one list value."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1:
            return data[lists[0]]
        keys = ", ".join(repr(k) for k in data) or "none"
        raise LayerwiseError(f"{path}: a JSON dict must hold exactly one list of records or strings; "
                             f"it holds {len(lists)} (its keys: {keys})")
    raise LayerwiseError(f"{path}: a JSON file must hold a list of records or strings (or a dict holding one), "
                         f"not a {type(data).__name__}")


def read_json(path: str | os.PathLike, field: str = TEXT_FIELD) -> list[str]:
    """The texts of a JSON file (see :func:`json_items` for the accepted forms); records counted from 1."""
    name = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise LayerwiseError(f"{name}: not JSON ({e.msg}, line {e.lineno})") from None
    return [record_text(r, field, f"{name}: record {i}") for i, r in enumerate(json_items(data, name), 1)]


def parquet_module() -> Any:
    return require("pyarrow.parquet", "pyarrow (to read .parquet files)")


def check_parquet_column(path: str | os.PathLike, field: str = TEXT_FIELD) -> None:
    """The file is parquet and has a string column ``field`` (reads the schema only)."""
    pq = parquet_module()
    import pyarrow as pa

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise LayerwiseError(f"{os.fspath(path)}: not a parquet file ({e})") from None
    if field not in schema.names:
        columns = ", ".join(repr(c) for c in schema.names) or "none"
        raise LayerwiseError(f"{os.fspath(path)} has no column {field!r} (its columns: {columns}); "
                             "choose one with --text-field")
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda t: False)(kind)):
        raise LayerwiseError(f"{os.fspath(path)}: column {field!r} holds {kind}, not text")


def read_parquet(path: str | os.PathLike, field: str = TEXT_FIELD) -> list[str]:
    """The texts of a parquet file's string column ``field`` (a null row is an error naming it, from 1)."""
    check_parquet_column(path, field)
    values = parquet_module().read_table(path, columns=[field]).column(field).to_pylist()
    for i, v in enumerate(values, 1):
        if v is None:
            raise LayerwiseError(f"{os.fspath(path)}: row {i} of column {field!r} is null")
    return values


def read_records(path: str | os.PathLike, field: str = TEXT_FIELD) -> list[str]:
    """The texts of a ``.jsonl``, ``.json`` or ``.parquet`` file."""
    if not Path(path).is_file():
        raise LayerwiseError(f"{os.fspath(path)!r} is not a file")
    suffix = Path(path).suffix.lower()
    reader = {".jsonl": read_jsonl, ".json": read_json, ".parquet": read_parquet}[suffix]
    return reader(path, field)


def check_records(path: str | os.PathLike, field: str = TEXT_FIELD) -> None:
    """A record file is readable and every record has the text field (parquet: its schema only)."""
    if Path(path).suffix.lower() == ".parquet" and Path(path).is_file():
        check_parquet_column(path, field)
    else:
        read_records(path, field)


# -- Hugging Face datasets ---------------------------------------------------------------
@dataclass(frozen=True)
class HFSource:
    """``hf:NAME[:CONFIG[:SPLIT]]``; :attr:`protocol` names the paper protocol it follows, if any."""

    name: str
    config: str | None = None
    split: str | None = None

    @property
    def protocol(self) -> str | None:
        if self.name in WIKITEXT_NAMES and (self.config or WIKITEXT2_DEFAULT_CONFIG).startswith("wikitext-2"):
            return "wikitext2"
        if self.name in C4_NAMES:
            return "c4"
        return None

    def split_for(self, role: str) -> str:
        """The split given, else ``train`` for calibration and ``test`` (C4: ``validation``) for evaluation."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if self.split:
            return self.split
        if role == "calibration":
            return "train"
        return "validation" if self.protocol == "c4" else "test"

    def load_arguments(self, role: str) -> tuple[tuple, dict]:
        """The positional and keyword arguments of ``datasets.load_dataset`` for ``role``. C4 reads one
        shard (the reference's ``data_files``); WikiText without a config is ``wikitext-2-raw-v1``."""
        split = self.split_for(role)
        if self.protocol == "c4":
            if self.config not in (None, "en"):
                raise LayerwiseError(f"{self}: C4 is read as the SparseGPT paper does, from the 'en' config's "
                                     f"first shard; config {self.config!r} is not supported")
            if split not in C4_SHARDS:
                raise LayerwiseError(f"{self}: C4 split must be one of {', '.join(C4_SHARDS)}, got {split!r}")
            return (self.name,), {"data_files": {split: f"en/{C4_SHARDS[split]}"}, "split": split}
        config = self.config or (WIKITEXT2_DEFAULT_CONFIG if self.name in WIKITEXT_NAMES else None)
        return ((self.name, config) if config else (self.name,)), {"split": split}

    def fetch_command(self, role: str) -> str:
        """The command that puts this dataset in the cache (run once, with network)."""
        args, kwargs = self.load_arguments(role)
        call = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
        return f'python -c "import datasets; datasets.load_dataset({call})"'

    def __str__(self) -> str:
        return HF_PREFIX + ":".join(p or "" for p in (self.name, self.config, self.split)).rstrip(":")


def parse_hf(source: str | os.PathLike) -> HFSource | None:
    """``hf:NAME[:CONFIG[:SPLIT]]`` → :class:`HFSource`; None when ``source`` is not an ``hf:`` name."""
    text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    if not text.startswith(HF_PREFIX):
        return None
    parts = text[len(HF_PREFIX):].split(":")
    if len(parts) > 3 or not parts[0].strip():
        raise LayerwiseError(f"{text!r}: a dataset is named hf:NAME[:CONFIG[:SPLIT]], e.g. "
                             "hf:wikitext:wikitext-2-raw-v1:test")
    parts += [""] * (3 - len(parts))
    name, config, split = (p.strip() for p in parts)
    return HFSource(name, config or None, split or None)


OFFLINE_FLAGS = (("datasets.config", "HF_HUB_OFFLINE"), ("datasets.config", "HF_DATASETS_OFFLINE"),
                 ("huggingface_hub.constants", "HF_HUB_OFFLINE"))


@contextmanager
def datasets_offline() -> Iterator[None]:
    """``HF_DATASETS_OFFLINE=1`` for the block, also in the flags ``datasets`` and ``huggingface_hub``
    read from the environment when they were imported (restored afterwards)."""
    old_env = os.environ.get("HF_DATASETS_OFFLINE")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    saved = []
    for module, attr in OFFLINE_FLAGS:
        owner = sys.modules.get(module)
        if owner is not None and hasattr(owner, attr):
            saved.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, True)
    try:
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)
        if old_env is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = old_env


class ColumnTexts(Sequence):
    """One text column of a ``datasets.Dataset``, read a row at a time (C4's shard is ~800 MB of text)."""

    def __init__(self, dataset: Any, field: str, where: str) -> None:
        self.dataset, self.field, self.where = dataset, field, where

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.checked(self.dataset[int(i)][self.field], int(i))

    def __iter__(self) -> Iterator[str]:
        for i, value in enumerate(self.dataset[self.field]):  # the whole column at once (a list or a lazy column)
            yield self.checked(value, i)

    def checked(self, value: Any, i: int) -> str:
        if not isinstance(value, str):
            raise LayerwiseError(f"{self.where}: row {i + 1} of {self.field!r} is {type(value).__name__}, not text")
        return value


def load_hf(source: HFSource, role: str = "calibration", field: str = TEXT_FIELD) -> ColumnTexts:
    """The text column of ``source`` read offline from the datasets cache (a clear error when absent)."""
    datasets = require("datasets", "datasets (to read hf: sources)")
    args, kwargs = source.load_arguments(role)
    with datasets_offline():
        try:
            ds = datasets.load_dataset(*args, **kwargs)
        except Exception as e:  # the cache lookup fails in many ways (ConnectionError, FileNotFoundError, …)
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            raise LayerwiseError(f"{source} ({role}) cannot be loaded offline from the datasets cache ({reason}); "
                                 f"fetch it once, with network: {source.fetch_command(role)}") from None
    columns = list(getattr(ds, "column_names", None) or [])
    if field not in columns:
        raise LayerwiseError(f"{source} has no column {field!r} (its columns: "
                             f"{', '.join(repr(c) for c in columns) or 'none'}); choose one with --text-field")
    return ColumnTexts(ds, field, str(source))


def check_hf(source: HFSource, role: str = "calibration", field: str = TEXT_FIELD) -> None:
    """``datasets`` is installed and ``source`` is in the cache with the column (the cache is memory-mapped)."""
    if importlib.util.find_spec("datasets") is None:
        raise MissingPackageError("datasets (to read hf: sources)", DATA_EXTRA)
    load_hf(source, role, field)
