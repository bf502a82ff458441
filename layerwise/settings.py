"""The settings of a pruning run: one dataclass, every default defined here once.

The command line, a recipe file (YAML, ``--recipe``), :func:`layerprune.prune`'s keyword
arguments and the demo all build a :class:`PruneSettings` and hand it on; the driver reads
its pruning part, the pipeline its model, data and evaluation part.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from layerprune.layerwise.activations import check_place
from layerprune.layerwise.allocation import check_profile, default_profile
from layerprune.layerwise.checks import check_at_least, check_solver_device, check_torch_device
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.levers import check_levers, uses_levers
from layerprune.layerwise.recipe import DEFAULT_TARGETS, check_entries, load_recipe, parse_overrides
from layerprune.layerwise.sources import TEXT_FIELD
from layerprune.problems import resolve_sparsity
from layerprune.solvers import check_options


@dataclass
class PruneSettings:
    """What to prune, how, on what data, and where.

    model : the model to load (an HF folder, a .gguf file, ``smollm2``); None when the model is
        handed over in memory (:func:`layerprune.prune`).
    dtype : weights and block forwards in "bfloat16", "float16" or "float32" (None: the checkpoint's
        own; GGUF: float32). Hessians and solvers are float32 whatever it is.
    stream : read an HF safetensors folder one block at a time (``layerwise.lazy``).
    method : a registered method (``layerprune.available_methods()``).
    sparsity : fraction removed per layer in [0, 1); None for N:M patterns (1 − N/M).
    pattern : "unstructured", "row" or "N:M".
    damping : λ = damping · mean(diag H).
    device : where each block runs while it is pruned ("cpu", "cuda", …).
    solver_device : where the solver runs ("cpu"/"cuda"; None: "cuda" when ``device`` is a GPU).
    batch_size : calibration sequences per block forward.
    options : passed to the method (e.g. ``{"max_iter": 100}`` for ALPS).
    targets, ignore : which linears inside the blocks are pruned (``layerwise.recipe``: class
        names, full module names, ``re:`` patterns); ignored ones stay dense.
    overrides : per-layer sparsity / pattern / method / options (``recipe.Override`` or mappings).
    calib, nsamples, seqlen, seed : calibration source, segments, tokens per segment (and per
        evaluation window), the sampling seed.
    eval_text, eval_tokens : the perplexity text (None: no evaluation) and its first tokens (None: all).
    text_field : the field/column of .jsonl/.json/.parquet and hf: text sources.
    save_format : "dense" (plain safetensors) or "compressed" (the pruned layers in compressed-tensors'
        bitmask layout, ``layerwise.compressed``; ``sparse-24-bitmask`` when every one is 2:4).
    activations : where the calibration activations live between block forwards: "device", "host"
        (pinned, copies overlapped) or "auto" (the device when they fit; ``layerwise.activations``).
    hessian_shards : accumulate H over this many contiguous shards of the calibration mini-batches,
        added in shard order (``layerwise.distributed``): a one-process run with N reproduces an
        N-process torchrun run bit for bit. None: one shard per process (the plain sum in one).
    local_search : after each layer's method, exact local search on its support and a refit
        (``solve(..., polish=...)``, ``solvers.polish``): False never, True always, None where the
        cost model says it pays (``solvers.polish.POLISH_BUDGET``; the default: on an H200 it polished
        SmolLM2's layers but down_proj (and a few gate/up) and lowered perplexity at 7 of 8 settings, BENCHMARKS.md).
    sequential : "block" (every H of a block from one pass with its dense weights) or "groups"
        (q/k/v, o, gate/up, down in forward order, each H with the earlier groups pruned; ``layerwise.levers``).
    target : "pruned" (fit Ŵ on the pruned model's inputs) or "dense" (fit the dense model's outputs
        blended by ``target_blend``, ‖X_p Wᵀ − X_t Ŵᵀ‖² + λ‖W − Ŵ‖², X_t = (1 − β) X_p + β X_d:
        ``problems.targets``; one more activation stream).
    target_blend : β in (0, 1] of a dense target: each layer fits (1 − β) X_p Ŵᵀ + β X_d Ŵᵀ, undoing
        the fraction β of the earlier layers' drift (1: the dense outputs themselves; not used with
        target="pruned"). Default 0.25, the best of those measured (BENCHMARKS.md, "Levers beyond ALPS").
    sparsity_profile : how ``sparsity`` is spread over the layers (``layerwise.allocation``): "uniform"
        (every layer at it), "owl" (outlier-weighted per block) or "curve" (measured error curves);
        the free layers keep exactly round((1 − s)·their weights) together; not with N:M patterns.
        None (the default; ``validate`` fills it in, ``allocation.default_profile``): "owl" with the
        unstructured pattern and the dense target, where it was measured to pay (BENCHMARKS.md, "Levers
        beyond ALPS"; with the pruned target it was mixed), "uniform" otherwise (row and N:M patterns).
    owl_m, owl_lmbda : OWL's outlier threshold M (× the mean Wanda score) and λ (blocks within s ± 2λ).
    curve_offsets : the sparsities s + offset (those in [0, 1)) each layer's curve is measured at.
    curve_weighting : the curve objective Σ w_ℓ·e_ℓ: "relative" (w = 1), "size" (w ∝ weights), "objective"
        (w ∝ tr(Ŵ H Ŵᵀ), the absolute error).
    """

    model: str | None = None
    dtype: str | None = None
    stream: bool = True
    method: str = "alps"
    sparsity: float | None = None
    pattern: str = "unstructured"
    damping: float = 0.01
    device: str = "cpu"
    solver_device: str | None = None
    batch_size: int = 8
    options: dict = field(default_factory=dict)
    targets: tuple = DEFAULT_TARGETS
    ignore: tuple = ()
    overrides: tuple = ()
    calib: str = "wiki"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    eval_text: str | None = "wiki-test"
    eval_tokens: int | None = None
    text_field: str = TEXT_FIELD
    save_format: str = "dense"
    activations: str = "auto"
    hessian_shards: int | None = None
    local_search: bool | None = None
    sequential: str = "groups"
    target: str = "dense"
    target_blend: float = 0.25
    sparsity_profile: str | None = None
    owl_m: float = 5.0
    owl_lmbda: float = 0.08
    curve_offsets: tuple = (-0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15)
    curve_weighting: str = "size"

    @classmethod
    def build(cls, recipe: str | dict | None = None, **given: Any) -> PruneSettings:
        """Settings from a recipe (a YAML file's path or a dict of these fields) and keyword
        arguments (those given; the rest keep the recipe's values, then the defaults here).

        Unknown keys are errors naming them (with the closest field); a keyword argument that
        contradicts the recipe is an error naming both values."""
        data = load_recipe(recipe)
        names = [f.name for f in fields(cls)]
        for where, keys in (("recipe", data), ("settings", given)):
            unknown = [k for k in keys if k not in names]
            if unknown:
                hints = [f" (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, names, 1)) else ""
                         for k in unknown]
                raise LayerwiseError(f"{where}: unknown key(s) " + ", ".join(f"{k!r}{h}" for k, h in zip(unknown, hints))
                                     + f"; the keys are {', '.join(names)}")
        clash = [k for k in data if k in given and given[k] != data[k]]
        if clash:
            raise LayerwiseError("the recipe and the arguments disagree on " + ", ".join(
                f"{k} (recipe {data[k]!r}, argument {given[k]!r})" for k in clash))
        return cls(**{**data, **given})

    def validate_run(self) -> None:
        """:meth:`validate`, and the run's data and model settings (counts, text sources, dtype):
        all before any model loads."""
        from layerprune.layerwise.data import check_text_source
        from layerprune.layerwise.lazy import parse_dtype

        self.validate()
        check_at_least("nsamples", self.nsamples, 1)
        check_at_least("seqlen", self.seqlen, 2)
        check_at_least("eval_tokens", self.eval_tokens, 2, optional=True)
        check_text_source(self.calib, "--calib", self.text_field)
        if self.eval_text is not None:
            check_text_source(self.eval_text, "--text", self.text_field)
        parse_dtype(self.dtype)

    def validate(self) -> None:
        """Check the pruning settings (the method and its options, the pattern, ranges, targets and
        overrides, the devices); fills in an N:M pattern's sparsity. Cheap: call it before loading anything."""
        if is_dataclass(self.options):  # an options object (ALPSOptions(...)): its fields, as a dict
            self.options = asdict(self.options)
        try:
            check_options(self.method, self.options)  # the method, then each option by name, type and range
        except ValueError as e:
            raise LayerwiseError(str(e)) from None
        self.sparsity = checked_sparsity(self.sparsity, self.pattern)
        self.targets = tuple(check_entries(self.targets, "targets"))
        self.ignore = tuple(check_entries(self.ignore, "ignore"))
        self.overrides = parse_overrides(self.overrides)
        for i, o in enumerate(self.overrides):  # each override's layers as a whole run resolves them
            try:
                method, options, _, _ = self.layer(o.values, f"overrides[{i}]: ")
                check_options(method, options)
            except ValueError as e:
                raise LayerwiseError(e if str(e).startswith("overrides[") else f"overrides[{i}]: {e}") from None
        check_at_least("damping", self.damping, 0)
        check_at_least("batch_size", self.batch_size, 1)
        check_place(self.activations)
        check_at_least("hessian_shards", self.hessian_shards, 1, optional=True)
        check_torch_device(self.device, "--device")
        check_solver_device(self.solve_device, "--solver-device")
        if self.local_search is not None and not isinstance(self.local_search, bool):
            raise LayerwiseError(f"local_search must be true, false or null (where it pays), got {self.local_search!r}")
        check_levers(self.sequential, self.target, self.target_blend)
        if self.hessian_shards and uses_levers(self.sequential, self.target):
            raise LayerwiseError(f"hessian_shards reproduces a torchrun run's sums on the block path only: it needs "
                                 f"--sequential block --target pruned (got sequential={self.sequential!r}, "
                                 f"target={self.target!r})")
        if self.sparsity_profile is None:
            self.sparsity_profile = default_profile(self.pattern, self.target)
        self.curve_offsets = check_profile(self.sparsity_profile, self.pattern, self.owl_m, self.owl_lmbda,
                                           self.curve_offsets, self.curve_weighting)
        if self.hessian_shards and self.sparsity_profile != "uniform":
            raise LayerwiseError(f"hessian_shards reproduces a torchrun run's sums with the uniform profile only (a "
                                 f"profile's pre-pass is summed over the ranks): use --sparsity-profile uniform (got "
                                 f"{self.sparsity_profile!r})")

    def layer(self, plan: dict, where: str = "") -> tuple[str, dict, float, str]:
        """(method, options, sparsity, pattern) of a layer whose override values are ``plan`` (the one
        place that resolves them: ``validate`` checks each override through it). An override's pattern
        without a sparsity takes the pattern's own (N:M) or the run's; its method without options
        takes no options (the run's options belong to the run's method)."""
        method = plan.get("method", self.method)
        options = plan.get("options", self.options if method == self.method else {})
        options = asdict(options) if is_dataclass(options) else options
        pattern = plan.get("pattern", self.pattern)
        sparsity = plan.get("sparsity", None if "pattern" in plan and ":" in str(pattern) else self.sparsity)
        return method, options, checked_sparsity(sparsity, pattern, where), pattern

    @property
    def solve_device(self) -> str:
        """The solver's device: ``solver_device``, else the block device when it is a GPU
        (``cuda:N`` included: torch and CuPy then work on the same device), else the CPU."""
        if self.solver_device is not None:
            return self.solver_device
        return str(self.device) if str(self.device).startswith("cuda") else "cpu"


def checked_sparsity(sparsity: float | None, pattern: str, where: str = "") -> float:
    """``problems.resolve_sparsity`` with its error as a LayerwiseError, prefixed by ``where``."""
    try:
        return resolve_sparsity(sparsity, pattern)
    except ValueError as e:
        raise LayerwiseError(f"{where}{e}") from None
