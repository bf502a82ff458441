"""Certified lower bounds on a layer's pruning objective.

The problem, per layer (H damped, positive definite):

    f* = min_W  tr((W − Ŵ) H (W − Ŵ)ᵀ)   s.t. supp(W) allowed by the pattern.

It separates over output rows r once each row's support is fixed:

    f_r(S) = min_{supp w ⊆ S} (w − ŵ_r)ᵀ H (w − ŵ_r) = e_r − g_Sᵀ H_SS⁻¹ g_S,
    g = H ŵ_r,  e_r = ŵ_rᵀ H ŵ_r.

Kinds of bound, tried in this order (``lower_bound``):

``exact``
    The optimum itself, by enumeration. ``row``/``N:M``: every admissible support of
    a row (C(in, c) or C(M, N)^(in/M) of them; the Cholesky factor of H_SS is shared by
    all rows). ``unstructured``: every support of every size, giving each row's best
    value b_r(c) for each count c, then a dynamic program allocates the layer's k
    nonzeros:  D_r(j) = min_c D_{r−1}(j − c) + b_r(c).  Size limit: at most
    ``EXACT_MAX_SUPPORTS`` supports per row (in ≤ 16 for every pattern).
``perspective``
    Split H = A + D with D = δ·diag(H), 0 < δ < λ_min(diag(H)^-½ H diag(H)^-½), so
    A ⪰ 0 is positive definite. With z ∈ {0,1} the support indicator, w_j² = w_j²/z_j, and

        f* = min  wᵀAw − 2gᵀw + e + Σ_j d_j w_j²/z_j   s.t. Σ z ≤ cap, z ∈ {0,1},

    relaxed to z ∈ [0,1] (each perspective term is an SOC), caps per row (``row``), per
    group (``N:M``) or one for the layer (``unstructured``), solved with cvxpy (Clarabel).
    The solver's numbers are not used as the bound. Instead its multipliers ν ≥ 0 of
    the cap constraints define the Lagrangian dual function

        q(ν) = Σ_r min_w [ wᵀAw − 2g_rᵀw + e_r + Σ_j β(w_j; ν_j, d_j) ] − Σ ν·cap,
        β(w; ν, d) = min_{z∈[0,1]} d w²/z + ν z = 2√(νd)|w| if |w| ≤ √(ν/d) else d w² + ν,

    a lower bound on f* for *every* ν ≥ 0 (weak duality, binary z included). The
    inner problem is 2λ_min(A)-strongly convex, so from any W and any subgradient s,
    min ≥ φ(W) − ‖s‖²/(4 λ_min(A)). W is the solver's answer polished by proximal
    gradient steps (β has a closed-form prox), s the minimum-norm subgradient; the
    bound is evaluated in float64 by this module. Size limit: out·in ≤
    ``PERSPECTIVE_MAX_ENTRIES`` (a 128×128 layer) and in ≤ ``PERSPECTIVE_MAX_IN``.
``diagonal``
    Any size, closed form; the larger of two diagonal majorizations (and used instead of
    ``perspective`` where it is larger). (i) With δ = λ_min(diag(H)^-½ H diag(H)^-½),
    H ⪰ δ·diag(H), so f(W) ≥ δ Σ_{pruned} H_jj Ŵ_ij². (ii) Once a row's pruned set P is
    fixed, the best kept weights leave ŵ_Pᵀ((H⁻¹)_PP)⁻¹ŵ_P (a Schur complement), and
    H⁻¹ ⪯ κ·diag(H⁻¹) with κ = λ_max(diag(H⁻¹)^-½ H⁻¹ diag(H⁻¹)^-½) gives
    f(W) ≥ (1/κ) Σ_{pruned} Ŵ_ij²/[H⁻¹]_jj — the OBS saliencies. Each is minimized over the
    pattern exactly by its top-k (layer-wise, per row, per N:M group). Needs an eigenvalue
    decomposition and an inverse of H; limit in ≤ ``DIAGONAL_MAX_IN``.
``none``
    The trivial bound 0 (the report says "no bound").

Each bound is lowered by ``ROUNDING_MARGIN``·tr(ŴHŴᵀ) to cover float64 rounding.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from layerprune.extras import MissingExtraError, require

EXACT_MAX_SUPPORTS = 70_000  # supports enumerated per row (2^16 = 65,536: in ≤ 16)
EXACT_MAX_WORK = 6e7  # rows × Σ|S| over the enumerated supports (time guard)
PERSPECTIVE_MAX_ENTRIES = 16384  # out·in for the cvxpy relaxation (128×128: ~5 s)
PERSPECTIVE_MAX_IN = 256
DIAGONAL_MAX_IN = 16384
ROUNDING_MARGIN = 1e-10


@dataclass
class LowerBound:
    """A certified lower bound ``value`` ≤ f* for one problem (pattern and sparsity fixed).

    kind : "exact" | "perspective" | "diagonal" | "none"
    weight : for "exact", an optimal W (out × in); else None
    seconds : time to compute it
    info : diagnostics (δ, solver status, certificate slack, …)
    """

    value: float
    kind: str
    weight: Any = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.kind != "none"


# -- shared pieces ---------------------------------------------------------------
def _arrays(problem) -> tuple[np.ndarray, np.ndarray]:
    """(Ŵ, H damped) as float64 NumPy arrays (the exact data p.objective uses)."""
    from layerprune.problems.backend import to_numpy

    W = to_numpy(problem.weight).astype(np.float64)
    H = to_numpy(problem.hessian).astype(np.float64)
    return W, (H + H.T) * 0.5


def _row_cap(problem) -> int:
    return int(round((1.0 - problem.sparsity) * problem.shape[1]))


def _margin(problem) -> float:
    return ROUNDING_MARGIN * problem.dense_energy()


# -- exact optimum by enumeration ------------------------------------------------------
def _supports_for_row(pattern, inp: int, count: int | None = None) -> np.ndarray:
    """All admissible supports of one row as an (nsup, c) index array."""
    if pattern.kind == "nm":
        per_group = list(itertools.combinations(range(pattern.m), pattern.n))
        rows = [
            [g * pattern.m + j for g, choice in enumerate(choices) for j in choice]
            for choices in itertools.product(per_group, repeat=inp // pattern.m)
        ]
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)
    c = int(count)
    combos = list(itertools.combinations(range(inp), c))
    return np.asarray(combos, dtype=np.int64).reshape(len(combos), c)


def exact_support_count(problem) -> int:
    """How many supports per row the enumeration visits (all sizes for unstructured)."""
    inp, pat = problem.shape[1], problem.pattern
    if pat.kind == "nm":
        return math.comb(pat.m, pat.n) ** (inp // pat.m)
    if pat.kind == "row":
        return math.comb(inp, _row_cap(problem))
    return 2**inp


def exact_available(problem, max_supports: int = EXACT_MAX_SUPPORTS) -> bool:
    """True when the enumeration fits the size limit (in ≤ 16 for every pattern)."""
    out, inp = problem.shape
    n = exact_support_count(problem)
    return n <= max_supports and out * n * max(inp, 1) / 2 <= EXACT_MAX_WORK


def _best_over_supports(H: np.ndarray, G: np.ndarray, energy: np.ndarray, supports: np.ndarray):
    """For each row r: min over the given supports of f_r(S), and the argmin index.

    f_r(S) = e_r − ‖L_S⁻¹ g_{r,S}‖² with L_S the Cholesky factor of H_SS.
    """
    rows = G.shape[0]
    nsup, c = supports.shape
    if c == 0:
        return energy.copy(), np.zeros(rows, dtype=np.int64)
    best = np.full(rows, np.inf)
    arg = np.zeros(rows, dtype=np.int64)
    chunk = max(1, int(4e6 // max(1, rows * c)))
    for start in range(0, nsup, chunk):
        idx = supports[start : start + chunk]
        L = np.linalg.cholesky(H[idx[:, :, None], idx[:, None, :]])  # (n, c, c)
        rhs = np.moveaxis(G[:, idx], 0, -1)  # (n, c, rows)
        y = np.linalg.solve(L, rhs)
        vals = energy[None, :] - np.einsum("ncr,ncr->nr", y, y)  # (n, rows)
        j = vals.argmin(axis=0)
        v = vals[j, np.arange(rows)]
        better = v < best
        best[better] = v[better]
        arg[better] = start + j[better]
    return best, arg


def _refit_rows(H: np.ndarray, G: np.ndarray, row_supports: list[np.ndarray]) -> np.ndarray:
    """W with supp(w_r) = S_r minimizing f: w_S = H_SS⁻¹ g_S per row."""
    W = np.zeros_like(G)
    for r, S in enumerate(row_supports):
        if len(S):
            W[r, S] = np.linalg.solve(H[np.ix_(S, S)], G[r, S])
    return W


def allocate_counts(best: np.ndarray, total: int) -> tuple[float, np.ndarray]:
    """Exact allocation of ``total`` nonzeros over rows: min Σ_r best[r, c_r], Σ c_r ≤ total.

    ``best`` (rows × (in+1)) holds each row's optimum with c nonzeros; dynamic program
    D_r(j) = min_{c ≤ j} D_{r−1}(j − c) + best_r(c) with ``best`` made nonincreasing in c
    (a row may always keep fewer). Returns (optimal value, counts per row).
    """
    rows, width = best.shape
    b = np.minimum.accumulate(best, axis=1)  # "at most c" nonzeros
    total = int(min(total, rows * (width - 1)))
    D = np.full(total + 1, np.inf)
    D[: min(width, total + 1)] = b[0, : min(width, total + 1)]
    choice = np.zeros((rows, total + 1), dtype=np.int64)
    choice[0] = np.minimum(np.arange(total + 1), width - 1)
    D = np.minimum.accumulate(D)  # at most j nonzeros
    for r in range(1, rows):
        cand = np.full((width, total + 1), np.inf)
        for c in range(min(width, total + 1)):
            cand[c, c:] = D[: total + 1 - c] + b[r, c]
        choice[r] = cand.argmin(axis=0)
        D = cand.min(axis=0)
    counts = np.zeros(rows, dtype=np.int64)
    j = total
    for r in range(rows - 1, 0, -1):
        counts[r] = choice[r, j]
        j -= counts[r]
    counts[0] = min(j, width - 1)
    return float(D[total]), counts


def exact_optimum(problem, max_supports: int = EXACT_MAX_SUPPORTS) -> LowerBound:
    """The exact optimum f* and an optimal W, by enumeration (tiny problems only).

    Raises ValueError when the problem exceeds the size limit (see ``exact_available``).
    """
    if not exact_available(problem, max_supports):
        raise ValueError(
            f"exact enumeration needs ≤ {max_supports} supports per row; "
            f"{problem!r} has {exact_support_count(problem)}"
        )
    t0 = time.perf_counter()
    W0, H = _arrays(problem)
    G = W0 @ H  # row r: g_r = H ŵ_r
    energy = np.einsum("ri,ri->r", G, W0)
    out, inp = W0.shape
    pat = problem.pattern
    if pat.kind in ("row", "nm"):
        sup = _supports_for_row(pat, inp, _row_cap(problem) if pat.kind == "row" else None)
        _, arg = _best_over_supports(H, G, energy, sup)
        row_supports = [sup[a] for a in arg]
        enumerated = len(sup)
    else:
        k = problem.kept
        best = np.empty((out, inp + 1))
        args = []
        enumerated = 0
        for c in range(inp + 1):
            sup = _supports_for_row(pat, inp, c)
            best[:, c], arg = _best_over_supports(H, G, energy, sup)
            args.append((sup, arg))
            enumerated += len(sup)
        _, counts = allocate_counts(best, k)
        b = np.minimum.accumulate(best, axis=1)
        row_supports = []
        for r in range(out):
            c = int(counts[r])
            c = int(np.argmax(b[r] <= b[r, c]))  # the smallest count reaching the same value
            sup, arg = args[c]
            row_supports.append(sup[arg[r]])
    W = _refit_rows(H, G, row_supports)
    value = min(problem.objective(W), float(np.sum(_row_values(H, G, energy, row_supports))))
    return LowerBound(
        value=max(0.0, value - _margin(problem)),
        kind="exact",
        weight=W,
        seconds=time.perf_counter() - t0,
        info={"supports_per_row": enumerated, "optimum": value},
    )


def _row_values(H, G, energy, row_supports) -> np.ndarray:
    vals = energy.copy()
    for r, S in enumerate(row_supports):
        if len(S):
            L = np.linalg.cholesky(H[np.ix_(S, S)])
            y = np.linalg.solve(L, G[r, S])
            vals[r] -= float(y @ y)
    return vals


# -- perspective relaxation, certified through its Lagrangian dual -------------------
def perspective_available(problem) -> bool:
    out, inp = problem.shape
    return out * inp <= PERSPECTIVE_MAX_ENTRIES and inp <= PERSPECTIVE_MAX_IN


def perspective_split(H: np.ndarray, safety: float = 0.98) -> tuple[np.ndarray, float]:
    """d (in,) with A = H − diag(d) positive definite: d = δ·diag(H), δ = safety·λ_min(Hn).

    Returns (d, λ_min(A)) with λ_min(A) > 0 checked by an eigenvalue computation.
    """
    s = 1.0 / np.sqrt(np.diagonal(H))
    lam_n = float(np.linalg.eigvalsh(H * s[:, None] * s[None, :])[0])
    for _ in range(30):
        d = safety * max(lam_n, 0.0) * np.diagonal(H)
        lam_a = float(np.linalg.eigvalsh(H - np.diag(d))[0])
        if lam_a > 0:
            return d, lam_a
        safety *= 0.5
    return np.zeros_like(np.diagonal(H)), float(np.linalg.eigvalsh(H)[0])


def _caps(problem) -> tuple[np.ndarray, np.ndarray, float]:
    """Constraint layout: label (out × in) of the cap each entry belongs to, caps, and #caps."""
    out, inp = problem.shape
    pat = problem.pattern
    if pat.kind == "unstructured":
        return np.zeros((out, inp), dtype=np.int64), np.array([float(problem.kept)]), 1
    if pat.kind == "row":
        lab = np.repeat(np.arange(out)[:, None], inp, axis=1)
        return lab, np.full(out, float(_row_cap(problem))), out
    groups = inp // pat.m
    lab = (np.arange(out)[:, None] * groups + np.arange(inp)[None, :] // pat.m).astype(np.int64)
    return lab, np.full(out * groups, float(pat.n)), out * groups


def _beta(W, nu, d):
    """β(w; ν, d) = min_{z∈[0,1]} d w²/z + ν z (elementwise)."""
    a = np.sqrt(nu * d)
    lin = 2.0 * a * np.abs(W)
    quad = d * W * W + nu
    inside = d * np.abs(W) <= a  # |w| ≤ √(ν/d)
    return np.where(inside, lin, quad)


def _beta_grad_nonzero(W, nu, d):
    a = np.sqrt(nu * d)
    inside = d * np.abs(W) <= a
    return np.where(inside, 2.0 * a * np.sign(W), 2.0 * d * W)


def _prox_beta(V, t, nu, d):
    """argmin_w ½(w − v)² + t·β(w; ν, d), elementwise, in closed form."""
    a = np.sqrt(nu * d)
    b = np.where(d > 0, np.sqrt(nu / np.where(d > 0, d, 1.0)), np.inf)
    av = np.abs(V)
    lin = np.sign(V) * np.maximum(av - 2.0 * t * a, 0.0)
    quad = V / (1.0 + 2.0 * t * d)
    return np.where(av <= b + 2.0 * t * a, lin, quad)


def dual_certificate(problem, nu: np.ndarray, caps_total: float, d: np.ndarray, W: np.ndarray,
                     lam_a: float, polish: int = 200) -> tuple[float, dict]:
    """Certified q(ν) ≥ ... : a lower bound on f* for multipliers ν ≥ 0 (out × in, per entry).

    φ(W) = Σ_r [wᵀAw − 2gᵀw + e_r] + Σ β(W; ν, d), A = H − diag(d);
    bound = φ(W) − ‖s‖²_F/(4 λ_min(A)) − Σ ν_c·cap_c, s the min-norm subgradient of φ at W.
    ``W`` is improved first by ``polish`` proximal-gradient (FISTA) steps.
    """
    W0, H = _arrays(problem)
    A = H - np.diag(d)
    G = W0 @ H
    e = float(np.einsum("ri,ri->", G, W0))
    nu = np.maximum(nu, 0.0)
    dd = d[None, :]

    def phi(X):
        return float(np.einsum("ri,ri->", X @ A, X)) - 2.0 * float(np.sum(G * X)) + e + float(np.sum(_beta(X, nu, dd)))

    def certify(X):
        gs = 2.0 * (X @ A - G)
        zero = X == 0
        thr = 2.0 * np.sqrt(nu * dd)
        s = np.where(zero, np.sign(gs) * np.maximum(np.abs(gs) - thr, 0.0), gs + _beta_grad_nonzero(X, nu, dd))
        slack = float(np.sum(s * s)) / (4.0 * lam_a)
        return phi(X) - slack, slack

    step = 1.0 / (2.0 * float(np.linalg.eigvalsh(A)[-1]))
    best, best_slack = certify(W)
    X, Y, tk = W.copy(), W.copy(), 1.0
    for _ in range(polish):
        Xn = _prox_beta(Y - step * 2.0 * (Y @ A - G), step, nu, dd)
        tn = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * tk * tk))
        Y = Xn + ((tk - 1.0) / tn) * (Xn - X)
        X, tk = Xn, tn
    val, slack = certify(X)
    if val > best:
        best, best_slack = val, slack
    return best - caps_total, {"certificate_slack": best_slack}


def perspective_bound(problem, solver: str = "CLARABEL", polish: int = 200) -> LowerBound:
    """Certified lower bound from the perspective (Boolean) relaxation; see the module doc."""
    cp = require("cvxpy", "reports", "cvxpy (the perspective lower bound)")

    if not perspective_available(problem):
        raise ValueError(f"perspective relaxation is limited to out·in ≤ {PERSPECTIVE_MAX_ENTRIES}")
    t0 = time.perf_counter()
    W0, H = _arrays(problem)
    out, inp = W0.shape
    d, lam_a = perspective_split(H)
    A = H - np.diag(d)
    L = np.linalg.cholesky(A)  # A = L Lᵀ
    G = W0 @ H
    # wᵀAw − 2gᵀw = ‖Lᵀw − L⁻¹g‖² − ‖L⁻¹g‖²
    Bt = np.linalg.solve(L, G.T).T  # rows: L⁻¹ g_r
    const = float(np.einsum("ri,ri->", G, W0)) - float(np.sum(Bt * Bt))
    lab, caps, ncaps = _caps(problem)

    W = cp.Variable((out, inp))
    Z = cp.Variable((out, inp))
    T = cp.Variable((out, inp))
    sc = float(np.sqrt(np.mean(np.diagonal(H))))  # rescale for the solver's tolerances
    obj = cp.sum_squares(W @ (L / sc) - Bt / sc) + cp.sum(cp.multiply(d[None, :] / sc**2, T))
    w, z, t = cp.vec(W, order="F"), cp.vec(Z, order="F"), cp.vec(T, order="F")
    cons = [cp.SOC(t + z, cp.vstack([2 * w, t - z]), axis=0), Z >= 0, Z <= 1]
    pat = problem.pattern
    if pat.kind == "unstructured":
        cap_con = cp.sum(Z) <= float(problem.kept)
    elif pat.kind == "row":
        cap_con = cp.sum(Z, axis=1) <= float(_row_cap(problem))
    else:
        cap_con = cp.sum(cp.reshape(Z, (out * inp // pat.m, pat.m), order="C"), axis=1) <= float(pat.n)
    cons.append(cap_con)
    prob = cp.Problem(cp.Minimize(obj), cons)
    info: dict = {"delta": float(d[0] / H[0, 0]), "lambda_min_A": lam_a}  # d = δ·diag(H)
    try:
        prob.solve(solver=solver)
        status = prob.status
    except cp.error.SolverError as exc:  # pragma: no cover - solver failure path
        status = f"solver error: {exc}"
    info["solver_status"] = status
    if W.value is None or cap_con.dual_value is None:
        return LowerBound(0.0, "none", seconds=time.perf_counter() - t0, info=info)
    mu = np.atleast_1d(np.asarray(cap_con.dual_value, dtype=np.float64)) * sc**2
    mu = np.maximum(mu, 0.0)
    nu = mu[lab] if mu.size == ncaps else np.full((out, inp), float(mu.ravel()[0]))
    info["relaxation_value"] = float(prob.value) * sc**2 + const if prob.value is not None else float("nan")
    value, cinfo = dual_certificate(problem, nu, float(np.sum(mu * caps)), d, np.asarray(W.value), lam_a, polish)
    info.update(cinfo)
    return LowerBound(
        value=max(0.0, value - _margin(problem)),
        kind="perspective",
        seconds=time.perf_counter() - t0,
        info=info,
    )


# -- diagonal bound: any size, closed form ------------------------------------------------
def _diagonal_constants(H: np.ndarray, cache: dict) -> dict:
    """δ = λ_min(D_H^-½ H D_H^-½), B = H⁻¹'s diagonal and κ = λ_max(D_B^-½ B D_B^-½) (cached per H).

    Eigenvalues are moved conservatively by a multiple of float64's error (δ down, κ up).
    """
    if "diagonal" not in cache:
        h = np.diagonal(H).copy()
        s = 1.0 / np.sqrt(h)
        eig = np.linalg.eigvalsh(H * s[:, None] * s[None, :])
        delta = max(0.0, float(eig[0]) - 1e-12 * float(eig[-1]))
        B = np.linalg.inv(H)
        B = (B + B.T) * 0.5
        b = np.diagonal(B).copy()
        consts = {"h": h, "delta": delta}
        if np.all(b > 0) and np.all(np.isfinite(B)):
            t = 1.0 / np.sqrt(b)
            eb = np.linalg.eigvalsh(B * t[:, None] * t[None, :])
            cond = float(eig[-1]) / max(float(eig[0]), 1e-300)  # error of inv grows with it
            consts.update(b=b, kappa=float(eb[-1]) * (1.0 + 1e-12 * max(cond, 1.0)) + 1e-12 * float(eb[-1]))
        cache["diagonal"] = consts
    return cache["diagonal"]


def diagonal_bound(problem, cache: dict | None = None) -> LowerBound:
    """Closed-form bound for any size: the larger of two diagonal majorizations (see module doc).

    (i)  H ⪰ δ·D_H with δ = λ_min(D_H^-½ H D_H^-½):  f* ≥ δ · min_pattern Σ_pruned H_jj Ŵ_ij².
    (ii) For a pruned set P of a row, min over the kept weights = ŵ_Pᵀ ((H⁻¹)_PP)⁻¹ ŵ_P (Schur
         complement), and B = H⁻¹ ⪯ κ·D_B gives ((H⁻¹)_PP)⁻¹ ⪰ D_B,PP⁻¹/κ, κ = λ_max(D_B^-½ B D_B^-½):
         f* ≥ (1/κ) · min_pattern Σ_pruned Ŵ_ij² / [H⁻¹]_jj   (the OBS saliencies).
    Each minimum over the pattern is its top-k of the scores (layer, row or N:M group).
    ``cache``: a dict shared by calls on the same layer (same H): δ, κ and H⁻¹ are computed once.
    """
    t0 = time.perf_counter()
    if problem.shape[1] > DIAGONAL_MAX_IN:
        raise ValueError(f"diagonal bound is limited to in ≤ {DIAGONAL_MAX_IN}")
    W0, H = _arrays(problem)
    c = _diagonal_constants(H, {} if cache is None else cache)
    W2 = W0 * W0

    def pruned(score):
        keep = problem.pattern.mask(score, problem.sparsity)
        return float(np.sum(score[~keep]))

    candidates = {"jacobi": c["delta"] * pruned(W2 * c["h"][None, :])}
    if "kappa" in c:
        candidates["inverse"] = pruned(W2 / c["b"][None, :]) / c["kappa"]
    form = max(candidates, key=candidates.get)
    value = candidates[form] * (1.0 - 1e-9)
    info = {"form": form, "delta": c["delta"], "kappa": c.get("kappa", float("nan")), **candidates}
    if value - _margin(problem) <= 0:
        return LowerBound(0.0, "none", seconds=time.perf_counter() - t0, info=info)
    return LowerBound(value - _margin(problem), "diagonal", seconds=time.perf_counter() - t0, info=info)


def lower_bound(problem, kinds: tuple[str, ...] = ("exact", "perspective", "diagonal"),
                cache: dict | None = None) -> LowerBound:
    """The strongest available certified bound.

    Exact optimum if tiny; otherwise the larger of the perspective bound (if small) and the
    closed-form diagonal bound (any size); else 0 (kind "none"). ``cache``: a dict shared by
    calls on the same layer (any sparsity or pattern).
    """
    if "exact" in kinds and exact_available(problem):
        return exact_optimum(problem)
    found: list[LowerBound] = []
    errors: list[str] = []
    if "perspective" in kinds and perspective_available(problem):
        try:
            lb = perspective_bound(problem)
            if lb.available:
                found.append(lb)
            else:
                errors.append(f"perspective: {lb.info.get('solver_status')}")
        except MissingExtraError:
            raise  # not a failed relaxation: the reports extra is missing (say so, don't fall through)
        except Exception as exc:  # noqa: BLE001 - a failed relaxation falls through to other bounds
            errors.append(f"perspective: {type(exc).__name__}: {exc}")
    if "diagonal" in kinds and problem.shape[1] <= DIAGONAL_MAX_IN:
        try:
            lb = diagonal_bound(problem, cache)
            if lb.available:
                found.append(lb)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"diagonal: {type(exc).__name__}: {exc}")
    if not found:
        return LowerBound(0.0, "none", info={"reason": "no bound within the size limits", "errors": errors})
    best = max(found, key=lambda b: b.value)
    best.seconds = sum(b.seconds for b in found)
    best.info["candidates"] = {b.kind: b.value for b in found}
    if errors:
        best.info["errors"] = errors
    return best


def bound_limits() -> str:
    """One line per kind: how the bound is formed and its size limit (for reports)."""
    return (
        f"exact: enumeration of each row's supports (+ dynamic program over rows for unstructured), "
        f"at most {EXACT_MAX_SUPPORTS:,} supports per row (in ≤ 16); "
        f"perspective: Boolean/perspective relaxation solved with cvxpy, certified via its Lagrangian dual, "
        f"out·in ≤ {PERSPECTIVE_MAX_ENTRIES} and in ≤ {PERSPECTIVE_MAX_IN}; "
        f"diagonal: closed form, any size (in ≤ {DIAGONAL_MAX_IN}), the larger of "
        "λ_min(diag(H)^-½ H diag(H)^-½)·min Σ_pruned H_jj Ŵ_ij² and "
        "min Σ_pruned Ŵ_ij²/[H⁻¹]_jj / λ_max(diag(H⁻¹)^-½ H⁻¹ diag(H⁻¹)^-½) (OBS saliencies), "
        "also used where it beats the perspective bound; "
        "none: no bound (trivial bound 0)."
    )
