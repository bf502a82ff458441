"""One entry point, ``solve(problem, method=...)``, and the method registry.

A method is a function ``fn(problem, xp, dtype, cache, options) -> MethodOutput``
working on ``problem``'s arrays already moved to backend ``xp``, registered with
its options class (a frozen :class:`~layerprune.solvers.options.MethodOptions`)
and its capabilities (:class:`Method`). The harness here checks the options
before any work, times the method, checks feasibility and scores it with
``problem.objective``, so every method is judged by the same code.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from layerprune.problems.backend import device_scope, resolve_device, synchronize, to_numpy, to_xp, xp_for
from layerprune.solvers.options import MethodOptions, build_options, describe_options
from layerprune.solvers.polish import check_polish, polish_answer
from layerprune.solvers.result import MethodOutput, SolveResult, status_ok


@dataclass(frozen=True)
class Method:
    """A registered method: its function, its options class and what it can do.

    stackable : ``solve_many`` stacks a group of layers sharing one H into one solve by default, when
        the stack has at most ``stack_entries`` weights.
    stack_safe : keeps each layer's own count when layers are stacked (``StackedPattern``).
    needs_hessian : reads the full H (False: only diag H, or nothing).
    gpu : runs on CuPy arrays as well as NumPy.
    """

    name: str
    fn: Callable[..., MethodOutput]
    options: type = MethodOptions
    stackable: bool = False
    stack_safe: bool = False
    stack_entries: float | None = None  # None: ``STACK_ENTRIES``, read when solving
    needs_hessian: bool = True
    gpu: bool = True


STACK_ENTRIES = 1 << 20  # a stackable method's default stack limit, in weights (ALPS's, BENCHMARKS.md)
_METHODS: dict[str, Method] = {}
_PROVIDERS = ("layerprune.solvers.alps", "layerprune.baselines")


def register(name: str, *, options: type = MethodOptions, stackable: bool = False, stack_safe: bool = False,
             stack_entries: float | None = None, needs_hessian: bool = True, gpu: bool = True) -> Callable:
    """Decorator: make ``fn`` available as ``solve(..., method=name)``, with its options class and capabilities."""
    if not (isinstance(options, type) and issubclass(options, MethodOptions)):
        raise TypeError(f"register({name!r}): options must be a MethodOptions dataclass, got {options!r}")

    def deco(fn: Callable[..., MethodOutput]) -> Callable[..., MethodOutput]:
        _METHODS[name] = Method(name, fn, options, stackable=stackable, stack_safe=stack_safe,
                                stack_entries=stack_entries,
                                needs_hessian=needs_hessian, gpu=gpu)
        return fn

    return deco


def _load_providers() -> None:
    for mod in _PROVIDERS:
        importlib.import_module(mod)


def available_methods() -> list[str]:
    _load_providers()
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    """The registered :class:`Method` ``name``; ValueError naming the known ones otherwise."""
    _load_providers()
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}") from None


def check_options(method: str, options: dict | MethodOptions | None = None) -> MethodOptions:
    """``method``'s options dataclass built from ``options``, or :class:`OptionError` (a ValueError)
    naming the bad one: an unknown name (with a close match and the method's options listed),
    a wrong type or an out-of-range value. Costs nothing: call it before loading anything."""
    entry = get_method(method)
    return build_options(method, entry.options, options)


def options_help(method: str) -> str:
    """``method``'s options with their types, defaults and docs (``layerprune solve --help-options``)."""
    entry = get_method(method)
    return describe_options(method, entry.options)


def solve(
    problem,
    method: str = "alps",
    *,
    device: str | None = None,
    dtype: Any = None,
    keep_array_type: bool = False,
    cache: dict | None = None,
    polish: bool | None = False,
    **options: Any,
) -> SolveResult:
    """Solve one layer's pruning problem with ``method``.

    device : "cpu", "cuda", "cuda:N" or None (GPU when CuPy sees one); a GPU solve runs with
        that device current for CuPy (``cupy.cuda.Device(N)``).
    dtype : working precision of the method (default float32; "float64" for references).
    keep_array_type : return weight/mask in the problem's own array type (torch, CuPy)
        instead of NumPy.
    cache : a dict shared across calls on layers with the same Hessian (q/k/v, gate/up)
        so factorizations are computed once; see :func:`solve_many`.
    polish : after the method, improve its support by exact local search and refit it
        (``solvers.polish``): False (default) never, True always, None where the cost model
        says it pays (``solvers.polish.polish_pays``); its time is part of ``seconds``.
    options : the method's options (the fields of its options class, e.g. ``ALPSOptions``),
        checked before any work (:func:`check_options`).
    """
    check_polish(polish)
    dev = _checked_device(method, options, device)
    with device_scope(dev):
        p, out, weight, mask, seconds = _run(problem, method, dev, dtype, cache, options, polish)
        scored = _scored(p, problem, weight, mask, keep_array_type)
    return SolveResult(
        **scored,
        seconds=seconds,
        iterations=int(out.iterations),
        history=out.history,
        method=method,
        pattern=p.pattern.name,
        device=dev,
        message=out.message,
        info=out.info,
        success=status_ok(out.status),
        status=int(out.status),
    )


def _checked_device(method: str, options: dict, device: str | None) -> str:
    """The resolved device for ``method``, after its options are checked (both before any work)."""
    entry = get_method(method)
    check_options(method, options)
    dev = resolve_device(device)
    if dev.startswith("cuda") and not entry.gpu:
        raise ValueError(f"method {method!r} runs on NumPy only: use device='cpu'")
    return dev


def _run(problem, method: str, dev: str, dtype, cache: dict | None, options: dict, polish: bool | None = False):
    """Run ``method`` on ``problem`` moved to the resolved device ``dev`` (current for CuPy),
    timed, polished when ``polish`` asks (``solvers.polish``), and check its answer:
    (problem on xp, MethodOutput, weight ⊙ mask, mask, seconds)."""
    from layerprune.problems import LayerProblem

    if not isinstance(problem, LayerProblem):
        raise TypeError(f"solve() takes a LayerProblem, got {type(problem).__name__}")
    entry = get_method(method)
    opts = check_options(method, options)
    xp = xp_for(dev)
    work_dtype = np.dtype(dtype or np.float32)
    if work_dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {work_dtype}")
    p = problem.on(xp)
    synchronize(xp)
    t0 = time.perf_counter()
    out = entry.fn(p, xp=xp, dtype=work_dtype, cache={} if cache is None else cache, options=opts)
    if polish is not False:
        polish_answer(p, out, xp, dev, polish)
    synchronize(xp)
    seconds = time.perf_counter() - t0

    mask = p.drop_dead(out.mask.astype(bool))  # dead input channels are pruned (LayerProblem)
    weight = to_xp(out.weight, xp) * mask
    if not p.pattern.is_feasible(mask, p.sparsity):
        raise RuntimeError(f"method {method!r} returned a support that violates pattern {p.pattern.name}")
    if not bool(xp.isfinite(weight).all()):
        raise RuntimeError(f"method {method!r} returned NaN/Inf weights")
    return p, out, weight, mask, seconds


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


_HARNESS = ("cache", "device", "dtype", "keep_array_type", "polish")  # solve()'s own arguments, not method options


def stacks_by_default(problems, method: str) -> bool:
    """Whether ``solve_many(problems, method)`` stacks them into one solve when ``stack`` is not given:
    a ``stackable`` method, one pattern and sparsity, at most the method's ``stack_entries`` weights in all."""
    problems = list(problems)
    first = problems[0]
    uniform = all(p.pattern == first.pattern and p.sparsity == first.sparsity for p in problems)
    entry = get_method(method)
    limit = STACK_ENTRIES if entry.stack_entries is None else entry.stack_entries
    return bool(entry.stackable and uniform and sum(p.weight.size for p in problems) <= limit)


def solve_many(problems, method: str = "alps", *, stack: bool | None = None, **options: Any) -> list[SolveResult]:
    """Solve layers that share one Hessian (q/k/v, gate/up) with one factorization.

    The Hessian's factorization (ALPS's eigendecomposition, SparseGPT's Cholesky factor)
    is computed once. With ``stack`` their rows are stacked into one problem, so each
    ADMM step is one product for all of them; each layer keeps its own constraint (an
    unstructured count stays per layer: ``StackedPattern``). Default: for a ``stackable``
    method, when the layers share the pattern and sparsity and the stack has at most the
    method's ``stack_entries`` weights. ALPS: ``STACK_ENTRIES``, where one solve instead of several
    saves kernel launches (SmolLM2's q/k/v), while on larger stacks it saves no time and holds every
    layer's buffers at once; SparseGPT: any size, its column sweep costs the same kernel launches
    for any number of rows (``stack=False`` solves one layer at a time with the shared factorization).

    A stacked result is scored on its own layer; its ``seconds`` is the joint solve's time
    shared in proportion to rows (``info["joint_seconds"]`` holds the whole), and its
    iterations, history, message and ``info`` (errors, phase times, local-search counts)
    describe the joint solve.
    """
    entry = get_method(method)
    check_options(method, {k: v for k, v in options.items() if k not in _HARNESS})  # before any work
    check_polish(options.get("polish", False))
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
    cache = options.pop("cache", None)
    cache = {} if cache is None else cache  # an empty dict given is filled, so the caller can share it
    uniform = all(p.pattern == first.pattern and p.sparsity == first.sparsity for p in problems)
    if stack is None:
        stack = stacks_by_default(problems, method)
    if stack and len(problems) > 1:
        if not uniform:
            raise ValueError("stack=True needs layers with one pattern and sparsity")
        if not entry.stack_safe:
            safe = sorted(m.name for m in _METHODS.values() if m.stack_safe)
            raise ValueError(f"stack=True: method {method!r} selects across the whole stack, not per layer; "
                             f"stacking works with {safe}")
        return _solve_stacked(problems, method, cache, **options)
    return [solve(p, method, cache=cache, **options) for p in problems]


def _solve_stacked(problems, method: str, cache: dict, keep_array_type: bool = False, device=None, dtype=None,
                   polish: bool | None = False, **options: Any) -> list[SolveResult]:
    """One solve of the layers' rows stacked (see ``solve_many``), scored and returned per layer."""
    from layerprune.problems.patterns import StackedPattern

    first = problems[0]
    joint = first.transformed().with_weight(first.xp.concatenate([p.weight for p in problems]),  # Ŵ′ rows (dense targets)
                                            name="+".join(p.name for p in problems))
    joint.pattern = StackedPattern.of(first.pattern, [p.shape[0] for p in problems])  # each layer's own constraint
    dev = _checked_device(method, options, device)
    with device_scope(dev):
        j, out, weight, mask, seconds = _run(joint, method, dev, dtype, cache, options, polish)
        scored, start = [], 0
        for p in problems:
            part = slice(start, start + p.shape[0])
            start = part.stop
            scored.append(_scored(p.on(j.xp), p, weight[part], mask[part], keep_array_type))
    results = []
    for p, part in zip(problems, scored):
        results.append(SolveResult(
            **part,
            seconds=seconds * p.shape[0] / joint.shape[0], iterations=int(out.iterations), history=list(out.history),
            method=method, pattern=p.pattern.name, device=dev, message=out.message,
            info={**out.info, "joint_seconds": seconds, "stacked_layers": len(problems)},
            success=status_ok(out.status), status=int(out.status),
        ))
    return results
