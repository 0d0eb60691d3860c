"""The served ensembles against the in-process pipeline, batching, and bad input — on a real tritonserver."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.retrieval import k_input, text_input
from tests.conftest import ARTIFACTS, ROOT, rows_in_flight_settled

COSINE_MIN = 0.9999


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_served_embed_equals_in_process_pipeline(retrieval, pipeline, queries):
    texts = queries[:16] + ["x", "word " * 400]  # a one-token text and one past the token limit
    served = retrieval.embed(texts)
    local = pipeline.embed(texts)
    assert served.shape == local.shape == (len(texts), pipeline.dim)
    assert cosine_rows(served, local).min() >= COSINE_MIN
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_served_embed_agrees_with_sentence_transformers(retrieval, render_info, queries):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(render_info.query_tower["source"], device="cpu")
    texts = queries[:16]
    reference = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert cosine_rows(retrieval.embed(texts), reference).min() >= COSINE_MIN


def test_retrieve_with_a_documents_own_text_returns_it_first(retrieval):
    docs = [json.loads(line) for line in (ARTIFACTS / "corpus" / "python-docs" / "corpus.jsonl").open(encoding="utf-8")]
    rng = np.random.default_rng(0)
    picked = [docs[i] for i in rng.choice(len(docs), size=12, replace=False)]
    result = retrieval.retrieve([f"{d['title']}\n{d['text']}"[:8000] for d in picked], k=3)
    for doc, hits in zip(picked, result.hits):
        assert hits[0].key == doc["id"], (doc["id"], [h.key for h in hits])
        assert hits[0].title == doc["title"]
        assert hits[0].score > 0.99
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_faq_questions_find_their_answers(retrieval):
    """A regression guard, not a quality figure: the default index embeds each FAQ answer with its question
    as title. Measured in-process on these 64 questions (2026-11-23): R@1 60/64, R@10 64/64. One answer
    may slip; more means serving changed what it retrieves."""
    pairs = [json.loads(line) for line in (ARTIFACTS / "corpus" / "python-docs" / "queries.jsonl").open(encoding="utf-8")]
    result = retrieval.retrieve([p["query"] for p in pairs[:64]], k=10)
    keys = [[h.key for h in hits] for hits in result.hits]
    assert sum(p["positive"] in row for p, row in zip(pairs, keys)) >= 63
    assert sum(p["positive"] == row[0] for p, row in zip(pairs, keys)) >= 59


def fire_concurrently(grpc, model, requests, outputs, finished: list | None = None):
    """Send every request at once with async_infer; return (result dict | exception) per request, in order.
    ``finished`` gets each request's index as its answer arrives."""
    results = [None] * len(requests)
    done = threading.Semaphore(0)

    def callback(i):
        def on_result(result, error):
            results[i] = error if error is not None else {name: result.as_numpy(name) for name in outputs}
            if finished is not None:
                finished.append(i)
            done.release()
        return on_result

    for i, inputs in enumerate(requests):
        grpc.async_infer(model, inputs, callback(i), client_timeout=120)
    for _ in requests:
        assert done.acquire(timeout=180), "a request never completed"
    return results


def fire_concurrently_later(grpc, model, requests, outputs, finished: list | None = None):
    """fire_concurrently without waiting: returns a function that waits, then gives the results."""
    results: list = []
    thread = threading.Thread(target=lambda: results.extend(fire_concurrently(grpc, model, requests, outputs, finished)), daemon=True)
    thread.start()

    def wait():
        thread.join(120)
        return results

    return wait


def executions(grpc, model, at_least: int = 0):
    """(inference_count, execution_count); waits briefly for the statistics to catch up to ``at_least``."""
    for _ in range(50):
        stats = grpc.get_inference_statistics(model, as_json=True)["model_stats"][0]
        counts = int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))
        if counts[0] >= at_least:
            break
        time.sleep(0.1)
    return counts


OUTPUTS = ["DOC_IDS", "SCORES", "DOC_KEYS", "INDEX_VERSION"]


def retrieve_request(texts, k):
    return [text_input(texts), k_input(k, len(texts))]


def concurrent_equals_alone(grpc, texts, batched_model):
    """Fire ``texts`` as concurrent one-text requests; each answer equals that text sent alone.
    Returns the (inferences, executions) of ``batched_model`` and of query_encoder during the burst."""
    models = (batched_model, "query_encoder")
    start = {m: executions(grpc, m) for m in models}
    alone = [grpc.infer("retrieve", retrieve_request([t], 5)) for t in texts]
    # Triton updates a model's statistics after the answer has gone out: wait until the one-at-a-time
    # requests are all counted, or the last of them would be counted in the burst (65, not 64).
    before = {m: executions(grpc, m, start[m][0] + len(texts)) for m in models}
    together = fire_concurrently(grpc, "retrieve", [retrieve_request([t], 5) for t in texts], OUTPUTS)
    for single, batched in zip(alone, together):
        assert not isinstance(batched, Exception), str(batched)
        np.testing.assert_array_equal(batched["DOC_IDS"], single.as_numpy("DOC_IDS"))
        np.testing.assert_allclose(batched["SCORES"], single.as_numpy("SCORES"), atol=2e-5, rtol=0)
    return {m: tuple(a - b for a, b in zip(executions(grpc, m, c[0] + len(texts)), c)) for m, c in before.items()}


@pytest.fixture(scope="module")
def unlimited(repository, render_info, tmp_path_factory):
    """A client of the default CPU repository rendered without admission (``--admission-budget-ms 0``):
    what the batching tests check is how the steps batch, and a stall of this shared machine must not
    turn into refusals (test_admission_refuses_... checks those)."""
    from tests.conftest import render_variant, start_server

    folder = tmp_path_factory.mktemp("unlimited")
    resolved = render_variant(folder / "repo", repository, admission_budget_ms=0)
    assert resolved.context.admission_budget_ms == 0 and render_info.context.admission_budget_ms == 1000
    server = start_server(folder / "repo", folder / "work")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def test_64_concurrent_requests_each_equal_the_request_alone(unlimited, queries):
    """The default CPU repository (admission off): the tokenizer merges queued requests; the encoder
    runs one request per execution, in arrival order (a batch of n costs ~n queries on a CPU core)."""
    grpc = unlimited
    texts = queries[:64]
    assert len(set(texts)) == 64
    counts = concurrent_equals_alone(grpc, texts, "ensemble_tokenizer")
    inferences, runs = counts["ensemble_tokenizer"]
    assert inferences == 64 and runs < 64, "the tokenizer's dynamic batcher never formed a batch; the test proves nothing"
    assert counts["query_encoder"] == (64, 64), "the CPU encoder must run one request per execution"


def test_the_dynamic_batching_encoder_merges_requests_and_each_equals_the_request_alone(repository, queries, tmp_path):
    """--encoder-batching dynamic (the GPU default): queued requests run as one padded, ragged batch."""
    from tests.conftest import render_variant, start_server

    resolved = render_variant(tmp_path / "repo", repository, encoder_batching="dynamic", admission_budget_ms=0)
    assert resolved.context.encoder_batching == "dynamic"
    server = start_server(tmp_path / "repo", tmp_path / "work")
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inferences, runs = concurrent_equals_alone(client, queries[:64], "ensemble_tokenizer")["query_encoder"]
        client.close()
    finally:
        server.stop()
    assert inferences == 64 and runs < 64, "the encoder's dynamic batcher never formed a batch; the test proves nothing"


def assert_a_stalled_search_holds_the_tickets(client, search_pid, table, texts, alone):
    """retrieve's tickets come back after its search, not after encoding: with the search's stub stopped,
    an encoded request still counts ahead of the next, which is refused at once; once the search runs
    again, it is answered as alone and its ticket comes back. (Given back at pooling, the search's queue
    would be outside what admission sees.)"""
    encoded = executions(client, "query_encoder")[0]
    os.kill(search_pid, signal.SIGSTOP)
    try:
        held = fire_concurrently_later(client, "retrieve", [retrieve_request([t], 5) for t in texts], OUTPUTS)
        assert executions(client, "query_encoder", encoded + len(texts))[0] >= encoded + len(texts), "never encoded"
        time.sleep(0.3)  # the encoder has answered both: given back at pooling, the table would read 0 by now
        assert table.in_flight() == len(texts), "the encoder gave a retrieve ticket back before its search"
        with pytest.raises(InferenceServerException, match=r"predicted wait \d+ ms \(1 rows ahead x [\d.]+ ms a row\) exceeds admission_budget_ms 1;") as refused:
            client.infer("retrieve", retrieve_request([texts[0]], 5), client_timeout=30)
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        os.kill(search_pid, signal.SIGCONT)
    for answer, single in zip(held(), alone):
        assert not isinstance(answer, Exception), answer
        np.testing.assert_array_equal(answer["DOC_IDS"], single.as_numpy("DOC_IDS"))
    assert rows_in_flight_settled(table) == 0, "a searched request's ticket never came back"


def test_admission_refuses_at_once_what_would_wait_beyond_its_budget_and_serves_the_rest(repository, queries, tmp_path):
    """--admission-budget-ms 1: once the service time of a row is measured (~10 ms here), any request with
    a row ahead of it would wait beyond the budget. Of a burst that arrives while the search's stub is
    stopped, exactly one is admitted (nothing ahead of it); the others get UNAVAILABLE at once, naming
    the predicted wait, the rows ahead, the time a row and the budget. The admitted one equals the
    request alone, every ticket comes back, and the server goes on serving. (The stopped search makes
    the count exact however slowly this machine delivers the burst.)"""
    from benchmarks.load import openloop
    from benchmarks.load.procs import server_processes
    from model_repository.runtime.admission import Admission, table_path
    from tests.conftest import render_variant, start_server

    render_variant(tmp_path / "repo", repository, admission_budget_ms=1)
    server = start_server(tmp_path / "repo", tmp_path / "work")
    try:
        stubs = server_processes(server.grpc_url)
        # every stub keeps the server's priority (the CPU encoder pools: no pool_normalize stub)
        assert {name: (os.getpriority(os.PRIO_PROCESS, pid), os.sched_getscheduler(pid)) for name, pid in stubs.items()
                if name != "tritonserver"} == {name: (0, os.SCHED_OTHER) for name in (
                    "stub:tokenizer_0_0", "stub:ensemble_tokenizer_0_0", "stub:query_encoder_0_0", "stub:mips_topk_0_0")}
        client = grpcclient.InferenceServerClient(server.grpc_url)
        texts = queries[:32]
        alone = [client.infer("retrieve", retrieve_request([t], 5)) for t in texts]  # one at a time: all admitted, and measured
        table = Admission(table_path(server.process.pid), 0)
        assert table.row_ns() > 1_000_000, "a row measured under the 1 ms budget: the test proves nothing"
        finished: list[int] = []
        os.kill(stubs["stub:mips_topk_0_0"], signal.SIGSTOP)
        try:
            answered = fire_concurrently_later(client, "retrieve", [retrieve_request([t], 5) for t in texts], OUTPUTS, finished)
            deadline = time.monotonic() + 60
            while len(finished) < len(texts) - 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(finished) == len(texts) - 1, f"{len(finished)} of {len(texts)} answered while one should be held"
            assert table.in_flight() == 1
        finally:
            os.kill(stubs["stub:mips_topk_0_0"], signal.SIGCONT)
        burst = answered()
        refused = [r for r in burst if isinstance(r, Exception)]
        assert len(burst) == len(texts) and len(burst) - len(refused) == 1, [type(r).__name__ for r in burst]
        for single, answer in zip(alone, burst):
            if not isinstance(answer, Exception):
                np.testing.assert_array_equal(answer["DOC_IDS"], single.as_numpy("DOC_IDS"))
        for error in refused:
            assert error.status() == "StatusCode.UNAVAILABLE", str(error)
            assert re.search(r"server busy: predicted wait \d+ ms \(1 rows ahead x [\d.]+ ms a row\) exceeds admission_budget_ms 1; "
                             r"retry with backoff", error.message()), str(error)
        # the overload benchmark's capacity probe (8 callers, back to back) must not take the refusals' churn for capacity
        with pytest.raises(openloop.ProbeFailed, match=r"calls failed \(StatusCode.UNAVAILABLE: \d+; first: .*admission_budget_ms 1.*--capacity-rps"):
            openloop.Generator(server.grpc_url, "retrieve", texts, k=5).closed_loop(8, 1.5)
        assert rows_in_flight_settled(table) == 0, "an admitted request's ticket never came back"
        again = client.infer("retrieve", retrieve_request([texts[0]], 5))
        np.testing.assert_array_equal(again.as_numpy("DOC_IDS"), alone[0].as_numpy("DOC_IDS"))
        assert_a_stalled_search_holds_the_tickets(client, stubs["stub:mips_topk_0_0"], table, texts[:1], alone[:1])
        client.close()
    finally:
        server.stop()
    assert not table_path(server.process.pid).exists(), "the launcher leaves no admission table behind"


def test_a_request_whose_timeout_its_own_service_would_miss_is_refused_at_once(server, grpc, queries):
    """The request's own timeout (tritonclient's ``timeout``, microseconds) reaches the ensemble's first
    step: a timeout shorter than one row's measured service is refused at once, naming it; a long one is
    answered, and so is a request without one."""
    grpc.infer("embed", [text_input(queries[:1])])  # at least one row measured
    start = time.monotonic()
    with pytest.raises(InferenceServerException, match=r"predicted wait \d+ ms \(0 rows ahead x [\d.]+ ms a row\) plus this "
                                                       r"request's 1 rows exceeds its timeout of 0.1 ms; retry") as refused:
        grpc.infer("embed", [text_input(queries[:1])], timeout=100)
    assert refused.value.status() == "StatusCode.UNAVAILABLE" and time.monotonic() - start < 2.0
    assert grpc.infer("embed", [text_input(queries[:1])], timeout=30_000_000).as_numpy("EMBEDDING").shape == (1, 384)


def test_clients_calling_the_tokenizer_take_no_admission_ticket(server, grpc, pipeline, render_info, queries):
    """The ensembles admit at ensemble_tokenizer; `tokenizer` is the clients' own and admits nothing. (When
    the ensembles' step was the public one, a direct call took a ticket nothing gave back: 8 of them within
    the 5 s ttl refused every embed and retrieve with UNAVAILABLE until they expired.) Three times the limit
    of direct calls, each asking for every output as clients do by default, leave no row in flight, embed
    is answered at once, and each answer is the tokens the in-process pipeline encodes."""
    from model_repository.runtime.admission import Admission, table_path

    assert render_info.context.admission_budget_ms > 0, "the default repository admits; the test proves nothing without it"
    limit = 8
    config = grpc.get_model_config("tokenizer", as_json=True)["config"]
    assert [o["name"] for o in config["output"]] == ["input_ids", "attention_mask"]
    assert "admission_budget_ms" not in config.get("parameters", {})
    table = Admission(table_path(server.process.pid), 0)
    for text in queries[:3 * limit]:
        answer = grpc.infer("tokenizer", [text_input([text], name="text")])
        ids, mask = pipeline.tokenizer([text])
        np.testing.assert_array_equal(answer.as_numpy("input_ids"), ids)
        np.testing.assert_array_equal(answer.as_numpy("attention_mask"), mask)
        assert answer.as_numpy("admission_ticket") is None
    assert table.in_flight() == 0, "a direct call to the tokenizer holds rows against the ensembles' limit"
    embedded = grpc.infer("embed", [text_input(queries[:1])]).as_numpy("EMBEDDING")
    assert cosine_rows(embedded, pipeline.embed(queries[:1])).min() >= COSINE_MIN
    table.close()


def test_multi_row_request_equals_rows_sent_alone(retrieval, queries):
    texts = queries[100:108]
    batched = retrieval.retrieve(texts, k=4)
    for text, hits in zip(texts, batched.hits):
        alone = retrieval.retrieve([text], k=4).hits[0]
        assert [h.doc_id for h in hits] == [h.doc_id for h in alone]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in alone], atol=2e-5)


def bad_text_input(dtype="INT32"):
    tensor = grpcclient.InferInput("TEXT", [1, 1], dtype)
    tensor.set_data_from_numpy(np.ones((1, 1), dtype=np.int32))
    return tensor


def bad_shape_input():
    tensor = grpcclient.InferInput("TEXT", [1, 2], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
    return tensor


BAD_REQUESTS = {
    "empty string": (lambda: retrieve_request([""], 3), r"text\[0\] must be non-empty text; got ''"),
    "white space only": (lambda: retrieve_request(["   "], 3), r"text\[0\] must be non-empty text; got '   '"),
    "over the character limit": (lambda: retrieve_request(["a" * 9000], 3), r"text\[0\] exceeds 8192 characters; got 9000"),
    "not UTF-8": (lambda: retrieve_request([b"caf\xe9 au lait"], 3), r"text\[0\] must be UTF-8; byte 0xe9 at offset 3 is not valid"),
    "k = 0": (lambda: retrieve_request(["copy a file"], 0), r"k must be in \[1, 1000\]; got 0"),
    "k < 0": (lambda: retrieve_request(["copy a file"], -5), r"k must be in \[1, 1000\]; got -5"),
    "k over the maximum": (lambda: retrieve_request(["copy a file"], 5000), r"k must be in \[1, 1000\]; got 5000"),
    "wrong dtype": (lambda: [bad_text_input(), k_input(3, 1)], r"input 'TEXT' data-type is 'INT32', but model 'retrieve' expects 'BYTES'"),
    "wrong shape": (lambda: [bad_shape_input(), k_input(3, 1)], r"unexpected shape for input 'TEXT' for model 'retrieve'. Expected \[-1,1\], got \[1,2\]"),
    "too many rows": (lambda: retrieve_request(["q"] * 65, 3), r"text has 65 rows; the limit is 64 per request"),
    "over max_batch_size": (lambda: retrieve_request(["q"] * 129, 3), r"batch-size must be <= 128 for 'retrieve'"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_invalid_argument_and_the_server_keeps_serving(grpc, server, case):
    make, message = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException, match=message) as info:
        grpc.infer("retrieve", make())
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    good = grpc.infer("retrieve", retrieve_request(["how do I copy a file"], 3))
    assert good.as_numpy("DOC_IDS").shape == (1, 3)
    assert server.is_ready()


def test_in_a_dynamic_batch_only_the_bad_requests_fail(unlimited, queries):
    grpc = unlimited
    good_texts = queries[:24]
    requests = [retrieve_request([t], 5) for t in good_texts]
    bad_positions = [3, 11, 17]
    for p in bad_positions:
        requests.insert(p, retrieve_request([""], 5) if p != 11 else retrieve_request(["fine text"], 0))
    alone = {t: grpc.infer("retrieve", retrieve_request([t], 5)).as_numpy("DOC_IDS") for t in good_texts}
    before = executions(grpc, "ensemble_tokenizer")
    results = fire_concurrently(grpc, "retrieve", requests, OUTPUTS)
    inferences, runs = (a - b for a, b in zip(executions(grpc, "ensemble_tokenizer", before[0] + len(requests)), before))
    assert runs < inferences, "no dynamic batch formed"
    good_iter = iter(good_texts)
    for i, result in enumerate(results):
        if i in bad_positions:
            assert isinstance(result, InferenceServerException) and result.status() == "StatusCode.INVALID_ARGUMENT", result
        else:
            assert not isinstance(result, Exception), result
            np.testing.assert_array_equal(result["DOC_IDS"], alone[next(good_iter)])


def test_every_response_names_the_index_version(retrieval, render_info):
    assert retrieval.retrieve(["what is a generator"], k=2).index_version == render_info.index["index_version"]


def test_client_cli_prints_results_and_latency(server):
    out = subprocess.run(
        [sys.executable, "-m", "clients", "query", "how do I copy a file in python", "-k", "3", "--url", server.grpc_url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "query: how do I copy a file in python"
    assert any("How do I copy a file?" in line and "faq/library#how-do-i-copy-a-file" in line for line in lines)
    assert sum(line.lstrip()[:3] in ("1. ", "2. ", "3. ") for line in lines) == 3
    assert "round trip" in lines[-1] and " ms over gRPC" in lines[-1]


def test_client_cli_reports_server_errors(server):
    out = subprocess.run(
        [sys.executable, "-m", "clients", "query", "copy", "-k", "0", "--url", server.grpc_url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    assert "k must be in [1, 1000]; got 0" in out.stderr


def test_metrics_endpoint_has_per_model_summary_latencies(server, retrieval):
    import urllib.request

    retrieval.retrieve(["what is a decorator"], k=1)
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    for model in ("retrieve", "ensemble_tokenizer", "query_encoder", "mips_topk"):
        assert f'nv_inference_request_summary_us_count{{model="{model}",version="1"}}' in metrics, model
        assert f'nv_inference_compute_infer_summary_us{{model="{model}",version="1",quantile="0.99"}}' in metrics, model
