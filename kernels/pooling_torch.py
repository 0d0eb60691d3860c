"""Pooling + L2 normalisation in plain torch ops: the reference for the Triton kernel.

It is also what the training towers use where no GPU kernel runs (the CPU). It lives
apart from ``kernels/pool_normalize_triton.py`` so that importing it never needs
triton, and apart from ``kernels/pooling.py`` so that CPU serving never needs torch.
"""
from __future__ import annotations

import torch

from kernels.pooling import Pooling


def pool_normalize_torch_reference(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling | str, eps: float = 1e-12) -> torch.Tensor:
    """Plain torch ops in fp32 (the 'eager' baseline): mask multiply, sum, divide, normalise."""
    pooling = Pooling.parse(pooling) if isinstance(pooling, str) else pooling
    h = hidden.float()
    m = mask.float()
    if pooling is Pooling.MEAN:
        pooled = (h * m[:, :, None]).sum(dim=1) / m.sum(dim=1, keepdim=True)
    elif pooling is Pooling.LAST_TOKEN:
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask.bool(), positions, -1).max(dim=1).values
        pooled = h[torch.arange(h.shape[0], device=h.device), last]
    else:
        pooled = h[:, 0]
    return pooled / pooled.norm(dim=1, keepdim=True).clamp_min(eps)
