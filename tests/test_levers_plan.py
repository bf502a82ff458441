"""benchmarks/levers.py's plan: which (lever, method, setting) rows run, and which are skipped as copies."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "levers.py"


@pytest.fixture(scope="module")
def levers():
    sys.path.insert(0, str(SCRIPT.parent))  # as when run as a script: its folder's modules (variants) import
    spec = importlib.util.spec_from_file_location("levers_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def names(plan) -> list[tuple[str, str, str]]:
    return [(lever, method, pattern if pattern != "unstructured" else str(sparsity)) for lever, method, sparsity, pattern, _ in plan]


def test_profile_only_lever_at_nm_is_skipped_as_a_copy(levers):
    plan, skipped = levers.plan_rows("alps", "0.7,2:4", "base,groups+dense,groups+dense+owl,owl")
    assert names(plan) == [("base", "alps", "0.7"), ("groups+dense", "alps", "0.7"), ("groups+dense+owl", "alps", "0.7"),
                           ("owl", "alps", "0.7"), ("base", "alps", "2:4"), ("groups+dense", "alps", "2:4")]
    assert skipped == ["groups+dense+owl alps 2:4: the same fields as groups+dense, skipped",
                       "owl alps 2:4: the same fields as base, skipped"]
    nm = {lever: fields for lever, _, _, pattern, fields in plan if pattern != "unstructured"}
    assert nm["groups+dense"]["sparsity_profile"] == "uniform"


def test_copies_are_per_method_and_setting_and_base_is_kept_once(levers):
    plan, skipped = levers.plan_rows("alps,sparsegpt", "0.5", "owl,base,dense,dense@0.25,base")
    assert names(plan) == [("owl", "alps", "0.5"), ("base", "alps", "0.5"), ("dense", "alps", "0.5"),
                           ("owl", "sparsegpt", "0.5"), ("base", "sparsegpt", "0.5"), ("dense", "sparsegpt", "0.5")]
    assert len(skipped) == 4 and all("dense@0.25" in line or line.startswith("base ") for line in skipped)
    # a different blend is a different row
    plan, skipped = levers.plan_rows("alps", "0.5", "dense,dense@0.1")
    assert [p[0] for p in plan] == ["dense", "dense@0.1"] and skipped == []
    assert plan[1][4]["target_blend"] == 0.1


def test_rows_checkpoint_beside_the_output_unless_told_otherwise(levers):
    assert levers.checkpoint_folder(None, "runs/levers.json") == Path("runs/levers.json.ckpt")
    assert levers.checkpoint_folder("ckpts", "runs/levers.json") == Path("ckpts")
    assert levers.checkpoint_folder("off", "runs/levers.json") is None
    assert levers.checkpoint_folder(None, None) is None


def test_an_output_of_another_run_is_refused(levers):
    here = {"model": "smollm2", "calib": "wiki", "text": "wiki-test", "nsamples": 128, "seqlen": 2048, "eval_tokens": 0,
            "device": "cuda"}
    levers.check_same_run({"rows": []}, here, "new.json")  # a new file
    levers.check_same_run({"rows": [], "model": "smollm2", "nsamples": 128, "seqlen": 2048}, here, "old.json")  # older fields
    levers.check_same_run(dict(here, rows=[]), here, "same.json")
    with pytest.raises(SystemExit, match=r"f.json was written by another run \(seqlen 512 there, 2048 here\)"):
        levers.check_same_run(dict(here, seqlen=512, rows=[]), here, "f.json")
    with pytest.raises(SystemExit, match=r"calib 'c4' there, 'wiki' here; device 'cpu' there, 'cuda' here"):
        levers.check_same_run(dict(here, calib="c4", device="cpu", rows=[]), here, "f.json")


def test_the_script_refuses_another_runs_output_before_loading_the_model(levers, tmp_path, monkeypatch):
    import json
    import sys

    from layerprune.layerwise import models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output file was checked")

    monkeypatch.setattr(models, "load_model", no_load)
    out = tmp_path / "rows.json"
    out.write_text(json.dumps({"rows": [], "model": "smollm2", "eval_tokens": 4096}))
    monkeypatch.setattr(sys, "argv", ["levers.py", "--device", "cpu", "--methods", "magnitude", "--settings", "0.5",
                                      "--levers", "base", "--output", str(out)])
    with pytest.raises(SystemExit, match="eval_tokens 4096 there, 0 here"):
        levers.main()


def test_an_alps_option_lever_runs_for_alps_only(levers):
    plan, skipped = levers.plan_rows("alps,sparsegpt", "0.7", "groups+dense+owl,groups+dense+owl+slow")
    assert names(plan) == [("groups+dense+owl", "alps", "0.7"), ("groups+dense+owl+slow", "alps", "0.7"),
                           ("groups+dense+owl", "sparsegpt", "0.7")]
    assert skipped == ["groups+dense+owl+slow sparsegpt 0.7 unstructured: alps only, skipped"]
    fields = plan[1][4]
    assert fields["options"] == {"rho_factors": (1.1, 1.05, 1.02), "max_iter": 1000} and fields["sequential"] == "groups"
    fields["options"]["max_iter"] = 5  # each row's options are its own
    assert levers.lever_fields("slow")["options"]["max_iter"] == 1000


def test_the_auto_polish_lever_is_its_own_row(levers):
    plan, skipped = levers.plan_rows("sparsegpt", "0.7", "all,groups+dense+owl+auto")
    assert names(plan) == [("all", "sparsegpt", "0.7"), ("groups+dense+owl+auto", "sparsegpt", "0.7")] and not skipped
    assert plan[0][4]["local_search"] is True and plan[1][4]["local_search"] is None
    assert {k: v for k, v in plan[1][4].items() if k != "local_search"} == {
        k: v for k, v in plan[0][4].items() if k != "local_search"}
