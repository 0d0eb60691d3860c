"""Encode a corpus with the doc tower into an index folder (see model_repository/runtime/index.py).

Embeddings are stored as float16 shards of at most ``shard_rows`` rows; doc ids are
row numbers in corpus order. The manifest binds the index to the doc tower that
made it and the query tower it pairs with, and records the sha256 of every file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kernels.compressed import parse_compression, quantize_int8, truncate
from kernels.pooling import Pooling
from model_repository.runtime.encoder import OnnxEncoder
from model_repository.runtime.files import atomic_folder, sha256_file
from model_repository.runtime.index import FORMAT_VERSION, MANIFEST, load_index
from model_repository.runtime.pipeline import EmbeddingPipeline
from model_repository.runtime.text import TextTokenizer, document_text

from training.corpus import write_jsonl

from .export import ExportedTower


def index_version(corpus_sha256: str, doc_tower: str, query_tower: str, shard_rows: int, compression: str = "none") -> str:
    key = f"format={FORMAT_VERSION};corpus={corpus_sha256};doc={doc_tower};query={query_tower};shard_rows={shard_rows}"
    if compression != "none":  # the default keeps the versions of indexes built before compression existed
        key += f";compression={compression}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def build_index(
    docs: list[dict],
    corpus_sha256: str,
    doc_tower: ExportedTower,
    query_tower_fingerprint: str,
    out_root: Path,
    batch_size: int = 32,
    shard_rows: int = 65536,
    compression: str = "none",
    rescore: int = 200,
    embeddings: np.ndarray | None = None,
) -> Path:
    """Write ``out_root/<version>/``; an index already built from the same inputs is reused.

    ``compression`` ('int8' or 'matryoshka:<dim>') adds a compressed copy that finds
    candidates at serving time; the float16 shards rank the best ``rescore`` of them.
    ``embeddings`` (N, D) unit vectors, given, are stored as they are instead of encoding
    the documents (synthetic indexes for benchmarks; ``corpus_sha256`` must then name them).
    """
    kind, dim = parse_compression(compression)
    info = doc_tower.info
    version = index_version(corpus_sha256, info["fingerprint"], query_tower_fingerprint, shard_rows, compression)
    out = out_root / version
    if (out / MANIFEST).exists():
        return out
    with atomic_folder(out) as tmp:
        pooling = Pooling.parse(info["pooling"])
        plain = out_root / index_version(corpus_sha256, info["fingerprint"], query_tower_fingerprint, shard_rows)
        if embeddings is not None:
            if embeddings.shape[0] != len(docs):
                raise ValueError(f"embeddings has {embeddings.shape[0]} rows for {len(docs)} documents")
        elif kind != "none" and (plain / MANIFEST).exists():  # the same vectors exist uncompressed: no re-encoding
            embeddings = load_index(plain, query_tower_fingerprint).embeddings
        else:
            pipeline = EmbeddingPipeline(
                TextTokenizer(doc_tower.tokenizer_file, info["max_tokens"], prefix=info.get("prefix", ""), eos_id=info.get("eos_id")),
                OnnxEncoder(doc_tower.onnx_file), pooling
            )
            texts = [document_text(d) for d in docs]
            with tqdm(total=len(texts), desc=f"encoding {len(texts)} documents", unit="doc", mininterval=2.0) as bar:
                embeddings = pipeline.embed_many(texts, batch_size, on_batch=bar.update)
        shards = []
        for n, start in enumerate(range(0, len(docs), shard_rows)):
            name = f"shard-{n:05d}.npy"
            np.save(tmp / name, embeddings[start : start + shard_rows].astype(np.float16))
            shards.append({"file": name, "rows": min(shard_rows, len(docs) - start), "sha256": sha256_file(tmp / name)})
        compressed = None
        if kind != "none":
            files = {}
            if kind == "int8":
                codes, scales = quantize_int8(embeddings)
                arrays = {"codes": codes, "scales": scales}
            else:
                arrays = {"codes": truncate(embeddings, dim).astype(np.float16)}
            for role, array in arrays.items():
                name = f"{kind}-{role}.npy"
                np.save(tmp / name, array)
                files[role] = {"file": name, "sha256": sha256_file(tmp / name)}
            compressed = {"kind": kind, "dim": int(arrays["codes"].shape[1]), "rescore": rescore, "files": files,
                          "bytes_per_vector": int(arrays["codes"].shape[1] * arrays["codes"].itemsize + (4 if kind == "int8" else 0))}
        write_jsonl(tmp / "docs.jsonl", [{"key": d["id"], "title": d["title"], "text": d["text"]} for d in docs])
        manifest = {
            "format": FORMAT_VERSION,
            "index_version": version,
            "dim": int(embeddings.shape[1]),
            "count": len(docs),
            "dtype": "float16",
            "pooling": pooling.value,
            "normalized": True,
            "doc_tower_fingerprint": info["fingerprint"],
            "query_tower_fingerprint": query_tower_fingerprint,
            "corpus_sha256": corpus_sha256,
            "shards": shards,
            "docs": {"file": "docs.jsonl", "sha256": sha256_file(tmp / "docs.jsonl")},
        }
        if compressed:
            manifest["compression"] = compressed
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out
