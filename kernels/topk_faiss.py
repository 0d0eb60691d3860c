"""Exact top-k on the CPU with faiss's scan for one query, and ``NumpyTopK`` for a batch.

One query is what a CPU server mostly sees (its batcher merges searches only when they queue).
numpy's GEMV (OpenBLAS) then writes all N scores and argpartitions them; faiss's exhaustive
inner-product scan (``faiss.knn``, the loop behind ``IndexFlatIP``) keeps a k-heap as it reads
the index, and reads it faster (``benchmarks topk-cpu``). It runs on the same float32 memory as
``NumpyTopK`` (no second copy). A batch of 2+ goes to ``NumpyTopK`` (torch's MKL GEMM), which
scores a handful of queries in about one query's time where faiss scans once per query.

Answers are ``NumpyTopK``'s: faiss is asked for ``k + SLACK`` and those are ranked score first,
lower id first. If the last of them ties the k-th, a tie may reach past what faiss returned (its
heap keeps an arbitrary one of equal scores), and the query is searched by ``NumpyTopK`` instead.
Scores are the same inner products summed in another order (float32, ~1e-7 apart).
"""
from __future__ import annotations

import numpy as np

from kernels.topk import NumpyTopK, TopK, rank_rows

SLACK = 16  # extra candidates, so that ties at the k-th score are caught


class FaissTopK(TopK):
    def __init__(self, index: np.ndarray, threads: int = 1):
        super().__init__(index)
        import faiss  # faiss-cpu: requirements.txt

        faiss.omp_set_num_threads(threads)  # one query is one thread's scan anyway; no OpenMP spin on a shared core
        self.faiss = faiss
        self.exact = NumpyTopK(index)  # the float32 copy both use, and batches

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.check(queries, k)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.shape[0] != 1 or k + SLACK >= self.size:
            return self.exact.search(queries, k)
        scores, ids = self.faiss.knn(queries, self.exact.index, k + SLACK, metric=self.faiss.METRIC_INNER_PRODUCT)
        if scores[0, -1] >= scores[0, k - 1]:  # a tie at the k-th runs to the end of the list: take every row
            return self.exact.search(queries, k)
        return rank_rows(ids, scores, k)
