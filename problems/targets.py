"""Asymmetric (dense) targets: a layer fit to the dense model's outputs.

With X_p (n × in) the layer's inputs in the model pruned so far and X_d the same layer's
inputs in the fully dense model, the damped asymmetric objective is

    f_λ(W) = ‖X_p Wᵀ − X_d Ŵᵀ‖²_F + λ ‖W − Ŵ‖²_F
           = tr(W H_λ Wᵀ) − 2 tr(W (C + λI) Ŵᵀ) + tr(Ŵ (D + λI) Ŵᵀ)
           = tr((W − Ŵ′) H_λ (W − Ŵ′)ᵀ) + const,

H = X_pᵀX_p, C = X_pᵀX_d (the cross term), D = X_dᵀX_d, H_λ = H + λI,
Ŵ′ = Ŵ (C + λI)ᵀ H_λ⁻¹ and const = tr(Ŵ (D + λI) Ŵᵀ) − tr(Ŵ′ H_λ Ŵ′ᵀ) ≥ 0. So every solver
runs unchanged on the symmetric problem (Ŵ′, H_λ). With X_p = X_d (C = D = H) it is the
symmetric problem exactly: Ŵ′ = Ŵ, const = 0. Ŵ′ is computed by a float64 Cholesky solve
of H_λ Ŵ′ᵀ = (C + λI) Ŵᵀ, never an explicit inverse.

A blended target fits part of the way: X_t = (1 − β) X_p + β X_d in place of X_d
(:func:`blend_statistics`; β = 1 the dense target, β = 0 the pruned one), i.e. each layer
undoes the fraction β of what the earlier layers' pruning moved its inputs by.

:class:`CrossAccumulator` sums C = Σ x_pᵀ x_d over mini-batches (float32, as
:class:`~layerprune.problems.builders.HessianAccumulator` sums H).
"""

from __future__ import annotations

from typing import Any

from layerprune.problems.backend import add_gram
from layerprune.problems.factorize import checked_cholesky, scipy_linalg, with_jitter


def blend_statistics(H, C, D, beta: float):
    """(C_t, D_t) of the blended target X_t = X_p + β (X_d − X_p) = (1 − β) X_p + β X_d from
    H = X_pᵀX_p, C = X_pᵀX_d and D = X_dᵀX_d (in × in, NumPy, CuPy or torch):

        C_t = X_pᵀX_t = H + β E,                     E = C − H = X_pᵀ(X_d − X_p),
        D_t = X_tᵀX_t = H + β (E + Eᵀ) + β² (D − E − Eᵀ − H),

    written in the differences so that X_p = X_d (C = D = H) gives H itself, bit for bit, at any β.
    **Overwrites C and D** (into C_t and D_t, returned): no in × in temporaries, which at a 70B
    down_proj are 3.3 GB each. β = 1 returns (C, D) untouched; β must lie in [0, 1].
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"target blend must lie in [0, 1], got {beta!r}")
    if beta == 1.0:
        return C, D
    E = C
    E -= H
    D -= E
    D -= E.T
    D -= H
    D *= beta * beta
    E *= beta
    D += E
    D += E.T
    D += H
    E += H
    return E, D


def cholesky64(H, xp):
    """L (float64, lower) with H = L Lᵀ for the damped H. A singular H (damping 0 with fewer rows
    than inputs) is factored as H + τI, the least τ of ``problems.factorize.with_jitter`` that
    works, with a RuntimeWarning; ValueError when even that fails. Ŵ′ then solves the jittered
    system, so the transformed problem matches the asymmetric one up to 2τ⟨W, Ŵ′⟩ (τ ≤ 1e-2 ·
    mean diag H, and only where damping 0 leaves H singular)."""
    return with_jitter(checked_cholesky, H, xp, what="dense target: the ", stacklevel=5)


def transformed_weight(W, L, cross, lam: float, xp, rows_per_chunk: int = 4096):
    """Ŵ′ = Ŵ (C + λI)ᵀ H_λ⁻¹ (out × in, float64) from Ŵ (out × in), the Cholesky factor L of
    H_λ and the undamped cross term C (in × in): two triangular solves per row chunk."""
    solve = scipy_linalg(xp).solve_triangular
    C = cross.astype(xp.float64)
    out = xp.empty(W.shape, dtype=xp.float64)
    for r in range(0, W.shape[0], rows_per_chunk):
        Wc = W[r : r + rows_per_chunk].astype(xp.float64)
        B = C @ Wc.T + lam * Wc.T  # (C + λI) Ŵᵀ, in × rows
        Y = solve(L, B, lower=True)
        out[r : r + rows_per_chunk] = solve(L.T, Y, lower=False).T
    return out


class CrossAccumulator:
    """Accumulates C = Σ x_pᵀ x_d (in × in) over paired batches (torch, float32 by default).

    x_p and x_d (..., in) are the same rows' inputs in the pruned and in the dense model. The
    products are taken as :class:`~layerprune.problems.builders.HessianAccumulator` takes
    XᵀX (full float32, bf16/fp16 on a GPU through the tensor cores with float32 output), so
    with x_p = x_d the sum equals that accumulator's H bit for bit.
    """

    def __init__(self, in_features: int, device: Any = "cpu", dtype: Any = None) -> None:
        import torch

        self.dtype = dtype or torch.float32
        self.C = torch.zeros(in_features, in_features, device=device, dtype=self.dtype)
        self.count = 0

    def add(self, x_p: Any, x_d: Any) -> None:
        """C += x_pᵀ x_d for x_p, x_d (..., in) of the same shape."""
        if tuple(x_p.shape) != tuple(x_d.shape):
            raise ValueError(f"paired inputs differ in shape: {tuple(x_p.shape)} and {tuple(x_d.shape)}")
        x_p = x_p.detach().reshape(-1, x_p.shape[-1]).to(device=self.C.device)
        x_d = x_d.detach().reshape(-1, x_d.shape[-1]).to(device=self.C.device)
        if x_p.shape[-1] != self.C.shape[0]:
            raise ValueError(f"activation width {x_p.shape[-1]} ≠ layer input {self.C.shape[0]}")
        add_gram(self.C, x_p, x_d)
        self.count += x_p.shape[0]

    def is_finite(self) -> bool:
        import torch

        return bool(torch.isfinite(self.C).all())

    def cross(self):
        """X_pᵀX_d as accumulated (torch tensor, in × in)."""
        if self.count == 0:
            raise ValueError("no paired activations were recorded for this layer")
        return self.C
