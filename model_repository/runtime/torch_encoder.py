"""torch encoder: (input_ids, attention_mask) -> last_hidden_state, on a GPU without TensorRT.

TensorRT is the production encoder in NVIDIA's container; where it cannot be installed
this one runs the tower's own Hugging Face weights through PyTorch: fp16 on CUDA, and
optionally CUDA graphs captured once per (batch, length) bucket at load, so that a
request replays a graph instead of launching every kernel from Python. On the CPU the
same code runs in float32 without graphs (the tests).

Inputs are padded up to the bucket: rows to the next batch bucket, tokens to a
multiple of ``seq_multiple`` (padding is masked out, so each row's states are those of
the row alone). A graph that cannot be captured refuses the load; there is no silent
fallback to eager execution.

The folder holds ``config.json``, the weights (``*.safetensors``) and, for a student
with a projection, ``projection.safetensors`` (a linear map applied to every token).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .encoder import concat_padded

PROJECTION_FILE = "projection.safetensors"


class TorchEncoder:
    def __init__(self, folder: Path | str, device: str = "cuda", dtype: str = "float16", cuda_graphs: bool = False,
                 batch_buckets: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128), seq_multiple: int = 16, max_tokens: int = 256):
        import torch
        from transformers import AutoModel

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("query_encoder: implementation 'torch' on device 'cuda' needs a CUDA device; "
                             "render with --target cpu here")
        self.dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
        folder = Path(folder)
        self.model = AutoModel.from_pretrained(str(folder), dtype=self.dtype).to(self.device).eval()
        self.projection = None
        if (folder / PROJECTION_FILE).exists():
            from safetensors.torch import load_file

            weights = load_file(str(folder / PROJECTION_FILE))
            self.projection = torch.nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0])
            self.projection.load_state_dict(weights)
            self.projection = self.projection.to(self.device, self.dtype).eval()
        self.hidden_size = self.projection.out_features if self.projection is not None else int(self.model.config.hidden_size)
        self.batch_buckets = sorted(batch_buckets)
        self.seq_multiple = max(1, seq_multiple)
        self.max_tokens = -(-max_tokens // self.seq_multiple) * self.seq_multiple
        self.graphs: dict[tuple[int, int], tuple] = {}
        if cuda_graphs:
            if self.device.type != "cuda":
                raise ValueError("query_encoder: cuda_graphs needs device 'cuda'")
            self._capture_all()

    def _forward(self, ids, mask):
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden if self.projection is None else self.projection(hidden)

    def _capture_all(self) -> None:
        torch = self.torch
        with torch.inference_mode():
            for batch in self.batch_buckets:
                for seq in range(self.seq_multiple, self.max_tokens + 1, self.seq_multiple):
                    ids = torch.zeros((batch, seq), dtype=torch.int64, device=self.device)
                    mask = torch.ones((batch, seq), dtype=torch.int64, device=self.device)
                    stream = torch.cuda.Stream()
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        for _ in range(2):  # warm up outside the graph (cuBLAS workspaces, lazy init)
                            self._forward(ids, mask)
                    torch.cuda.current_stream().wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    try:
                        with torch.cuda.graph(graph):
                            out = self._forward(ids, mask)
                    except Exception as e:  # noqa: BLE001 - say which bucket and why, then refuse
                        raise ValueError(f"query_encoder: CUDA graph capture failed at batch {batch} x {seq} tokens: {e}; "
                                         "render with --encoder-cuda-graphs 0") from None
                    self.graphs[(batch, seq)] = (graph, ids, mask, out)

    def _bucket(self, rows: int, seq: int) -> tuple[int, int]:
        batch = next((b for b in self.batch_buckets if b >= rows), rows)
        return batch, -(-seq // self.seq_multiple) * self.seq_multiple

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray):
        """(B, S) int64 twice -> (B, S, D) float32 on this device (a torch tensor)."""
        torch = self.torch
        rows, seq = input_ids.shape
        batch, padded = self._bucket(rows, seq)
        ids = np.zeros((batch, padded), dtype=np.int64)
        mask = np.zeros((batch, padded), dtype=np.int64)
        ids[:rows, :seq], mask[:rows, :seq] = input_ids, attention_mask
        mask[rows:, 0] = 1  # padding rows attend to one token: no all-masked row
        with torch.inference_mode():
            ids_t = torch.from_numpy(ids).to(self.device, non_blocking=True)
            mask_t = torch.from_numpy(mask).to(self.device, non_blocking=True)
            entry = self.graphs.get((batch, padded))
            if entry is None:
                hidden = self._forward(ids_t, mask_t)
            else:
                graph, static_ids, static_mask, out = entry
                static_ids.copy_(ids_t)
                static_mask.copy_(mask_t)
                graph.replay()
                hidden = out
            return hidden[:rows, :seq].to(torch.float32, copy=True)  # a graph's output is overwritten by its next replay

    def encode_ragged(self, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> list:
        """One forward for several requests of different lengths; each result cut back to its own length.
        On the CPU the results are numpy arrays; on a GPU they stay there as torch tensors (out by DLPack)."""
        hidden = self(concat_padded([b[0] for b in batches]), concat_padded([b[1] for b in batches]))
        out, row = [], 0
        for b_ids, _ in batches:
            n, s = b_ids.shape
            part = hidden[row : row + n, :s].contiguous()
            out.append(part.numpy() if self.device.type == "cpu" else part)
            row += n
        return out
