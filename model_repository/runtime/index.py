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


class ShardRows:
    """The float16 vectors of an index's shards, read by row id without joining them.

    Memory-mapped shards stay on disk (and in the page cache) until rows are gathered:
    a compressed index ranks its candidates from here, so its full-precision vectors are
    never resident next to the compressed ones.
    """

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.offsets = np.cumsum([0] + [s.shape[0] for s in shards])
        self.shape = (int(self.offsets[-1]), shards[0].shape[1])
        self.ndim, self.dtype = 2, np.dtype(np.float16)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, ids) -> np.ndarray:
        """Rows by id (any integer array shape) -> float16 array of shape ids.shape + (D,)."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.ravel()
        shard = np.searchsorted(self.offsets, flat, side="right") - 1
        out = np.empty((flat.size, self.shape[1]), dtype=np.float16)
        for s in np.unique(shard):
            at = shard == s
            out[at] = self.shards[s][flat[at] - self.offsets[s]]
        return out.reshape(*ids.shape, self.shape[1])

    def float16(self) -> np.ndarray:
        return np.concatenate(self.shards).astype(np.float16, copy=False)


@dataclasses.dataclass
class LoadedIndex:
    manifest: dict
    rows: ShardRows  # (N, D) float16, by row id; memory-mapped when loaded with mmap=True
    keys: list[str]
    titles: list[str]
    texts: list[str]
    compressed: dict | None = None  # {"kind", "rescore", "codes": array, "scales": array | None}

    @property
    def version(self) -> str:
        return self.manifest["index_version"]

    @property
    def embeddings(self) -> np.ndarray:
        """(N, D) float32, built on each access: the numpy search and the tools; GPU searches take ``rows``."""
        return self.rows.float16().astype(np.float32)

    def __len__(self) -> int:
        return len(self.rows)


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


def verify_index_files(folder: Path | str) -> list[Path]:
    """Check every file the manifest lists (shards, documents, compressed codes) against its sha256."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    entries = [*manifest["shards"], manifest["docs"], *(manifest.get("compression") or {}).get("files", {}).values()]
    return [_verified(folder, entry) for entry in entries]


def load_index(folder: Path | str, query_tower_fingerprint: str, mmap: bool = False) -> LoadedIndex:
    """Load and verify an index; refuse one that pairs with another query tower.

    ``mmap``: the float16 shards stay memory-mapped instead of read into memory.
    """
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
    rows = ShardRows([np.load(_verified(folder, s), mmap_mode="r" if mmap else None) for s in manifest["shards"]])
    docs = [json.loads(line) for line in _verified(folder, manifest["docs"]).read_text(encoding="utf-8").splitlines()]
    if rows.shape != (manifest["count"], manifest["dim"]) or len(docs) != manifest["count"]:
        raise IndexMismatch(
            f"{folder}: manifest says {manifest['count']} x {manifest['dim']}; "
            f"got embeddings {rows.shape} and {len(docs)} documents"
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
        rows=rows,
        keys=[d["key"] for d in docs],
        titles=[d["title"] for d in docs],
        texts=[d["text"] for d in docs],
    )


def resident_bytes(manifest: dict, implementation: str) -> int:
    """Bytes the served search keeps resident for this index: device memory for cupy and torch,
    host memory for numpy, faiss and chunked. A compressed index keeps only its codes (and int8 scales);
    its float16 vectors stay memory-mapped and only the candidates are read. The numpy and faiss
    searches hold float32 copies; the others float16."""
    n, d = int(manifest["count"]), int(manifest["dim"])
    c = manifest.get("compression")
    if c:
        return n * int(c["bytes_per_vector"])
    return n * d * (4 if implementation in ("numpy", "faiss") else 2)


def snippet(text: str, max_chars: int) -> str:
    """The text with its whitespace collapsed, cut at a word before ``max_chars`` (`` …`` marks a cut).

    Only a head of the text is collapsed: the collapse of a prefix is a prefix of the whole text's
    collapse, so once it is longer than ``max_chars`` the cut is the same. Collapsing whole documents
    at every answer cost ~0.2 ms of a search's ~1 ms (benchmarks/results/grid-retrieve-2026-12-03/)."""
    head = 2 * max_chars + 2
    collapsed = " ".join(text[:head].split())
    if len(collapsed) <= max_chars and len(text) > head:  # mostly whitespace: the head was too short
        collapsed = " ".join(text.split())
    text = collapsed
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut + " …"
