"""Exact top-k MIPS on a torch device: the GPU search where CuPy cannot run.

Triton's python stub needs numpy < 2 and CuPy 14 needs numpy >= 2, so on a machine
with the pytriton wheel's stub and CuPy 14 the served search goes through torch (which
takes either numpy). In NVIDIA's container ``cupy`` stays the production choice.

The index lives on the device in float16. Each chunk is upcast to float32 alone (the
tile and the chunk copy each fit ``tile_bytes``), scored with one GEMM, and ranked by a
stable descending sort, so equal scores keep the lower id; the chunk's k best are
merged with the running k best by a second stable sort (running bests first: lower
ids). The result equals the float32 brute force up to summation order.
"""
from __future__ import annotations

import numpy as np

from kernels.topk import TopK


class TorchTopK(TopK):
    def __init__(self, index, device: str = "cuda", tile_bytes: int = 256 << 20):
        """``index``: (N, D) numpy or torch. ``device`` 'cuda' means the current CUDA device (the instance's,
        under its placement scope)."""
        import torch

        super().__init__(index)
        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("top-k implementation 'torch' needs a CUDA device here; use numpy on the CPU")
        if isinstance(index, torch.Tensor):  # already on a device: no round trip through the host
            self.index = index.to(self.device, torch.float16).contiguous()
        else:
            self.index = torch.from_numpy(np.ascontiguousarray(index, dtype=np.float16)).to(self.device)
        self.tile_bytes = tile_bytes

    def search(self, queries, k: int):
        """(Q, D) numpy or torch -> (ids (Q, k) int64, scores (Q, k) float32), torch tensors on the device."""
        torch = self.torch
        self.check(queries, k)
        q = torch.as_tensor(queries).to(self.device, torch.float32)
        rows = max(1, self.tile_bytes // (4 * max(q.shape[0], self.dim)))
        best_scores = best_ids = None
        for start in range(0, self.size, rows):
            scores = q @ self.index[start : start + rows].float().T  # (Q, D) @ (D, C) -> (Q, C)
            scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
            scores, ids = scores[:, :k], order[:, :k] + start
            if best_scores is not None:
                scores, ids = torch.cat([best_scores, scores], dim=1), torch.cat([best_ids, ids], dim=1)
                scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
                scores, ids = scores[:, :k], torch.gather(ids, 1, order[:, :k])
            best_scores, best_ids = scores, ids
        return best_ids.to(torch.int64), best_scores
