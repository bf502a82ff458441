"""CPU thread limits for torch and the BLAS behind NumPy.

On a small shared machine multi-threaded BLAS spins while other jobs hold the cores:
measured here on 2 cores with one other job running, one SmolLM2 block took ALPS
13.6 s with one thread and 30.2 s with two (a 1536² ``eigh``: 0.8 s against 1.8–3.6 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Run the block with at most ``n`` threads in torch and in NumPy's BLAS (None: unchanged)."""
    if n is None:
        yield
        return
    if n < 1:
        from layerprune.layerwise.errors import LayerwiseError

        raise LayerwiseError(f"threads must be ≥ 1, got {n}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # BLAS keeps its own count; torch is still limited
            yield
        else:
            with threadpool_limits(limits=n):
                yield
    finally:
        torch.set_num_threads(before)
