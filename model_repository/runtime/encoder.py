"""ONNX Runtime encoder: (input_ids, attention_mask) -> last_hidden_state."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def concat_padded(arrays: Sequence[np.ndarray], pad_value=0) -> np.ndarray:
    """Stack (n_i, S_i, ...) arrays into (sum n_i, max S_i, ...), padding axis 1 at the end."""
    longest = max(a.shape[1] for a in arrays)
    out = np.full((sum(a.shape[0] for a in arrays), longest, *arrays[0].shape[2:]), pad_value, dtype=arrays[0].dtype)
    row = 0
    for a in arrays:
        out[row : row + a.shape[0], : a.shape[1]] = a
        row += a.shape[0]
    return out


class OnnxEncoder:
    def __init__(self, model_file: Path | str, intra_op_threads: int = 0):
        """``intra_op_threads`` 0: one per CPU this process may run on (its affinity, not the machine's count).

        ORT's own default counts the machine's cores: pinned to one core, its two threads then took
        turns on it (31 ms for a 1.7-row batch). The threads do not spin while idle: the other
        backend stubs share these cores, and a spinning pool takes their time.
        """
        import os

        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or len(os.sched_getaffinity(0))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        expected = ["input_ids", "attention_mask"]
        if sorted(self.input_names) != sorted(expected):
            raise ValueError(f"{model_file}: ONNX inputs must be {expected}; got {self.input_names}")
        self.hidden_size = self.session.get_outputs()[0].shape[-1]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, S) int64 twice -> (B, S, D) float32."""
        (hidden,) = self.session.run(["last_hidden_state"], {"input_ids": input_ids, "attention_mask": attention_mask})
        return hidden

    def encode_ragged(self, batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """One ORT run for several requests of different lengths; each result cut back to its own length."""
        ids = concat_padded([b[0] for b in batches])
        mask = concat_padded([b[1] for b in batches])
        hidden = self(ids, mask)
        out, row = [], 0
        for b_ids, _ in batches:
            n, s = b_ids.shape
            out.append(hidden[row : row + n, :s])
            row += n
        return out
