"""Locust load test of the retrieval server over gRPC (tritonclient), bounded and microsecond-exact.

Run it through ``python -m benchmarks load`` (headless, hard time limit, JSON + PNG), or
directly for the web UI: ``locust -f benchmarks/locustfile.py --grpc-url 127.0.0.1:8001``.

Why it is bounded: gRPC's blocking calls do not cooperate with gevent, and
``grpc.experimental.gevent.init_gevent()`` hung here, ignoring ``-t``. Each call instead
runs in gevent's pool of *real* OS threads with a gRPC deadline; the greenlet waits
cooperatively, so Locust's hub keeps running, ``-t`` and the shape's end stop the test,
and a call that never returns costs at most ``--grpc-timeout``.

Why HDR: Locust rounds response times under 100 ms to whole milliseconds. Every call is
also recorded, in microseconds, into an HDR histogram per load step; workers send
theirs to the master, which merges them.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import time
from pathlib import Path

import gevent
import numpy as np
import tritonclient.grpc as grpcclient
from locust import LoadTestShape, User, events, task
from locust.runners import MasterRunner, WorkerRunner
from tritonclient.utils import InferenceServerException

from benchmarks import report, triton_metrics
from benchmarks.common import check_loopback, read_queries
from benchmarks.recorder import Recorder

ENSEMBLE_STEPS = {
    "embed": ["tokenizer", "query_encoder", "pool_normalize"],
    "retrieve": ["tokenizer", "query_encoder", "pool_normalize", "mips_topk"],
}


@events.init_command_line_parser.add_listener
def _arguments(parser):
    g = parser.add_argument_group("retrieval server")
    g.add_argument("--grpc-url", default="127.0.0.1:8001", help="gRPC address (loopback only)")
    g.add_argument("--target", choices=["triton", "infinity", "st"], default="triton",
                   help="triton: our server over gRPC; infinity (embed) / st (embed, retrieve with faiss): a peer over HTTP at --http-url")
    g.add_argument("--http-url", default="", help="peer base URL, e.g. http://127.0.0.1:7997 (loopback only)")
    g.add_argument("--peer-model", default="", help="model name the peer expects in its request (infinity)")
    g.add_argument("--metrics-url", default="", help="Triton metrics URL (default: same host, port 8002)")
    g.add_argument("--model", choices=sorted(ENSEMBLE_STEPS), default="retrieve", help="ensemble to load")
    g.add_argument("--queries", default="artifacts/corpus/python-docs/queries.jsonl", help="JSONL with a 'query' per line")
    g.add_argument("--batch-size", type=int, default=1, help="texts per request")
    g.add_argument("--k", type=int, default=10, help="documents per query (retrieve)")
    g.add_argument("--load-mode", choices=["closed", "open"], default="closed",
                   help="closed: steps are user counts, no wait; open: steps are target requests/s, Poisson arrivals")
    g.add_argument("--steps", default="1,2,4", help="comma-separated users (closed) or requests/s (open)")
    g.add_argument("--arrivals", choices=["poisson", "uniform"], default="poisson",
                   help="open loop: exponential gaps, or a fixed interval with a random phase per user")
    g.add_argument("--step-time", type=float, default=10.0, help="seconds per step")
    g.add_argument("--warmup", type=float, default=2.0, help="seconds at the first step's load before measuring (discarded)")
    g.add_argument("--users-per-rps", type=float, default=0.5, help="open loop: users per target request/s (at least 1); enough that one slow call does not hold back arrivals")
    g.add_argument("--grpc-timeout", type=float, default=10.0, help="deadline of one call, seconds")
    g.add_argument("--bad-request-every", type=int, default=0, help="send an empty text every N-th request (tests the failure path)")
    g.add_argument("--results-json", default="", help="write the results here (master or local runner)")


def steps_of(options) -> list[float]:
    try:
        steps = [float(s) for s in options.steps.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--steps must be comma-separated numbers; got {options.steps!r}") from None
    if not steps or min(steps) <= 0:
        raise ValueError(f"--steps must be positive; got {options.steps!r}")
    return steps


def users_for(options, target: float) -> int:
    return int(target) if options.load_mode == "closed" else max(1, math.ceil(target * options.users_per_rps))


recorder = Recorder()


@events.init.add_listener
def _init(environment, **_):
    options = environment.parsed_options
    if options is None:
        return
    check_loopback(options.grpc_url)
    if options.target != "triton":
        check_loopback(options.http_url)
        if options.target == "infinity" and options.model != "embed":
            raise ValueError(f"--target infinity serves embeddings only; --model must be embed, got {options.model}")
    steps_of(options)
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.register_message("sn_step", lambda msg, **__: setattr(recorder, "step", int(msg.data)))


@events.report_to_master.add_listener
def _send(client_id, data):
    data["sn_recorder"] = recorder.drain()


@events.worker_report.add_listener
def _receive(client_id, data):
    if "sn_recorder" in data:
        recorder.merge(data["sn_recorder"])


def metrics_url(options) -> str:
    return options.metrics_url or f"http://{options.grpc_url.rsplit(':', 1)[0]}:8002/metrics"


def start_step(environment, step: int) -> None:
    options = environment.parsed_options
    recorder.step = step
    recorder.step_started[step] = time.monotonic()
    try:
        recorder.snapshots[step] = triton_metrics.scrape(metrics_url(options))
    except OSError as e:
        recorder.snapshots[step] = {"error": str(e)}
    if isinstance(environment.runner, MasterRunner):
        environment.runner.send_message("sn_step", step)


class StepShape(LoadTestShape):
    """Holds each step's users (closed loop) or request rate (open loop) for --step-time seconds."""

    def tick(self):
        options = self.runner.environment.parsed_options
        steps = steps_of(options)
        measured = self.get_run_time() - options.warmup
        step = -1 if measured < 0 else int(measured // options.step_time)  # -1: warm-up, discarded
        if step >= len(steps):
            recorder.step_started.setdefault(len(steps), time.monotonic())  # end of the last step
            return None
        if step not in recorder.step_started:
            start_step(self.runner.environment, step)
        users = users_for(options, steps[max(step, 0)])
        return users, users


class RetrievalUser(User):
    """One gRPC client; each call runs in a real thread with a deadline."""

    def __init__(self, environment):
        super().__init__(environment)
        o = environment.parsed_options
        self.options = o
        self.client = grpcclient.InferenceServerClient(o.grpc_url)
        self.http = None
        if o.target != "triton":
            from geventhttpclient import HTTPClient, URL

            self.http = HTTPClient.from_url(URL(o.http_url), network_timeout=o.grpc_timeout, connection_timeout=o.grpc_timeout)
        queries = read_queries(Path(o.queries))
        start = random.randrange(len(queries))
        self.texts = itertools.cycle(queries[start:] + queries[:start])
        self.counter = 0
        self.next_at = time.monotonic()
        self.rng = random.Random()
        pool = gevent.get_hub().threadpool
        pool.maxsize = max(pool.maxsize, 1024)
        self.pool = pool

    def on_stop(self):
        self.client.close()
        if self.http is not None:
            self.http.close()

    def wait_time(self):
        o = self.options
        if o.load_mode == "closed":
            return 0
        target = steps_of(o)[min(max(recorder.step, 0), len(steps_of(o)) - 1)]
        per_user = target / users_for(o, target)
        if o.arrivals == "poisson":  # exponential gaps: users never fire in lock-step bursts
            self.next_at += self.rng.expovariate(per_user)
        else:  # fixed interval; each user starts at a random phase of it
            self.next_at += 1 / per_user if self.counter else self.rng.uniform(0, 1 / per_user)
        now = time.monotonic()
        if self.next_at < now:  # fell behind: the achieved rate will show it
            self.next_at = now
        return self.next_at - now

    def texts_for_request(self) -> list[str]:
        self.counter += 1
        texts = [next(self.texts) for _ in range(self.options.batch_size)]
        if self.options.bad_request_every and self.counter % self.options.bad_request_every == 0:
            texts[0] = ""
        return texts

    def inputs(self, texts: list[str]) -> list:
        data = np.array([[t.encode()] for t in texts], dtype=np.object_)
        inputs = [grpcclient.InferInput("TEXT", list(data.shape), "BYTES")]
        inputs[0].set_data_from_numpy(data)
        if self.options.model == "retrieve":
            k = grpcclient.InferInput("K", [len(texts), 1], "INT32")
            k.set_data_from_numpy(np.full((len(texts), 1), self.options.k, dtype=np.int32))
            inputs.append(k)
        return inputs

    def call(self, inputs):
        """Runs in a real OS thread: the blocking gRPC call and its exact duration."""
        start = time.perf_counter()
        try:
            self.client.infer(self.options.model, inputs, client_timeout=self.options.grpc_timeout)
            return time.perf_counter() - start, None
        except Exception as e:  # noqa: BLE001 - every failure is reported, with its type
            return time.perf_counter() - start, e

    def call_peer(self, texts: list[str]):
        """HTTP peers, in this greenlet (geventhttpclient is cooperative); timed the same way."""
        o = self.options
        if o.target == "infinity":
            path, body = "/embeddings", {"model": o.peer_model, "input": texts}
        else:
            path, body = ("/retrieve", {"texts": texts, "k": o.k}) if o.model == "retrieve" else ("/embed", {"texts": texts})
        start = time.perf_counter()
        try:
            response = self.http.post(path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            payload = response.read()
            if response.status_code != 200:
                return time.perf_counter() - start, RuntimeError(f"HTTP {response.status_code}: {payload[:200]!r}")
            return time.perf_counter() - start, None
        except Exception as e:  # noqa: BLE001
            return time.perf_counter() - start, e

    @task
    def infer(self):
        step = recorder.step
        recorder.issued[step] += 1
        texts = self.texts_for_request()
        try:
            if self.http is not None:
                elapsed, error = self.call_peer(texts)
            else:
                elapsed, error = self.pool.spawn(self.call, self.inputs(texts)).get(timeout=self.options.grpc_timeout + 5)
        except gevent.Timeout as e:
            elapsed, error = self.options.grpc_timeout + 5, e
        kind = None
        if isinstance(error, InferenceServerException):
            kind = error.status() or type(error).__name__
            error.args = (f"{kind}: {error.message()}",)  # the real exception, readable in Locust's error report
        elif error is not None:
            kind = type(error).__name__
        recorder.record(step, int(elapsed * 1e6), kind)
        events.request.fire(
            request_type="grpc", name=self.options.model, response_time=elapsed * 1e3,
            response_length=0, exception=error, context={"step": step},
        )


@events.quitting.add_listener
def _write_results(environment, **_):
    options = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) or not options or not options.results_json:
        return
    final = {}
    try:
        final = triton_metrics.scrape(metrics_url(options))
    except OSError:
        pass
    result = report.assemble(options, recorder, final, ENSEMBLE_STEPS[options.model], steps_of(options), users_for)
    path = Path(options.results_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
