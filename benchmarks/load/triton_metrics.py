"""Where the time goes: Triton's Prometheus counters, scraped before and after a load step.

Triton exports cumulative per-model counters (microseconds and counts). The difference
over a step divided by the requests of that step is the mean per request, per model:
queue time, and compute time split into input, infer and output. For an ensemble, the
overhead is its end-to-end request time minus the sum of its steps' compute (input, infer,
output): the steps' queue time and the hand-offs between them. (A step's request time is no
base for it: a python-backend step's request ends when its request is released, after the
ensemble has already moved on, so the steps' request times summed exceed the ensemble's:
-1.3 ms "overhead" for ``retrieve`` in ``results/compare-2026-11-24``.) These are means, and a
python step's compute here still includes the bookkeeping it does after its answer moved on,
so this overhead is a lower bound; the per-request figure, with each step's compute cut at
its hand-off, comes from Triton's trace (``python -m benchmarks tail``).
"""
from __future__ import annotations

import re
import time
import urllib.request
from collections import defaultdict

COUNTERS = {
    "nv_inference_request_success": "requests",
    "nv_inference_exec_count": "executions",
    "nv_inference_request_duration_us": "request_us",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_input_duration_us": "compute_input_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_compute_output_duration_us": "compute_output_us",
}
_LINE = re.compile(r'^(\w+)\{model="([^"]+)",version="[^"]*"\} ([0-9.eE+-]+)$')

Snapshot = dict[str, dict[str, float]]  # model -> counter -> value


def parse(text: str) -> Snapshot:
    out: Snapshot = defaultdict(dict)
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(1) in COUNTERS:
            out[m.group(2)][COUNTERS[m.group(1)]] = float(m.group(3))
    return dict(out)


def url_for(grpc_url: str, metrics_url: str = "") -> str:
    """``metrics_url``, or Triton's default metrics port on the host of ``grpc_url``."""
    return metrics_url or f"http://{grpc_url.rsplit(':', 1)[0]}:8002/metrics"


def scrape(url: str, timeout_s: float = 5.0) -> Snapshot:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return parse(response.read().decode())


def scrape_settled(url: str, model: str, interval_s: float = 0.1, timeout_s: float = 3.0) -> Snapshot:
    """A scrape once ``model``'s success count has stopped moving.

    Triton counts an ensemble's success just after its answer leaves, so a scrape taken the
    moment the client has every answer can miss the last one (seen: 194 counted of 195)."""
    snapshot = scrape(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        again = scrape(url)
        if again.get(model, {}).get("requests") == snapshot.get(model, {}).get("requests"):
            return again
        snapshot = again
    return snapshot


def breakdown(before: Snapshot, after: Snapshot, ensemble: str, steps: list[str]) -> dict:
    """Mean milliseconds per request of each model over the interval, plus ensemble overhead."""
    models = {}
    for model in [ensemble, *steps]:
        delta = {k: after.get(model, {}).get(k, 0.0) - before.get(model, {}).get(k, 0.0) for k in COUNTERS.values()}
        n = delta["requests"]
        per_ms = {key: (value / n / 1e3 if n else 0.0) for key, value in delta.items()}
        models[model] = {
            "requests": int(n),
            "executions": int(delta["executions"]),
            "mean_batch_requests": round(n / delta["executions"], 2) if delta["executions"] else 0.0,
            "request_ms": per_ms["request_us"],
            "queue_ms": per_ms["queue_us"],
            "compute_input_ms": per_ms["compute_input_us"],
            "compute_infer_ms": per_ms["compute_infer_us"],
            "compute_output_ms": per_ms["compute_output_us"],
        }
    compute = sum(models[s][k] for s in steps for k in ("compute_input_ms", "compute_infer_ms", "compute_output_ms"))
    return {"models": models, "steps_compute_ms": compute, "ensemble_overhead_ms": models[ensemble]["request_ms"] - compute}


def format_table(result: dict) -> str:
    header = f"{'model':<16}{'requests':>9}{'req/exec':>9}{'queue ms':>10}{'input ms':>10}{'infer ms':>10}{'output ms':>10}{'total ms':>10}"
    rows = [header, "-" * len(header)]
    for model, m in result["models"].items():
        rows.append(
            f"{model:<16}{m['requests']:>9}{m['mean_batch_requests']:>9.2f}{m['queue_ms']:>10.3f}{m['compute_input_ms']:>10.3f}"
            f"{m['compute_infer_ms']:>10.3f}{m['compute_output_ms']:>10.3f}{m['request_ms']:>10.3f}"
        )
    rows.append(f"ensemble overhead (end to end minus the steps' compute), mean: {result['ensemble_overhead_ms']:.3f} ms")
    return "\n".join(rows)
