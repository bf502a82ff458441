"""`LayerProblem`: one layer's pruning problem, kept apart from the solvers.

    minimize  f(W) = tr((W − Ŵ) H (W − Ŵ)ᵀ)   s.t.  supp(W) allowed by the pattern,

with Ŵ the dense weight (out × in), H = XᵀX + λI the damped Hessian (in × in),
λ = damping · mean(diag XᵀX). Every solver minimizes this same function and is
judged by :meth:`LayerProblem.objective`.

Dead input channels (a zero column of X, so Hⱼⱼ = 0 and, H being PSD, row and column j
of H are zero) are handled here once, for every method and at any damping, as the
SparseGPT reference does (``H[dead, dead] = 1; W[:, dead] = 0``): see
:attr:`LayerProblem.dead_channels`.

A *dense target* (``cross=``, ``target_hessian=``: :mod:`layerprune.problems.targets`) makes
the objective the asymmetric ‖X_p Wᵀ − X_d Ŵᵀ‖² + λ‖W − Ŵ‖²; the solvers see the equivalent
symmetric problem (Ŵ′, H) through ``weight`` and ``hessian`` as before.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from layerprune.problems.atomic import atomic_write
from layerprune.problems.backend import array_module, is_torch, to_numpy, to_xp
from layerprune.problems.patterns import Pattern, parse_pattern, resolve_sparsity
from layerprune.problems.targets import cholesky64, transformed_weight

FORMAT_VERSION = 2  # 2: optional cross term (a dense target); files without one are still written as 1


def _as_float_array(a: Any, name: str):
    """NumPy/CuPy/torch → NumPy or CuPy floating array (torch crosses without copy)."""
    if a is None:
        raise ValueError(f"{name} is required")
    xp = np
    if is_torch(a) and a.is_cuda:
        from layerprune.problems.backend import cupy_or_none

        xp = cupy_or_none() or np
    elif not is_torch(a):
        xp = array_module(a)
    arr = to_xp(a, xp)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.dtype.kind != "f" or arr.dtype.itemsize < 4:
        arr = arr.astype(xp.float32)
    return arr


class LayerProblem:
    """One linear layer's pruning problem.

    Parameters
    ----------
    weight : (out, in) array — the dense weight Ŵ (``nn.Linear`` layout). NumPy, CuPy or torch.
    hessian : (in, in) array — XᵀX, symmetric PSD (undamped).
    sparsity : fraction of weights to remove, in [0, 1). For an N:M pattern it may be
        omitted (it is 1 − N/M); if given it must equal that.
    pattern : "unstructured", "row" or "N:M".
    damping : relative damping factor; λ = damping · mean(diag H) is added to diag H.
    name : optional label (layer name), kept through save/load.
    cross, target_hessian : (in, in) arrays, both or neither — a *dense target*
        (:mod:`layerprune.problems.targets`): C = X_pᵀX_d and D = X_dᵀX_d (undamped, on the
        same rows and scale as ``hessian`` = X_pᵀX_p), X_d the layer's inputs in the dense
        model. The problem is then f_λ(W) = ‖X_p Wᵀ − X_d Ŵᵀ‖² + λ‖W − Ŵ‖²: ``target_weight``
        is Ŵ (as given), ``weight`` the transformed Ŵ′ = Ŵ (C + λI)ᵀ H_λ⁻¹ that every solver
        reads with ``hessian`` (H_λ), and ``objective`` / ``relative_error`` are the asymmetric
        f_λ and f_λ(W) / f_λ(0), f_λ(0) = ‖X_d Ŵᵀ‖² + λ‖Ŵ‖² = tr(Ŵ (D + λI) Ŵᵀ). When C and D
        equal ``hessian`` exactly (X_p = X_d) it is today's problem bit for bit (Ŵ′ = Ŵ).
        None (the default): today's problem.

    Dead input channels (``dead_channels``: bool (in,), Hⱼⱼ == 0 exactly; ``n_dead``):
      * their weights are pruned: Ŵ[:, dead] is zeroed in ``weight`` (a copy; the caller's array
        is left alone) and every returned mask excludes them (``drop_dead``). This changes no
        output: X Ŵᵀ does not read those columns, so it is free, and a kept weight there would
        spend budget on nothing;
      * the count is still met by the live entries: the pattern's budget (k per layer, per row
        or N per group) is filled from the other channels, exactly as SparseGPT's reference does
        (zeroed columns rank lowest, so its threshold prunes them first and keeps k others). Only
        where fewer live entries than the budget exist (an N:M group with > M − N dead channels)
        does the layer end sparser than asked ("at most k" stays feasible);
      * in the damped Hessian ``hessian`` their rows and columns are zeroed and the diagonal set
        to the mean diagonal of the live channels (the reference sets 1; any positive value gives
        the same answer since these channels are decoupled and Ŵ is zero there, and a value on the
        live scale keeps H's conditioning), then damped as the others. So d = √diag H > 0 for
        ALPS and the Cholesky factor exists for SparseGPT at damping 0, and a W with zero dead
        columns has the same objective as without them: f counts only live channels.
    """

    def __init__(
        self,
        weight: Any,
        hessian: Any,
        sparsity: float | None = None,
        pattern: str | Pattern = "unstructured",
        damping: float = 0.01,
        name: str = "",
        cross: Any = None,
        target_hessian: Any = None,
    ) -> None:
        self.pattern = parse_pattern(pattern)
        self.origin = weight if is_torch(weight) else None  # for keep_array_type
        self.weight = _as_float_array(weight, "weight")
        self.raw_hessian = _as_float_array(hessian, "hessian")
        self.sparsity = self._check_sparsity(sparsity)
        self.damping = float(damping)
        self.name = str(name)
        self._validate()
        self._find_dead_channels()
        self.cross = self.target_hessian = None
        self.target_weight = self.weight
        self.same_inputs = True  # X_p = X_d: no cross term, or one equal to H
        self._damped = None
        self._views: dict = {}
        if (cross is None) != (target_hessian is None):
            raise ValueError("cross and target_hessian go together (a dense target needs both)")
        if cross is not None:
            self._set_target(cross, target_hessian)
        self.weight = self.without_dead(self.weight)

    # -- validation ----------------------------------------------------------
    def _check_sparsity(self, sparsity: float | None) -> float:
        return resolve_sparsity(sparsity, self.pattern)

    def _validate(self) -> None:
        W, H = self.weight, self.raw_hessian
        xp = array_module(W)
        if H.ndim != 2 or H.shape[0] != H.shape[1]:
            raise ValueError(f"hessian must be square (in × in), got shape {tuple(H.shape)}")
        if array_module(H) is not xp:
            self.raw_hessian = H = to_xp(H, xp)
        self._validate_weight()
        if not bool(xp.isfinite(H).all()):
            raise ValueError("hessian contains NaN or Inf")
        if not np.isfinite(self.damping) or self.damping < 0:
            raise ValueError(f"damping must be a finite number ≥ 0, got {self.damping!r}")
        diag = xp.diagonal(H)
        scale = float(xp.abs(diag).max()) if diag.size else 0.0
        if bool((diag < -1e-6 * max(scale, 1e-30)).any()):
            raise ValueError("hessian is not PSD: it has negative diagonal entries")
        if scale == 0.0:
            raise ValueError("hessian is zero: the calibration inputs carry no signal")
        asym = float(xp.abs(H - H.T).max())
        if asym > 1e-4 * scale:
            raise ValueError(f"hessian is not symmetric (max |H − Hᵀ| = {asym:.3g})")

    def _validate_weight(self) -> None:
        """The weight's own checks, and that it fits the (validated) Hessian and the pattern."""
        W, H = self.weight, self.raw_hessian
        if W.ndim != 2:
            raise ValueError(f"weight must be 2-D (out × in), got shape {tuple(W.shape)}")
        if H.shape[0] != W.shape[1]:
            raise ValueError(
                f"shape mismatch: weight is {tuple(W.shape)} (out × in) but hessian is "
                f"{tuple(H.shape)}; expected ({W.shape[1]}, {W.shape[1]})"
            )
        if not bool(array_module(W).isfinite(W).all()):
            raise ValueError("weight contains NaN or Inf")
        self.pattern.check_shape(W.shape)

    # -- dead input channels --------------------------------------------------
    def _find_dead_channels(self) -> None:
        """``dead_channels`` (bool, in): Hⱼⱼ == 0 exactly, as the SparseGPT reference tests it."""
        xp = array_module(self.raw_hessian)
        self.dead_channels = xp.diagonal(self.raw_hessian) == 0
        self.n_dead = int(self.dead_channels.sum())

    def without_dead(self, W):
        """W (out × in) with its dead columns zeroed (a copy when there are any, else W itself)."""
        if not self.n_dead:
            return W
        W = W.copy()
        W[:, to_xp(self.dead_channels, array_module(W))] = 0
        return W

    def drop_dead(self, mask):
        """A support (out × in, bool) without the dead channels (``mask`` itself when there are none)."""
        if not self.n_dead:
            return mask
        return mask & ~to_xp(self.dead_channels, array_module(mask))[None, :]

    # -- a dense target (cross term) -------------------------------------------
    def _set_target(self, cross: Any, target_hessian: Any) -> None:
        """Validate C and D, and set ``weight`` to Ŵ′ (dead columns zeroed by the caller)."""
        xp, n = self.xp, self.raw_hessian.shape[0]
        C = to_xp(_as_float_array(cross, "cross"), xp)
        D = to_xp(_as_float_array(target_hessian, "target_hessian"), xp)
        for label, A in (("cross", C), ("target_hessian", D)):
            if tuple(A.shape) != (n, n):
                raise ValueError(f"{label} must be ({n}, {n}) like the hessian, got shape {tuple(A.shape)}")
            if not bool(xp.isfinite(A).all()):
                raise ValueError(f"{label} contains NaN or Inf")
        scale = max(float(xp.abs(xp.diagonal(D)).max()), 1e-30)
        if bool((xp.diagonal(D) < -1e-6 * scale).any()):
            raise ValueError("target_hessian is not PSD: it has negative diagonal entries")
        if float(xp.abs(D - D.T).max()) > 1e-4 * scale:
            raise ValueError("target_hessian is not symmetric")
        self.cross, self.target_hessian = C, D
        self.same_inputs = bool(xp.array_equal(C, self.raw_hessian)) and bool(xp.array_equal(D, self.raw_hessian))
        self.weight = self._transform(self.target_weight)

    def _transform(self, W):
        """Ŵ′ for the dense weight W (W itself when X_p = X_d), in W's dtype."""
        if self.same_inputs:
            return W
        if "cholesky" not in self._views:
            self._views["cholesky"] = cholesky64(self.hessian, self.xp)
        return transformed_weight(W, self._views["cholesky"], self.cross, self.lam, self.xp).astype(W.dtype)

    @property
    def has_target(self) -> bool:
        """Whether the problem is asymmetric (a cross term that differs from H)."""
        return not self.same_inputs

    def transformed(self) -> "LayerProblem":
        """The symmetric problem every solver minimizes: weight Ŵ′, the same H, no cross term
        (self when there is none). Its objective differs from this one's by a constant."""
        if self.cross is None:
            return self
        p = LayerProblem.__new__(LayerProblem)
        p.__dict__.update(self.__dict__)
        p.cross = p.target_hessian = None
        p.target_weight, p.same_inputs = self.weight, True
        p._views = {"hessian64": self._hessian64()}
        return p

    def _cross_term(self, W) -> float:
        """⟨W, Ŵ (C + λI)ᵀ⟩ in float64, row chunks."""
        xp = self.xp
        if "cross64" not in self._views:
            self._views["cross64"] = self.cross.astype(xp.float64)
        C = self._views["cross64"]
        total = 0.0
        for r in range(0, W.shape[0], 1024):
            Wc = W[r : r + 1024].astype(xp.float64)
            Tc = self.target_weight[r : r + 1024].astype(xp.float64)
            total += float(xp.sum(Wc * (Tc @ C.T + self.lam * Tc)))
        return total

    # -- the damped Hessian and the objective ---------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    @property
    def xp(self):
        return array_module(self.weight)

    @property
    def lam(self) -> float:
        """λ = damping · mean(diag H)."""
        return self.damping * float(self.xp.diagonal(self.raw_hessian).mean())

    @property
    def hessian(self):
        """The damped Hessian H + λI (in × in), the one every solver uses (dead channels:
        rows and columns zero, diagonal the live channels' mean diagonal, then + λ)."""
        if self._damped is None:
            xp = self.xp
            H = self.raw_hessian
            H = (H + H.T) * 0.5
            idx = xp.arange(H.shape[0])
            if self.n_dead:
                dead = to_xp(self.dead_channels, xp)
                fill = float(xp.diagonal(H)[~dead].mean())
                H[dead, :] = 0
                H[:, dead] = 0
                H[idx[dead], idx[dead]] = fill
            H[idx, idx] += self.lam
            self._damped = H
        return self._damped

    @property
    def kept(self) -> int:
        """Nonzeros the pattern allows in the whole layer."""
        return self.pattern.kept_per_layer(self.shape, self.sparsity)

    def _quadratic(self, E, minus=None, rows_per_chunk: int = 1024) -> float:
        """tr(E H Eᵀ) in float64 for E (or E − minus), out × in, in row chunks to bound temporaries."""
        xp = self.xp
        E = to_xp(E, xp)
        H = self._hessian64()
        total = 0.0
        for r in range(0, E.shape[0], rows_per_chunk):
            Ec = E[r : r + rows_per_chunk].astype(xp.float64)
            if minus is not None:
                Ec -= minus[r : r + rows_per_chunk]
            total += float(xp.sum((Ec @ H) * Ec))
        return total

    def _hessian64(self):
        """The damped H in float64 (cached), for the objective."""
        if "hessian64" not in self._views:
            self._views["hessian64"] = self.hessian.astype(self.xp.float64, copy=False)
        return self._views["hessian64"]

    def objective(self, W: Any) -> float:
        """f(W) = tr((W − Ŵ) H (W − Ŵ)ᵀ), H damped, computed in float64. With a dense target:
        f_λ(W) = tr(W H_λ Wᵀ) − 2⟨W, Ŵ (C + λI)ᵀ⟩ + tr(Ŵ (D + λI) Ŵᵀ) (float64, from C and D,
        not through the rounded Ŵ′)."""
        W = to_xp(W, self.xp)
        if tuple(W.shape) != self.shape:
            raise ValueError(f"shape mismatch: W is {tuple(W.shape)}, the layer is {self.shape}")
        if self.same_inputs:
            return self._quadratic(W, minus=self.weight)
        return self._quadratic(W) - 2.0 * self._cross_term(W) + self.dense_energy()

    def dense_energy(self) -> float:
        """tr(Ŵ H Ŵᵀ): the objective of the all-zero weight (a dense target: tr(Ŵ (D + λI) Ŵᵀ)
        = ‖X_d Ŵᵀ‖² + λ‖Ŵ‖²)."""
        if "energy" not in self._views:
            if self.same_inputs:
                self._views["energy"] = self._quadratic(self.weight)
            else:
                xp, total = self.xp, 0.0
                D = self.target_hessian.astype(xp.float64)
                for r in range(0, self.shape[0], 1024):
                    Tc = self.target_weight[r : r + 1024].astype(xp.float64)
                    total += float(xp.sum((Tc @ D) * Tc)) + self.lam * float(xp.sum(Tc * Tc))
                self._views["energy"] = total
        return self._views["energy"]

    def relative_error(self, W: Any) -> float:
        """f(W) / tr(Ŵ H Ŵᵀ)."""
        return self.relative(self.objective(W))

    def relative(self, objective: float) -> float:
        """An objective value divided by tr(Ŵ H Ŵᵀ) (an all-zero Ŵ: 0 for 0, else inf)."""
        energy = self.dense_energy()
        if energy > 0:
            return objective / energy
        return 0.0 if objective == 0 else float("inf")

    def check_feasible(self, W: Any) -> bool:
        """True when W's support (its nonzeros) satisfies the pattern at this sparsity."""
        W = to_xp(W, self.xp)
        if tuple(W.shape) != self.shape:
            raise ValueError(f"shape mismatch: W is {tuple(W.shape)}, the layer is {self.shape}")
        return self.pattern.is_feasible(W != 0, self.sparsity)

    def achieved_sparsity(self, W: Any) -> float:
        W = to_xp(W, self.xp)
        return 1.0 - float((W != 0).sum()) / W.size

    # -- backends -------------------------------------------------------------
    def on(self, xp) -> "LayerProblem":
        """This problem with its arrays on backend ``xp`` (cached; self if already there)."""
        if xp is self.xp:
            return self
        key = xp.__name__
        if key not in self._views:
            p = LayerProblem.__new__(LayerProblem)
            p.__dict__.update(self.__dict__)
            p.weight = to_xp(self.weight, xp)
            p.raw_hessian = to_xp(self.raw_hessian, xp)
            p.dead_channels = to_xp(self.dead_channels, xp)
            p._damped = None if self._damped is None else to_xp(self._damped, xp)
            if self.cross is not None:
                p.cross, p.target_hessian = to_xp(self.cross, xp), to_xp(self.target_hessian, xp)
                p.target_weight = to_xp(self.target_weight, xp) if self.target_weight is not self.weight else p.weight
            else:
                p.target_weight = p.weight
            p._views = {}
            self._views[key] = p
        return self._views[key]

    def with_sparsity(self, sparsity: float | None, pattern: str | Pattern | None = None) -> "LayerProblem":
        """The same layer at another sparsity/pattern (arrays shared, not copied)."""
        p = LayerProblem.__new__(LayerProblem)
        p.__dict__.update(self.__dict__)
        p.pattern = parse_pattern(pattern) if pattern is not None else self.pattern
        p.sparsity = p._check_sparsity(sparsity)
        p.pattern.check_shape(p.shape)
        p._views = {k: v for k, v in self._views.items() if k in ("energy", "hessian64")}
        return p

    def with_weight(self, weight: Any, name: str = "", sparsity: float | None = None,
                    pattern: str | Pattern | None = None) -> "LayerProblem":
        """Another layer with the same inputs (q/k/v, gate/up of one block): this problem's
        Hessian and damping (and cross term, if any) with the dense weight ``weight`` (out' × in),
        and this problem's sparsity and pattern unless ``sparsity`` / ``pattern`` are given.

        The Hessian is validated once and its damped and float64 forms on this problem's
        backend are shared, not recomputed nor held twice (a copy made for another
        backend by ``on`` is each problem's own); only the weight is checked.
        """
        p = LayerProblem.__new__(LayerProblem)
        p.__dict__.update(self.__dict__)
        p.origin = weight if is_torch(weight) else None
        p.weight = to_xp(_as_float_array(weight, "weight"), self.xp)
        p.name = str(name)
        if pattern is not None:
            p.pattern = parse_pattern(pattern)
        if sparsity is not None or pattern is not None:
            p.sparsity = p._check_sparsity(sparsity)
        p._validate_weight()
        p._damped = self.hessian
        p._views = {"hessian64": self._hessian64()}
        p.target_weight = p.weight
        if self.cross is not None:  # the same cross term: this layer's own Ŵ′, the factorization shared
            p._views.update({k: v for k, v in self._views.items() if k in ("cholesky", "cross64")})
            p.weight = p._transform(p.weight)
        p.weight = p.without_dead(p.weight)
        return p

    def __repr__(self) -> str:
        out, inp = self.shape
        name = f" {self.name!r}" if self.name else ""
        return (
            f"LayerProblem{name}({out}×{inp}, sparsity={self.sparsity:g}, "
            f"pattern={self.pattern.name}, damping={self.damping:g})"
        )

    # -- persistence -----------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "format": "layerprune.LayerProblem",
            "format_version": FORMAT_VERSION if self.cross is not None else 1,
            "sparsity": self.sparsity,
            "pattern": self.pattern.name,
            "damping": self.damping,
            "name": self.name,
            "shape": list(self.shape),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write weight, undamped Hessian and metadata to one ``.npz`` (atomically); with a dense
        target also ``cross`` and ``target_hessian``, the weight saved being the dense Ŵ (format 2)."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        arrays = dict(weight=to_numpy(self.weight), hessian=to_numpy(self.raw_hessian),
                      metadata=np.array(json.dumps(self.metadata())))
        if self.cross is not None:  # the dense Ŵ (not Ŵ′) and the cross term: load rebuilds Ŵ′
            arrays.update(weight=to_numpy(self.target_weight), cross=to_numpy(self.cross),
                          target_hessian=to_numpy(self.target_hessian))
        atomic_write(path, lambda tmp: np.savez(tmp, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike, sparsity: float | None = None, pattern: str | None = None) -> "LayerProblem":
        """Read a file written by :meth:`save`; ``sparsity``/``pattern`` override the stored ones."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no problem file at {path!r}")
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if not {"weight", "hessian"} <= keys:
                raise ValueError(f"{path}: not a LayerProblem file (needs arrays 'weight' and 'hessian')")
            meta = json.loads(str(f["metadata"])) if "metadata" in keys else {}
            version = meta.get("format_version")
            if version is None:
                raise ValueError(f"{path}: no format_version in its metadata; it was not written by LayerProblem.save")
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError(f"{path}: format_version must be an integer, got {version!r}")
            if version > FORMAT_VERSION:
                raise ValueError(
                    f"{path}: written by a newer layerprune (format {version}; this one reads ≤ {FORMAT_VERSION})"
                )
            weight, hessian = f["weight"], f["hessian"]
            target = {k: f[k] for k in ("cross", "target_hessian") if k in keys}
        pat = pattern if pattern is not None else meta.get("pattern", "unstructured")
        if sparsity is None:
            sparsity = meta.get("sparsity") if pattern is None or pattern == meta.get("pattern") else None
        return cls(weight, hessian, sparsity=sparsity, pattern=pat, damping=meta.get("damping", 0.01), name=meta.get("name", ""),
                   **target)

    # -- builders --------------------------------------------------------------
    @classmethod
    def from_activations(
        cls,
        X: Any,
        W: Any,
        sparsity: float | None = None,
        pattern: str | Pattern = "unstructured",
        damping: float = 0.01,
        name: str = "",
    ) -> "LayerProblem":
        """Build from calibration inputs X (n × in, or (..., in)) and weight W (out × in): H = XᵀX."""
        X = _as_float_array(X, "X")
        xp = array_module(X)
        if X.ndim < 2:
            raise ValueError(f"X must be (n × in), got shape {tuple(X.shape)}")
        X = X.reshape(-1, X.shape[-1]).astype(xp.float64)
        if not bool(xp.isfinite(X).all()):
            raise ValueError("X contains NaN or Inf")
        W_in, W = W, _as_float_array(W, "weight")
        if W.ndim == 2 and X.shape[1] != W.shape[1]:
            raise ValueError(
                f"shape mismatch: X has {X.shape[1]} input features but weight is {tuple(W.shape)} (out × in)"
            )
        H = X.T @ X
        # A torch weight goes in as given, so that solve(..., keep_array_type=True) returns torch.
        weight = W_in if is_torch(W_in) and array_module(W) is xp else to_xp(W, xp)
        return cls(weight, H, sparsity=sparsity, pattern=pattern, damping=damping, name=name)
