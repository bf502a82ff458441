"""Sparsity allocated across layers: pure functions (NumPy, no models).

A run at sparsity s may give its layers different sparsities s_ℓ whose weighted mean is s. What
is held fixed is the model-wide **count of kept weights**: over the layers the profile allocates
("free" layers), with n_ℓ weights each,

    Σ_ℓ k_ℓ = K = round((1 − s) · Σ_ℓ n_ℓ),   1 ≤ k_ℓ ≤ n_ℓ  (so s_ℓ = 1 − k_ℓ/n_ℓ ∈ [0, 1)),

exactly (:func:`kept_counts`). A ``row`` layer keeps whole units of one weight per row (its
count is a multiple of its row count ``out``): there the sum is the closest to K that whole units
reach from below (short by less than the smallest free layer's row count).

Profiles:

- ``uniform``: every layer at s (the driver's own rounding per layer; nothing here runs).
- ``owl`` (Yin et al., 2024, "Outlier Weighed Layerwise Sparsity (OWL)", arXiv 2310.05175): per
  block, the outlier ratio D = fraction of the Wanda scores |W_ij|·‖X_j‖₂ of the block's linears
  (all concatenated) above M × their mean (:func:`outlier_ratio`); then
  Dn = (D − min D)/(max D − min D) · 2λ ∈ [0, 2λ] and s_b = s − (Dn_b − mean Dn) (:func:`owl_sparsities`),
  so the mean over blocks is s and more outliers mean a lower sparsity. This follows the OWL
  reference code (github.com/luuyin/OWL, ``lib/prune_all.py``: ``check_outlier_mean``, ``Lamda``,
  ``Hyper_m``) and llm-compressor's port of it (``SparsityModifierBase._infer_owl_layer_sparsity`` in
  ``src/llmcompressor/modifiers/pruning/sparsegpt/sgpt_base.py``, parameters ``owl_m`` and
  ``owl_lmbda``, whose names the settings take). Both compute D in percent; the normalization makes
  the unit irrelevant. The exact count is then applied on top, weighting blocks by their sizes.
- ``curve``: each layer's measured error-versus-sparsity points e_ℓ(s) (dense-model problems, the
  run's solver) and an allocation minimizing Σ_ℓ w_ℓ e_ℓ(s_ℓ) under the count (:func:`allocate_curves`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROFILES = ("uniform", "owl", "curve")
CURVE_WEIGHTINGS = ("relative", "size", "objective")


# -- OWL -----------------------------------------------------------------------------------
def wanda_scores(weight: np.ndarray, column_sq_norms: np.ndarray) -> np.ndarray:
    """|W_ij| · ‖X_j‖₂ (out × in, float64) from the squared input column norms ‖X_j‖² (in)."""
    return np.abs(np.asarray(weight, dtype=np.float64)) * np.sqrt(np.asarray(column_sq_norms, dtype=np.float64))[None, :]


def outlier_ratio(scores: Sequence[np.ndarray], m: float) -> float:
    """The fraction (in [0, 1]) of all entries of ``scores`` (one block's layers, taken together)
    greater than ``m`` × their mean: OWL's ``check_outlier_mean`` (which reports it × 100)."""
    total = sum(float(np.sum(s, dtype=np.float64)) for s in scores)
    count = sum(int(np.size(s)) for s in scores)
    if count == 0:
        raise ValueError("outlier_ratio needs at least one score")
    threshold = m * (total / count)
    return sum(int(np.count_nonzero(np.asarray(s) > threshold)) for s in scores) / count


def owl_sparsities(ratios: Sequence[float], sparsity: float, lmbda: float) -> np.ndarray:
    """Per-block sparsities s − (Dn − mean Dn) with Dn = (D − min)/(max − min) · 2λ (OWL's
    normalization): their mean is ``sparsity`` and they lie within ±2λ of it. Equal ratios (or
    λ = 0) give every block ``sparsity``.

    One departure from the reference, at high s only: the sparsest block gets s + mean Dn, which
    at s ≥ 1 − 2λ can reach 100 % and starve its layers to one weight (zeroing the next layer's
    inputs). Where s + mean Dn > s + (1 − s)/2, Dn is scaled down so that the sparsest block keeps
    half the mean density, (1 − s)/2 (mean Dn < 2λ, so it never acts at s ≤ 1 − 4λ: 0.68 at λ = 0.08;
    in SmolLM2's runs at 50–80 % it did not act: BENCHMARKS.md)."""
    d = np.asarray(ratios, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError(f"outlier ratios must be a non-empty list of finite numbers, got {ratios!r}")
    span = float(d.max() - d.min())
    if span == 0.0 or lmbda == 0.0:
        return np.full(d.shape, float(sparsity))
    dn = (d - d.min()) / span * (2.0 * lmbda)
    headroom = (1.0 - float(sparsity)) / 2.0
    if dn.mean() > headroom:
        dn *= headroom / dn.mean()
    return float(sparsity) - (dn - dn.mean())


# -- exact counts --------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """One free layer as the allocation sees it: ``size`` weights, kept in ``unit``s (1 for
    ``unstructured``; the row count ``out`` for ``row``, one weight per row)."""

    size: int
    unit: int = 1

    @property
    def capacity(self) -> int:
        """Units the layer can keep at most (all its weights)."""
        return self.size // self.unit


def target_kept(slots: Sequence[Slot], sparsity: float) -> int:
    """K = round((1 − s) · Σ n_ℓ): the kept weights the free layers hold together."""
    return int(round((1.0 - float(sparsity)) * sum(s.size for s in slots)))


def kept_counts(slots: Sequence[Slot], sparsities: Sequence[float], total: int) -> np.ndarray:
    """Integer kept counts (weights, one per slot) near (1 − s_ℓ)·n_ℓ that sum to ``total``.

    The densities 1 − s_ℓ are shifted by one common δ (bisection) so that the clipped real counts
    r_ℓ = clip((1 − s_ℓ + δ)·c_ℓ, 1, c_ℓ) (c_ℓ units) sum to ``total``, then rounded by largest
    remainders: floors first, then one more unit to the layers with the largest fractional parts
    until the sum is reached (a ``row`` slot only where its whole unit still fits). Every layer keeps
    at least one unit (its sparsity stays below 1). ValueError when ``total`` is out of reach.
    """
    units = np.array([s.unit for s in slots], dtype=np.int64)
    cap = np.array([s.capacity for s in slots], dtype=np.int64)
    dens = 1.0 - np.asarray(sparsities, dtype=np.float64)
    if len(slots) == 0 or dens.shape != (len(slots),) or not np.all(np.isfinite(dens)):
        raise ValueError("kept_counts needs one finite sparsity per slot")
    lo, hi = int(units.sum()), int((units * cap).sum())
    if not lo <= total <= hi:
        raise ValueError(f"{total} kept weights are out of reach of these layers (between {lo} and {hi})")

    def real(delta: float) -> np.ndarray:
        return np.clip((dens + delta) * cap, 1.0, cap.astype(np.float64))

    a, b = -1.0 - float(dens.max()), 1.0 - float(dens.min()) + 1.0  # real(a) = 1 unit each, real(b) = all
    for _ in range(200):
        mid = 0.5 * (a + b)
        if float((units * real(mid)).sum()) < total:
            a = mid
        else:
            b = mid
        if b - a < 1e-15:
            break
    r = real(b)
    k = np.clip(np.floor(r).astype(np.int64), 1, cap)
    rem = int(total - (units * k).sum())
    order = np.lexsort((np.arange(len(slots)), -(r - np.floor(r))))  # largest fractional part first
    while rem > 0:
        moved = False
        for i in order:
            if k[i] < cap[i] and units[i] <= rem:
                k[i] += 1
                rem -= int(units[i])
                moved = True
                if rem == 0:
                    break
        if not moved:
            break
    while rem < 0:  # only from round-off in the bisection: take back units, smallest fractional part first
        for i in order[::-1]:
            if k[i] > 1:
                k[i] -= 1
                rem += int(units[i])
                if rem >= 0:
                    break
    return units * k


def sparsities_of(slots: Sequence[Slot], kept: Sequence[int]) -> list[float]:
    """s_ℓ = 1 − k_ℓ/n_ℓ: the sparsity whose rounding (``Pattern.kept_per_layer``) gives back k_ℓ."""
    return [1.0 - int(k) / s.size for s, k in zip(slots, kept)]


# -- curves --------------------------------------------------------------------------------
def lower_hull(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of the points (x, y) sorted by x (distinct x), left to right."""
    hull: list[int] = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is above (or on) the segment a → i: drop it
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


@dataclass(frozen=True)
class Curve:
    """Measured (kept weights, error) points of one layer: ``kept`` ascending and distinct."""

    kept: np.ndarray
    error: np.ndarray

    @classmethod
    def from_points(cls, kept: Sequence[int], error: Sequence[float]) -> Curve:
        k = np.asarray(kept, dtype=np.int64)
        e = np.asarray(error, dtype=np.float64)
        if k.ndim != 1 or k.shape != e.shape or k.size == 0 or not np.all(np.isfinite(e)):
            raise ValueError("a curve needs one finite error per kept count")
        order = np.argsort(k, kind="stable")
        k, e = k[order], e[order]
        keep = np.r_[True, np.diff(k) > 0]  # one point per count: the first measured
        return cls(k[keep], e[keep])

    def at(self, kept: float) -> float:
        """The error at ``kept`` by linear interpolation of the measured points (flat outside them)."""
        return float(np.interp(kept, self.kept, self.error))


def curve_objective(curves: Sequence[Curve], weights: Sequence[float], kept: Sequence[float]) -> float:
    """Σ_ℓ w_ℓ · e_ℓ(k_ℓ), e_ℓ interpolated linearly between the measured points."""
    return float(sum(w * c.at(k) for c, w, k in zip(curves, weights, kept)))


def allocate_curves(curves: Sequence[Curve], weights: Sequence[float], slots: Sequence[Slot], total: int) -> tuple[np.ndarray, dict]:
    """Kept counts (weights) minimizing Σ w_ℓ e_ℓ(k_ℓ) subject to Σ k_ℓ = ``total``.

    Each weighted curve is replaced by its lower convex hull (the part where more kept weights
    lower the error); starting from every layer's fewest measured kept weights, the hull segments
    are taken in order of their slope (error removed per kept weight, steepest first) until the
    budget is spent, the last one partly: the exact minimizer on the convexified curves, the
    solution a bisection on the Lagrange multiplier of the count reaches. The real counts are
    rounded by :func:`kept_counts` (which also absorbs a budget outside the measured range). When
    the rounded result is worse than the uniform allocation on the interpolated curves (possible
    only for non-convex ones), the uniform one is returned (``info["fallback"]``).
    Returns (kept weights per layer, info: the objective of both, whether it fell back).
    """
    w = np.asarray(weights, dtype=np.float64)
    if len(curves) != len(slots) or w.shape != (len(slots),) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("allocate_curves needs one curve and one finite weight ≥ 0 per slot")
    start = np.array([float(c.kept[0]) for c in curves])
    segments = []  # (slope, layer, from, to)
    for i, (c, wi) in enumerate(zip(curves, w)):
        x, y = c.kept.astype(np.float64), wi * c.error
        h = lower_hull(x, y)
        for a, b in zip(h[:-1], h[1:]):
            slope = (y[b] - y[a]) / (x[b] - x[a])
            if slope >= 0:
                break
            segments.append((slope, i, x[a], x[b]))
    segments.sort(key=lambda t: (t[0], t[1]))
    real = start.copy()
    budget = float(total) - float(real.sum())
    for _slope, i, a, b in segments:
        if budget <= 0:
            break
        step = min(b - a, budget)
        real[i] = a + step
        budget -= step
    sizes = np.array([s.size for s in slots], dtype=np.float64)
    kept = kept_counts(slots, 1.0 - real / sizes, total)
    s_run = 1.0 - total / sizes.sum()
    uniform = kept_counts(slots, np.full(len(slots), s_run), total)
    obj, obj_uniform = curve_objective(curves, w, kept), curve_objective(curves, w, uniform)
    fallback = obj > obj_uniform
    info = {"objective": min(obj, obj_uniform), "uniform_objective": obj_uniform, "fallback": bool(fallback)}
    return (uniform if fallback else kept), info


def curve_weights(weighting: str, sizes: Sequence[int], energies: Sequence[float]) -> np.ndarray:
    """The weights w_ℓ of the relative errors e_ℓ in the curve objective, normalized to mean 1.

    relative : w = 1 (the sum of the layers' relative errors);
    size : w ∝ n_ℓ (each weight of the model counts alike);
    objective : w ∝ tr(Ŵ H Ŵᵀ) (the output energy, so w·e is the absolute error f = ‖XŴᵀ − XWᵀ‖²).
    """
    if weighting == "relative":
        raw = np.ones(len(sizes))
    elif weighting == "size":
        raw = np.asarray(sizes, dtype=np.float64)
    elif weighting == "objective":
        raw = np.asarray(energies, dtype=np.float64)
    else:
        raise ValueError(f"unknown curve weighting {weighting!r}; the weightings are {', '.join(CURVE_WEIGHTINGS)}")
    mean = float(raw.mean()) if raw.size else 1.0
    return raw / mean if mean > 0 and math.isfinite(mean) else np.ones(len(sizes))


def curve_grid(sparsity: float, offsets: Sequence[float]) -> list[float]:
    """The sparsities a layer's curve is measured at: s + each offset, those in [0, 1), sorted, s included."""
    grid = {round(float(sparsity) + float(o), 12) for o in offsets} | {float(sparsity)}
    return sorted(g for g in grid if 0.0 <= g < 1.0)


# -- settings ------------------------------------------------------------------------------
def default_profile(pattern: str, target: str) -> str:
    """The profile a run takes when none is given: "owl" for the unstructured pattern with the dense
    target (measured to pay on top of the blended target at every setting, and mixed without it: BENCHMARKS.md),
    "uniform" otherwise (row: not measured; N:M: the hardware format)."""
    from layerprune.problems import parse_pattern

    return "owl" if parse_pattern(pattern).kind == "unstructured" and target == "dense" else "uniform"


def profile_at(profile: str | None, pattern: str) -> str | None:
    """The profile a comparison row asks for (None: the default) as run at ``pattern``: "uniform" for an
    N:M pattern, whatever was asked (N:M fixes every layer at 1 − N/M), else ``profile`` as it is."""
    from layerprune.problems import parse_pattern

    return "uniform" if profile is not None and parse_pattern(pattern).kind == "nm" else profile


def check_profile(profile: str, pattern: str, owl_m: float, owl_lmbda: float, offsets: Sequence[float],
                  weighting: str) -> tuple[float, ...]:
    """The profile settings checked (a ``LayerwiseError`` naming the bad one); returns the curve
    offsets as a sorted tuple of floats. An N:M run pattern with a profile other than ``uniform``
    is an error: N:M fixes every layer at 1 − N/M (the hardware format)."""
    import difflib

    from layerprune.layerwise.errors import LayerwiseError

    if profile not in PROFILES:
        near = difflib.get_close_matches(str(profile).lower(), PROFILES, 1)
        raise LayerwiseError(f"unknown sparsity_profile {profile!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                             + f"; the profiles are {', '.join(PROFILES)}")
    if profile != "uniform" and ":" in str(pattern):
        raise LayerwiseError(f"sparsity_profile {profile!r} cannot be used with the N:M pattern {pattern}: N:M fixes every "
                             "layer's sparsity at 1 − N/M (the hardware format); use it with unstructured or row")

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not number(owl_m) or owl_m <= 0:
        raise LayerwiseError(f"owl_m (OWL's outlier threshold M, a multiple of the mean score) must be a number > 0, "
                             f"got {owl_m!r}")
    if not number(owl_lmbda) or not 0 <= owl_lmbda < 0.5:
        raise LayerwiseError(f"owl_lmbda (OWL's λ: block sparsities within s ± 2λ) must be in [0, 0.5), got {owl_lmbda!r}")
    if isinstance(offsets, (int, float)):
        offsets = (offsets,)
    if not isinstance(offsets, (list, tuple)) or not offsets or not all(number(o) and -1 < o < 1 for o in offsets):
        raise LayerwiseError(f"curve_offsets must be a non-empty list of sparsity offsets in (−1, 1), e.g. "
                             f"[-0.1, -0.05, 0, 0.05, 0.1], got {offsets!r}")
    if weighting not in CURVE_WEIGHTINGS:
        near = difflib.get_close_matches(str(weighting).lower(), CURVE_WEIGHTINGS, 1)
        raise LayerwiseError(f"unknown curve_weighting {weighting!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                             + f"; the weightings are {', '.join(CURVE_WEIGHTINGS)}")
    return tuple(sorted(float(o) for o in offsets))
