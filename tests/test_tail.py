"""The tail, explained and kept short: each call's latency split into parts from Triton's own trace,
and no request left waiting while its model's instance idles (Triton 2.51's batcher does that
whenever a model has a queue policy: benchmarks/results/tail-2026-11-23/)."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks import tail
from benchmarks.load.openloop import OK, Sample
from tests.conftest import ARTIFACTS, ROOT

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pins server and generator to different cores")


def tail_args(tmp_path, repository=ARTIFACTS / "model_repository", seconds=12.0) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tail.add_arguments(parser)
    return parser.parse_args(["--seconds", str(seconds), "--rate", "20", "--repository", str(repository),
                              "--queries", str(ARTIFACTS / "corpus" / "python-docs" / "queries.jsonl"),
                              "--out", str(tmp_path / "tail-embed.json")])


def test_no_request_waits_while_its_model_idles_and_every_ms_is_accounted_for(tmp_path):
    before = os.sched_getaffinity(0)
    result = tail.run(tail_args(tmp_path))
    assert os.sched_getaffinity(0) == before  # the generator's pinning ends with the run, not with pytest
    assert result["failed"] == 0 and result["all"]["calls"] >= 0.95 * result["sent"]  # nearly every call found its trace
    for model, q in result["queued_but_idle"].items():
        # With a queue policy this was 50-500 ms per stalled call, ~95 calls in 40 s (the committed run).
        assert q["idle_ms_max"] < 30.0, (model, q)
    o = result["all"]["overhead"]  # what is not compute sits between Triton's share and the client's, and is positive
    assert 0 < o["ensemble"]["p50_ms"] < o["end_to_end"]["p50_ms"] < result["all"]["latency_ms"]["p50"], o
    for call in result["slowest_calls"]:  # the parts add up to what the client measured
        assert sum(call["parts_ms"].values()) == pytest.approx(call["latency_ms"], abs=0.05), call
    assert (tmp_path / "tail-embed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["cpu"]["tritonserver"]["cpu_s"] > 0 and result["pinning"] == {"server_cpus": [0], "generator_cpus": [1]}


def _trace(i, model, parent, **ts):
    return i, {"model": model, "parent": parent, "ts": {k.upper(): v for k, v in ts.items()}}


def test_matching_and_the_split_of_one_call():
    """One call of 10 ms: 1 ms to reach Triton, 8 ms inside (a 3 ms queue, 4 ms compute, 1 ms hand-offs), 1 ms back."""
    ms = 1_000_000
    traces = dict([
        _trace(1, "embed", None, request_start=101 * ms, request_end=109 * ms),
        _trace(2, "query_encoder", 1, request_start=101 * ms, queue_start=101 * ms, compute_start=104 * ms,
               compute_end=108 * ms, request_end=108 * ms),
    ])
    sample = Sample(0.0, 0.0, 0.010, OK, sent_at=0.100)
    [(matched, parts)] = tail.match([sample], traces, "embed")
    assert matched is sample
    assert parts == pytest.approx({"client_to_server": 0.001, "query_encoder.queue": 0.003, "query_encoder.compute": 0.004,
                                   "query_encoder.other": 0.0, "ensemble_gaps": 0.001, "server_to_client": 0.001})
    # not compute: inside Triton the 3 ms queue + 1 ms hand-offs; client to client also the 2 ms of transport
    assert tail.overhead(parts, sample.latency_s) == pytest.approx({"steps_compute": 0.004, "ensemble": 0.004, "end_to_end": 0.006})
    d = tail.describe([(sample, parts)])
    assert d["overhead"]["ensemble"]["p50_ms"] == pytest.approx(4.0) and d["overhead"]["end_to_end"]["p99_ms"] == pytest.approx(6.0)
    busy = tail.busy_intervals(traces, "query_encoder")
    # A step that records COMPUTE_END after its answer moved on (at 108 ms the top-k has it, the encoder says
    # 110): its compute ends at the hand-off, the 2 ms after go to its "other" and are not counted twice.
    two = dict([_trace(1, "retrieve", None, request_start=101 * ms, request_end=112 * ms, infer_response_complete=111 * ms),
                _trace(2, "query_encoder", 1, request_start=101 * ms, queue_start=101 * ms, compute_start=102 * ms,
                       compute_end=110 * ms, request_end=110 * ms),
                _trace(3, "mips_topk", 1, request_start=108 * ms, queue_start=108 * ms, compute_start=108.5 * ms,
                       compute_end=111.5 * ms, request_end=111.5 * ms)])
    [(_, parts2)] = tail.match([Sample(0.0, 0.0, 0.012, OK, sent_at=0.100)], two, "retrieve")
    assert parts2["query_encoder.compute"] == pytest.approx(0.006) and parts2["query_encoder.other"] == pytest.approx(0.002)
    assert parts2["mips_topk.compute"] == pytest.approx(0.0025) and parts2["mips_topk.other"] == pytest.approx(0.0005)
    assert sum(parts2.values()) == pytest.approx(0.012)  # still adds up to the client's latency
    # not compute: 1 ms queued at the encoder, 0.5 ms at the top-k, 1 ms from the top-k's answer to the ensemble's end
    assert tail.overhead(parts2, 0.012)["ensemble"] == pytest.approx(0.0025)
    assert busy == [(0.104, 0.108)]
    assert tail.idle_while_queued((0.101, 0.104), busy) == pytest.approx(0.003)  # queued while nothing ran: a stall
    assert tail.idle_while_queued((0.105, 0.108), busy) == pytest.approx(0.0)  # queued behind work: a backlog


def _servers() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "tritonserver"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_a_sigterm_to_the_benchmark_stops_the_server_it_started(repository, tmp_path):
    """The server a benchmark starts runs in a session of its own; a SIGTERM to the benchmark (a CI
    timeout, `kill`, an orchestrator) used to end it without unwinding and leave tritonserver serving."""
    before = _servers()
    out = tmp_path / "tail-embed.json"
    cmd = [sys.executable, "-m", "benchmarks", "tail", "--seconds", "300", "--rate", "5", "--repository", str(repository),
           "--queries", str(ARTIFACTS / "corpus" / "python-docs" / "queries.jsonl"), "--out", str(out)]
    bench = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started: set[int] = set()
        for line in bench.stderr:  # the generator's progress lines come once the server is up
            started = _servers() - before
            if "sent" in line and started:
                break
        assert started, "the benchmark's server never came up"
        bench.send_signal(signal.SIGTERM)
        code = bench.wait(timeout=60)
        deadline = time.monotonic() + 10
        while started & _servers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not started & _servers(), "tritonserver outlived the benchmark that started it"
        assert code == 128 + signal.SIGTERM  # the shell's convention for "ended by SIGTERM"
    finally:
        if bench.poll() is None:
            bench.kill()
        for pid in started & _servers():
            os.kill(pid, signal.SIGKILL)
