"""Tiny offline models and a byte-level tokenizer for the layer-wise tests (no hub downloads)."""

from __future__ import annotations

import functools

import pytest
import torch

VOCAB = 260
FAMILIES = ("llama", "qwen2", "opt", "gpt_neox")
WORDS = (
    "the of and to in is was for on as with by he at from his an were are which this also be or had first "
    "one their its new after who they have her she two been other when there all during into school time may "
    "years more most only over city some world would where later up such used many can state about national "
    "out known university united then made"
).split()


TIMING_KEYS = ("seconds", "polish_seconds")  # a run log's layer entries that differ from run to run


def untimed(layers: list[dict]) -> list[dict]:
    """A run log's layer entries without their timing keys, for comparing two runs of the same pruning."""
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in layers]


@functools.lru_cache(maxsize=1)
def byte_tokenizer():
    """A byte-level BPE tokenizer without merges: 256 byte tokens + an end-of-text token (257 ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    return fast


@functools.lru_cache(maxsize=1)
def bos_byte_tokenizer():
    """:func:`byte_tokenizer` with a BOS token ``<s>`` (id 257) that its post-processor puts first
    by default (as Llama's tokenizers do): ``tok("a")["input_ids"] == [257, 64]``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)} | {"<|endoftext|>": 256, "<s>": 257}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 257)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<s>")


def tiny_config(family: str, hidden: int = 32, layers: int = 2, context: int = 128):
    from transformers import AutoConfig

    common = dict(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  max_position_embeddings=context)
    if family in ("llama", "qwen2"):
        extra = dict(intermediate_size=2 * hidden, num_key_value_heads=2, tie_word_embeddings=False)
    elif family == "opt":
        extra = dict(ffn_dim=2 * hidden, word_embed_proj_dim=hidden, enable_bias=True, do_layer_norm_before=True)
    elif family == "gpt_neox":
        extra = dict(intermediate_size=2 * hidden, rotary_pct=0.5)
    else:
        raise ValueError(family)
    return AutoConfig.for_model(family, **common, **extra)


def tiny_model(family: str, seed: int = 0, **kw):
    """A random decoder-only model of ``family`` with 2 blocks (weights scaled up so layers matter)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kw), dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.15)
    return model.eval()


def folder_tensors(folder) -> dict:
    """Every tensor of a saved model folder (one safetensors file or shards), by name."""
    from pathlib import Path

    from safetensors.torch import load_file

    out: dict = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def tiny_text(n_words: int = 4000, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n_words,), generator=g).tolist()
    sentences, words = [], [WORDS[i] for i in idx]
    for start in range(0, len(words), 12):
        sentences.append(" ".join(words[start : start + 12]).capitalize() + ".")
    return " ".join(sentences)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread (no OpenMP barriers while other jobs share the cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Crash(RuntimeError):
    """A simulated crash (``crash_after``)."""


def crash_after(n: int):
    """A driver ``after_block`` hook raising :class:`Crash` once block ``n`` is checkpointed."""
    def hook(index):
        if index == n:
            raise Crash(f"simulated crash after block {index}")

    return hook
