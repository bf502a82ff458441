"""One entry point, ``solve(problem, method=...)``, and the method registry.

A method is a function ``fn(problem, xp, dtype, cache, **options) -> MethodOutput``
working on ``problem``'s arrays already moved to backend ``xp``. The harness
here times it, checks feasibility and scores it with ``problem.objective``, so
every method is judged by the same code.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from layerprune.problems.backend import resolve_device, synchronize, to_numpy, to_xp, xp_for
from layerprune.solvers.result import MethodOutput, SolveResult

_METHODS: dict[str, Callable[..., MethodOutput]] = {}
_PROVIDERS = ("layerprune.solvers.alps", "layerprune.baselines")


def register(name: str) -> Callable:
    """Decorator: make ``fn`` available as ``solve(..., method=name)``."""

    def deco(fn: Callable[..., MethodOutput]) -> Callable[..., MethodOutput]:
        _METHODS[name] = fn
        return fn

    return deco


def _load_providers() -> None:
    for mod in _PROVIDERS:
        importlib.import_module(mod)


def available_methods() -> list[str]:
    _load_providers()
    return sorted(_METHODS)


def get_method(name: str) -> Callable[..., MethodOutput]:
    _load_providers()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}") from None


def solve(
    problem,
    method: str = "alps",
    *,
    device: str | None = None,
    dtype: Any = None,
    keep_array_type: bool = False,
    cache: dict | None = None,
    **options: Any,
) -> SolveResult:
    """Solve one layer's pruning problem with ``method``.

    device : "cpu", "cuda" or None (GPU when CuPy sees one).
    dtype : working precision of the method (default float32; "float64" for references).
    keep_array_type : return weight/mask in the problem's own array type (torch, CuPy)
        instead of NumPy.
    cache : a dict shared across calls on layers with the same Hessian (q/k/v, gate/up)
        so factorizations are computed once; see :func:`solve_many`.
    options : passed to the method (see each method's docstring).
    """
    p, dev, out, weight, mask, seconds = _run(problem, method, device, dtype, cache, options)
    return SolveResult(
        **_scored(p, problem, weight, mask, keep_array_type),
        seconds=seconds,
        iterations=int(out.iterations),
        history=out.history,
        method=method,
        pattern=p.pattern.name,
        device=dev,
        message=out.message,
        info=out.info,
    )


def _run(problem, method: str, device, dtype, cache: dict | None, options: dict):
    """Run ``method`` on ``problem`` moved to the device, timed, and check its answer:
    (problem on xp, device, MethodOutput, weight ⊙ mask, mask, seconds)."""
    from layerprune.problems import LayerProblem

    if not isinstance(problem, LayerProblem):
        raise TypeError(f"solve() takes a LayerProblem, got {type(problem).__name__}")
    fn = get_method(method)
    dev = resolve_device(device)
    xp = xp_for(dev)
    work_dtype = np.dtype(dtype or np.float32)
    if work_dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {work_dtype}")
    p = problem.on(xp)
    synchronize(xp)
    t0 = time.perf_counter()
    out = fn(p, xp=xp, dtype=work_dtype, cache={} if cache is None else cache, **options)
    synchronize(xp)
    seconds = time.perf_counter() - t0

    mask = p.drop_dead(out.mask.astype(bool))  # dead input channels are pruned (LayerProblem)
    weight = to_xp(out.weight, xp) * mask
    if not p.pattern.is_feasible(mask, p.sparsity):
        raise RuntimeError(f"method {method!r} returned a support that violates pattern {p.pattern.name}")
    if not bool(xp.isfinite(weight).all()):
        raise RuntimeError(f"method {method!r} returned NaN/Inf weights")
    return p, dev, out, weight, mask, seconds


def _scored(p, problem, weight, mask, keep_array_type: bool) -> dict:
    """The judged part of a SolveResult: objective by ``p`` (the problem on the solving backend),
    then weight and mask in ``problem``'s array type or NumPy."""
    objective = p.objective(weight)
    sparsity = 1.0 - float(mask.sum()) / mask.size  # before leaving xp (torch's .size is a method)
    weight = weight.astype(p.weight.dtype, copy=False)
    if keep_array_type:
        from layerprune.problems.backend import like_input

        template = problem.origin if problem.origin is not None else problem.weight
        weight, mask = like_input(weight, template), like_input(mask, template)
    else:
        weight, mask = to_numpy(weight), to_numpy(mask)
    return {"weight": weight, "mask": mask, "objective": objective, "relative_error": p.relative(objective),
            "sparsity": sparsity}


STACKABLE = {"alps"}  # methods that solve layers sharing one H as one stack by default, ...
STACK_ENTRIES = 1 << 20  # ... when the stack has at most this many weights (BENCHMARKS.md, stacked layers)
STACK_SAFE = {"alps", "admm_gradual", "magnitude"}  # methods that keep each layer's count in a stack (StackedPattern)


def solve_many(problems, method: str = "alps", *, stack: bool | None = None, **options: Any) -> list[SolveResult]:
    """Solve layers that share one Hessian (q/k/v, gate/up) with one factorization.

    The Hessian's factorization (ALPS's eigendecomposition, SparseGPT's Cholesky factor)
    is computed once. With ``stack`` their rows are stacked into one problem, so each
    ADMM step is one product for all of them; each layer keeps its own constraint (an
    unstructured count stays per layer: ``StackedPattern``). Default: for ALPS, when the
    layers share the pattern and sparsity and the stack has at most ``STACK_ENTRIES``
    weights: there one solve instead of several saves kernel launches (SmolLM2's q/k/v),
    while on larger stacks it saves no time and holds every layer's buffers at once
    (``stack=False`` solves one layer at a time with the shared factorization).

    A stacked result is scored on its own layer; its ``seconds`` is the joint solve's time
    shared in proportion to rows (``info["joint_seconds"]`` holds the whole), and its
    iterations, history, message and ``info`` (errors, phase times, local-search counts)
    describe the joint solve.
    """
    problems = list(problems)
    if not problems:
        return []
    first = problems[0]
    xp = first.xp
    for p in problems[1:]:
        same = (
            p.raw_hessian is first.raw_hessian
            or (p.raw_hessian.shape == first.raw_hessian.shape and bool(xp.array_equal(p.raw_hessian, first.raw_hessian)))
        )
        if not same or p.damping != first.damping:
            raise ValueError("solve_many needs problems with the same Hessian and damping (e.g. q/k/v of one block)")
    cache: dict = options.pop("cache", None) or {}
    uniform = all(p.pattern == first.pattern and p.sparsity == first.sparsity for p in problems)
    if stack is None:
        stack = method in STACKABLE and uniform and sum(p.weight.size for p in problems) <= STACK_ENTRIES
    if stack and len(problems) > 1:
        if not uniform:
            raise ValueError("stack=True needs layers with one pattern and sparsity")
        if method not in STACK_SAFE:
            raise ValueError(f"stack=True: method {method!r} selects across the whole stack, not per layer; "
                             f"stacking works with {sorted(STACK_SAFE)}")
        return _solve_stacked(problems, method, cache, **options)
    return [solve(p, method, cache=cache, **options) for p in problems]


def _solve_stacked(problems, method: str, cache: dict, keep_array_type: bool = False, device=None, dtype=None,
                   **options: Any) -> list[SolveResult]:
    """One solve of the layers' rows stacked (see ``solve_many``), scored and returned per layer."""
    from layerprune.problems.patterns import StackedPattern

    first = problems[0]
    joint = first.with_weight(first.xp.concatenate([p.weight for p in problems]), name="+".join(p.name for p in problems))
    joint.pattern = StackedPattern.of(first.pattern, [p.shape[0] for p in problems])  # each layer's own constraint
    j, dev, out, weight, mask, seconds = _run(joint, method, device, dtype, cache, options)
    results, start = [], 0
    for p in problems:
        part = slice(start, start + p.shape[0])
        start = part.stop
        results.append(SolveResult(
            **_scored(p.on(j.xp), p, weight[part], mask[part], keep_array_type),
            seconds=seconds * p.shape[0] / joint.shape[0], iterations=int(out.iterations), history=list(out.history),
            method=method, pattern=p.pattern.name, device=dev, message=out.message,
            info={**out.info, "joint_seconds": seconds, "stacked_layers": len(problems)},
        ))
    return results
