"""The one gRPC client of the retrieval server (tritonclient): every caller in this project uses it.

``embed`` and ``retrieve`` return parsed results; ``infer`` sends one raw request to
either ensemble (what the load tests time); ``model_config`` and ``ensemble_steps``
read what the server actually serves. Talks to the server only over gRPC.

Every call here is idempotent (nothing is written on the server), so ``embed``, ``retrieve`` and
``model_config`` retry what a restarting or overloaded server answers, with capped exponential
backoff and full jitter, within one overall deadline (``RetryPolicy``); every other status is
raised at once. What Triton 2.51 answers while it stops (tests/test_faults.py saw each):
UNAVAILABLE (port closed, queue full), CANCELLED (its gRPC server ends open calls; this client
never cancels one itself) and NOT_FOUND "has no available versions" (the model unloads before the
port closes). The last is retried only for a model that has already answered this client, so a
misspelt model name still fails at once. ``infer`` never retries: the load tests time single calls.
"""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Callable, Sequence, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

DEFAULT_URL = "127.0.0.1:8001"
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Retries of idempotent calls: attempt n waits uniform(0, min(max_backoff_s, initial_backoff_s * 2**n)).

    ``deadline_s`` bounds the whole call, retries and waits included; each attempt gets what is left
    of it (at most the client's per-call timeout). ``deadline_s=0`` turns retries off."""
    deadline_s: float = 15.0
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    retry_on: frozenset[str] = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"})
    retry_unloading: bool = True  # NOT_FOUND "has no available versions" of a model that answered before

    def retryable(self, error: InferenceServerException, answered_before: bool) -> bool:
        status = error.status()
        if status in self.retry_on:
            return True
        return (self.retry_unloading and answered_before and status == "StatusCode.NOT_FOUND"
                and "has no available versions" in (error.message() or ""))

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_backoff_s, self.initial_backoff_s * 2 ** attempt))


NO_RETRY = RetryPolicy(deadline_s=0.0)


@dataclasses.dataclass
class Hit:
    doc_id: int
    key: str
    score: float
    title: str
    snippet: str


@dataclasses.dataclass
class RetrieveResult:
    hits: list[list[Hit]]  # one list per query, best first
    index_version: str
    latency_ms: float


def text_input(texts: Sequence[str | bytes], name: str = "TEXT") -> grpcclient.InferInput:
    data = np.array([[t.encode("utf-8") if isinstance(t, str) else t] for t in texts], dtype=np.object_)
    tensor = grpcclient.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def k_input(k: int, rows: int, name: str = "K") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [rows, 1], "INT32")
    tensor.set_data_from_numpy(np.full((rows, 1), k, dtype=np.int32))
    return tensor


def request_inputs(model: str, texts: Sequence[str | bytes], k: int | None = None) -> list[grpcclient.InferInput]:
    """The inputs of one request to ``embed`` (texts) or ``retrieve`` (texts and k)."""
    if model == "retrieve":
        if k is None:
            raise ValueError("retrieve needs k")
        return [text_input(texts), k_input(k, len(texts))]
    return [text_input(texts)]


def _strings(array: np.ndarray) -> list:
    return [[v.decode("utf-8") for v in row] for row in array]


class RetrievalClient:
    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 30.0, tls_root_cert: str | None = None,
                 retry: RetryPolicy = RetryPolicy(), seed: int | None = None):
        """``tls_root_cert``: PEM file of the root that signed the server's certificate; gRPC then runs over TLS.
        ``timeout_s``: one attempt's limit; ``retry``: how idempotent calls retry UNAVAILABLE (see RetryPolicy)."""
        if tls_root_cert:
            self.client = grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(tls_root_cert))
        else:
            self.client = grpcclient.InferenceServerClient(url)
        self.timeout_s = timeout_s
        self.retry = retry
        self.retries = 0  # attempts repeated so far, over this client's life
        self._rng = random.Random(seed)
        self._answered: set[str] = set()  # models that have answered this client

    def _with_retries(self, call: Callable[[float], T], model: str = "") -> T:
        """``call(timeout_s)`` until it succeeds, raises a status that is not retried, or the deadline passes."""
        deadline = time.monotonic() + self.retry.deadline_s
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            try:
                result = call(min(self.timeout_s, left) if self.retry.deadline_s > 0 else self.timeout_s)
                self._answered.add(model)
                return result
            except InferenceServerException as e:
                wait = self.retry.backoff_s(attempt, self._rng)
                if not self.retry.retryable(e, model in self._answered) or time.monotonic() + wait >= deadline:
                    raise
            time.sleep(wait)
            attempt += 1
            self.retries += 1

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "RetrievalClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def infer(self, model: str, texts: Sequence[str | bytes], k: int | None = None) -> grpcclient.InferResult:
        """One request to the ``model`` ensemble; raises InferenceServerException with the server's status."""
        return self.client.infer(model, request_inputs(model, texts, k), client_timeout=self.timeout_s)

    def _infer(self, model: str, texts: Sequence[str | bytes], k: int | None = None) -> grpcclient.InferResult:
        inputs = request_inputs(model, texts, k)
        return self._with_retries(lambda timeout_s: self.client.infer(model, inputs, client_timeout=timeout_s), model)

    def embed(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """texts -> (B, D) float32 unit vectors from the `embed` ensemble."""
        return self._infer("embed", texts).as_numpy("EMBEDDING")

    def retrieve(self, texts: Sequence[str | bytes], k: int = 10) -> RetrieveResult:
        start = time.perf_counter()
        result = self._infer("retrieve", texts, k)
        latency_ms = (time.perf_counter() - start) * 1e3
        ids, scores = result.as_numpy("DOC_IDS"), result.as_numpy("SCORES")
        keys, titles, snippets = (_strings(result.as_numpy(n)) for n in ("DOC_KEYS", "TITLES", "SNIPPETS"))
        hits = [
            [Hit(int(ids[q, j]), keys[q][j], float(scores[q, j]), titles[q][j], snippets[q][j]) for j in range(ids.shape[1])]
            for q in range(ids.shape[0])
        ]
        return RetrieveResult(hits, result.as_numpy("INDEX_VERSION")[0, 0].decode(), latency_ms)

    def model_config(self, model: str) -> dict:
        """The served model's config (Triton's ModelConfig as JSON)."""
        return self._with_retries(lambda timeout_s: self.client.get_model_config(
            model, as_json=True, client_timeout=timeout_s))["config"]

    def ensemble_steps(self, model: str) -> list[str]:
        """The models an ensemble calls, in the order its config lists them (a sharded index has several)."""
        steps = self.model_config(model).get("ensemble_scheduling", {}).get("step", [])
        if not steps:
            raise ValueError(f"model {model!r} is not an ensemble on this server")
        return [step["model_name"] for step in steps]
