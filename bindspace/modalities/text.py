"""Text: a tokenizer plus a transformer, pooled at the end-of-text token (CLIP / ImageBind).

ImageBind-huge: 77-token context, width 1024, 24 blocks, 16 heads, causal attention, a learnable
logit scale initialised at 1/0.07 (CLIP). Three kinds of tokenizer:

- ``bytes`` (default): UTF-8 bytes plus BOS/EOS/PAD, needs no downloaded vocabulary, so a
  from-scratch text encoder works offline on any machine;
- ``clip_bpe``: OpenAI CLIP's byte-level BPE (``bindspace.modalities.clip_bpe``), ImageBind's
  tokenizer and the ``huge`` preset's, over the merges file that ships inside open_clip_torch;
- a transformers tokenizer (hub id or local folder), for pretrained text trunks
  (``trunk.kind=hf``, e.g. all-MiniLM-L6-v2 with ``head.pool=mean``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from bindspace.modalities.base import ModalitySpec, register_modality
from bindspace.modalities.clip_bpe import clip_bpe
from bindspace.nn.layers import TextTokenEmbedding
from bindspace.nn.pretrained import resolve_hf_source

PAD, BOS, EOS, BYTE_OFFSET = 0, 1, 2, 3
BYTE_VOCAB = 256 + BYTE_OFFSET
# OpenAI CLIP's BPE (ImageBind's text tokenizer): 49408 ids, end-of-text the largest, zero padding.
CLIP_BPE, CLIP_VOCAB = "clip_bpe", 49408


@dataclass
class TextInput:
    tokenizer: str = "bytes"  # "bytes", "clip_bpe" or a transformers tokenizer (hub id or local folder)
    context_length: int = 77
    lowercase: bool = False


def byte_tokenize(text: str, context_length: int) -> tuple[Tensor, Tensor]:
    """``BOS + utf-8 bytes + EOS``, truncated so EOS always fits, right-padded with PAD."""
    if context_length < 3:
        raise ValueError(f"context_length must be at least 3, got {context_length}")
    body = list(text.encode("utf-8"))[: context_length - 2]
    ids = [BOS, *(b + BYTE_OFFSET for b in body), EOS]
    input_ids = torch.full((context_length,), PAD, dtype=torch.long)
    input_ids[: len(ids)] = torch.tensor(ids)
    mask = torch.zeros(context_length, dtype=torch.long)
    mask[: len(ids)] = 1
    return input_ids, mask


def byte_tokenize_batch(texts: Sequence[str], context_length: int) -> tuple[Tensor, Tensor]:
    """:func:`byte_tokenize` of every text, stacked: ``(B, context_length)`` ids and mask, built in numpy."""
    if context_length < 3:
        raise ValueError(f"context_length must be at least 3, got {context_length}")
    body = [t.encode("utf-8")[: context_length - 2] for t in texts]
    lengths = np.fromiter(map(len, body), np.int64, count=len(body))
    ids = np.zeros((len(body), context_length), np.int64)  # PAD
    ids[:, 0] = BOS
    rows = np.repeat(np.arange(len(body)), lengths)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + 1  # after BOS
    ids[rows, cols] = np.frombuffer(b"".join(body), np.uint8).astype(np.int64) + BYTE_OFFSET
    ids[np.arange(len(body)), lengths + 1] = EOS
    mask = (np.arange(context_length) < (lengths + 2)[:, None]).astype(np.int64)
    return torch.from_numpy(ids), torch.from_numpy(mask)


@lru_cache(maxsize=4)
def hf_tokenizer(source: str):
    from transformers import AutoTokenizer

    # Tokenizer files are data: never run a tokenizer's custom code (a checkpoint names this source too).
    return AutoTokenizer.from_pretrained(resolve_hf_source(source), trust_remote_code=False)


@register_modality
class TextSpec(ModalitySpec):
    name = "text"
    input_config = TextInput
    causal = True
    inline = True
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "trunk": {"width": 1024, "depth": 24, "heads": 16},
        "head": {"pool": "eos"},
        "logit_scale": {"init": 1 / 0.07, "learnable": True},
    }
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        # 128 bytes hold every built-in caption (77 byte tokens would cut a third of the synthetic ones).
        "tiny": {"input": {"context_length": 128}, "trunk": {"width": 128, "depth": 2, "heads": 4}},
        "small": {"input": {"context_length": 128}, "trunk": {"width": 384, "depth": 6, "heads": 6}},
        "base": {"input": {"context_length": 128}, "trunk": {"width": 512, "depth": 12, "heads": 8}},
        # ImageBind-huge's: CLIP BPE in 77 positions (the longest built-in caption is 26 BPE tokens).
        "huge": {"input": {"tokenizer": CLIP_BPE, "context_length": 77}},
    }

    def read(self, path):
        raise TypeError("text is given inline (the string itself), not read from a file")

    def transform(self, raw: str, cfg: TextInput) -> dict[str, Tensor]:
        out = self.transform_batch([raw], cfg)
        return {k: v[0] for k, v in out.items()}

    def transform_batch(self, raws, cfg: TextInput) -> dict[str, Tensor]:
        texts = [t.lower() if cfg.lowercase else t for t in raws]
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"text inputs must be strings, got {type(t).__name__}")
        if cfg.tokenizer == "bytes":
            ids, mask = byte_tokenize_batch(texts, cfg.context_length)
            return {"input_ids": ids, "attention_mask": mask}
        if cfg.tokenizer == CLIP_BPE:
            ids, mask = clip_bpe()(texts, cfg.context_length)
            return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        enc = hf_tokenizer(cfg.tokenizer)(
            texts, padding="max_length", truncation=True, max_length=cfg.context_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def vocab_size(self, cfg: TextInput) -> int:
        if cfg.tokenizer == CLIP_BPE:
            return CLIP_VOCAB
        return BYTE_VOCAB if cfg.tokenizer == "bytes" else len(hf_tokenizer(cfg.tokenizer))

    def build_preprocessor(self, cfg: TextInput, width: int) -> nn.Module:
        # CLIP BPE ids (ImageBind's text input) end at their largest id: a bare id tensor is enough.
        return TextTokenEmbedding(self.vocab_size(cfg), cfg.context_length, width, eos_argmax=cfg.tokenizer == CLIP_BPE)

    def dummy_input(self, cfg: TextInput, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        lengths = torch.randint(3, cfg.context_length + 1, (batch_size,), generator=generator)
        ids = torch.randint(BYTE_OFFSET, self.vocab_size(cfg), (batch_size, cfg.context_length), generator=generator)
        mask = (torch.arange(cfg.context_length)[None] < lengths[:, None]).long()
        return {"input_ids": ids * mask, "attention_mask": mask}
