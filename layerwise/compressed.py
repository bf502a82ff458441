"""Pruned models saved compressed: compressed-tensors' bitmask layouts, read back by our loaders.

A pruned weight ``<module>.weight`` (out × in) is stored as compressed-tensors' legacy
sparse formats store it (the names drop ``.weight``):

* ``sparse-bitmask`` (any sparsity): ``<module>.compressed`` (the kept values, 1-D, row by
  row), ``<module>.bitmask`` (uint8, out × ceil(in/8), bit j of a row = entry j kept, little
  bit order), ``<module>.row_offsets`` (int64: where each row's values start), ``<module>.shape``.
* ``sparse-24-bitmask`` (every pruned layer 2:4): ``compressed`` is (out × in/2), exactly two
  values of every four (zeros fill groups with fewer), no ``row_offsets``.

An entry is "kept" when it is not zero (NaN is kept) and every zero comes back as ``+0.0``:
the pruned weights the driver writes (``driver.write_pruned``: pruned entries ``+0.0``, kept
ones never zero) come back bit for bit. ``config.json`` gets compressed-tensors' ``quantization_config``
with a ``sparsity_config`` (its ``BitmaskConfig`` / ``Sparse24BitMaskConfig``): the layout
that library wrote and read up to its sparse compressors' removal. compressed-tensors 0.20.1
(the release transformers 5.x here needs) has no sparse compressor, and transformers then
loads such a folder with the pruned weights *missing* (randomly initialized): read a
compressed folder with :func:`load_compressed_model` (``layerwise.models.load_model``) or
``layerwise.lazy.open_lazy``, which decompress it. Writing needs compressed-tensors
(``pip install 'layerprune[compressed]'``); reading does not.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerprune.extras import install_command
from layerprune.layerwise.errors import LayerwiseError, MissingPackageError
from layerprune.problems.atomic import atomic_write, atomic_write_json, atomic_write_text

SAVE_FORMATS = ("dense", "compressed")
BITMASK = "sparse-bitmask"
BITMASK_24 = "sparse-24-bitmask"
INSTALL = install_command("compressed")
PARTS = ("compressed", "bitmask", "shape", "row_offsets")


def require_compressed_tensors() -> None:
    """Raise :class:`MissingPackageError` (one line, the install command) when compressed-tensors is absent."""
    if importlib.util.find_spec("compressed_tensors") is None:
        raise MissingPackageError("compressed-tensors (needed for --save-format compressed)", INSTALL)


def check_save_format(save_format: str) -> str:
    """``dense`` | ``compressed`` (the latter needs compressed-tensors); anything else is an error."""
    if save_format not in SAVE_FORMATS:
        raise LayerwiseError(f"--save-format {save_format!r}: use one of {', '.join(SAVE_FORMATS)}")
    if save_format == "compressed":
        require_compressed_tensors()
    return save_format


# -- one tensor ----------------------------------------------------------------------------
def kept_mask(weight: torch.Tensor) -> torch.Tensor:
    """True where an entry is not zero (NaN is kept); zeros come back as ``+0.0``."""
    return weight != 0


def mask_24(kept: torch.Tensor) -> torch.Tensor:
    """The 2:4 storage mask: ``kept`` filled up to exactly two entries of every four (first zeros
    first). Raises when a group of four keeps more than two, or ``in`` is not a multiple of 4."""
    rows, cols = kept.shape
    if cols % 4:
        raise LayerwiseError(f"{BITMASK_24} needs a multiple of 4 inputs, got {cols}")
    groups = kept.reshape(-1, 4)
    counts = groups.sum(dim=1, keepdim=True)
    if bool((counts > 2).any()):
        raise LayerwiseError(f"{BITMASK_24}: a weight keeps more than 2 of 4 entries in some group; it is not 2:4")
    free = ~groups
    fill = free & (torch.cumsum(free.int(), dim=1) <= 2 - counts)
    return (groups | fill).reshape(rows, cols)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(rows × cols) bool → (rows × ceil(cols/8)) uint8, little bit order (compressed-tensors' ``pack_bitmasks``)."""
    from compressed_tensors.utils import pack_bitmasks

    return pack_bitmasks(mask.cpu())


def unpack_bits(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """The inverse of :func:`pack_bits` (NumPy only: reading needs no compressed-tensors)."""
    bits = np.unpackbits(packed.cpu().numpy(), axis=-1, count=shape[-1], bitorder="little")
    return torch.from_numpy(bits.reshape(shape).astype(bool))


def compress_weight(weight: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """One 2-D weight → its parts (``compressed``, ``bitmask``, ``shape``[, ``row_offsets``]) in ``fmt``."""
    if weight.ndim != 2:
        raise LayerwiseError(f"only 2-D weights are compressed, got shape {tuple(weight.shape)}")
    weight = weight.detach().cpu().contiguous()
    kept = kept_mask(weight)
    shape = torch.tensor(list(weight.shape), dtype=torch.int64).reshape(-1, 1)
    if fmt == BITMASK_24:
        mask = mask_24(kept)
        return {"compressed": weight[mask].reshape(weight.shape[0], -1), "bitmask": pack_bits(mask), "shape": shape}
    if fmt != BITMASK:
        raise LayerwiseError(f"unknown compressed format {fmt!r}: {BITMASK} or {BITMASK_24}")
    counts = kept.sum(dim=1)
    return {"compressed": weight[kept], "bitmask": pack_bits(kept), "shape": shape,
            "row_offsets": torch.cumsum(counts, 0) - counts}


def decompress_weight(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """A weight's parts (either format) → the dense weight, bit for bit."""
    shape = [int(x) for x in parts["shape"].flatten().tolist()]
    mask = unpack_bits(parts["bitmask"], shape)
    values = parts["compressed"].flatten()
    dense = torch.zeros(shape, dtype=values.dtype, device=values.device)
    dense[mask.to(values.device)] = values
    return dense


# -- a shard's tensors ---------------------------------------------------------------------
def module_of(weight_name: str) -> str:
    """``a.b.weight`` → ``a.b`` (the prefix the parts are stored under)."""
    return weight_name.removesuffix(".weight")


def compress_tensors(tensors: dict[str, torch.Tensor], weights: set[str] | frozenset[str], fmt: str) -> dict[str, torch.Tensor]:
    """A shard's tensors with each one named in ``weights`` replaced by its parts; the rest as they are."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name in weights:
            prefix = module_of(name)
            out.update({f"{prefix}.{part}": v for part, v in compress_weight(t, fmt).items()})
        else:
            out[name] = t
    return out


def compressed_weights(keys) -> dict[str, str]:
    """Dense weight name → its module prefix, for every compressed weight among ``keys``."""
    keys = set(keys)
    return {f"{k[:-len('.bitmask')]}.weight": k[:-len(".bitmask")] for k in keys
            if k.endswith(".bitmask") and f"{k[:-len('.bitmask')]}.compressed" in keys
            and f"{k[:-len('.bitmask')]}.shape" in keys}


def part_names(prefix: str, keys) -> list[str]:
    """The stored parts of the weight under ``prefix`` among ``keys``."""
    return [f"{prefix}.{p}" for p in PARTS if f"{prefix}.{p}" in keys]


def decompress_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A shard's tensors with every compressed weight's parts replaced by the dense weight."""
    found = compressed_weights(tensors)
    parts = {name for prefix in found.values() for name in part_names(prefix, tensors)}
    out = {k: t for k, t in tensors.items() if k not in parts}
    for weight, prefix in found.items():
        out[weight] = decompress_weight({k[len(prefix) + 1:]: tensors[k] for k in part_names(prefix, tensors)})
    return out


def read_tensor(handle: Any, name: str, keys) -> torch.Tensor:
    """Tensor ``name`` from an open ``safe_open`` handle: stored as is, or decompressed from its parts."""
    if name in keys:
        return handle.get_tensor(name)
    prefix = module_of(name)
    return decompress_weight({k[len(prefix) + 1:]: handle.get_tensor(k) for k in part_names(prefix, keys)})


# -- a whole save --------------------------------------------------------------------------
@dataclass(frozen=True)
class Compression:
    """What a compressed save does: the pruned weights (full names) and the one format for them."""

    format: str
    weights: frozenset[str]
    sparsity: float = 0.0
    dense_layers: tuple[str, ...] = ()

    @classmethod
    def from_run(cls, record: dict) -> Compression:
        """From a run log: its pruned layers (``layers``) in ``sparse-24-bitmask`` when every one is
        2:4, else ``sparse-bitmask``; ``dense_layers`` stay dense."""
        layers = record["layers"]
        path = record["block_path"]
        weights = frozenset(f"{path}.{e['block']}.{e['layer']}.weight" for e in layers)
        patterns = {e["pattern"] for e in layers}
        fmt = BITMASK_24 if patterns == {"2:4"} else BITMASK
        return cls(fmt, weights, float(record.get("sparsity", 0.0)), tuple(record.get("dense_layers", ())))

    def compress(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One shard's tensors, its pruned weights compressed."""
        return compress_tensors(tensors, self.weights, self.format)

    def config(self) -> dict:
        """The ``quantization_config`` for ``config.json`` (compressed-tensors' sparsity config)."""
        import compressed_tensors
        from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig

        kind = Sparse24BitMaskConfig if self.format == BITMASK_24 else BitmaskConfig
        sparsity = kind(global_sparsity=self.sparsity, targets=sorted(module_of(w) for w in self.weights),
                        ignore=list(self.dense_layers),
                        sparsity_structure="2:4" if self.format == BITMASK_24 else "unstructured")
        return {"quant_method": "compressed-tensors", "version": compressed_tensors.__version__,
                "format": self.format, "sparsity_config": sparsity.model_dump()}

    def compress_file(self, src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
        """Write safetensors file ``src`` compressed to ``dst`` (a new path, or ``src`` itself); its keys."""
        from safetensors.torch import load_file, save_file

        out = self.compress(load_file(str(src)))
        atomic_write(dst, lambda tmp: save_file(out, tmp, metadata={"format": "pt"}))  # replaced, never overwritten
        return list(out)

    def mark(self, folder: str | os.PathLike) -> None:
        """Add the compression config to ``folder/config.json``."""
        path = Path(folder) / "config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["quantization_config"] = self.config()
        atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def compress_folder(self, folder: str | os.PathLike) -> None:
        """Compress every safetensors file of a saved HF folder in place, then its index and config."""
        folder = Path(folder)
        weight_map = {}
        for file in sorted(folder.glob("*.safetensors")):
            weight_map.update({key: file.name for key in self.compress_file(file, file)})
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
            atomic_write_json(index, {"metadata": {"total_size": size}, "weight_map": weight_map})
        self.mark(folder)


def is_compressed(folder: str | os.PathLike) -> bool:
    """Whether ``folder/config.json`` says its weights are stored in a bitmask format of this module."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        q = json.loads(path.read_text(encoding="utf-8")).get("quantization_config") or {}
    except (OSError, ValueError):
        return False
    return (q.get("sparsity_config") or {}).get("format") in (BITMASK, BITMASK_24)


def plain_config(config: Any) -> Any:
    """``config`` without its compression ``quantization_config`` (the weights are read decompressed)."""
    q = getattr(config, "quantization_config", None)
    if isinstance(q, dict) and (q.get("sparsity_config") or {}).get("format") in (BITMASK, BITMASK_24):
        delattr(config, "quantization_config")
    return config


def folder_tensors(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a saved folder, compressed weights decompressed."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        out.update(decompress_tensors(load_file(str(file))))
    return out


def load_compressed_model(folder: str | os.PathLike, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The model of a compressed folder, whole, decompressed (on the CPU, eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = plain_config(AutoConfig.from_pretrained(folder, local_files_only=True))
    tensors = folder_tensors(folder)
    stored = next(t.dtype for t in tensors.values() if t.is_floating_point())
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or stored)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise LayerwiseError(f"{folder}: tensors do not match the model (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]})")
    if missing:
        model.tie_weights()
    return model.eval()
