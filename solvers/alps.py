"""ALPS (Meng et al., 2024): operator splitting with a rising penalty, then a PCG refit.

Normalized coordinates: d = √diag H, Hn = D⁻¹ H D⁻¹ (unit diagonal), B = Ŵ D,
G = B Hn, so f(W) = tr((X − B) Hn (X − B)ᵀ) with W = X D⁻¹. With the pattern's
projection P (keep the largest |·| allowed) and the scaled dual V, ADMM on
min f(X) s.t. X = Dv, Dv ∈ pattern iterates (all arrays out × in)::

    X  ← (G − V + ρ Dv) (Hn + ρI)⁻¹          (Hn = Q Λ Qᵀ once; (Hn + ρI)⁻¹ = Q (Λ+ρ)⁻¹ Qᵀ)
    Dv ← P(X + V/ρ)
    V  ← V + ρ (X − Dv)

Every ``check_every`` iterations the support change c (entries entering or
leaving, against the kept count k) drives ρ: c/k > 10% → ×1.3, > 0.5% → ×1.2,
any change → ×1.1; no change stops once ρ has risen (if it never rose, ρ was
too large: ρ/5 and restart). ρ ≤ 1e6, ≤ 300 iterations, early stop after 30
iterations once c/k < 3·10⁻⁴. On small problems (or on request) the final support is then
improved by exact local search (``solvers.local_search``: moves between rows for a per-layer
count, swaps inside rows otherwise). The final support is refit exactly
by batched PCG (``solvers.pcg``) and the scaling undone: W = X D⁻¹. The projected iterate
is feasible by construction, so a run stopped by the iteration cap still returns a
feasible point: the refit on its last support.

Memory: the loop holds G, Z = X + V/ρ and one scratch (out × in), Q and, when in ≤ out,
(Hn + ρI)⁻¹ (in × in; for in > out the X-update goes through Q twice instead,
``ShiftedInverse``), two masks, and one block of rows for the X-update
(``NormalizedProblem.blocks``); the projection selects its threshold inside the scratch
array without copying the scores. The refit's products with Hn reuse the inverse's buffer,
or go through the problem's H when there is none (``NormalizedProblem.hn_operator``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from layerprune.problems.backend import PhaseClock, matmul_precision
from layerprune.solvers.linalg import syevd_fits
from layerprune.solvers.normalized import NormalizedProblem, ShiftedInverse
from layerprune.solvers.options import MethodOptions, OptionError
from layerprune.solvers.pcg import masked_pcg
from layerprune.solvers.polish import POLISH_BUDGET, search_cost, search_support, segments, skipped_out_of_memory
from layerprune.solvers.registry import register
from layerprune.solvers.result import CONVERGED, ITERATION_CAP, REFIT_NOT_CONVERGED, SUPPORT_FROZEN, MethodOutput


def pcg_refit(norm: NormalizedProblem, X, mask, Hn, before: float, tol: float | None, max_iter: int):
    """PCG refit of X on ``mask``, in place; Hn (matrix or product map) from the caller; returns (X, info).

    CG from a warm start decreases the objective monotonically (up to rounding), so
    ADMM's point is not kept aside; ``info`` records the error ``before`` and after.
    """
    tol = tol if tol is not None else (1e-10 if norm.dtype.itemsize >= 8 else 1e-5)
    X_fit, pcg = masked_pcg(Hn, norm.G, mask, X, norm.xp, tol=tol, max_iter=max_iter, inplace=True,
                            blocks=norm.blocks)
    after = norm.rel_error(X_fit)
    info = {
        "admm_rel_error": before,
        "refit_rel_error": after,
        "refit_iterations": pcg.iterations,
        "refit_residual": pcg.residual,
        "refit_converged": pcg.converged,
    }
    return X_fit, info


@dataclass(frozen=True)
class ALPSOptions(MethodOptions):
    """ALPS's options, with the paper's defaults (``solve(problem, "alps", **options)``).

    rho0 : initial penalty ρ₀ (0.1).
    max_iter : ADMM iteration cap (300).
    check_every : iterations between support-change checks and ρ updates (3).
    rho_max : cap on ρ (1e6).
    early_stop_after, early_stop_change : stop once past this many iterations and c/k < this.
    max_restarts : how many times ρ may be divided by 5 and ADMM restarted.
    refit : run the PCG refit on the final support (True).
    refit_tol : relative masked-residual tolerance (default 1e-5 in float32, 1e-10 in float64).
    refit_max_iter : PCG iteration cap (200).
    track_error : record the relative error of the projected iterate at each check.
    rho_factors : ρ multipliers for c/k > 10%, > 0.5% and any change ((1.3, 1.2, 1.1)).
    eig_dtype : precision of the eigendecomposition (float64 on CPU, the working dtype on GPU).
    tf32 : on the GPU in float32, run the ADMM products in TF32 while the support still moves
        by more than 0.5% per check, then in full float32 (refit always float32). Off by default:
        on an H100 it cut 4096×4096 from 0.49 s to 0.39 s but raised the error 0.1–0.6% (BENCHMARKS.md).
    local_search : after ADMM, improve the support exactly before the refit (``solvers.local_search``;
        only with ``refit``: the gains assume it): ``unstructured`` by moves of kept entries between
        rows (the count per layer is kept), ``row`` and N:M by swaps inside a row (or group).
        None (default): only when out · k² · in ≤ ``local_search_budget`` (k the largest count per
        row), i.e. on small problems, where it costs little; at most ``local_search_swaps`` swaps per
        row, or that many moves per row on average. True on SmolLM2's layers lowers the error by
        1–9 % at seconds to minutes per layer on a CPU (BENCHMARKS.md). A search that runs out of
        memory leaves ADMM's support to the refit, with a warning and ``info["local_search_out_of_memory"]``.
    local_search_budget : the out · k² · in below which ``local_search=None`` searches
        (``solvers.polish.POLISH_BUDGET["cpu"]``, 1e7).
    local_search_swaps : the most swaps per row (or moves per row on average) of the local search (50).
    explicit_inverse : form (Hn + ρI)⁻¹ (in × in) at each ρ, or apply it through Q twice
        (``solvers.normalized.ShiftedInverse``); None (default): explicit when in ≤ out. Without
        the explicit inverse the refit's products go through the problem's H (no in × in buffer).
    staged_eigh : eigendecompose in stages with a bounded workspace (``solvers.staged_eigh``:
        about 1.1 in² beside the matrix instead of cuSOLVER syevd's 4 in², for a slower host
        step); None (default): staged on the GPU only when syevd's workspace does not fit in
        the free device memory (``solvers.linalg.syevd_fits``).
    """

    rho0: float = 0.1
    max_iter: int = 300
    check_every: int = 3
    rho_max: float = 1e6
    early_stop_after: int = 30
    early_stop_change: float = 3e-4
    max_restarts: int = 12
    refit: bool = True
    refit_tol: float | None = None
    refit_max_iter: int = 200
    track_error: bool = True
    rho_factors: tuple[float, float, float] = (1.3, 1.2, 1.1)
    eig_dtype: Any = None
    tf32: bool = False
    local_search: bool | None = None
    local_search_budget: float = POLISH_BUDGET["cpu"]
    local_search_swaps: int = 50
    explicit_inverse: bool | None = None
    staged_eigh: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(self.rho0 > 0, "rho0", "> 0")
        self.require(self.max_iter >= 1, "max_iter", "≥ 1")
        self.require(self.check_every >= 1, "check_every", "≥ 1")
        self.require(self.rho_max >= self.rho0, "rho_max", f"≥ rho0 ({self.rho0:g})")
        self.require(self.early_stop_after >= 0, "early_stop_after", "≥ 0")
        self.require(self.early_stop_change >= 0, "early_stop_change", "≥ 0")
        self.require(self.max_restarts >= 0, "max_restarts", "≥ 0")
        self.require(self.refit_tol is None or self.refit_tol > 0, "refit_tol", "> 0 or null")
        self.require(self.refit_max_iter >= 0, "refit_max_iter", "≥ 0")
        self.require(all(f >= 1 for f in self.rho_factors), "rho_factors", "three factors ≥ 1")
        self.require(self.local_search_budget >= 0, "local_search_budget", "≥ 0")
        self.require(self.local_search_swaps >= 0, "local_search_swaps", "≥ 0")
        if self.eig_dtype is not None:
            try:
                kind = np.dtype(self.eig_dtype).kind
            except TypeError:
                kind = ""
            if kind != "f":
                raise OptionError(f"option eig_dtype must be a floating dtype such as 'float64', got {self.eig_dtype!r}")


@register("alps", options=ALPSOptions, stackable=True, stack_safe=True, needs_hessian=True, gpu=True)
def alps(problem, xp, dtype, cache, options: ALPSOptions) -> MethodOutput:
    """ALPS on ``problem`` with ``options`` (:class:`ALPSOptions`, the paper's defaults)."""
    opts = options
    use_tf32 = bool(opts.tf32) and xp is not np and dtype == np.float32
    with matmul_precision(xp, "tf32" if use_tf32 else "float32") as precision:
        return _alps(problem, xp, dtype, cache, precision, use_tf32, opts)


def _layers(pattern) -> list[slice]:
    """Row ranges of the layers in the problem: several for a stack (``solve_many``), else one."""
    return segments(pattern)


def _wants_local_search(local_search: bool | None, budget: float, mask, layers: list[slice]) -> bool:
    """The explicit choice, or (None) whether out · k² · in fits in ``budget`` for every layer."""
    if local_search is not None:
        return bool(local_search)
    return search_cost(mask, layers) <= budget


def _local_search(norm: NormalizedProblem, mask, Hn, max_swaps: int) -> tuple:
    """Exact local search on the solving backend in float64 (``solvers.polish.search_support``,
    batched over rows: ``solvers.batched_search``): (mask on xp, info key, count)."""
    xp = norm.xp
    return search_support(Hn.astype(np.float64), norm.G.astype(np.float64), mask, norm.pattern, xp, max_swaps)


def _admm_step(norm: NormalizedProblem, Z, T, X_block, mask, inverse: ShiftedInverse, rho: float) -> None:
    """One X-update and dual update in place, block by block: Z ← X + Z ⊙ ¬mask with
    X = (G + ρ (2 Z ⊙ mask − Z)) (Hn + ρI)⁻¹; T's rows and X_block are scratch."""
    xp = norm.xp
    for r in norm.blocks:
        Zr, Tr, keep = Z[r], T[r], mask[r]
        xp.multiply(Zr, keep, out=Tr)  # T = G + ρ (2 Dv − Z)
        Tr *= 2.0
        Tr -= Zr
        Tr *= rho
        Tr += norm.G[r]
        Xr = inverse.apply(Tr, out=X_block[: Tr.shape[0]])  # X = T (Hn + ρI)⁻¹
        Zr *= ~keep  # Z = X + V/ρ
        Zr += Xr


def _start(norm: NormalizedProblem, Z, T):
    """ADMM's starting point, written into Z: Dv = P(B), V = 0 (so Z = Dv); returns the mask."""
    norm.write_B(Z)
    mask = norm.projection_mask(Z, T)
    Z *= mask
    return mask


def _alps(problem, xp, dtype, cache, precision, use_tf32: bool, o: ALPSOptions) -> MethodOutput:
    """The ALPS iteration (see the module's docstring), under the matmul ``precision`` context."""
    clock = PhaseClock(xp)
    out, inp = problem.shape
    if o.staged_eigh is None:  # syevd in one call (faster) unless its workspace does not fit
        staged = not syevd_fits(inp, o.eig_dtype or (np.float64 if xp is np else dtype), xp)
    else:
        staged = bool(o.staged_eigh)
    norm = NormalizedProblem(problem, xp, dtype, cache, eig_dtype=o.eig_dtype, staged_eigh=staged)
    clock.lap("seconds_setup")
    k = norm.kept

    # State: Z = X + V/ρ and its support. Since V ← V + ρ(X − Dv) with Dv = P(Z),
    # V/ρ = Z − Dv = Z ⊙ ¬mask, so Z alone carries both the split variable and the dual:
    #   T ← G − V + ρ Dv = G + ρ (2 Dv − Z);   X ← T (Hn + ρI)⁻¹;   Z ← X + Z ⊙ ¬mask.
    # The X-update is row-wise, so it runs over blocks of rows with X one block at a time.
    # Buffers (out × in): G, Z and the scratch T, plus one block of rows; (in × in): Q, and
    # the explicit inverse when in ≤ out.
    Z = xp.empty(problem.shape, dtype=dtype)
    T = xp.empty_like(Z)
    X_block = xp.empty((max(r.stop - r.start for r in norm.blocks), Z.shape[1]), dtype=dtype)

    rho, rose, restarts = float(o.rho0), False, 0
    mask = _start(norm, Z, T)
    inverse = ShiftedInverse(norm, rho, o.explicit_inverse)
    mask_at_check = mask
    history: list[dict] = []
    message = f"iteration cap ({o.max_iter}) reached"
    status = ITERATION_CAP
    it = 0
    while it < o.max_iter:
        it += 1
        _admm_step(norm, Z, T, X_block, mask, inverse, rho)
        mask = norm.projection_mask(Z, T)  # Dv = P(Z) = Z ⊙ mask
        if it % o.check_every:
            continue
        changed = int(xp.count_nonzero(mask != mask_at_check))
        ratio = changed / k
        mask_at_check = mask
        entry = {"iteration": it, "rho": rho, "support_change": ratio, "changed": changed}
        if o.track_error:
            entry["rel_error"] = norm.rel_error(xp.multiply(Z, mask, out=T))
        history.append(entry)
        if changed == 0:
            if rose:
                message, status = f"support stable at iteration {it}", CONVERGED
                break
            if restarts >= o.max_restarts:
                message, status = f"support frozen from the start after {restarts} restarts", SUPPORT_FROZEN
                break
            entry["restarted"] = True
            rho, restarts = rho / 5.0, restarts + 1  # ρ was too large: restart smaller
            mask = _start(norm, Z, T)
            mask_at_check = mask
            inverse.set_rho(rho)
            continue
        if it >= o.early_stop_after and ratio < o.early_stop_change:
            message = f"support change {ratio:.2e} < {o.early_stop_change:g} at iteration {it}"
            status = CONVERGED
            break
        if use_tf32 and ratio <= 0.005:  # the support has nearly settled: finish in float32
            precision.set("float32")
            use_tf32 = False
        new_rho = min(rho * (o.rho_factors[0] if ratio > 0.1 else o.rho_factors[1] if ratio > 0.005 else o.rho_factors[2]), o.rho_max)
        # keep the dual V = ρ (Z − Dv) fixed across the change: Z ⊙ ¬mask scales by ρ_old/ρ_new
        xp.multiply(Z, ~mask, out=T)
        T *= rho / new_rho - 1.0
        Z += T
        rho, rose = new_rho, True
        inverse.set_rho(rho)

    precision.set("float32")
    clock.lap("seconds_admm")
    info = {"rho_final": rho, "restarts": restarts, "stop_reason": message}
    X = xp.multiply(Z, mask, out=Z)  # the projected iterate Dv, feasible by construction
    del T, X_block  # free ADMM's buffers before the refit allocates its own
    if o.refit:
        # the loop usually ends right after a check, whose entry already holds this error
        last = history[-1] if history else {}
        ended_at_check = o.track_error and last.get("iteration") == it and not last.get("restarted")
        admm_error = last["rel_error"] if ended_at_check else norm.rel_error(X)
        buffer = inverse.release()  # (Hn + ρI)⁻¹ is done with: its buffer (if any) takes Hn
        if _wants_local_search(o.local_search, o.local_search_budget, mask, _layers(norm.pattern)):  # swaps assume the refit
            Hn = norm.hn(out=buffer)  # formed once for the search and the refit
            try:
                mask, key, info[key] = _local_search(norm, mask, Hn, o.local_search_swaps)
            except MemoryError as e:  # CuPy's OutOfMemoryError is one: the refit runs on ADMM's support
                message += "; " + skipped_out_of_memory("local search", problem.name, e, xp, "ADMM's support is kept")
                info["local_search_out_of_memory"] = 1.0
            X *= mask
            clock.lap("seconds_local_search")
        else:
            Hn = norm.hn_operator(buffer)
        X, refit_info = pcg_refit(norm, X, mask, Hn, admm_error, o.refit_tol, o.refit_max_iter)
        info.update(refit_info)
        if not refit_info["refit_converged"]:
            status = max(status, REFIT_NOT_CONVERGED)
            message += f"; refit not converged after {refit_info['refit_iterations']} PCG iterations"
        clock.lap("seconds_refit")
    info.update(clock.laps)
    X = norm.unscale(X, out=X)
    X *= mask
    return MethodOutput(X, mask, iterations=it, history=history, message=message, info=info, status=status)
