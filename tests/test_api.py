"""`layerprune.prune` on in-memory models, the one settings object, and recipes through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from layerwise_tiny import byte_tokenizer, folder_tensors, one_thread, tiny_model, tiny_text  # noqa: F401

import layerprune
from layerprune.layerwise.cli import main
from layerprune.layerwise.driver import prune_model
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import save_model
from layerprune.layerwise.settings import PruneSettings


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    save_model(tiny_model("llama"), byte_tokenizer(), root / "tiny")
    (root / "text.txt").write_text(tiny_text(3000))
    return root


def test_prune_in_memory_equals_the_driver(files):
    from layerprune.layerwise.data import calibration_segments

    text = str(files / "text.txt")
    a, b = tiny_model("llama"), tiny_model("llama")
    res = layerprune.prune(a, byte_tokenizer(), method="sparsegpt", sparsity=0.6, calib=text, nsamples=4, seqlen=32,
                           eval_text=text, eval_tokens=512, progress=False)
    assert res.model is a and isinstance(res, layerprune.PruneResult)
    assert res.log["perplexity"] > 0 and res.log["dense_perplexity"] > 0
    ids = calibration_segments(byte_tokenizer(), text, 4, 32, 0)
    ref = prune_model(b, ids, PruneSettings(method="sparsegpt", sparsity=0.6), progress=False)
    assert [e["objective"] for e in res.log["layers"]] == [e["objective"] for e in ref["layers"]]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert abs(res.sparsity - 0.6) < 0.01


def test_prune_takes_a_recipe_dict_and_refuses_contradictions(files):
    text = str(files / "text.txt")
    recipe = {"method": "wanda", "sparsity": 0.5, "ignore": ["re:.*o_proj$"]}
    res = layerprune.prune(tiny_model("llama"), byte_tokenizer(), recipe=recipe, calib=text, nsamples=4, seqlen=32,
                           eval_text=None, progress=False)
    assert res.settings.method == "wanda" and all("o_proj" in n for n in res.log["dense_layers"])
    with pytest.raises(LayerwiseError, match=r"disagree on sparsity \(recipe 0.5, argument 0.7\)"):
        layerprune.prune(tiny_model("llama"), byte_tokenizer(), recipe=recipe, sparsity=0.7, calib=text)
    with pytest.raises(LayerwiseError, match="unknown key.*'sparsty' \\(did you mean sparsity\\?\\)"):
        layerprune.prune(tiny_model("llama"), byte_tokenizer(), recipe={"sparsty": 0.5}, calib=text)
    with pytest.raises(LayerwiseError, match="unknown key.*'nsample'"):
        layerprune.prune(tiny_model("llama"), byte_tokenizer(), nsample=4, calib=text)
    with pytest.raises(LayerwiseError, match="takes a transformers model"):
        layerprune.prune("not a model", byte_tokenizer())


def test_settings_defaults_are_defined_once(capsys):
    from layerprune.layerwise.cli import build_parser

    d = PruneSettings()
    args = build_parser().parse_args(["prune", "--output", "x"])
    from layerprune.layerwise.cli import prune_settings_given

    assert prune_settings_given(args) == {}  # nothing given: every value comes from PruneSettings
    assert (d.method, d.nsamples, d.seqlen, d.calib, d.eval_text, d.device) == ("alps", 128, 2048, "wiki", "wiki-test",
                                                                                 "cpu")
    assert d.local_search is None  # the polish where its cost model says it pays (BENCHMARKS.md)
    for command in ("prune", "demo"):  # both commands' help names the default from PruneSettings
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert "default auto)" in " ".join(capsys.readouterr().out.split())


def test_cli_recipe_file_with_targets_and_overrides(files, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "method: sparsegpt\n"
        "sparsity: 0.6\n"
        f"model: {files / 'tiny'}\n"
        "ignore: ['re:.*o_proj$']\n"
        "overrides:\n"
        "  - targets: ['re:.*down_proj$']\n"
        "    sparsity: 0.3\n"
        "  - targets: ['re:.*up_proj$']\n"
        "    pattern: '2:4'\n")
    out = tmp_path / "out"
    text = str(files / "text.txt")
    assert main(["prune", "--recipe", str(recipe), "--calib", text, "--text", text, "--nsamples", "4", "--seqlen", "32",
                 "--eval-tokens", "512", "--output", str(out), "--quiet"]) == 0
    run = json.loads((out / "layerprune_run.json").read_text())
    by_layer = {(e["block"], e["layer"]): e for e in run["layers"]}
    assert by_layer[(0, "mlp.down_proj")]["target_sparsity"] == 0.3
    assert by_layer[(1, "mlp.up_proj")]["pattern"] == "2:4"
    assert run["settings"]["method"] == "sparsegpt" and len(run["dense_layers"]) == 2
    saved = folder_tensors(out)
    dense = tiny_model("llama").state_dict()
    assert torch.equal(saved["model.layers.0.self_attn.o_proj.weight"], dense["model.layers.0.self_attn.o_proj.weight"])

    capsys.readouterr()
    # a flag that contradicts the recipe, and a recipe target that matches nothing: one line each, exit 2
    assert main(["prune", "--recipe", str(recipe), "--sparsity", "0.8", "--output", str(tmp_path / "o2")]) == 2
    assert "disagree on sparsity" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: {files / 'tiny'}\nsparsity: 0.5\nignore: ['re:.*v_proj_typo$']\n")
    assert main(["prune", "--recipe", str(bad), "--calib", text, "--no-eval", "--nsamples", "2", "--seqlen", "32",
                 "--output", str(tmp_path / "o3"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "match no layer" in err[0]
