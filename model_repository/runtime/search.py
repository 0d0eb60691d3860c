"""The served search over one index: what ``mips_topk`` answers, and on the CPU what the query encoder's
stub answers itself for ``retrieve`` (render's ``search_step`` "encoder": one python hop fewer).

The index is loaded and verified once; a manifest that pairs with another query tower, or a failed
checksum, refuses the load. All valid requests of a batch share one search at the largest k asked for.
``implementation`` (a config parameter) chooses the kernel: ``numpy`` (one GEMM + argpartition, CPU;
torch's MKL scores a batch of 2+), ``chunked`` (kernels/topk_chunked.py on numpy, CPU), ``cupy`` (the same
chunked algorithm on the GPU: the index moves to the GPU once at load, query embeddings arrive by DLPack;
only the k ids and scores per query come back to the host, to look up titles) or ``torch``
(kernels/topk_torch.py, the GPU search where CuPy cannot run beside the stub's numpy 1.x).
"""
from __future__ import annotations

import numpy as np

from kernels.topk import NumpyTopK
from kernels.topk_chunked import ChunkedTopK, cupy_topk
from kernels.topk_faiss import FaissTopK
from kernels.topk_torch import TorchTopK

from . import InvalidInput
from .index import load_index, snippet
from .params import ModelParams
from .placement import Placement, cupy_devices

IMPLEMENTATIONS = {"numpy": NumpyTopK, "faiss": FaissTopK, "chunked": ChunkedTopK, "cupy": cupy_topk, "torch": TorchTopK}
OUTPUTS = ("doc_ids", "scores", "doc_keys", "titles", "snippets", "index_version")


class IndexSearch:
    """``params`` name the index (``index_dir``, ``index_rows``, ``max_k``, ``snippet_chars``, ``shard``, ``gemm``);
    ``args`` are the instance's (Triton's ``initialize``): the search runs on the device Triton gave it."""

    def __init__(self, params: ModelParams, folder: str, fingerprint: str, args: dict, implementation: str):
        model = params.model_name
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"{model}: implementation must be one of {sorted(IMPLEMENTATIONS)}; got {implementation!r}")
        if implementation == "cupy" and not (cuda := cupy_devices())[0]:
            raise ValueError(f"{model}: implementation 'cupy' needs CuPy and a CUDA device ({cuda[1]}); "
                             "render with --target cpu on this machine")
        self.placement = placement = Placement.for_instance(args, implementation if implementation in ("cupy", "torch") else "numpy")
        self.xp = placement.xp
        self.index = load_index(f"{folder}/{params.str('index_dir')}", fingerprint, mmap=True)
        if params.int("index_rows") != len(self.index):
            raise ValueError(f"{model}: config says index_rows={params.int('index_rows')}; the index has {len(self.index)}")
        c = self.index.compressed
        if c and implementation in ("torch", "faiss"):
            raise ValueError(f"{model}: a compressed index searches with numpy, chunked or cupy; got implementation {implementation!r}")
        with placement.scope():  # the index goes to this instance's GPU
            if c:  # candidates from the compressed copy, ranked exactly with the float16 vectors
                from kernels.compressed import RescoringTopK

                self.search = RescoringTopK(self.index.rows, c["kind"], c["codes"], c["scales"], c["rescore"], xp=self.xp)
                implementation = f"{implementation}+{c['kind']}(rescore {c['rescore']})"
            elif implementation == "numpy":  # the float32 copy; which BLAS scores a batch (kernels/topk.py)
                self.search = NumpyTopK(self.index.embeddings, gemm=params.optional("gemm", "auto"))
                implementation = f"numpy(gemm {self.search.gemm})"
            elif implementation == "faiss":  # faiss's scan for one query, numpy's search (MKL) for a batch, one float32 copy
                self.search = FaissTopK(self.index.embeddings)
                implementation = f"faiss(batches: numpy gemm {self.search.exact.gemm})"
            else:
                self.search = IMPLEMENTATIONS[implementation](self.index.rows.float16())  # no fp32 copy
            for rows in (1, 2):  # warm: kernels, cuBLAS handle; on the CPU a batch of 2+ takes torch's MKL, ~9 ms on first use
                self.search.search(self.xp.zeros((rows, self.search.dim), dtype=self.xp.float32), 1)
        self.implementation = implementation
        # One shard of a sharded index ("i/n"): answer with global ids, and at most the shard's own rows;
        # topk_merge checks k against the whole index.
        self.shard = params.optional("shard", "")
        self.id_offset = int(self.index.manifest.get("id_offset", 0))
        self.max_k = params.int("max_k") if self.shard else min(params.int("max_k"), len(self.index))
        self.snippet_chars = params.int("snippet_chars")

    def describe(self) -> str:
        return f"index {self.index.version} ({len(self.index)} x {self.search.dim}) implementation={self.implementation}"

    def parse_k(self, name: str, k_array) -> int:
        """The one k of a request (``name`` is its input), refused outside [1, max_k]; a shard clamps instead."""
        ks = np.unique(k_array)
        if ks.size != 1:
            raise InvalidInput(f"{name} must be the same for every row of a request; got {ks.tolist()}")
        k = int(ks[0])
        if self.shard:  # topk_merge judges k against the whole index (and gives the ticket back): never refuse here
            return min(max(k, 1), self.max_k)
        if not 1 <= k <= self.max_k:
            raise InvalidInput(f"{name} must be in [1, {self.max_k}]; got {k}")
        return k

    def check_embedding(self, name: str, embedding) -> None:
        if embedding.shape[1:] != (self.search.dim,):
            raise InvalidInput(f"{name} must have {self.search.dim} dimensions; got shape {embedding.shape}")
        if not bool(self.xp.isfinite(embedding).all()):
            raise InvalidInput(f"{name} must be finite; got NaN or inf")

    def answer(self, batches: list[tuple]) -> list[tuple]:
        """(embeddings, k) per request -> one tuple of the OUTPUTS arrays per request, searched together."""
        queries = batches[0][0] if len(batches) == 1 else self.xp.concatenate([e for e, _ in batches])
        ids, scores = self.search.search(queries, min(len(self.index), max(k for _, k in batches)))
        ids, scores = self.placement.to_numpy(ids), self.placement.to_numpy(scores)
        results, row = [], 0
        for embedding, k in batches:
            rows = slice(row, row + embedding.shape[0])
            row += embedding.shape[0]
            doc_ids = ids[rows, :k]
            results.append((
                doc_ids + self.id_offset,
                scores[rows, :k],
                np.array([[self.index.keys[i] for i in r] for r in doc_ids], dtype=np.object_),
                np.array([[self.index.titles[i] for i in r] for r in doc_ids], dtype=np.object_),
                np.array([[snippet(self.index.texts[i], self.snippet_chars) for i in r] for r in doc_ids], dtype=np.object_),
                np.full((embedding.shape[0], 1), self.index.version, dtype=np.object_),
            ))
        return results
