"""The implementation of pool_normalize and mips_topk is chosen in the model config, explicitly.

``chunked`` (the GPU top-k algorithm on numpy) served must answer exactly as ``numpy``
does; a GPU implementation on a machine without CUDA must refuse to load with a
message that says why, never fall back.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from build.__main__ import main as build_main
from clients.retrieval import RetrievalClient
from model_repository.launcher import ServerStartError
from model_repository.runtime.rendered import Rendered
from tests.conftest import ARTIFACTS, assert_same_ranking, rows_in_flight_settled, start_server


def _artifacts(tmp_path_factory, name: str):
    """A fresh artifacts folder whose inputs are the built ones: only the rendered configs differ."""
    artifacts = tmp_path_factory.mktemp(name)
    for reused in ("towers", "index", "corpus"):
        (artifacts / reused).symlink_to(ARTIFACTS / reused)
    return artifacts


def _repository(tmp_path_factory, name: str, *flags: str):
    artifacts = _artifacts(tmp_path_factory, name)
    assert build_main(["all", "--artifacts", str(artifacts), *flags]) == 0
    return artifacts / "model_repository"


@contextlib.contextmanager
def _serving(tmp_path_factory, name: str, *flags: str):
    """(server, repository) for a repository rendered with ``flags``; stopped on exit."""
    repo = _repository(tmp_path_factory, name, *flags)
    server = start_server(repo, tmp_path_factory.mktemp(f"{name}-server"))
    try:
        yield server, repo
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chunked_server(tmp_path_factory, repository):
    with _serving(tmp_path_factory, "chunked", "--topk-implementation", "chunked") as (server, _):
        yield server


@pytest.fixture(scope="module")
def faiss_server(tmp_path_factory, repository):
    with _serving(tmp_path_factory, "faiss", "--topk-implementation", "faiss") as (server, _):
        yield server


@pytest.mark.parametrize("other,says", [("chunked_server", "implementation=chunked"),
                                        ("faiss_server", "implementation=faiss(batches: numpy gemm numpy+torch)")])
def test_other_cpu_searches_served_equal_numpy_served(request, other, says, server, queries):
    """One query a request (faiss's scan; chunked alike) and a batch of 24 (numpy's MKL GEMM, faiss's too)
    answer as the default does: near-ties (~1e-7, other summation orders) may swap, nothing else."""
    other = request.getfixturevalue(other)
    texts = queries[:24]
    with RetrievalClient(server.grpc_url) as a, RetrievalClient(other.grpc_url) as b:
        for k in (1, 10, 200):
            for batch in [[t] for t in texts[:6]] + [texts]:
                ra, rb = a.retrieve(batch, k=k), b.retrieve(batch, k=k)
                assert_same_ranking([[h.doc_id for h in row] for row in ra.hits], [[h.score for h in row] for row in ra.hits],
                                    [[h.doc_id for h in row] for row in rb.hits], [[h.score for h in row] for row in rb.hits])
    assert says in other.log_path.read_text(encoding="utf-8", errors="replace")
    # the default scores a batch of 2+ with torch's GEMM (kernels/topk.py), and says so
    assert "implementation=numpy(gemm numpy+torch)" in server.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize("flag,value,message", [
    ("--topk-implementation", "cupy", "implementation 'cupy' needs CuPy and a CUDA device"),
    ("--pool-implementation", "triton", "implementation 'triton' needs a CUDA device"),
    ("--topk-implementation", "torch", "implementation on torch needs a KIND_GPU instance; this one is CPU"),
    ("--topk-implementation", "scann", "mips_topk: implementation must be one of"),
])
def test_a_gpu_or_unknown_implementation_refuses_to_load_here(tmp_path_factory, repository, flag, value, message):
    import torch

    if torch.cuda.is_available() and value != "scann":
        pytest.skip("this machine has CUDA; the GPU implementation would load")
    repo = _repository(tmp_path_factory, f"impl-{value}", flag, value)
    with pytest.raises(ServerStartError) as err:
        start_server(repo, tmp_path_factory.mktemp(f"impl-{value}-server")).stop()
    assert message in str(err.value)


@pytest.fixture(scope="module")
def int8_server(tmp_path_factory, repository):
    with _serving(tmp_path_factory, "int8", "--index-compression", "int8", "--rescore", "100") as (server, _):
        yield server


def test_int8_index_with_rescoring_serves_the_exact_answers(int8_server, server, queries, render_info):
    """int8 candidates + fp16 rescoring: same top-10 as the uncompressed index, exact scores."""
    texts = queries[:40]
    with RetrievalClient(server.grpc_url) as a, RetrievalClient(int8_server.grpc_url) as b:
        ra, rb = a.retrieve(texts, k=10), b.retrieve(texts, k=10)
    assert rb.index_version != ra.index_version  # a different index version, built from the same vectors
    assert [[h.doc_id for h in row] for row in ra.hits] == [[h.doc_id for h in row] for row in rb.hits]
    np.testing.assert_allclose([[h.score for h in row] for row in ra.hits], [[h.score for h in row] for row in rb.hits],
                               rtol=0, atol=1e-6)
    log = int8_server.log_path.read_text(encoding="utf-8", errors="replace")
    assert "implementation=numpy+int8(rescore 100)" in log


def test_compression_is_checked(tmp_path_factory, repository, capsys):
    artifacts = _artifacts(tmp_path_factory, "bad-compression")
    assert build_main(["all", "--artifacts", str(artifacts), "--index-compression", "int4"]) == 2
    assert "index compression must be 'none', 'int8' or 'matryoshka:<dim>'; got 'int4'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sharded_server(tmp_path_factory, repository):
    with _serving(tmp_path_factory, "sharded", "--shards", "3") as served:
        yield served


def test_sharded_index_served_equals_the_whole_index(sharded_server, server, queries, render_info):
    """Three mips_topk_<i> shards fanned out by the ensemble and merged by topk_merge."""
    sharded, repo = sharded_server
    assert sorted(p.name for p in repo.iterdir() if p.name.startswith(("mips", "topk"))) == \
        ["mips_topk_0", "mips_topk_1", "mips_topk_2", "topk_merge"]
    texts = queries[:24]
    with RetrievalClient(server.grpc_url) as a, RetrievalClient(sharded.grpc_url) as b:
        for k in (1, 10, 1000):
            ra, rb = a.retrieve(texts, k=k), b.retrieve(texts, k=k)
            assert [[h.doc_id for h in row] for row in ra.hits] == [[h.doc_id for h in row] for row in rb.hits]
            assert [[h.key for h in row] for row in ra.hits] == [[h.key for h in row] for row in rb.hits]
            assert [[h.title for h in row] for row in ra.hits] == [[h.title for h in row] for row in rb.hits]
            np.testing.assert_allclose([[h.score for h in row] for row in ra.hits],
                                       [[h.score for h in row] for row in rb.hits], rtol=0, atol=1e-6)
            assert rb.index_version == ra.index_version
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match=r"k must be in \[1, 1000\]"):
            b.retrieve(texts[:1], k=1001)
    # topk_merge gave every ticket back, the refused request's too (at 24 rows each, one kept would show)
    from model_repository.runtime.admission import Admission, table_path

    table = Admission(table_path(sharded.process.pid), 0)
    assert rows_in_flight_settled(table) == 0
    table.close()


def test_load_breakdown_follows_the_ensemble_the_server_runs(sharded_server, server, tmp_path):
    """The per-step breakdown reads the served ensemble's steps: a sharded repository is measured shard by shard."""
    from benchmarks.load.runner import run_load
    from tests.test_load import load_args

    sharded, _ = sharded_server
    encode = ["ensemble_tokenizer", "query_encoder"]
    with RetrievalClient(server.grpc_url) as whole, RetrievalClient(sharded.grpc_url) as split:
        assert whole.ensemble_steps("retrieve") == [*encode, "mips_topk"]
        assert split.ensemble_steps("retrieve") == [*encode, "mips_topk_0", "mips_topk_1", "mips_topk_2", "topk_merge"]
        with pytest.raises(ValueError, match="not an ensemble"):
            split.ensemble_steps("topk_merge")
    step = run_load(load_args(sharded, tmp_path, "--steps", "1", "--step-time", "3", "--warmup", "1"))["steps"][0]
    models = step["server"]["models"]
    assert set(models) == {"retrieve", *encode, "mips_topk_0", "mips_topk_1", "mips_topk_2", "topk_merge"}
    for shard in ("mips_topk_0", "mips_topk_1", "mips_topk_2"):
        assert models[shard]["requests"] >= step["succeeded"] - 2 and models[shard]["compute_infer_ms"] > 0


def _short_and_long(queries: list[str]) -> list[str]:
    """20 real queries, one of a single character, and one near the token limit."""
    return queries[:20] + ["x", "a much longer question about how python imports modules from packages " * 6]


@pytest.fixture(scope="module")
def separate_pool_server(tmp_path_factory, repository):
    with _serving(tmp_path_factory, "separate-pool", "--pooling-step", "separate") as served:
        yield served


def test_pooling_in_the_encoder_serves_what_the_pool_normalize_step_serves(separate_pool_server, server, queries):
    """The CPU default pools inside the encoder's stub; the same function in a step of its own gives the same bits."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    separate, repo = separate_pool_server
    assert (repo / "pool_normalize" / "config.pbtxt").exists() and not (ARTIFACTS / "model_repository" / "pool_normalize").exists()
    texts = _short_and_long(queries)
    with RetrievalClient(server.grpc_url) as a, RetrievalClient(separate.grpc_url) as b:
        assert (a.ensemble_steps("embed"), b.ensemble_steps("embed")) == (
            ["ensemble_tokenizer", "query_encoder"], ["ensemble_tokenizer", "query_encoder", "pool_normalize"])
        np.testing.assert_array_equal(a.embed(texts), b.embed(texts))
        ra, rb = a.retrieve(texts, k=10), b.retrieve(texts, k=10)
        assert [[(h.doc_id, h.score) for h in row] for row in ra.hits] == [[(h.doc_id, h.score) for h in row] for row in rb.hits]
    # called directly, the pooling encoder refuses a row with no token, naming the field, and keeps serving
    client = grpcclient.InferenceServerClient(server.grpc_url)
    ids = grpcclient.InferInput("input_ids", [1, 3], "INT64")
    mask = grpcclient.InferInput("attention_mask", [1, 3], "INT64")
    ids.set_data_from_numpy(np.array([[101, 2054, 102]], dtype=np.int64))
    mask.set_data_from_numpy(np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(InferenceServerException, match="attention_mask must have at least one token per row; got an all-zero row"):
        client.infer("query_encoder", [ids, mask])
    mask.set_data_from_numpy(np.ones((1, 3), dtype=np.int64))
    embedding = client.infer("query_encoder", [ids, mask]).as_numpy("embedding")
    assert embedding.shape == (1, 384) and abs(float(np.linalg.norm(embedding)) - 1) < 1e-5
    client.close()


@pytest.fixture(scope="module")
def int8_encoder_server(tmp_path_factory, repository):
    with _serving(tmp_path_factory, "int8-encoder", "--encoder-quantization", "int8") as served:
        yield served


def test_int8_encoder_serves_its_quantized_graph_near_the_float_one(int8_encoder_server, server, queries, render_info):
    """Opt-in int8: the served graph is the quantized one (integer MatMuls), answers as the same graph
    in-process, and stays near float32 (cosine, and the float top 10 it keeps) on real queries."""

    import onnx

    from build.export import ExportedTower
    from build.quantize import INT8_FILE, pipeline

    served, repo = int8_encoder_server
    assert Rendered.read(repo).context.encoder_quantization == "int8"
    ops = {n.op_type for n in onnx.load(str(repo / "query_encoder" / "1" / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops, sorted(ops)
    texts = _short_and_long(queries)
    tower = ExportedTower(ARTIFACTS / "towers" / render_info.query_tower["fingerprint"])
    with RetrievalClient(server.grpc_url) as f, RetrievalClient(served.grpc_url) as q:
        a, b = f.embed(texts), q.embed(texts)
        np.testing.assert_allclose(b, pipeline(tower, tower.folder / INT8_FILE).embed(texts), rtol=0, atol=1e-5)
        cosine = (a * b).sum(axis=1)
        assert cosine.min() >= 0.97 and cosine.mean() >= 0.985 and cosine.min() < 0.9999, cosine  # quantized, and near
        top = [[[h.doc_id for h in row] for row in c.retrieve(texts, k=10).hits] for c in (f, q)]
    kept = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(*top)])
    assert kept >= 0.8, kept


@pytest.fixture(scope="module")
def torch_encoder_server(tmp_path_factory, repository):
    with _serving(tmp_path_factory, "torch-encoder", "--encoder-implementation", "torch") as served:
        yield served


def test_torch_encoder_served_equals_the_onnx_encoder(torch_encoder_server, server, queries):
    """The GPU encoder without TensorRT, run here on the CPU in float32 (fp16 and CUDA graphs are its GPU settings)."""
    served, repo = torch_encoder_server
    config = (repo / "query_encoder" / "config.pbtxt").read_text()
    assert 'string_value: "torch"' in config and "KIND_CPU" in config
    assert (repo / "query_encoder" / "1" / "torch" / "config.json").exists()
    texts = _short_and_long(queries)
    with RetrievalClient(server.grpc_url) as onnx, RetrievalClient(served.grpc_url) as torch_:
        a, b = onnx.embed(texts), torch_.embed(texts)
        assert (a * b).sum(axis=1).min() >= 0.999
        assert [[h.doc_id for h in row] for row in onnx.retrieve(texts[:8], 5).hits] == \
            [[h.doc_id for h in row] for row in torch_.retrieve(texts[:8], 5).hits]


def test_torch_encoder_pads_to_buckets_without_changing_rows(render_info):
    """Rows padded up to a batch bucket and tokens to a multiple of 16 give each row's own states."""
    from model_repository.runtime.encoder import OnnxEncoder
    from model_repository.runtime.torch_encoder import TorchEncoder
    from tests.conftest import ARTIFACTS

    tower = ARTIFACTS / "towers" / render_info.query_tower["fingerprint"]
    encoder = TorchEncoder(render_info.query_tower["source"], device="cpu", dtype="float32", batch_buckets=(4, 128))
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 2000, size=(3, 19)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 11:] = 0
    got = encoder(ids, mask).numpy()
    assert got.shape == (3, 19, 384)
    expected = OnnxEncoder(tower / "model.onnx")(ids, mask)
    np.testing.assert_allclose(got[mask == 1], expected[mask == 1], atol=2e-4, rtol=0)
    with pytest.raises(ValueError, match=r"cuda_graphs needs device 'cuda'"):
        TorchEncoder(render_info.query_tower["source"], device="cpu", dtype="float32", cuda_graphs=True)
