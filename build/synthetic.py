"""Synthetic serving artifacts for speed runs: random-init towers of real shapes and a random index.

No weights can be downloaded on the GPU machines, and speed does not depend on what
the weights say, so ``python -m build synthetic`` makes a BERT-shaped tower with random
weights (the packaged all-MiniLM-L6-v2 tokenizer), exports it like any tower, writes
an index of ``rows`` random unit vectors of its width bound to it, and renders the
repository with the given serving settings. Retrieval quality from these is
meaningless by construction; every file says ``synthetic``.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from kernels.pooling import Pooling

from .export import default_tower, export_tower
from .index import build_index
from .render import ServingSettings, render_repository

SHAPES = {  # name -> (layers, hidden, heads, intermediate)
    "minilm": (6, 384, 12, 1536),  # all-MiniLM-L6-v2's shape
    "bert-base": (12, 768, 12, 3072),
    "tiny": (2, 64, 4, 128),  # dry runs
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def random_tower(shape: str, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}; got {shape!r}")
    if (out / "config.json").exists():
        return out
    layers, hidden, heads, inner = SHAPES[shape]
    tokenizer = default_tower()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inner, max_position_embeddings=512)
    BertModel(config).save_pretrained(str(out), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).exists():
            shutil.copy2(tokenizer / name, out / name)
    return out


def random_index_vectors(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 1 << 16):  # bounded temporaries
        block = rng.standard_normal((min(1 << 16, rows - start), dim), dtype=np.float32)
        out[start : start + block.shape[0]] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def build_synthetic(artifacts: Path, shape: str, rows: int, settings: ServingSettings, max_tokens: int = 128) -> Path:
    """-> the rendered repository ``artifacts/model_repository``."""
    tower_src = random_tower(shape, artifacts / "synthetic" / f"tower-{shape}")
    tower = export_tower(tower_src, artifacts / "towers", Pooling.MEAN, max_tokens, ["a synthetic query", "x"])
    dim = tower.info["dim"]
    docs = [{"id": f"synthetic-{i}", "title": f"synthetic document {i}", "text": ""} for i in range(rows)]
    corpus = hashlib.sha256(f"synthetic;rows={rows};dim={dim};seed=0".encode()).hexdigest()
    index_dir = build_index(docs, corpus, tower, tower.info["fingerprint"], artifacts / "index",
                            embeddings=random_index_vectors(rows, dim))
    render_repository(artifacts / "model_repository", tower, index_dir, settings)
    return artifacts / "model_repository"
