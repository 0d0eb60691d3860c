"""The whole query path in one process: tokenize -> encode -> pool + L2-normalise.

The served ``embed`` ensemble runs the same three steps as three Triton models; the
tests hold the two equal. ``build`` encodes the corpus with this class so that
documents and queries go through identical code.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from kernels.pooling import Pooling, pool_normalize_reference

from .encoder import OnnxEncoder
from .text import TextTokenizer


class EmbeddingPipeline:
    def __init__(self, tokenizer: TextTokenizer, encoder: OnnxEncoder, pooling: Pooling):
        self.tokenizer, self.encoder, self.pooling = tokenizer, encoder, pooling

    @property
    def dim(self) -> int:
        return self.encoder.hidden_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> (B, D) float32 unit vectors."""
        ids, mask = self.tokenizer(texts)
        return pool_normalize_reference(self.encoder(ids, mask), mask, self.pooling)

    def embed_many(self, texts: Sequence[str], batch_size: int, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed any number of texts in batches; returns (N, D) in input order.

        Texts are grouped by length so that padding stays small; ``on_batch(n)`` is
        called after each batch of n texts (progress bars).
        """
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self.embed([texts[i] for i in rows])
            if on_batch is not None:
                on_batch(len(rows))
        return out
