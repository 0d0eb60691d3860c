"""An index larger than one GPU: split it into row shards, one mips_topk instance per GPU, merge.

Each shard is a complete index folder (manifest, fp16 embeddings, documents) holding
a contiguous range of doc ids (a compressed index's codes are not carried over: each
shard searches its fp16 vectors exactly), with ``id_offset`` in its manifest so that it answers
with global ids. A merge step (``kernels.topk.merge_topk``) turns the shards' top-k
lists into the global top-k, ties to the lower id, so the answer equals a search over
the whole index. ``split_index`` writes the shards; docs/scale-out.md
shows the ensemble that fans a query out to ``mips_topk_<i>`` on GPU i and merges.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from model_repository.runtime.files import sha256_file
from model_repository.runtime.index import MANIFEST, load_index


def split_index(index_dir: Path, shards: int, out_root: Path) -> list[Path]:
    """-> ``out_root/shard-<i>/`` index folders covering the rows of ``index_dir`` in order."""
    manifest = json.loads((Path(index_dir) / MANIFEST).read_text(encoding="utf-8"))
    existing = [Path(out_root) / f"shard-{i}" for i in range(shards)]
    if all((f / MANIFEST).exists() for f in existing):
        parts = [json.loads((f / MANIFEST).read_text(encoding="utf-8")) for f in existing]
        if all(p.get("shards_of") == manifest["index_version"] and p.get("shard_count") == shards for p in parts):
            return existing  # already split from this very index
    index = load_index(index_dir, manifest["query_tower_fingerprint"])
    n = len(index)
    if not 1 <= shards <= n:
        raise ValueError(f"shards must be in [1, {n}] for an index of {n} rows; got {shards}")
    bounds = np.linspace(0, n, shards + 1).round().astype(int)
    docs = (Path(index_dir) / manifest["docs"]["file"]).read_text(encoding="utf-8").splitlines()
    folders = []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        out = Path(out_root) / f"shard-{i}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        np.save(out / "shard-00000.npy", index.embeddings[lo:hi].astype(np.float16))
        (out / "docs.jsonl").write_text("\n".join(docs[lo:hi]) + "\n", encoding="utf-8")
        part = {**{key: v for key, v in manifest.items() if key != "compression"}, "count": int(hi - lo), "id_offset": int(lo), "shard": i, "shard_count": shards,
                "index_version": f"{manifest['index_version']}-s{i}of{shards}",
                "shards_of": manifest["index_version"],
                "shards": [{"file": "shard-00000.npy", "rows": int(hi - lo), "sha256": sha256_file(out / "shard-00000.npy")}],
                "docs": {"file": "docs.jsonl", "sha256": sha256_file(out / "docs.jsonl")}}
        (out / MANIFEST).write_text(json.dumps(part, indent=2) + "\n", encoding="utf-8")
        folders.append(out)
    return folders
