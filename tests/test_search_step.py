"""--search-step encoder: retrieve's search inside the query encoder's stub, one python hop fewer.

Served against the default repository (search in mips_topk), request by request and in a burst where
the encoder's dynamic batcher merges embed and retrieve requests into one execution; a bad k among
them is refused alone, and every admission ticket comes back.
"""
from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.retrieval import RetrievalClient, k_input, text_input
from tests.conftest import ARTIFACTS, render_variant, rows_in_flight_settled, start_server
from tests.test_serving import executions

RETRIEVE_OUTPUTS = ["DOC_IDS", "SCORES", "DOC_KEYS", "TITLES", "SNIPPETS", "INDEX_VERSION"]


@pytest.fixture(scope="module")
def fused(repository, tmp_path_factory):
    """The default repository's tower and index, searched in the encoder's stub; the encoder batches
    (a 20 ms window) so that a burst mixes embed and retrieve requests in one execution."""
    folder = tmp_path_factory.mktemp("search-in-encoder")
    resolved = render_variant(folder / "repo", repository, search_step="encoder", encoder_batching="dynamic",
                              max_queue_delay_us=20000)
    assert resolved.context.search_step == "encoder" and resolved.context.admission_budget_ms == 1000
    server = start_server(folder / "repo", folder / "work")
    try:
        yield server, folder / "repo"
    finally:
        server.stop()


def _same_hits(a, b) -> None:
    assert a.index_version == b.index_version
    for row_a, row_b in zip(a.hits, b.hits, strict=True):
        assert [(h.doc_id, h.key, h.title, h.snippet) for h in row_a] == [(h.doc_id, h.key, h.title, h.snippet) for h in row_b]
        np.testing.assert_allclose([h.score for h in row_a], [h.score for h in row_b], atol=2e-6, rtol=0)


def test_retrieve_searched_in_the_encoder_answers_as_the_mips_topk_step(fused, server, queries):
    served, repo = fused
    texts = queries[:20] + ["x", "a much longer question about how python imports modules from packages " * 6]
    with RetrievalClient(server.grpc_url) as default, RetrievalClient(served.grpc_url) as client:
        assert client.ensemble_steps("retrieve") == ["ensemble_tokenizer", "query_encoder"]
        assert client.ensemble_steps("embed") == ["ensemble_tokenizer", "query_encoder"]
        assert default.ensemble_steps("retrieve") == ["ensemble_tokenizer", "query_encoder", "mips_topk"]
        np.testing.assert_allclose(client.embed(texts), default.embed(texts), atol=1e-6, rtol=0)
        for k in (1, 10, 200):
            _same_hits(client.retrieve(texts, k=k), default.retrieve(texts, k=k))
        for k in (0, 1001):  # refused naming the field, the limit and the value; the server keeps serving
            with pytest.raises(InferenceServerException, match=rf"k must be in \[1, 1000\]; got {k}"):
                client.retrieve(texts[:2], k=k)
        _same_hits(client.retrieve(texts[:3], k=5), default.retrieve(texts[:3], k=5))
    # mips_topk still answers direct calls, from the same index
    direct = grpcclient.InferenceServerClient(served.grpc_url)
    embedding = grpcclient.InferInput("embedding", [1, 384], "FP32")
    embedding.set_data_from_numpy(RetrievalClient(served.grpc_url).embed(texts[:1]))
    answer = direct.infer("mips_topk", [embedding, k_input(3, 1, "k")])
    assert answer.as_numpy("doc_ids")[0].tolist() == [h.doc_id for h in RetrievalClient(server.grpc_url).retrieve(texts[:1], k=3).hits[0]]
    direct.close()
    log = served.log_path.read_text(encoding="utf-8", errors="replace")
    assert "query_encoder searches: index" in log and "implementation=numpy" in log
    assert (repo / "query_encoder" / "1" / "index" / "manifest.json").exists()


def test_a_burst_of_embed_and_retrieve_batched_in_the_encoder_each_equals_the_request_alone(fused, server, queries):
    """8 concurrent requests: embeds, retrieves at several k and one bad k. The
    encoder's batcher merges them; each answer equals the default server's answer to it alone, the bad one
    alone is refused, and the admission table reads 0 after (the encoder gave every ticket back)."""
    from model_repository.runtime.admission import Admission, table_path

    served, _ = fused
    texts = queries[30:38]
    plan = [("embed", None), ("retrieve", 10), ("retrieve", 3), ("embed", None), ("retrieve", 1001), ("retrieve", 50),
            ("embed", None), ("retrieve", 10)]
    grpc = grpcclient.InferenceServerClient(served.grpc_url)
    before = executions(grpc, "query_encoder")
    results: list = [None] * len(plan)
    done = threading.Semaphore(0)

    def on_result(i):
        def store(result, error):
            model = plan[i][0]
            results[i] = error if error is not None else {n: result.as_numpy(n) for n in (["EMBEDDING"] if model == "embed" else RETRIEVE_OUTPUTS)}
            done.release()
        return store

    for i, ((model, k), text) in enumerate(zip(plan, texts)):
        inputs = [text_input([text])] + ([] if k is None else [k_input(k, 1)])
        grpc.async_infer(model, inputs, on_result(i), client_timeout=120)
    for _ in plan:
        assert done.acquire(timeout=120), "a request never completed"
    inferences, runs = (a - b for a, b in zip(executions(grpc, "query_encoder", before[0] + len(plan)), before))
    # the bad k is refused by the encoder itself, so all 8 reach it
    assert inferences == len(plan) and runs < len(plan), f"the encoder never merged the burst ({inferences} inferences in {runs} runs)"
    with RetrievalClient(server.grpc_url) as default:
        for (model, k), text, got in zip(plan, texts, results):
            if k == 1001:
                assert isinstance(got, InferenceServerException) and "k must be in [1, 1000]; got 1001" in got.message()
            elif model == "embed":
                np.testing.assert_allclose(got["EMBEDDING"], default.embed([text]), atol=1e-6, rtol=0)
            else:
                alone = default.retrieve([text], k=k)
                assert got["DOC_IDS"][0].tolist() == [h.doc_id for h in alone.hits[0]]
                np.testing.assert_allclose(got["SCORES"][0], [h.score for h in alone.hits[0]], atol=2e-6, rtol=0)
                assert [s.decode() for s in got["SNIPPETS"][0]] == [h.snippet for h in alone.hits[0]]
                assert got["INDEX_VERSION"][0][0].decode() == alone.index_version
    table = Admission(table_path(served.process.pid), 0)
    assert rows_in_flight_settled(table) == 0
    table.close()
    grpc.close()


def test_the_planner_counts_both_copies_of_the_index(fused, server):
    """The capacity planner's memory fit reads what each copy of the index holds resident: the encoder's and
    mips_topk's, twice the default repository's."""
    from benchmarks.capacity.planner import sizes_from_server

    served, _ = fused
    default, searched = sizes_from_server(server.grpc_url), sizes_from_server(served.grpc_url)
    assert default.index_bytes == default.index_rows * default.dim * 4  # the numpy search's float32 copy
    assert searched.index_bytes == 2 * default.index_bytes and searched.encoder_bytes == default.encoder_bytes


def test_the_search_step_setting_is_checked():
    from build.render import ServingSettings, ensembles

    assert ServingSettings().resolved()["search_step"] == "separate"
    with pytest.raises(ValueError, match=r"search_step must be one of \['separate', 'encoder'\] \('encoder' needs pooling_step "
                                         r"'encoder' and the numpy, faiss or chunked search\); got 'encoder' with pooling_step 'separate'"):
        ServingSettings(search_step="encoder", pooling_step="separate").resolved()
    with pytest.raises(ValueError, match=r"got 'encoder' with pooling_step 'separate' and search 'cupy'"):
        ServingSettings(search_step="encoder", target="gpu").resolved()
    with pytest.raises(ValueError, match=r"got 'inline'"):
        ServingSettings(search_step="inline").resolved()
    steps = {e["name"]: e["steps"] for e in ensembles(384, 0, "encoder", "encoder")}
    assert [s["model"] for s in steps["retrieve"]] == ["ensemble_tokenizer", "query_encoder"]
    assert steps["retrieve"][1]["inputs"] == {"input_ids": "_input_ids", "attention_mask": "_attention_mask",
                                              "admission_ticket": "_admission_ticket", "k": "K"}


def test_an_index_deploy_swaps_the_encoders_index_and_mips_topks_together_and_rolls_back(fused, render_info, tmp_path):
    """The encoder holds the index retrieve searches: deploy-index versions it with mips_topk (one version number),
    retrieve and direct mips_topk calls answer the new index, and rollback brings the old one back to both."""
    from build import deploy
    from build.export import ExportedTower
    from build.index import build_index
    from training.corpus import read_corpus

    served, repo = fused
    docs = read_corpus(ARTIFACTS / "corpus" / "python-docs" / "corpus.jsonl")[:60]
    doc_tower = ExportedTower(ARTIFACTS / "towers" / render_info.index["doc_tower_fingerprint"])
    small = build_index(docs, "first-60-documents", doc_tower, render_info.query_tower["fingerprint"], tmp_path / "index")
    small_version = json.loads((small / "manifest.json").read_text(encoding="utf-8"))["index_version"]
    assert deploy.holders(repo) == ["query_encoder", "mips_topk"]
    texts = ["how do I copy a file", "what is a lambda"]

    def direct_version() -> str:
        client = grpcclient.InferenceServerClient(served.grpc_url)
        embedding = grpcclient.InferInput("embedding", [1, 384], "FP32")
        embedding.set_data_from_numpy(RetrievalClient(served.grpc_url).embed(texts[:1]))
        version = client.infer("mips_topk", [embedding, k_input(3, 1, "k")]).as_numpy("index_version")[0][0].decode()
        client.close()
        return version

    def serving() -> list[int]:
        return [deploy.serving_version(served.grpc_url, m) for m in ("query_encoder", "mips_topk")]

    # A corrupt index the server refuses (the tool's own check skipped): both holders keep the serving index,
    # republished under the failed number, and the server stays ready.
    bad = tmp_path / "bad"
    shutil.copytree(small, bad)
    shard = np.load(bad / "shard-00000.npy")
    shard[0, 0] += np.float16(0.5)
    np.save(bad / "shard-00000.npy", shard)
    with RetrievalClient(served.grpc_url) as client:
        before = client.retrieve(texts, k=3).index_version
        assert before != small_version and direct_version() == before
        with pytest.raises(deploy.DeployError, match=r"(?s)sha256 must be.*version 1 kept serving.*reports ready"):
            deploy.deploy_index(repo, bad, served.grpc_url, verify=False)
        assert served.is_ready() and serving() == [2, 2]
        assert client.retrieve(texts, k=3).index_version == before == direct_version()
        version = deploy.deploy_index(repo, small, served.grpc_url)
        assert version == 3 and serving() == [3, 3]
        after = client.retrieve(texts, k=3)
        assert after.index_version == small_version == direct_version()
        assert all(hit.doc_id < 60 for row in after.hits for hit in row)
        assert deploy.rollback(repo, served.grpc_url) == 2
        assert client.retrieve(texts, k=3).index_version == before == direct_version()
    assert served.is_ready()
