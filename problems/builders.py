"""Problem builders: synthetic layers with a realistic spectrum, and H from activations.

Real LLM activations are strongly correlated across input channels (a Hessian
spectrum decaying like a power law) and carry a few outlier channels whose
scale is an order of magnitude above the rest. ``synthetic_problem`` imitates
both, so that problems are not identity-like (where every method ties).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from layerprune.problems.backend import add_gram
from layerprune.problems.problem import LayerProblem


def synthetic_hessian(
    inp: int,
    *,
    decay: float = 1.0,
    outlier_fraction: float = 0.01,
    outlier_scale: float = 10.0,
    n_samples: int | None = None,
    seed: int | None = 0,
    xp=np,
):
    """H = XᵀX for synthetic activations X (n × in) with a power-law spectrum.

    X = Z · diag(√σ) · Qᵀ · S with Z Gaussian, Q a random rotation, σᵢ = (1 + i)^(−decay)
    and S per-channel log-normal scales (a fraction of channels ×``outlier_scale``).
    ``n_samples`` < in gives a rank-deficient H, as short calibration sets do.
    """
    rng = np.random.default_rng(seed)
    n = int(n_samples) if n_samples is not None else 2 * inp
    sigma = (1.0 + np.arange(inp)) ** (-float(decay))
    scales = np.exp(0.5 * rng.standard_normal(inp))
    n_out = int(round(outlier_fraction * inp))
    if n_out:
        scales[rng.choice(inp, n_out, replace=False)] *= outlier_scale
    # Gaussian draws on the target backend (a 11008² rotation is made on the GPU there).
    gauss = rng.standard_normal if xp is np else xp.random.RandomState(seed).standard_normal
    q, r = xp.linalg.qr(xp.asarray(gauss((inp, inp))))
    q *= xp.sign(xp.diagonal(r))[None, :]
    mix = (xp.asarray(np.sqrt(sigma))[:, None] * q.T) * xp.asarray(scales)[None, :]  # (in × in)
    X = xp.asarray(gauss((n, inp))) @ mix
    H = X.T @ X / n
    return (H + H.T) * 0.5


def synthetic_problem(
    out: int,
    inp: int,
    sparsity: float | None = 0.5,
    pattern: str = "unstructured",
    *,
    damping: float = 0.01,
    decay: float = 1.0,
    outlier_fraction: float = 0.01,
    n_samples: int | None = None,
    seed: int | None = 0,
    xp=np,
    dtype=np.float32,
) -> LayerProblem:
    """A random layer (out × in) with correlated, outlier-laden calibration inputs."""
    H = synthetic_hessian(
        inp, decay=decay, outlier_fraction=outlier_fraction, n_samples=n_samples, seed=seed, xp=xp
    )
    wseed = None if seed is None else seed + 1
    gauss = np.random.default_rng(wseed).standard_normal if xp is np else xp.random.RandomState(wseed).standard_normal
    W = xp.asarray(gauss((out, inp))) / np.sqrt(inp)
    return LayerProblem(
        W.astype(dtype), H.astype(dtype), sparsity=sparsity, pattern=pattern, damping=damping,
        name=f"synthetic-{out}x{inp}-seed{seed}",
    )


class HessianAccumulator:
    """Accumulates H = Σ xᵀx over batches of activations (torch, float32 by default).

    Use from a forward hook: ``acc.add(inputs[0])`` where the tensor is (..., in).

    Block inputs in bf16/fp16/fp32 are upcast to the accumulator's dtype and added with
    ``addmm_`` under ``full_float32_matmul``: full float32 products even where the process
    turned TF32 on (``allow_tf32 = True``, ``set_float32_matmul_precision("high")``), which
    would round every product to a 10-bit mantissa (~1e-3 relative error in H). In float32
    the error against float64 from the same upcast values is a few 1e-7: measured 3–4e-7
    relative (Frobenius) and ≤ 7e-7 per entry relative to Σₙ|xᵢxⱼ| for n = 4096–8192 bf16
    rows, in = 64–256, added in batches of 512 (tests/test_numerics.py); each entry is a sum of
    n products with a 24-bit mantissa (unit roundoff 6e-8) in blocked GEMM order. That is
    enough: the solvers themselves work in float32, and the damping λ = 0.01·mean(diag H) on
    the diagonal is ~1e4 times that rounding (|δHᵢⱼ| ≲ 7e-7·√(HᵢᵢHⱼⱼ)), so neither the damped
    H's conditioning nor the chosen support sees it.
    """

    def __init__(self, in_features: int, device: Any = "cpu", dtype: Any = None) -> None:
        import torch

        self.dtype = dtype or torch.float32
        self.H = torch.zeros(in_features, in_features, device=device, dtype=self.dtype)
        self.count = 0

    def add(self, x: Any) -> None:
        """H += xᵀx for x (..., in), upcast to the accumulator's dtype, in full float32 precision.

        The product is ``problems.backend.add_gram``'s: on a GPU, bf16/fp16 inputs through the
        tensor cores with float32 output, exact (Llama-3-8B's down_proj, in = 14336, 128 × 2048
        rows: 108 TFLOP, ~2 s in float32 on an H200).
        """
        x = x.detach().reshape(-1, x.shape[-1]).to(device=self.H.device)
        if x.shape[-1] != self.H.shape[0]:
            raise ValueError(f"activation width {x.shape[-1]} ≠ layer input {self.H.shape[0]}")
        add_gram(self.H, x, x)
        self.count += x.shape[0]

    def is_finite(self) -> bool:
        """Whether every accumulated entry is finite (a NaN/Inf input, or an overflow, makes H non-finite)."""
        import torch

        return bool(torch.isfinite(self.H).all())

    def hessian(self):
        """XᵀX as accumulated (torch tensor, in × in)."""
        if self.count == 0:
            raise ValueError("no activations were recorded for this layer")
        return self.H
