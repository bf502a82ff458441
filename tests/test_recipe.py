"""Recipes' layer rules: targets, ignore, per-layer overrides (unit and on a tiny model)."""

from __future__ import annotations

import pytest
import torch
from layerwise_tiny import byte_tokenizer, one_thread, tiny_model, tiny_text  # noqa: F401

from layerprune.layerwise.data import sample_segments, token_stream
from layerprune.layerwise.driver import PruneSettings, prune_model
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import block_linears, find_blocks
from layerprune.layerwise.recipe import Override, load_recipe, matches, plan_layers

NAMES = [(f"model.layers.{i}.{n}", "Linear") for i in range(2)
         for n in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")]


def test_matching_follows_llm_compressor():
    assert matches("Linear", "model.layers.0.mlp.down_proj", "Linear")
    assert matches("model.layers.0.mlp.down_proj", "model.layers.0.mlp.down_proj", "Linear")
    assert not matches("mlp.down_proj", "model.layers.0.mlp.down_proj", "Linear")  # a plain name is the full name
    assert matches("re:.*down_proj$", "model.layers.0.mlp.down_proj", "Linear")
    assert not matches("re:down_proj", "model.layers.0.mlp.down_proj", "Linear")  # re.match: from the start


def test_plan_targets_ignore_and_overrides():
    plans = plan_layers(NAMES, ["Linear"], ["re:.*o_proj$"],
                        (Override(("re:.*down_proj$",), {"sparsity": 0.5}),
                         Override(("re:model\\.layers\\.0\\.",), {"method": "wanda"})))
    assert set(plans) == {n for n, _ in NAMES if "o_proj" not in n}
    assert plans["model.layers.0.mlp.down_proj"] == {"sparsity": 0.5, "method": "wanda"}
    assert plans["model.layers.1.mlp.down_proj"] == {"sparsity": 0.5}
    assert plans["model.layers.1.self_attn.q_proj"] == {}


@pytest.mark.parametrize(("targets", "ignore", "overrides", "match"), [
    (["re:.*v_proj$"], [], (), "match no layer"),
    (["Linear"], ["model.layers.7.mlp.down_proj"], (), "match no layer"),
    (["Linear"], [], (Override(("re:.*k_proj$",), {"sparsity": 0.5}),), "match no pruned layer"),
    (["Linear"], ["re:.*o_proj$"], (Override(("re:.*o_proj$",), {"sparsity": 0.5}),), "ignore leaves them dense"),
    (["re:.*q_proj$"], [], (Override(("re:.*down_proj$",), {"sparsity": 0.5}),), "no target prunes them"),
    (["Linear"], [], (Override(("re:.*down_proj$",), {"sparsity": 0.5}), Override(("Linear",), {"sparsity": 0.6})),
     r"overrides\[0\] and overrides\[1\] both set sparsity"),
])
def test_contradictions_and_dead_entries_are_named(targets, ignore, overrides, match):
    with pytest.raises(LayerwiseError, match=match):
        plan_layers(NAMES, targets, ignore, overrides)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(overrides=[{"targets": ["Linear"], "sparsty": 0.5}]), "unknown key"),
    (dict(overrides=[{"sparsity": 0.5}]), "no 'targets'"),
    (dict(overrides=[{"targets": ["Linear"]}]), "sets nothing"),
    (dict(overrides=[{"targets": ["Linear"], "sparsity": 1.5}]), r"overrides\[0\]: sparsity must be in"),
    (dict(overrides=[{"targets": ["Linear"], "pattern": "2:4", "sparsity": 0.7}]), "fixes the sparsity"),
    (dict(overrides=[{"targets": ["Linear"], "method": "bogus"}]), "unknown method"),
    (dict(overrides=[{"targets": ["Linear"], "options": {"max_itr": 3}}]), "did you mean max_iter"),
    (dict(ignore=["re:("]), "not a regular expression"),
    (dict(targets="re:.*"), None),
])
def test_settings_check_recipe_entries_before_any_work(kwargs, match):
    s = PruneSettings(method="alps", sparsity=0.7, **kwargs)
    if match is None:
        s.validate()
        assert s.targets == ("re:.*",)
        return
    with pytest.raises(LayerwiseError, match=match):
        s.validate()


def test_yaml_recipe_files(tmp_path):
    (tmp_path / "r.yaml").write_text("method: sparsegpt\nsparsity: 0.6\nignore: ['re:.*o_proj$']\n")
    assert load_recipe(tmp_path / "r.yaml") == {"method": "sparsegpt", "sparsity": 0.6, "ignore": ["re:.*o_proj$"]}
    (tmp_path / "bad.yaml").write_text("method: [unclosed\n")
    with pytest.raises(LayerwiseError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(LayerwiseError, match="must hold a mapping"):
        load_recipe(tmp_path / "list.yaml")
    with pytest.raises(LayerwiseError, match="does not exist"):
        load_recipe(tmp_path / "none.yaml")


def test_a_tiny_model_pruned_by_a_recipe():
    model = tiny_model("llama")
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    ids = sample_segments(token_stream(byte_tokenizer(), [tiny_text(2000)]), 4, 32, 0)
    settings = PruneSettings(method="sparsegpt", sparsity=0.6, sparsity_profile="uniform", ignore=["re:.*o_proj$"], overrides=[
        {"targets": ["re:.*down_proj$"], "sparsity": 0.3},
        {"targets": ["re:.*up_proj$"], "pattern": "2:4"},
        {"targets": ["re:model\\.layers\\.0\\.self_attn\\.q_proj$"], "method": "wanda"},
    ])
    log = prune_model(model, ids, settings, progress=False)
    by = {(e["block"], e["layer"]): e for e in log["layers"]}
    assert log["dense_layers"] == ["model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"]
    path, blocks = find_blocks(model)
    for i, block in enumerate(blocks):
        for name, lin in block_linears(block).items():
            w = lin.weight.detach()
            if name.endswith("o_proj"):
                assert torch.equal(w, dense[f"{path}.{i}.{name}.weight"])  # ignored: untouched
                continue
            zeros = float((w == 0).float().mean())
            e = by[(i, name)]
            want = 0.3 if name.endswith("down_proj") else 0.5 if name.endswith("up_proj") else 0.6
            assert abs(zeros - want) < 0.02 and abs(e["target_sparsity"] - want) < 1e-9, name
            assert e["pattern"] == ("2:4" if name.endswith("up_proj") else "unstructured")
            assert e["method"] == ("wanda" if (i, name) == (0, "self_attn.q_proj") else "sparsegpt")


def test_an_override_is_resolved_as_the_layer_will_be():
    s = PruneSettings(method="alps", sparsity=0.7, overrides=[{"targets": ["Linear"], "pattern": "row"},
                                                               {"targets": ["Linear"], "method": "wanda"}])
    s.validate()  # a row pattern without a sparsity takes the run's
    assert s.layer({"pattern": "row"}) == ("alps", {}, 0.7, "row")
    assert s.layer({"method": "wanda"})[:2] == ("wanda", {})  # the run's options are alps's, not wanda's


def test_an_options_object_is_taken_as_its_fields():
    from layerprune.solvers.alps import ALPSOptions

    s = PruneSettings(method="alps", sparsity=0.7, options=ALPSOptions(max_iter=20))
    s.validate()
    assert isinstance(s.options, dict) and s.options["max_iter"] == 20
