"""Named solver variants for the benchmark scripts: a row label → (method, options)."""

from __future__ import annotations

VARIANTS = {
    "alps-eig64": ("alps", {"eig_dtype": "float64"}),
    "alps-tf32": ("alps", {"tf32": True}),
    "alps-explicit-inverse": ("alps", {"explicit_inverse": True}),  # the in × in inverse even when in > out
    "alps-syevd": ("alps", {"staged_eigh": False}),  # cuSOLVER's one-call eigendecomposition always
    "alps-staged": ("alps", {"staged_eigh": True}),  # the staged eigendecomposition even where syevd fits
    "alps-local": ("alps", {"local_search": True}),  # exact local search (moves between rows, swaps in rows)
    # ρ raised more slowly than the published schedule (1.3 / 1.2 / 1.1 per check) and more iterations:
    # the support settles later, after more ADMM steps
    "alps-slow": ("alps", {"rho_factors": (1.1, 1.05, 1.02), "max_iter": 1000}),
}


def method_and_options(name: str) -> tuple[str, dict]:
    """A variant's method and options; any other name is a plain method."""
    return VARIANTS.get(name, (name, {}))
