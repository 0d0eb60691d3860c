"""Index on disk: fp16 embedding shards, a document store, and a manifest that binds them.

Layout of an index folder (written by ``build``)::

    manifest.json      dim, count, dtype, pooling, fingerprints, sha256 of every file
    shard-00000.npy    (n_0, D) float16 unit vectors, rows in doc-id order
    docs.jsonl         one {"key", "title", "text"} per doc id, same order

Document texts live next to the embeddings so that titles and snippets always come
from the same index version that scored them, also across an index swap.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from .files import sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class IndexMismatch(RuntimeError):
    """The index does not belong with this query tower, or its files are corrupt."""


@dataclasses.dataclass
class LoadedIndex:
    manifest: dict
    embeddings: np.ndarray  # (N, D) float32
    keys: list[str]
    titles: list[str]
    texts: list[str]
    compressed: dict | None = None  # {"kind", "rescore", "codes": array, "scales": array | None}

    @property
    def version(self) -> str:
        return self.manifest["index_version"]

    def __len__(self) -> int:
        return self.embeddings.shape[0]


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise IndexMismatch(f"no {MANIFEST} in index folder {folder}")
    return json.loads(path.read_text(encoding="utf-8"))


def _verified(folder: Path, entry: dict) -> Path:
    path = folder / entry["file"]
    actual = sha256_file(path) if path.exists() else "missing"
    if actual != entry["sha256"]:
        raise IndexMismatch(f"{path}: sha256 must be {entry['sha256']}; got {actual}")
    return path


def load_index(folder: Path | str, query_tower_fingerprint: str) -> LoadedIndex:
    """Load and verify an index; refuse one that pairs with another query tower."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("format") != FORMAT_VERSION:
        raise IndexMismatch(f"{folder}: index format must be {FORMAT_VERSION}; got {manifest.get('format')}")
    paired = manifest["query_tower_fingerprint"]
    if paired != query_tower_fingerprint:
        raise IndexMismatch(
            f"{folder}: index pairs with query tower {paired}, but this deployment's query tower is "
            f"{query_tower_fingerprint}; rebuild the index or deploy the matching query tower"
        )
    shards = [np.load(_verified(folder, s)) for s in manifest["shards"]]
    embeddings = np.concatenate(shards).astype(np.float32)
    docs = [json.loads(line) for line in _verified(folder, manifest["docs"]).read_text(encoding="utf-8").splitlines()]
    if embeddings.shape != (manifest["count"], manifest["dim"]) or len(docs) != manifest["count"]:
        raise IndexMismatch(
            f"{folder}: manifest says {manifest['count']} x {manifest['dim']}; "
            f"got embeddings {embeddings.shape} and {len(docs)} documents"
        )
    compressed = None
    if manifest.get("compression"):
        c = manifest["compression"]
        arrays = {role: np.load(_verified(folder, entry)) for role, entry in c["files"].items()}
        if arrays["codes"].shape[0] != manifest["count"]:
            raise IndexMismatch(f"{folder}: compressed codes have {arrays['codes'].shape[0]} rows; the manifest says {manifest['count']}")
        compressed = {"kind": c["kind"], "rescore": int(c["rescore"]), "codes": arrays["codes"], "scales": arrays.get("scales")}
    return LoadedIndex(
        compressed=compressed,
        manifest=manifest,
        embeddings=embeddings,
        keys=[d["key"] for d in docs],
        titles=[d["title"] for d in docs],
        texts=[d["text"] for d in docs],
    )


def snippet(text: str, max_chars: int) -> str:
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut + " …"
