"""HF safetensors folders opened lazily, and pruned models written as sharded safetensors.

:func:`open_lazy` builds the model's skeleton with every parameter on the meta device
(``accelerate.init_empty_weights``; buffers such as rotary frequencies are computed for
real), reads the tensors outside the blocks (embeddings, final norm, LM head: a few
hundred MB even at 70B) and hands the blocks to a :class:`~layerprune.layerwise.stores.StreamedBlocks`
that reads each one from disk when the driver reaches it. Host memory holds the
embeddings, one block and the calibration activations, whatever the depth.

:func:`save_sharded` writes the output: one shard per block (the checkpoint's block files,
hard-linked, not copied; with ``--save-format compressed`` each written compressed by
``layerwise.compressed``), one shard for the rest, ``model.safetensors.index.json``, the
config, the tokenizer: a folder ``AutoModelForCausalLM.from_pretrained`` reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layerprune.layerwise.compressed import Compression, compressed_weights, plain_config, read_tensor
from layerprune.layerwise.errors import LayerwiseError
from layerprune.layerwise.models import find_blocks
from layerprune.layerwise.stores import StreamedBlocks, set_tensor
from layerprune.problems.atomic import atomic_write, atomic_write_json, atomic_write_text

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` / ``"float16"`` / ``"float32"`` (or ``bf16``, ``fp16``, ``fp32``, a torch dtype) →
    torch dtype; None stays None (the checkpoint's own dtype)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    key = aliases.get(str(name).lower(), str(name).lower())
    if key not in DTYPES:
        raise LayerwiseError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[key]


class SafetensorsFolder:
    """Which safetensors file of an HF folder holds each tensor (one file, or shards with an index)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if (self.folder / INDEX).is_file():
            with open(self.folder / INDEX, encoding="utf-8") as f:
                self.weight_map: dict[str, str] = dict(json.load(f)["weight_map"])
        elif (self.folder / SINGLE).is_file():
            from safetensors import safe_open

            with safe_open(str(self.folder / SINGLE), framework="pt") as f:
                self.weight_map = {key: SINGLE for key in f.keys()}
        else:
            raise LayerwiseError(f"{self.folder} holds no {SINGLE} and no {INDEX}")
        # a compressed weight (layerwise.compressed) is read, decompressed, under its dense name
        self.weight_map.update({w: self.weight_map[p + ".bitmask"] for w, p in compressed_weights(self.weight_map).items()})

    @staticmethod
    def present(folder: str | os.PathLike) -> bool:
        return (Path(folder) / INDEX).is_file() or (Path(folder) / SINGLE).is_file()

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def read(self, names: list[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The named tensors, read onto ``device`` (one open per file)."""
        from safetensors import safe_open

        missing = [n for n in names if n not in self.weight_map]
        if missing:
            raise LayerwiseError(f"{self.folder}: tensor(s) {', '.join(missing[:5])} are in no safetensors file")
        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[name], []).append(name)
        out = {}
        for file, keys in by_file.items():
            with safe_open(str(self.folder / file), framework="pt", device=str(device)) as f:
                stored = set(f.keys())
                for key in keys:
                    out[key] = read_tensor(f, key, stored)
        return out


def checkpoint_dtype(config: Any) -> torch.dtype:
    """The dtype a config records (``dtype``, formerly ``torch_dtype``); float32 when absent."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else torch.float32


def _tied(model: nn.Module) -> dict[str, str]:
    """target → source names of tied parameters (the LM head tied to the embeddings)."""
    tied = getattr(model, "_tied_weights_keys", None)
    if isinstance(tied, dict) and getattr(model.config, "tie_word_embeddings", False):
        return dict(tied)
    return {}


@torch.no_grad()
def open_lazy(folder: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """The model of an HF safetensors folder with its blocks left on disk (see the module docstring).

    The returned model has ``model.layerprune_store``, the :class:`StreamedBlocks` the driver and
    the block-by-block perplexity use; its non-block tensors are real, on the CPU, in ``dtype``.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = plain_config(AutoConfig.from_pretrained(folder, local_files_only=True))
    dtype = dtype or checkpoint_dtype(config)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    model.config.use_cache = False
    files = SafetensorsFolder(folder)
    path, _ = find_blocks(model)
    tied = _tied(model)
    rest = [n for n in model.state_dict() if not n.startswith(path + ".")]
    wanted = [n for n in rest if n in files or n not in tied]
    for name, t in files.read(wanted).items():
        set_tensor(model, name, t.to(dtype) if t.is_floating_point() else t)
    for target, source in tied.items():
        if target in rest and target not in files:
            set_tensor(model, target, model.get_parameter(source).data)
    model.layerprune_store = StreamedBlocks(model, files, dtype)
    return model


def non_block_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors outside the blocks a save keeps (tied copies left out, as ``save_pretrained`` does)."""
    path, _ = find_blocks(model)
    tied = _tied(model)
    return {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()
            if not n.startswith(path + ".") and n not in tied}


def save_sharded(model: nn.Module, block_files: list[Path], tokenizer: Any, folder: Path,
                 extra_files: dict[str, str] | None = None, compression: Compression | None = None) -> None:
    """Fill ``folder`` (new, empty) with a sharded safetensors model: the block files hard-linked as
    shards 1 … n (copied where links are impossible; with ``compression``, written compressed),
    the non-block tensors as the last shard, the index, the config (with its dtype), the
    generation config and the tokenizer."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    total = len(block_files) + 1
    weight_map: dict[str, str] = {}
    size = 0
    for i, src in enumerate(block_files):
        name = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        if compression is not None:
            compression.compress_file(src, folder / name)
        else:
            try:
                os.link(src, folder / name)
            except OSError:
                shutil.copy2(src, folder / name)
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                weight_map[key] = name
        size += (folder / name).stat().st_size
    rest = non_block_tensors(model)
    last = f"model-{total:05d}-of-{total:05d}.safetensors"
    atomic_write(folder / last, lambda tmp: save_file(rest, tmp, metadata={"format": "pt"}))
    weight_map.update({key: last for key in rest})
    size += sum(t.numel() * t.element_size() for t in rest.values())
    atomic_write_json(folder / INDEX, {"metadata": {"total_size": size}, "weight_map": weight_map})
    model.config.save_pretrained(folder)
    if compression is not None:
        compression.mark(folder)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    for name, text in (extra_files or {}).items():
        atomic_write_text(folder / name, text)


def open_model(spec: str | os.PathLike, dtype: torch.dtype | None = None, *, stream: bool = True) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for a run: an HF folder of safetensors is opened lazily (its blocks stay on
    disk, :func:`open_lazy`) unless ``stream=False``; GGUF files and other folders are loaded whole
    (``load_model``: transformers dequantizes GGUF in one piece)."""
    from layerprune.layerwise.models import load_model, load_tokenizer, resolve_model

    src = resolve_model(spec)
    if stream and not src.is_gguf and SafetensorsFolder.present(src.folder):
        tokenizer = load_tokenizer(src)
        try:
            return open_lazy(src.folder, dtype), tokenizer
        except (OSError, ValueError, KeyError) as e:
            raise LayerwiseError(f"cannot open a causal language model from {src.spec!r}: {e}") from e
    return load_model(spec, dtype)
