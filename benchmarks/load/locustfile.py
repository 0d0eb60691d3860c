"""Locust load test of the retrieval server over gRPC (tritonclient), bounded and microsecond-exact.

Run it through ``python -m benchmarks load`` (headless, hard time limit, JSON + PNG), or
directly for the web UI: ``locust -f benchmarks/load/locustfile.py --grpc-url 127.0.0.1:8001``.

Why it is bounded: gRPC's blocking calls do not cooperate with gevent, and
``grpc.experimental.gevent.init_gevent()`` hung here, ignoring ``-t``. Each call instead
runs in gevent's pool of *real* OS threads with a gRPC deadline; the greenlet waits
cooperatively, so Locust's hub keeps running, ``-t`` and the shape's end stop the test,
and a call that never returns costs at most ``--grpc-timeout``.

Why HDR: Locust rounds response times under 100 ms to whole milliseconds. Every call is
also recorded, in microseconds, into an HDR histogram per load step; workers send
theirs to the master, which merges them.

Why every call is counted: a worker's periodic report misses the calls answered after it,
and Locust's master stops listening 0.5 s after it tells the workers to quit. So at the end
the master first *stops* the workers; each sends its last counts once its users have
stopped (``sn_final``), and the master waits for all of them before it quits. Then the
client's successes are reconciled with Triton's own counters, per step and for the run;
a run that differs by more than 0.5% is refused and writes nothing (exit code 3). Per step,
each success is binned by when its calling thread had the answer against when each scrape
ran; only the calls answered that close to a scrape may fall on either side of it.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import random
import time
from pathlib import Path

import gevent
from gevent import GreenletExit
from locust import LoadTestShape, User, events, task
from locust.runners import MasterRunner, WorkerRunner
from tritonclient.utils import InferenceServerException

from benchmarks.load import procs, report, triton_metrics
from benchmarks.common import check_loopback, error_kind, read_queries
from benchmarks.load.options import add_load_options
from benchmarks.load.recorder import Recorder
from clients.retrieval import RetrievalClient


@events.init_command_line_parser.add_listener
def _arguments(parser):
    g = parser.add_argument_group("retrieval server")
    add_load_options(g)
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
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message("sn_final", _receive_final)
    if options.target == "triton" and not isinstance(environment.runner, WorkerRunner):  # the per-step breakdown follows the ensemble the server really runs
        with RetrievalClient(options.grpc_url, options.grpc_timeout) as client:
            recorder.ensemble_steps = client.ensemble_steps(options.model)


@events.report_to_master.add_listener
def _send(client_id, data):
    data["sn_recorder"] = recorder.drain()


@events.worker_report.add_listener
def _receive(client_id, data):
    if "sn_recorder" in data:
        recorder.merge(data["sn_recorder"], worker=client_id)


@events.test_stop.add_listener
def _send_final(environment, **_):
    """Worker: its users have stopped (in-flight calls answered or timed out); send what is left."""
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.send_message("sn_final", recorder.drain())


def _receive_final(environment, msg, **_):
    recorder.merge(msg.data, worker=msg.node_id)
    recorder.finals.add(msg.node_id)


def stop_workers_and_collect(runner) -> None:
    """Master: stop the workers while still listening, then wait for every worker's final counts."""
    expected = runner.environment.parsed_options.expect_workers
    runner.stop()  # sends "stop"; returns once every worker has reported that it stopped
    deadline = time.monotonic() + runner.environment.stop_timeout + 10
    while len(recorder.finals) < expected and time.monotonic() < deadline:
        gevent.sleep(0.1)
    recorder.missing_finals = max(0, expected - len(recorder.finals))


def metrics_url(options) -> str:
    return triton_metrics.url_for(options.grpc_url, options.metrics_url)


def start_step(environment, step: int) -> None:
    options = environment.parsed_options
    recorder.step = step
    recorder.step_started[step] = before = time.monotonic()
    recorder.cpu_stat[step] = procs.cpu_stat()
    try:
        recorder.snapshots[step] = triton_metrics.scrape(metrics_url(options))
    except OSError as e:
        recorder.snapshots[step] = {"error": str(e)}
    recorder.scraped_at[step] = (before, time.monotonic())
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
            if len(steps) not in recorder.step_started:  # end of the last step
                recorder.step_started[len(steps)] = time.monotonic()
                recorder.cpu_stat[len(steps)] = procs.cpu_stat()
            if isinstance(self.runner, MasterRunner):
                stop_workers_and_collect(self.runner)
            return None
        if step not in recorder.step_started:
            start_step(self.runner.environment, step)
        users = users_for(options, steps[max(step, 0)])
        return users, users, [USER_CLASSES[options.target]]


class MeasuredUser(User):
    """Arrivals (closed or open loop) and the accounting of every call; a subclass per system sends it.

    ``send`` returns ``(seconds, error or None, answered at)`` and never raises: each call is
    counted as issued before it is sent, and recorded (HDR, microseconds) with its error type and
    the ``time.monotonic()`` at which the calling thread had its answer.
    """

    abstract = True

    def __init__(self, environment):
        super().__init__(environment)
        self.options = environment.parsed_options
        queries = read_queries(Path(self.options.queries))
        start = random.randrange(len(queries))
        self.texts = itertools.cycle(queries[start:] + queries[:start])
        self.counter = 0
        self.next_at = time.monotonic()
        self.rng = random.Random()
        self.stopping = False  # Locust stopped this user while a call was on the wire (TritonUser.send)

    def on_start(self):
        """Open loop: the first call waits its own first gap too. Locust runs a user's task before its
        first wait, so every user spawned at a step would otherwise fire at once: a burst of --users-per-rps
        x rate calls (29 at once in a 56 req/s soak, 21 of them refused by an 8-row admission) and, with
        --arrivals uniform, every later call in lock-step with it."""
        if self.options.load_mode != "closed":
            gevent.sleep(self._next_gap(first=True))

    def _next_gap(self, first: bool = False) -> float:
        """Seconds until this user's next arrival (0: now; it fell behind, and the achieved rate will show it)."""
        o = self.options
        target = steps_of(o)[min(max(recorder.step, 0), len(steps_of(o)) - 1)]
        per_user = target / users_for(o, target)
        now = time.monotonic()
        if o.arrivals == "poisson":  # exponential gaps: users never fire in lock-step bursts
            self.next_at = max(now, self.next_at + self.rng.expovariate(per_user))
        else:  # fixed interval; each user starts at a random phase of it and keeps that phase
            interval = 1 / per_user
            self.next_at += self.rng.uniform(0, interval) if first else interval
            if self.next_at < now:  # skip the slots it missed: resetting them to now would line users up
                self.next_at += math.ceil((now - self.next_at) / interval) * interval
        return max(0.0, self.next_at - now)

    def wait_time(self):
        return 0 if self.options.load_mode == "closed" else self._next_gap()

    def texts_for_request(self) -> list[str]:
        self.counter += 1
        texts = [next(self.texts) for _ in range(self.options.batch_size)]
        if self.options.bad_request_every and self.counter % self.options.bad_request_every == 0:
            texts[0] = ""
        return texts

    def send(self, texts: list[str]) -> tuple[float, Exception | None, float]:
        raise NotImplementedError

    @task
    def infer(self):
        step = recorder.step
        recorder.issued[step] += 1
        elapsed, error, answered_at = self.send(self.texts_for_request())
        kind = None if error is None else error_kind(error)
        if isinstance(error, InferenceServerException):
            error.args = (f"{kind}: {error.message()}",)  # the real exception, readable in Locust's error report
        recorder.record(step, int(elapsed * 1e6), kind, answered_at)
        events.request.fire(
            request_type=self.request_type, name=self.options.model, response_time=elapsed * 1e3,
            response_length=0, exception=error, context={"step": step},
        )
        if self.stopping:
            raise GreenletExit  # the stop that arrived while this call was on the wire


class TritonUser(MeasuredUser):
    """Our server, through ``clients.RetrievalClient``; each call runs in a real OS thread with a deadline."""

    request_type = "grpc"

    def __init__(self, environment):
        super().__init__(environment)
        self.client = RetrievalClient(self.options.grpc_url, self.options.grpc_timeout)
        pool = gevent.get_hub().threadpool
        pool.maxsize = max(pool.maxsize, 1024)
        self.pool = pool

    def on_stop(self):
        self.client.close()

    def _call(self, texts: list[str]):
        """Runs in a real OS thread: the blocking gRPC call, its exact duration, when it was answered."""
        start = time.perf_counter()
        try:
            self.client.infer(self.options.model, texts, self.options.k)  # embed takes no k; request_inputs drops it
            error = None
        except Exception as e:  # noqa: BLE001 - every failure is reported, with its type
            error = e
        return time.perf_counter() - start, error, time.monotonic()

    def send(self, texts):
        call = self.pool.spawn(self._call, texts)
        try:
            return call.get(timeout=self.options.grpc_timeout + 5)
        except gevent.Timeout as e:
            return self.options.grpc_timeout + 5, e, time.monotonic()
        except GreenletExit:
            # Locust kills a user it saw waiting; one that woke meanwhile has a call on the wire, which
            # the server answers and counts. Wait for it (bounded by the gRPC deadline), count it, then stop.
            self.stopping = True
            return call.get(timeout=self.options.grpc_timeout + 5)


class HttpPeerUser(MeasuredUser):
    """A peer over HTTP/JSON, in this greenlet (geventhttpclient is cooperative), timed the same way."""

    abstract = True
    request_type = "http"

    def __init__(self, environment):
        super().__init__(environment)
        from geventhttpclient import URL, HTTPClient

        o = self.options
        self.http = HTTPClient.from_url(URL(o.http_url), network_timeout=o.grpc_timeout, connection_timeout=o.grpc_timeout)

    def on_stop(self):
        self.http.close()

    def request(self, texts: list[str]) -> tuple[str, dict]:
        """(path, JSON body) of one request."""
        raise NotImplementedError

    def send(self, texts):
        path, body = self.request(texts)
        start = time.perf_counter()
        try:
            response = self.http.post(path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            payload = response.read()
            error = None if response.status_code == 200 else RuntimeError(f"HTTP {response.status_code}: {payload[:200]!r}")
        except Exception as e:  # noqa: BLE001
            error = e
        return time.perf_counter() - start, error, time.monotonic()


class InfinityUser(HttpPeerUser):
    """Infinity's OpenAI-style ``/embeddings`` (embed only)."""

    def request(self, texts):
        return "/embeddings", {"model": self.options.peer_model, "input": texts}


class ShimUser(HttpPeerUser):
    """The thin HTTP shim (``benchmarks/peers/st_server.py``): ``/embed``, and ``/retrieve`` with faiss-cpu."""

    def request(self, texts):
        if self.options.model == "retrieve":
            return "/retrieve", {"texts": texts, "k": self.options.k}
        return "/embed", {"texts": texts}


USER_CLASSES = {"triton": TritonUser, "infinity": InfinityUser, "st": ShimUser}


@events.quitting.add_listener
def _write_results(environment, **_):
    options = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) or not options or not options.results_json:
        return
    final, before = {}, time.monotonic()
    try:
        final = triton_metrics.scrape_settled(metrics_url(options), options.model)
    except OSError:
        pass
    final_scraped_at = (before, time.monotonic())
    result = report.assemble(options, recorder, final, recorder.ensemble_steps, steps_of(options), users_for)
    refused = []
    if recorder.missing_finals:
        refused.append(f"{recorder.missing_finals} worker(s) never sent their final counts")
    if options.target == "triton":
        result["reconciliation"] = check = report.reconcile(recorder, final, final_scraped_at, options.model, len(steps_of(options)))
        if check["status"] == "mismatch":
            refused.append(f"client and Triton counts of {options.model!r} differ beyond "
                           f"{report.COUNT_TOLERANCE:.1%}: {json.dumps({k: check[k] for k in ('run', 'steps')})}")
    else:
        result["reconciliation"] = {"status": "not applicable", "reason": "a peer exports no Triton counters"}
    if refused:
        logging.error("run refused, no results written: %s", "; ".join(refused))
        environment.process_exit_code = 3
        return
    path = Path(options.results_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
