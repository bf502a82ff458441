"""Baseline solvers (magnitude, Wanda, SparseGPT, gradual-mask ADMM), registered with `layerprune.solvers`."""

from layerprune.baselines.admm_gradual import admm_gradual
from layerprune.baselines.magnitude import magnitude
from layerprune.baselines.sparsegpt import sparsegpt
from layerprune.baselines.wanda import wanda

__all__ = ["admm_gradual", "magnitude", "sparsegpt", "wanda"]
