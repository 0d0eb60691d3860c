"""Fused pooling + L2 normalisation in OpenAI Triton, forward and backward, with autograd.

One program per row reads the row's hidden states once, pools them (mean over the
mask, last token, or cls) in fp32 and writes the unit vector in the input dtype.
The backward kernel writes d(hidden) tile by tile. On the CPU it runs under
``TRITON_INTERPRET=1`` (correctness only; CI checks it against
``pool_normalize_torch_reference`` below). It lives apart from ``kernels/pooling.py``
so that the CPU serving path never imports triton.

Inputs: hidden (B, S, D) fp32/fp16/bf16, any strides; mask (B, S) of 0/1, any
integer or bool dtype. D <= 8192. A row whose mask is all zeros is an error
(ValueError naming the rows), as in the numpy reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.pooling import Pooling
from kernels.pooling_torch import pool_normalize_torch_reference  # noqa: F401  (re-exported: the tests' reference)

MAX_DIM = 8192
TILE_ELEMENTS = 16384  # BLOCK_S * BLOCK_D per loaded tile
_POOL_CODE = {Pooling.MEAN: 0, Pooling.LAST_TOKEN: 1, Pooling.CLS: 2}


@triton.jit
def _pool_normalize_fwd(
    h_ptr, m_ptr, out_ptr, y32_ptr, norm_ptr, pick_ptr,
    S, D, s_hb, s_hs, s_hd, s_mb, s_ms, s_ob, s_od, eps,
    POOL: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)  # b * stride passes 2**31 at B x S x D >= 2**31 elements
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    if POOL == 0:  # mean over masked positions
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        count = tl.zeros([], dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            sm = s < S
            mk = tl.load(m_ptr + b * s_mb + s * s_ms, mask=sm, other=0).to(tl.float32)  # (BS,)
            h = tl.load(h_ptr + b * s_hb + s[:, None] * s_hs + d[None, :] * s_hd,
                        mask=sm[:, None] & dm[None, :], other=0.0).to(tl.float32)  # (BS, BD)
            acc += tl.sum(h * mk[:, None], axis=0)
            count += tl.sum(mk, axis=0)
        pooled = acc / count
        pick = count
    else:
        pos = tl.zeros([], dtype=tl.int32)
        if POOL == 1:  # last position whose mask is 1 (left or right padding)
            pos = pos - 1
            for s0 in range(0, S, BLOCK_S):
                s = s0 + tl.arange(0, BLOCK_S)
                mk = tl.load(m_ptr + b * s_mb + s * s_ms, mask=s < S, other=0)
                pos = tl.maximum(pos, tl.max(tl.where(mk != 0, s, -1), axis=0))
        pooled = tl.load(h_ptr + b * s_hb + pos * s_hs + d * s_hd, mask=dm, other=0.0).to(tl.float32)
        pick = pos.to(tl.float32)
    norm = tl.sqrt(tl.sum(pooled * pooled, axis=0))
    y = pooled / tl.maximum(norm, eps)
    tl.store(out_ptr + b * s_ob + d * s_od, y.to(out_ptr.dtype.element_ty), mask=dm)
    tl.store(y32_ptr + b * D + d, y, mask=dm)
    tl.store(norm_ptr + b, norm)
    tl.store(pick_ptr + b, pick)


@triton.jit
def _pool_normalize_bwd(
    g_ptr, y32_ptr, norm_ptr, pick_ptr, m_ptr, dh_ptr,
    S, D, s_gb, s_gd, s_mb, s_ms, s_db, s_ds, s_dd, eps,
    POOL: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)  # b * stride passes 2**31 at B x S x D >= 2**31 elements
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    g = tl.load(g_ptr + b * s_gb + d * s_gd, mask=dm, other=0.0).to(tl.float32)
    y = tl.load(y32_ptr + b * D + d, mask=dm, other=0.0)
    norm = tl.load(norm_ptr + b)
    # y = p / |p|  =>  dL/dp = (g - y (y . g)) / |p|
    dp = (g - y * tl.sum(y * g, axis=0)) / tl.maximum(norm, eps)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    sm = s < S
    pick = tl.load(pick_ptr + b)
    if POOL == 0:
        w = tl.load(m_ptr + b * s_mb + s * s_ms, mask=sm, other=0).to(tl.float32) / pick
    else:
        w = (s == pick.to(tl.int32)).to(tl.float32)
    dh = w[:, None] * dp[None, :]
    tl.store(dh_ptr + b * s_db + s[:, None] * s_ds + d[None, :] * s_dd, dh.to(dh_ptr.dtype.element_ty),
             mask=sm[:, None] & dm[None, :])


def _launch_shape(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[int, int, int]:
    """-> (BLOCK_S, BLOCK_D, num_warps) for this shape, shared by the forward and backward launches."""
    if hidden.ndim != 3 or hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"hidden states must be (B, S, D) fp32/fp16/bf16; got {tuple(hidden.shape)} {hidden.dtype}")
    batch, seq, dim = hidden.shape
    if mask.shape != (batch, seq):
        raise ValueError(f"attention mask must be (B, S) = {(batch, seq)}; got {tuple(mask.shape)}")
    if not 1 <= dim <= MAX_DIM:
        raise ValueError(f"hidden size D must be in [1, {MAX_DIM}]; got {dim}")
    empty = torch.nonzero(~mask.bool().any(dim=1)).flatten()
    if empty.numel():
        raise ValueError(f"attention mask has no tokens in row(s) {empty.tolist()}; cannot pool an empty row")
    block_d = triton.next_power_of_2(dim)
    block_s = max(1, min(triton.next_power_of_2(seq), TILE_ELEMENTS // block_d))
    return block_s, block_d, 4 if block_d <= 1024 else 8


class PoolNormalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, mask, pooling: Pooling, eps: float):
        block_s, block_d, num_warps = _launch_shape(hidden, mask)
        batch, seq, dim = hidden.shape
        mask_i = mask if mask.dtype != torch.bool else mask.to(torch.int8)
        out = torch.empty((batch, dim), dtype=hidden.dtype, device=hidden.device)
        y32 = torch.empty((batch, dim), dtype=torch.float32, device=hidden.device)
        norm = torch.empty(batch, dtype=torch.float32, device=hidden.device)
        pick = torch.empty(batch, dtype=torch.float32, device=hidden.device)  # token count (mean) or position
        _pool_normalize_fwd[(batch,)](
            hidden, mask_i, out, y32, norm, pick, seq, dim, *hidden.stride(), *mask_i.stride(), *out.stride(), eps,
            POOL=_POOL_CODE[pooling], BLOCK_S=block_s, BLOCK_D=block_d, num_warps=num_warps,
        )
        ctx.save_for_backward(mask_i, y32, norm, pick)
        ctx.meta = (pooling, eps, hidden.shape, hidden.dtype, block_s, block_d, num_warps)
        return out

    @staticmethod
    def backward(ctx, grad):
        mask_i, y32, norm, pick = ctx.saved_tensors
        pooling, eps, (batch, seq, dim), dtype, block_s, block_d, num_warps = ctx.meta
        dh = torch.empty((batch, seq, dim), dtype=dtype, device=grad.device)
        _pool_normalize_bwd[(batch, triton.cdiv(seq, block_s))](
            grad, y32, norm, pick, mask_i, dh, seq, dim, *grad.stride(), *mask_i.stride(), *dh.stride(), eps,
            POOL=_POOL_CODE[pooling], BLOCK_S=block_s, BLOCK_D=block_d, num_warps=num_warps,
        )
        return dh, None, None, None


def pool_normalize_triton(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling | str, eps: float = 1e-12) -> torch.Tensor:
    """(B, S, D), (B, S) -> (B, D) unit vectors in hidden's dtype; differentiable w.r.t. hidden."""
    pooling = Pooling.parse(pooling) if isinstance(pooling, str) else pooling
    return PoolNormalize.apply(hidden, mask, pooling, eps)
