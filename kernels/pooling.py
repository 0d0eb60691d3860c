"""Pooling of hidden states followed by L2 normalisation.

``Pooling`` is the one closed enum shared by training, export, kernels and configs.
``pool_normalize_reference`` is the numpy reference; the OpenAI-Triton kernel
(``kernels/pool_normalize_triton.py``) and the torch reference (``pooling_torch.py``)
are tested against it.

Defined behaviour for a row whose attention mask is all zeros: a ValueError that names
the row. Such a row has no token to pool, and a silent zero vector would score 0
against every document.
"""
from __future__ import annotations

import enum

import numpy as np


class Pooling(str, enum.Enum):
    MEAN = "mean"
    LAST_TOKEN = "last_token"
    CLS = "cls"

    @classmethod
    def parse(cls, value: str) -> "Pooling":
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(p.value for p in cls)
            raise ValueError(f"pooling must be one of [{allowed}]; got {value!r}") from None


def _check_inputs(hidden: np.ndarray, mask: np.ndarray) -> None:
    if hidden.ndim != 3:
        raise ValueError(f"hidden states must be (B, S, D); got shape {hidden.shape}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"attention mask must be (B, S) = {hidden.shape[:2]}; got shape {mask.shape}")
    empty = np.flatnonzero(~mask.astype(bool).any(axis=1))
    if empty.size:
        raise ValueError(f"attention mask has no tokens in row(s) {empty.tolist()}; cannot pool an empty row")


def pool_normalize_reference(hidden: np.ndarray, mask: np.ndarray, pooling: Pooling | str, eps: float = 1e-12) -> np.ndarray:
    """(B, S, D) hidden states, (B, S) 0/1 mask -> (B, D) float32 unit vectors.

    mean: average over positions whose mask is 1.
    last_token: the last position whose mask is 1 (right or left padding).
    cls: position 0.
    Computed in float32 whatever the input dtype.
    """
    pooling = Pooling.parse(pooling) if isinstance(pooling, str) else pooling
    _check_inputs(hidden, mask)
    h = hidden.astype(np.float32, copy=False)
    m = mask.astype(np.float32)
    if pooling is Pooling.MEAN:
        pooled = np.einsum("bsd,bs->bd", h, m) / m.sum(axis=1, keepdims=True)  # (B, D)
    elif pooling is Pooling.LAST_TOKEN:
        seq = mask.shape[1]
        last = seq - 1 - np.argmax(mask[:, ::-1].astype(bool), axis=1)  # (B,)
        pooled = h[np.arange(h.shape[0]), last]
    else:
        pooled = h[:, 0]
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norm, eps)).astype(np.float32)
