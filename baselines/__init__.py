"""Baseline solvers (magnitude, Wanda, SparseGPT), registered with `layerprune.solvers`."""

from layerprune.baselines.magnitude import magnitude
from layerprune.baselines.sparsegpt import sparsegpt
from layerprune.baselines.wanda import wanda

__all__ = ["magnitude", "sparsegpt", "wanda"]
