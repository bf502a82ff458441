"""Methods declare themselves (options dataclass + capabilities) and results say how they ended."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from layerwise_tiny import byte_tokenizer, one_thread, tiny_model, tiny_text  # noqa: F401

from layerprune import available_methods, solve, solve_many
from layerprune.problems import synthetic_problem
from layerprune.solvers import STATUS, MethodOptions, OptionError, check_options, get_method, options_help
from layerprune.solvers.options import option_docs
from layerprune.solvers.result import CONVERGED, ITERATION_CAP, REFIT_NOT_CONVERGED


@pytest.mark.parametrize("method", ["alps", "sparsegpt", "wanda", "magnitude", "admm_gradual"])
def test_every_method_registers_a_documented_frozen_options_class(method):
    entry = get_method(method)
    cls = entry.options
    assert issubclass(cls, MethodOptions) and dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    docs = option_docs(cls)
    for f in dataclasses.fields(cls):
        assert docs.get(f.name), f"{method}: option {f.name} has no doc line"
        assert f"{f.name} (" in options_help(method)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cls().x = 1


def test_capabilities_live_on_the_registered_entry():
    caps = {m: get_method(m) for m in available_methods()}
    assert [m for m, e in caps.items() if e.stackable] == ["alps", "sparsegpt"]
    assert {m for m, e in caps.items() if e.stack_safe} == {"alps", "admm_gradual", "magnitude", "sparsegpt"}
    assert not caps["wanda"].needs_hessian and not caps["magnitude"].needs_hessian and caps["sparsegpt"].needs_hessian
    p = synthetic_problem(8, 16, 0.5, seed=1)
    with pytest.raises(ValueError, match=r"stacking works with \['admm_gradual', 'alps', 'magnitude', 'sparsegpt'\]"):
        solve_many([p, p.with_weight(p.weight * 2)], "wanda", stack=True, device="cpu")


def test_check_options_names_the_bad_option():
    assert check_options("alps", {"max_iter": 50}).max_iter == 50
    assert check_options("alps", {"rho0": 1}).rho0 == 1.0 and isinstance(check_options("alps", {"rho0": 1}).rho0, float)
    assert check_options("alps", {"rho_factors": [1.3, 1.2, 1.1]}).rho_factors == (1.3, 1.2, 1.1)
    opts = check_options("sparsegpt", {"blocksize": 64})
    assert check_options("sparsegpt", opts) is opts
    with pytest.raises(OptionError, match=r"alps has no option 'max_itr'; did you mean max_iter\? \(its options: rho0, max_iter"):
        check_options("alps", {"max_itr": 5})
    with pytest.raises(ValueError, match="alps option max_iter must be int, got 'x'"):
        check_options("alps", {"max_iter": "x"})
    with pytest.raises(ValueError, match="alps option refit must be bool"):
        check_options("alps", {"refit": 1})
    with pytest.raises(ValueError, match="admm_gradual option ramp must be in"):
        check_options("admm_gradual", {"ramp": 30})
    with pytest.raises(ValueError, match="unknown method 'bogus'"):
        check_options("bogus", {})
    with pytest.raises(ValueError, match="sparsegpt takes SparseGPTOptions, got WandaOptions"):
        check_options("sparsegpt", get_method("wanda").options())


def test_solve_validates_options_before_any_work(monkeypatch):
    import layerprune.solvers.registry as registry

    p = synthetic_problem(8, 16, 0.5, seed=1)
    monkeypatch.setattr(registry, "resolve_device", lambda d: pytest.fail("work started before the options check"))
    with pytest.raises(ValueError, match="did you mean max_iter"):
        solve(p, "alps", max_itr=5)
    with pytest.raises(ValueError, match="did you mean max_iter"):
        solve_many([p], "alps", max_itr=5)


def test_options_as_keywords_are_unchanged():
    p = synthetic_problem(12, 24, 0.6, seed=4)
    a = solve(p, "alps", device="cpu", rho0=0.1, max_iter=300)
    b = solve(p, "alps", device="cpu")
    assert np.array_equal(a.weight, b.weight) and a.objective == b.objective


def test_results_say_how_they_ended():
    assert STATUS[CONVERGED] == "converged" and set(STATUS) == {0, 1, 2, 3}
    p = synthetic_problem(16, 32, 0.6, seed=3)
    done = solve(p, "alps", device="cpu")
    assert done.success and done.status == CONVERGED
    capped = solve(p, "alps", device="cpu", max_iter=3)
    assert not capped.success and capped.status == ITERATION_CAP and "iteration cap" in capped.message
    refit = solve(p, "alps", device="cpu", refit_max_iter=1, refit_tol=1e-9)
    assert not refit.success and refit.status == REFIT_NOT_CONVERGED and not refit.info["refit_converged"]
    assert p.check_feasible(capped.weight) and p.check_feasible(refit.weight)  # still feasible answers
    for m in ("sparsegpt", "wanda", "magnitude", "admm_gradual"):
        r = solve(p, m, device="cpu")
        assert r.success and r.status == CONVERGED
    stacked = solve_many([p, p.with_weight(p.weight * 2)], "alps", stack=True, device="cpu", max_iter=3)
    assert all(not r.success and r.status == ITERATION_CAP for r in stacked)


def test_driver_logs_status_and_counts_unconverged_layers():
    from layerprune.layerwise.data import sample_segments, token_stream
    from layerprune.layerwise.driver import PruneSettings, prune_model

    ids = sample_segments(token_stream(byte_tokenizer(), [tiny_text(800)]), 4, 32)
    log = prune_model(tiny_model("llama"), ids, PruneSettings(method="alps", sparsity=0.6, options={"max_iter": 3}),
                      progress=False)
    assert all("success" in e and "status" in e for e in log["layers"])
    assert log["unconverged_layers"] == sum(not e["success"] for e in log["layers"]) == len(log["layers"])
    log = prune_model(tiny_model("llama"), ids, PruneSettings(method="wanda", sparsity=0.6), progress=False)
    assert log["unconverged_layers"] == 0 and all(e["status"] == 0 for e in log["layers"])
