"""Property-based fuzz of the gRPC inputs against a running tritonserver (seeded, capped for CI).

Random bytes and invalid UTF-8, wrong dtypes and shapes, empty and oversized batches, k out of range
and mixed within a request, missing and unknown inputs. Every request gets INVALID_ARGUMENT or a
correct answer; the server stays live and ready and no python-backend stub restarts. The
well-formed batch-mate always gets its answer, unless the fuzzed request brought more predicted work
ahead of it than admission's budget: then it is refused with UNAVAILABLE, and it is sent again.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from model_repository.supervisor import living_stubs

MAX_ROWS = 64  # tokenizer max_rows_per_request
MAX_CHARS = 8192
MAX_K = 1000

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=60)
# Mostly well-formed, so that the checks behind the tokenizer (k, batching) are reached too.
good = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1,
               max_size=60).map(lambda t: t.encode("utf-8"))
bad = st.one_of(
    words.map(lambda t: t.encode("utf-8")),  # sometimes blank
    st.binary(min_size=0, max_size=40),  # random bytes: mostly invalid UTF-8
    st.just(b"x" * (MAX_CHARS + 1)),  # one character over the limit
)
texts = st.one_of(good, good, good, bad)


@st.composite
def requests(draw):
    model = draw(st.sampled_from(["retrieve", "embed"]))
    rows = draw(st.one_of(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4),
                          st.sampled_from([0, MAX_ROWS, MAX_ROWS + 1, 200])))
    data = np.array([[draw(texts)] for _ in range(rows)] if rows <= 8 else [[b"a query"]] * rows, dtype=np.object_).reshape(rows, 1)
    inputs = []
    text_kind = draw(st.sampled_from(["ok"] * 12 + ["int32", "fp32", "flat", "wide", "missing"]))
    if text_kind == "int32":
        inputs.append(_tensor("TEXT", np.zeros((rows, 1), np.int32), "INT32"))
    elif text_kind == "fp32":
        inputs.append(_tensor("TEXT", np.zeros((rows, 1), np.float32), "FP32"))
    elif text_kind == "flat":
        inputs.append(_tensor("TEXT", data.reshape(-1), "BYTES"))
    elif text_kind == "wide":
        inputs.append(_tensor("TEXT", np.concatenate([data, data], axis=1), "BYTES"))
    elif text_kind == "ok":
        inputs.append(_tensor("TEXT", data, "BYTES"))
    k = None
    if model == "retrieve":
        k_kind = draw(st.sampled_from(["ok"] * 6 + ["mixed", "mixed", "range", "range", "int64", "missing"]))
        k = draw(st.integers(1, 50))
        if k_kind == "ok":
            inputs.append(_tensor("K", np.full((rows, 1), k, np.int32), "INT32"))
        elif k_kind == "mixed":
            inputs.append(_tensor("K", np.arange(1, rows + 1, dtype=np.int32).reshape(rows, 1), "INT32"))
        elif k_kind == "range":
            k = draw(st.sampled_from([0, -1, MAX_K + 1, 2**31 - 1]))
            inputs.append(_tensor("K", np.full((rows, 1), k, np.int32), "INT32"))
        elif k_kind == "int64":
            inputs.append(_tensor("K", np.full((rows, 1), k, np.int64), "INT64"))
    if draw(st.sampled_from(["no"] * 9 + ["unknown input"])) != "no":
        inputs.append(_tensor("UNKNOWN", np.zeros((rows, 1), np.int32), "INT32"))
    return model, inputs, data, k


def _tensor(name, array, dtype):
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def _valid_text(raw: bytes) -> bool:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text.strip()) and len(text) <= MAX_CHARS


@pytest.fixture(scope="module")
def mate(pipeline) -> tuple[str, np.ndarray]:
    text = "how do I read a file line by line"
    return text, pipeline.embed([text])[0]


@pytest.fixture(scope="module")
def stubs_before(server):
    return set(living_stubs(server.process.pid))


@seed(20261123)
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
@given(request=requests())
def test_every_request_gets_invalid_argument_or_a_correct_answer(server, grpc, pipeline, stubs_before, mate, request):
    model, inputs, data, k = request
    # A well-formed request sent at the same moment: it may share a dynamic batch with the fuzzed one.
    done: dict[str, tuple] = {}
    finished = threading.Event()

    def callback(name, result, error):
        done[name] = (result, error)
        if len(done) == 2:
            finished.set()

    grpc.async_infer("embed", [_tensor("TEXT", np.array([[mate[0].encode()]], dtype=np.object_), "BYTES")],
                     lambda result, error: callback("mate", result, error), client_timeout=30)
    grpc.async_infer(model, inputs, lambda result, error: callback("fuzzed", result, error), client_timeout=30)
    assert finished.wait(60), "no answer within 60 s"
    mate_result, mate_error = done["mate"]
    if mate_error is not None and "exceeds admission_budget_ms" in mate_error.message():
        # A well-formed fuzzed request got there first with more predicted work than the budget, and the
        # mate would have waited for all of it. Refused, not harmed.
        assert mate_error.status() == "StatusCode.UNAVAILABLE" and data.shape[0] >= 1, mate_error
        event("mate refused: the fuzzed request held more than the budget")
        mate_result, mate_error = grpc.infer("embed", [_tensor("TEXT", np.array([[mate[0].encode()]], dtype=np.object_), "BYTES")]), None
    assert mate_error is None, f"a well-formed batch-mate failed: {mate_error}"
    assert float(np.sum(mate_result.as_numpy("EMBEDDING")[0] * mate[1])) > 0.999
    try:
        result, error = done["fuzzed"]
        if error is not None:
            raise error
    except InferenceServerException as e:
        assert e.status() == "StatusCode.INVALID_ARGUMENT", f"{model}: {e.status()} {e.message()}"
        event(f"refused: {e.message()[:60]}")
        assert e.message(), "an error without a message"
    else:
        # Only a well-formed request may succeed, and then with the in-process answer.
        event(f"answered: {model}")
        rows = data.shape[0]
        assert 1 <= rows <= MAX_ROWS and all(_valid_text(t) for t in data.ravel())
        expected = pipeline.embed([t.decode("utf-8") for t in data.ravel()])
        if model == "embed":
            got = result.as_numpy("EMBEDDING")
            assert got.shape == expected.shape and float(np.min(np.sum(got * expected, axis=1))) > 0.999
        else:
            ids, scores = result.as_numpy("DOC_IDS"), result.as_numpy("SCORES")
            assert ids.shape == (rows, k) and scores.shape == (rows, k)
            assert np.all(np.diff(scores, axis=1) <= 1e-6), "scores are not best first"
    assert server.is_ready()


def test_the_fuzz_left_every_stub_running(server, stubs_before):
    """Runs after the fuzz (file order): the same stub processes, none restarted."""
    assert set(living_stubs(server.process.pid)) == stubs_before
    assert not [e for e in server.supervisor.events], server.supervisor.events
