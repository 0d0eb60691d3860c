"""Capacity planner: the arithmetic, and one short end-to-end sweep against the real server."""
from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import main as bench_main
from benchmarks.capacity.planner import GIB, Sizes, memory_per_replica, plan, replicas_needed, search_capacity, sizes_from_server, sustained_step
from tests.conftest import ARTIFACTS


def step(index, offered, achieved, p99, error_rate=0.0):
    return {"index": index, "offered_rps": offered, "achieved_rps": achieved, "error_rate": error_rate, "latency_ms": {"p99": p99}}


SWEEP = [
    step(0, 10, 10, 12.0),
    step(1, 20, 20, 18.0),
    step(2, 40, 39.5, 30.0),
    step(3, 80, 79, 55.0),            # p99 over a 50 ms SLO
    step(4, 60, 60, 25.0, 0.002),     # too many errors
    step(5, 120, 90, 20.0),           # falling behind: 75% delivered
]


def test_open_loop_steps_are_judged_against_their_target_rate():
    steps = [{**step(0, 10.7, 10.0, 20.0), "target": 10, "target_unit": "requests/s"},
             {**step(1, 20, 18.0, 20.0), "target": 20, "target_unit": "requests/s"}]
    assert sustained_step(steps, slo_p99_ms=50)["index"] == 0  # 10.0 of a 10/s target; 18 of 20 is behind
    # a Poisson step that expected 2,000 arrivals may deliver 6.7% fewer by chance (3 sigma), not more
    poisson = lambda achieved: {**step(0, 20, achieved, 20.0), "target": 20, "target_unit": "requests/s", "duration_s": 100}  # noqa: E731
    assert sustained_step([poisson(18.7)], slo_p99_ms=50) is not None and sustained_step([poisson(18.6)], slo_p99_ms=50) is None


def test_sustained_step_is_the_fastest_that_meets_every_condition():
    assert sustained_step(SWEEP, slo_p99_ms=50)["index"] == 2
    assert sustained_step(SWEEP, slo_p99_ms=60)["index"] == 3
    assert sustained_step(SWEEP, slo_p99_ms=5) is None


class Queue:
    """A server whose open-loop p99 grows like an M/M/1 queue's with its load: p99 = base / (1 - rate / rps)
    (unbounded at or past ``rps``), delivering every request. Records the rates it was asked for."""

    def __init__(self, rps: float, base_ms: float = 10.0, error_rate: float = 0.0):
        self.rps, self.base_ms, self.error_rate, self.asked = rps, base_ms, error_rate, []

    def __call__(self, rate: float) -> dict:
        self.asked.append(rate)
        p99 = self.base_ms / (1 - rate / self.rps) if rate < self.rps else 1e9
        return {**step(len(self.asked), rate, rate, p99, self.error_rate), "target": rate, "target_unit": "requests/s",
                "issued": 2000, "failed": 0}


def test_capacity_search_climbs_then_bisects_to_the_edge():
    server = Queue(rps=100)  # p99 = 50 ms at 80 req/s: the edge
    found = search_capacity(server, slo_p99_ms=50, start_rps=20, factor=1.5, refine=2)
    assert server.asked[:5] == [20, 30, 45, 67.5, 101.25]  # up by 1.5 while it holds; 101.25 fails
    assert [p["held"] for p in found["points"]] == [True, True, True, True, False, False, True]
    assert found["capacity_rps"] <= 80 < found["lowest_failed_rps"]
    assert found["lowest_failed_rps"] / found["capacity_rps"] <= 1.5 ** (1 / 4) * 1.001  # two bisections: a quarter step
    assert found["capacity_achieved_rps"] == found["capacity_rps"] == max(p["rate_rps"] for p in found["points"] if p["held"])
    assert len(search_capacity(Queue(rps=100), 50, 20, 1.5, refine=0)["points"]) == 5


def test_capacity_search_steps_down_when_the_start_already_fails():
    server = Queue(rps=25)  # edge at 20 req/s
    found = search_capacity(server, slo_p99_ms=50, start_rps=40, factor=2, refine=3)
    assert server.asked[:3] == [40, 20, 10] and found["points"][1]["held"] is False  # 20 is exactly the edge: p99 50.0000...1
    assert found["capacity_rps"] <= 20 <= found["lowest_failed_rps"]
    assert found["lowest_failed_rps"] / found["capacity_rps"] <= 2 ** (1 / 8) * 1.001  # rates are rounded to 0.01
    nothing = search_capacity(Queue(rps=1), slo_p99_ms=50, start_rps=8, factor=2, min_rps=1)
    assert nothing["capacity_rps"] is None and [p["rate_rps"] for p in nothing["points"]] == [8, 4, 2, 1]


def test_capacity_search_fails_a_rate_with_errors_and_stops_at_the_ceiling():
    assert search_capacity(Queue(rps=1000, error_rate=0.01), 50, 20, refine=0)["capacity_rps"] is None  # 1% failed: never held
    capped = search_capacity(Queue(rps=10_000), 50, 20, factor=2, refine=2, max_rps=100)
    assert capped["capacity_rps"] == 80 and capped["lowest_failed_rps"] is None  # a lower bound: the ceiling was reached
    with pytest.raises(ValueError, match="factor > 1"):
        search_capacity(Queue(rps=100), 50, 20, factor=1.0)


@pytest.mark.parametrize("target,sustained,headroom,expected", [
    (100, 40, 0.0, 3), (120, 40, 0.0, 3), (121, 40, 0.0, 4), (100, 40, 0.3, 4), (10, 40, 0.3, 1), (1000, 39.5, 0.3, 33),
])
def test_replicas_needed(target, sustained, headroom, expected):
    assert replicas_needed(target, sustained, headroom) == expected


def test_replicas_needed_rejects_nonsense():
    with pytest.raises(ValueError, match="sustained QPS must be > 0; got 0"):
        replicas_needed(10, 0, 0.3)
    with pytest.raises(ValueError, match="headroom must be >= 0; got -0.1"):
        replicas_needed(10, 5, -0.1)


def test_memory_and_sharding():
    small = Sizes(encoder_bytes=100 * 2**20, index_rows=1_000_000, dim=768, index_dtype="float16")
    m = memory_per_replica(small, workspace_bytes=2 * GIB, device_bytes=80 * GIB)
    assert m["index_bytes"] == 1_000_000 * 768 * 2
    assert m["total_bytes"] == 100 * 2**20 + 1_000_000 * 768 * 2 + 2 * GIB
    assert m["index_fits_one_device"] and m["devices_for_index"] == 1
    huge = Sizes(encoder_bytes=GIB, index_rows=100_000_000, dim=768, index_dtype="float16")  # 143 GiB of index
    m = memory_per_replica(huge, workspace_bytes=2 * GIB, device_bytes=80 * GIB)
    assert not m["index_fits_one_device"] and m["devices_for_index"] == 2
    assert m["index_shard_bytes"] * 2 >= m["index_bytes"]
    with pytest.raises(ValueError, match="exceed the device memory"):
        memory_per_replica(small, workspace_bytes=80 * GIB, device_bytes=80 * GIB)


def test_plan_combines_throughput_and_memory():
    huge = Sizes(encoder_bytes=GIB, index_rows=100_000_000, dim=768, index_dtype="float16")
    result = plan(SWEEP, slo_p99_ms=50, target_qps=100, headroom=0.3, sizes=huge, workspace_bytes=2 * GIB, device_bytes=80 * GIB)
    assert result["sustained_qps"] == 39.5 and result["replicas"] == 4 and result["devices"] == 8
    none = plan(SWEEP, slo_p99_ms=1, target_qps=100, headroom=0.3, sizes=huge, workspace_bytes=2 * GIB, device_bytes=80 * GIB)
    assert none["replicas"] is None and none["sustained_qps"] == 0.0


def test_sizes_come_from_the_served_configs(server, render_info):
    sizes = sizes_from_server(server.grpc_url)
    assert sizes.index_rows == render_info.index["count"] and sizes.dim == render_info.query_tower["dim"]
    assert sizes.index_dtype == "float16"
    rows, dim = render_info.index["count"], render_info.query_tower["dim"]
    assert sizes.index_bytes == rows * dim * 4  # the served numpy search holds float32 copies
    assert sizes.encoder_bytes == (ARTIFACTS / "towers" / render_info.query_tower["fingerprint"] / "model.onnx").stat().st_size


def test_plan_end_to_end_on_a_short_sweep(server, tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = bench_main([
        "plan", "--grpc-url", server.grpc_url, "--metrics-url", server.metrics_url,
        "--queries", str(ARTIFACTS / "corpus" / "python-docs" / "queries.jsonl"),
        "--slo-p99-ms", "2000", "--target-qps", "100", "--steps", "5,10", "--step-time", "4", "--warmup", "1",
        "--arrivals", "uniform", "--out", str(out),
    ])
    assert code == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    p = result["plan"]
    assert p["sustained_step"] == 1 and p["sustained_qps"] == pytest.approx(10, rel=0.2)
    assert p["replicas"] == replicas_needed(100, p["sustained_qps"], 0.3)
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert f"**{p['replicas']} replica(s)**" in md and "The index fits on one device." in md
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_plan_searches_the_edge_itself_against_the_real_server(server, tmp_path):
    """``plan --search-from``: the planner picks the rates (here 5, then 10 = the ceiling), each run apart with
    at least --min-requests requests, and plans from the steps it measured."""
    out = tmp_path / "plan.json"
    code = bench_main([
        "plan", "--grpc-url", server.grpc_url, "--metrics-url", server.metrics_url,
        "--queries", str(ARTIFACTS / "corpus" / "python-docs" / "queries.jsonl"),
        "--slo-p99-ms", "2000", "--target-qps", "100", "--search-from", "5", "--search-factor", "2", "--search-max-rps", "10",
        "--min-requests", "20", "--step-time", "1", "--warmup", "1", "--arrivals", "uniform", "--out", str(out),
    ])
    assert code == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert [p["rate_rps"] for p in result["search"]["points"]] == [5, 10] and all(p["held"] for p in result["search"]["points"])
    assert [s["target"] for s in result["steps"]] == [5, 10] and all(s["issued"] >= 20 for s in result["steps"])
    assert all((tmp_path / p["file"]).exists() and p["reconciliation"] == "ok" for p in result["search"]["points"])
    assert result["plan"]["sustained_step"] == 1 and result["search"]["capacity_rps"] == 10
    assert "searched by the planner" in out.with_suffix(".md").read_text(encoding="utf-8")
