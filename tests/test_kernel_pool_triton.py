"""OpenAI-Triton fused pooling + L2 norm against the references, forward and backward.

On a machine without a GPU the kernel runs under TRITON_INTERPRET=1 (set in conftest);
with CUDA every test runs it compiled, on conftest's DEVICE, and the `gpu` tests add the
large shapes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.pool_normalize_triton import pool_normalize_torch_reference, pool_normalize_triton
from kernels.pooling import Pooling, pool_normalize_reference
from tests.conftest import DEVICE

# explicit tolerances per dtype: outputs are unit vectors, stored in the input dtype
FWD_TOL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
BWD_TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
SHAPES = [(1, 1, 7), (3, 13, 100), (2, 33, 1023), (4, 5, 384)]


def make_inputs(batch, seq, dim, dtype, left_pad, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq, dim, generator=g).to(dtype)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    mask = torch.zeros(batch, seq, dtype=torch.int64)
    for b, n in enumerate(lengths.tolist()):
        if left_pad:
            mask[b, seq - n:] = 1
        else:
            mask[b, :n] = 1
    return hidden.to(device), mask.to(device)


@pytest.mark.parametrize("pooling", list(Pooling))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_matches_references(pooling, shape, dtype):
    hidden, mask = make_inputs(*shape, dtype, left_pad=pooling is Pooling.LAST_TOKEN, seed=sum(shape))
    got = pool_normalize_triton(hidden, mask, pooling)
    assert got.dtype == dtype and got.shape == (shape[0], shape[2])
    ref = pool_normalize_torch_reference(hidden, mask, pooling)
    torch.testing.assert_close(got.float(), ref, atol=FWD_TOL[dtype], rtol=0)
    numpy_ref = pool_normalize_reference(hidden.float().cpu().numpy(), mask.cpu().numpy(), pooling)
    np.testing.assert_allclose(ref.cpu().numpy(), numpy_ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", list(Pooling))
@pytest.mark.parametrize("shape", [(1, 1, 7), (3, 13, 100), (2, 9, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_backward_matches_autograd_of_the_reference(pooling, shape, dtype):
    hidden, mask = make_inputs(*shape, dtype, left_pad=False, seed=7 + sum(shape))
    upstream = torch.randn(shape[0], shape[2], generator=torch.Generator().manual_seed(1)).to(DEVICE)
    h1 = hidden.clone().requires_grad_(True)
    (pool_normalize_triton(h1, mask, pooling).float() * upstream).sum().backward()
    h2 = hidden.clone().float().requires_grad_(True)
    (pool_normalize_torch_reference(h2, mask, pooling) * upstream).sum().backward()
    assert h1.grad.dtype == dtype
    torch.testing.assert_close(h1.grad.float(), h2.grad, atol=BWD_TOL[dtype], rtol=0)
    # padding positions get exactly zero gradient under mean and last-token pooling
    if pooling is not Pooling.CLS:
        assert (h1.grad.float()[mask == 0] == 0).all()


def test_any_strides():
    hidden, mask = make_inputs(4, 10, 64, torch.float32, left_pad=False, seed=11)
    transposed = hidden.transpose(0, 1).contiguous().transpose(0, 1)  # same values, batch-minor strides
    sliced = torch.randn(4, 10, 128, device=DEVICE)[:, :, ::2]  # stride 2 along D
    assert not transposed.is_contiguous() and not sliced.is_contiguous()
    for h in (transposed, sliced):
        torch.testing.assert_close(pool_normalize_triton(h, mask, "mean"), pool_normalize_torch_reference(h, mask, "mean"), atol=1e-6, rtol=0)


def test_bool_mask_and_left_padding_for_last_token():
    hidden, mask = make_inputs(5, 12, 48, torch.float32, left_pad=True, seed=5)
    got = pool_normalize_triton(hidden, mask.bool(), Pooling.LAST_TOKEN)
    torch.testing.assert_close(got, hidden[:, -1] / hidden[:, -1].norm(dim=1, keepdim=True), atol=1e-6, rtol=0)


def test_empty_row_and_oversized_dimension_are_errors():
    hidden, mask = make_inputs(3, 4, 8, torch.float32, left_pad=False, seed=2)
    mask[1] = 0
    with pytest.raises(ValueError, match=r"no tokens in row\(s\) \[1\]"):
        pool_normalize_triton(hidden, mask, Pooling.MEAN)
    with pytest.raises(ValueError, match=r"hidden size D must be in \[1, 8192\]; got 8193"):
        pool_normalize_triton(torch.randn(1, 1, 8193, device=DEVICE), torch.ones(1, 1, device=DEVICE), Pooling.CLS)


@pytest.mark.gpu
@pytest.mark.parametrize("pooling", list(Pooling))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_on_gpu_matches_reference(pooling, dtype):
    hidden, mask = make_inputs(256, 128, 1024, dtype, left_pad=False, seed=0, device="cuda")
    torch.testing.assert_close(pool_normalize_triton(hidden, mask, pooling).float(),
                               pool_normalize_torch_reference(hidden, mask, pooling), atol=FWD_TOL[dtype], rtol=0)


@pytest.mark.gpu
def test_offsets_past_two_to_the_31_elements():
    """B x S x D = 4097 x 64 x 8192 > 2**31: int32 row offsets would wrap and read or write the wrong rows."""
    batch, seq, dim = 4097, 64, 8192
    hidden = torch.randn(batch, seq, dim, dtype=torch.float16, device="cuda")
    mask = torch.ones(batch, seq, dtype=torch.int64, device="cuda")
    h = hidden.requires_grad_(True)
    out = pool_normalize_triton(h, mask, "mean")
    rows = [0, 2048, 4095, 4096]  # the last rows sit past the edge
    ref = pool_normalize_torch_reference(hidden[rows].detach(), mask[rows], "mean")
    torch.testing.assert_close(out[rows].float(), ref, atol=FWD_TOL[torch.float16], rtol=0)
    out[-1].float().sum().backward()
    assert float(h.grad[-1].abs().sum()) > 0 and float(h.grad[:-1].abs().sum()) == 0  # the gradient lands in row 4096 only


@pytest.mark.parametrize("pooling", list(Pooling))
def test_poisoned_buffers_are_fully_written(pooling, monkeypatch):
    """Every buffer the kernels allocate starts as NaN: an element they fail to write shows up."""
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7)

    hidden, mask = make_inputs(3, 37, 130, torch.float32, left_pad=pooling is Pooling.LAST_TOKEN, seed=5)
    ref_h = hidden.clone().requires_grad_(True)
    (pool_normalize_torch_reference(ref_h, mask, pooling) * torch.linspace(-1, 1, 130, device=DEVICE)).sum().backward()
    monkeypatch.setattr(torch, "empty", poisoned)
    h = hidden.clone().requires_grad_(True)
    out = pool_normalize_triton(h, mask, pooling)
    (out * torch.linspace(-1, 1, 130, device=DEVICE)).sum().backward()
    monkeypatch.undo()
    assert torch.isfinite(out).all() and torch.isfinite(h.grad).all()
    torch.testing.assert_close(out, pool_normalize_torch_reference(hidden, mask, pooling), atol=1e-6, rtol=0)
    torch.testing.assert_close(h.grad, ref_h.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape,device", [
    ((1, 3, 8192), DEVICE),  # D = 8192, the widest supported
    pytest.param((4096, 64, 8192), "cuda", marks=pytest.mark.gpu),
], ids=["D=8192", "B=4096-D=8192-gpu"])  # B = 4096 interpreted takes ~1 min on 2 cores
def test_extreme_batch_and_width(shape, device):
    """B = 4096 rows and D = 8192, forward and backward, against the reference."""
    hidden, mask = make_inputs(*shape, torch.float32, left_pad=False, seed=3, device=device)
    h = hidden.clone().requires_grad_(True)
    out = pool_normalize_triton(h, mask, "mean")
    out.sum().backward()
    ref_h = hidden.clone().requires_grad_(True)
    pool_normalize_torch_reference(ref_h, mask, "mean").sum().backward()
    torch.testing.assert_close(out, pool_normalize_torch_reference(hidden, mask, "mean"), atol=1e-6, rtol=0)
    torch.testing.assert_close(h.grad, ref_h.grad, atol=1e-5, rtol=1e-4)
