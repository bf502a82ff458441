"""Disk bytes of dense vs compressed saves (issue 13): a random bf16 Llama pruned with magnitude on the CPU.

    .venv/bin/python benchmarks/compressed_size.py --hidden 1024 --intermediate 2816 --blocks 4 --out /tmp/csize

Builds the model from a config (random weights, byte-level tokenizer), saves it as bf16 safetensors,
runs ``layerprune prune --save-format dense`` and ``... compressed`` on it (streamed, magnitude, 70 %
unstructured and 2:4, no evaluation), checks the two outputs hold the same weights bit for bit, and
prints one Markdown row per setting: dense bytes, compressed bytes, ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=260)
    ap.add_argument("--out", default="/tmp/csize")
    a = ap.parse_args()
    from layerwise_tiny import byte_tokenizer, tiny_text
    from transformers import AutoConfig, AutoModelForCausalLM

    from layerprune.layerwise import compressed
    from layerprune.layerwise.cli import main as cli

    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    src = root / "model"
    if not src.exists():
        config = AutoConfig.for_model("llama", vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                                      num_hidden_layers=a.blocks, num_attention_heads=16, num_key_value_heads=8,
                                      max_position_embeddings=256, tie_word_embeddings=False)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(src, max_shard_size="200MB")
        byte_tokenizer().save_pretrained(src)
    (root / "text.txt").write_text(tiny_text(2000))
    print("| model | setting | dense bytes | compressed bytes | ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, extra in (("0.7 unstructured", ["--sparsity", "0.7"]), ("2:4", ["--pattern", "2:4"])):
        outs = {}
        for fmt in ("dense", "compressed"):
            out = root / f"{label.split()[0].replace(':', '-')}-{fmt}"
            assert cli(["prune", "--model", str(src), "--method", "magnitude", *extra, "--calib", str(root / "text.txt"),
                        "--nsamples", "2", "--seqlen", "64", "--no-eval", "--quiet", "--output", str(out),
                        "--save-format", fmt]) == 0
            outs[fmt] = out
        dense, comp = compressed.folder_tensors(outs["dense"]), compressed.folder_tensors(outs["compressed"])
        assert dense.keys() == comp.keys() and all(torch.equal(dense[k].view(torch.int16) if dense[k].dtype == torch.bfloat16
                                                               else dense[k], comp[k].view(torch.int16)
                                                               if comp[k].dtype == torch.bfloat16 else comp[k])
                                                   for k in dense)
        d, c = folder_bytes(outs["dense"]), folder_bytes(outs["compressed"])
        print(f"| Llama h{a.hidden} i{a.intermediate} × {a.blocks} blocks, vocab {a.vocab}, bf16 | {label} | {d:,} | {c:,} | "
              f"{c / d:.3f} |", flush=True)


if __name__ == "__main__":
    main()
