"""CPU references of kernels/: pooling + L2-norm against a plain loop, top-k against brute force."""
from __future__ import annotations

import numpy as np
import pytest

from kernels.pooling import Pooling, pool_normalize_reference
from kernels.topk import NumpyTopK, mips_topk_reference


def loop_pool(hidden, mask, pooling):
    """Row by row, position by position: the definition, written the slow way."""
    out = []
    for h, m in zip(hidden.astype(np.float64), mask):
        positions = [s for s in range(len(m)) if m[s]]
        if pooling is Pooling.MEAN:
            v = sum(h[s] for s in positions) / len(positions)
        elif pooling is Pooling.LAST_TOKEN:
            v = h[positions[-1]]
        else:
            v = h[0]
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def random_mask(rng, batch, seq, left_pad):
    lengths = rng.integers(1, seq + 1, size=batch)
    mask = np.zeros((batch, seq), dtype=np.int64)
    for b, n in enumerate(lengths):
        if left_pad:
            mask[b, seq - n :] = 1
        else:
            mask[b, :n] = 1
    return mask


@pytest.mark.parametrize("pooling", list(Pooling))
@pytest.mark.parametrize("batch,seq,dim", [(1, 1, 7), (7, 13, 384), (3, 33, 1023)])
@pytest.mark.parametrize("left_pad", [False, True])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float16, 1e-6)])
def test_pool_normalize_matches_loop(pooling, batch, seq, dim, left_pad, dtype, tol):
    rng = np.random.default_rng(batch * 1000 + seq)
    hidden = rng.standard_normal((batch, seq, dim)).astype(dtype)
    mask = random_mask(rng, batch, seq, left_pad)
    got = pool_normalize_reference(hidden, mask, pooling)
    assert got.dtype == np.float32 and got.shape == (batch, dim)
    np.testing.assert_allclose(got, loop_pool(hidden, mask, pooling), atol=tol, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_padding_does_not_leak_into_mean():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((1, 5, 16)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0]])
    poisoned = hidden.copy()
    poisoned[0, 3:] = 1e6
    np.testing.assert_array_equal(pool_normalize_reference(hidden, mask, "mean"), pool_normalize_reference(poisoned, mask, "mean"))


def test_all_zero_mask_row_is_an_error_naming_the_row():
    hidden = np.ones((3, 4, 8), dtype=np.float32)
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"no tokens in row\(s\) \[1\]"):
        pool_normalize_reference(hidden, mask, Pooling.MEAN)


def test_unknown_pooling_is_rejected():
    with pytest.raises(ValueError, match=r"pooling must be one of \[mean, last_token, cls\]; got 'max'"):
        Pooling.parse("max")


@pytest.mark.parametrize("n,dim,q,k", [(1, 7, 1, 1), (1023, 384, 7, 10), (500, 33, 64, 100), (50, 8, 3, 50)])
def test_numpy_topk_equals_brute_force(n, dim, q, k):
    rng = np.random.default_rng(n + k)
    index = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((q, dim)).astype(np.float32)
    ids, scores = NumpyTopK(index).search(queries, k)
    ref_ids, ref_scores = mips_topk_reference(queries, index, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all(), "scores must be sorted best first"


def test_topk_ties_break_to_the_lower_id():
    rng = np.random.default_rng(3)
    # Coarsely quantised vectors: many exactly equal scores, including across the k-th boundary.
    index = rng.integers(-1, 2, size=(400, 4)).astype(np.float32)
    queries = rng.integers(-1, 2, size=(16, 4)).astype(np.float32)
    for k in (1, 5, 37, 400):
        ids, scores = NumpyTopK(index).search(queries, k)
        ref_ids, _ = mips_topk_reference(queries, index, k)
        np.testing.assert_array_equal(ids, ref_ids)
        for row_ids, row_scores in zip(ids, scores):
            for a in range(k - 1):
                if row_scores[a] == row_scores[a + 1]:
                    assert row_ids[a] < row_ids[a + 1]


def test_topk_batched_equals_one_at_a_time():
    rng = np.random.default_rng(5)
    index = rng.standard_normal((777, 48)).astype(np.float32)
    queries = rng.standard_normal((9, 48)).astype(np.float32)
    topk = NumpyTopK(index)
    ids, scores = topk.search(queries, 20)
    for row in range(9):
        one_ids, one_scores = topk.search(queries[row : row + 1], 20)
        np.testing.assert_array_equal(ids[row], one_ids[0])
        np.testing.assert_allclose(scores[row], one_scores[0], rtol=1e-6, atol=1e-6)


def test_topk_batches_score_through_torch_and_agree_with_numpy():
    """A batch of 2+ goes through torch's GEMM (the fast one for a few columns); one query through numpy's GEMV."""
    rng = np.random.default_rng(7)
    index = rng.standard_normal((5000, 64)).astype(np.float32)
    fast, plain = NumpyTopK(index), NumpyTopK(index, gemm="numpy")
    assert (fast.gemm, plain.gemm) == ("numpy+torch", "numpy")
    import torch

    columns = []

    class CountingTorch:  # torch, with its GEMM counted: which batches take that path
        def __getattr__(self, name):
            return getattr(torch, name)

        def mm(self, a, b):
            columns.append(b.shape[1])
            return torch.mm(a, b)

    fast.torch = CountingTorch()
    for q in (1, 2, 5, 64):
        queries = rng.standard_normal((q, 64)).astype(np.float32)
        np.testing.assert_allclose(fast.scores(queries), queries @ index.T, rtol=1e-5, atol=1e-5)
        ids, scores = fast.search(queries, 10)
        ref_ids, ref_scores = plain.search(queries, 10)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert columns == [2, 2, 5, 5, 64, 64], "(scores, then search) one query goes through numpy's GEMV, every batch of 2+ through torch's GEMM"
    with pytest.raises(ValueError, match=r"gemm must be one of \['auto', 'numpy'\]; got 'mkl'"):
        NumpyTopK(index, gemm="mkl")


@pytest.mark.parametrize("k", [0, -1, 11])
def test_topk_rejects_k_out_of_range(k):
    topk = NumpyTopK(np.eye(10, dtype=np.float32))
    with pytest.raises(ValueError, match=rf"k must be in \[1, 10\]; got {k}"):
        topk.search(np.ones((1, 10), dtype=np.float32), k)


def test_topk_rejects_wrong_dimension():
    with pytest.raises(ValueError, match=r"queries must be \(Q, 10\); got shape \(1, 9\)"):
        NumpyTopK(np.eye(10, dtype=np.float32)).search(np.ones((1, 9), dtype=np.float32), 1)


def test_topk_cpu_benchmark_runs_every_search_and_they_agree(tmp_path):
    """The benchmark behind the CPU search figures (benchmarks/results/topk-cpu-2026-11-24/): every implementation answers as faiss does."""
    pytest.importorskip("faiss")
    from benchmarks import kernel_bench

    out = tmp_path / "topk-cpu.json"
    result = kernel_bench.topk_cpu(out, n=3000, d=32, batches=(1, 3), ks=(5,), repeats=2, rounds=2)
    assert [(r["batch"], r["k"]) for r in result["rows"]] == [(1, 5), (3, 5)]
    for row in result["rows"]:
        for name in ("faiss", "numpy", "numpy+torch", "chunked"):
            assert row[f"{name}_agreement_with_faiss"] == 1.0
            assert row[f"{name}_ms_min"] <= row[f"{name}_ms"] <= row[f"{name}_ms_max"]
    assert result["timing"]["rounds"] == 2 and result["cpus_allowed"]
    assert out.with_suffix(".png").stat().st_size > 0 and "numpy+torch" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("n,dim,k", [(1023, 384, 10), (500, 33, 1), (5000, 64, 100)])
def test_faiss_topk_equals_brute_force_through_faiss_for_one_query(n, dim, k):
    """One query goes through faiss's scan (numpy's search is not called), a batch through numpy's;
    both give the reference's documents in its order."""
    from kernels.topk_faiss import FaissTopK

    rng = np.random.default_rng(n + k)
    index = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((6, dim)).astype(np.float32)
    topk = FaissTopK(index)
    batch = topk.search(queries, k)
    exact_search, topk.exact.search = topk.exact.search, None  # one query must not need it
    for row in range(len(queries)):
        ids, scores = topk.search(queries[row : row + 1], k)
        ref_ids, ref_scores = mips_topk_reference(queries[row : row + 1], index, k)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(batch[0][row], ref_ids[0])
    topk.exact.search = exact_search


def test_faiss_topk_ties_at_the_kth_score_break_to_the_lower_id():
    """Coarse vectors tie by the dozen: faiss's heap keeps an arbitrary one of equal scores, so a tie that
    runs past its list falls back to numpy's search; every answer is the reference's."""
    from kernels.topk_faiss import FaissTopK

    rng = np.random.default_rng(3)
    index = rng.integers(-1, 2, size=(400, 4)).astype(np.float32)
    queries = rng.integers(-1, 2, size=(16, 4)).astype(np.float32)
    topk = FaissTopK(index)
    for k in (1, 5, 37, 390):
        for row in range(len(queries)):
            ids, _ = topk.search(queries[row : row + 1], k)
            np.testing.assert_array_equal(ids, mips_topk_reference(queries[row : row + 1], index, k)[0])
