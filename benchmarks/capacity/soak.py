"""python -m benchmarks soak: hold a running server at half its measured capacity, open loop, and watch it.

1. Capacity: a closed-loop Locust run (``--capacity-users`` users, no wait) gives the rate the server
   sustains; the soak offers ``--fraction`` of it (or ``--rate`` when given), Poisson arrivals.
2. The soak: one Locust open-loop run of ``--windows`` windows of ``--window-s`` each (a window is one
   Locust step, so each has its own p99 and failure count), after a discarded warm-up.
3. Meanwhile the RSS of tritonserver and of every python-backend stub is sampled from /proc.

Verdicts (each written with the numbers behind it): 0 failed requests (counted by gRPC status: an
admission refusal reads UNAVAILABLE); no answer slower than
``--max-latency-ms`` (200) in any window, the slowest sample itself, not a percentile; p99 of the last
window within ``--max-p99-drift`` of the first; RSS of every process within ``--max-rss-growth`` of its value at the
end of the first window (warm-up done: arenas, caches and the batcher's buffers have grown by then).
The results JSON holds RSS per window per process; the PNG plots p99 and RSS over time.

The 10-minute soak is a benchmark (docs/operations.md); tests/test_soak.py runs a 60-second one in CI.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from benchmarks.load.procs import rss_bytes, server_processes
from benchmarks.load.runner import run_load
from model_repository.runtime.provenance import save_figure


class RssSampler(threading.Thread):
    """Samples the RSS of ``processes`` every ``interval_s``: [(monotonic seconds, {name: bytes or None})]."""

    def __init__(self, processes: dict[str, int], interval_s: float = 1.0):
        super().__init__(name="rss-sampler", daemon=True)
        self.processes, self.interval_s = processes, interval_s
        self.samples: list[tuple[float, dict[str, int | None]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), {n: rss_bytes(p) for n, p in self.processes.items()}))
            if self._halt.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()


def per_window(samples, start: float, window_s: float, windows: int) -> list[dict[str, int | None]]:
    """The last RSS sample of each window, per process (a dead process reads None)."""
    out = []
    for w in range(windows):
        end = start + (w + 1) * window_s
        inside = [s for t, s in samples if t <= end]
        out.append(inside[-1] if inside else {})
    return out


def verdicts(windows: list[dict], rss: list[dict], max_rss_growth: float, max_p99_drift: float, max_latency_ms: float) -> dict:
    failed = sum(w["failed"] for w in windows)
    by_kind: dict[str, int] = {}
    for w in windows:
        for kind, n in (w.get("errors") or {}).items():
            by_kind[kind] = by_kind.get(kind, 0) + n
    slowest = [w["latency_ms"].get("max") for w in windows]
    p99 = [w["latency_ms"].get("p99") for w in windows]
    drift = (p99[-1] / p99[0] - 1.0) if p99 and p99[0] and p99[-1] else None
    growth = {}
    for name in rss[0] if rss else {}:
        first, last = rss[0].get(name), rss[-1].get(name)
        growth[name] = None if not first or not last else last / first - 1.0
    return {
        "failed_requests": failed,
        "failed_by_kind": by_kind,  # UNAVAILABLE: refused by admission (load shed at once), or the server gone
        "no_failures": failed == 0,
        "slowest_ms_per_window": slowest,
        "max_latency_ok": bool(slowest) and all(m is not None and m <= max_latency_ms for m in slowest),
        "p99_first_last_ms": [p99[0], p99[-1]] if p99 else None,
        "p99_drift": drift,
        "p99_drift_ok": drift is not None and drift <= max_p99_drift,
        "rss_growth_after_first_window": growth,
        "rss_ok": bool(growth) and all(g is not None and g <= max_rss_growth for g in growth.values()),
        "processes_alive_at_end": all(v is not None for v in (rss[-1].values() if rss else [None])),
    }


def plot(result: dict, path: Path) -> Path:
    from benchmarks.load.report import _axes  # matplotlib with the Agg backend

    fig, ax = _axes()
    ws = result["window_s"]
    xs = [(i + 1) * ws / 60 for i in range(len(result["windows"]))]
    ax.plot(xs, [w["latency_ms"].get("p99") for w in result["windows"]], "o-", label="p99 (ms)")
    ax.set_xlabel("minutes into the soak")
    ax.set_ylabel("p99 latency (ms)")
    ax2 = ax.twinx()
    for name in result["rss_per_window"][0]:
        ax2.plot(xs, [(r.get(name) or 0) / 2**20 for r in result["rss_per_window"]], "--", label=f"RSS {name}")
    ax2.set_ylabel("RSS (MiB)")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="upper left")
    ax.set_title(f"soak: {result['model']} at {result['rate_rps']:.1f} req/s ({result['fraction_of_capacity']:.0%} of capacity)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return path


def run(args: argparse.Namespace) -> dict:
    base = Path(args.out)
    capacity = None
    if args.rate:
        rate = args.rate
    else:
        probe = argparse.Namespace(**{**vars(args), "load_mode": "closed", "steps": str(args.capacity_users),
                                      "step_time": args.capacity_s, "warmup": 3.0, "out": base.with_name(base.stem + "-capacity.json")})
        capacity = run_load(probe)["steps"][0]["achieved_rps"]
        rate = args.fraction * capacity
        print(f"soak: capacity {capacity:.1f} req/s ({args.capacity_users} users, closed loop); offering {rate:.1f} req/s",
              flush=True)
    processes = server_processes(args.grpc_url)
    soak = argparse.Namespace(**{**vars(args), "load_mode": "open", "steps": ",".join([f"{rate:g}"] * args.windows),
                                 "step_time": args.window_s, "out": base.with_name(base.stem + "-locust.json")})
    sampler = RssSampler(processes)
    sampler.start()
    started = time.monotonic() + args.warmup  # Locust's first step begins after the warm-up
    try:
        locust = run_load(soak)
    finally:
        sampler.stop()
    rss = per_window(sampler.samples, started, args.window_s, args.windows)
    windows = [{k: s[k] for k in ("index", "duration_s", "issued", "succeeded", "failed", "errors", "offered_rps",
                                  "achieved_rps", "latency_ms")} for s in locust["steps"]]
    result = {
        "model": args.model, "rate_rps": rate, "capacity_rps": capacity,
        "fraction_of_capacity": rate / capacity if capacity else args.fraction,
        "window_s": args.window_s, "windows": windows, "processes": processes, "rss_per_window": rss,
        "rss_samples_every_s": sampler.interval_s,
        "limits": {"max_rss_growth": args.max_rss_growth, "max_p99_drift": args.max_p99_drift, "max_latency_ms": args.max_latency_ms},
        "verdict": verdicts(windows, rss, args.max_rss_growth, args.max_p99_drift, args.max_latency_ms),
        "run_total": locust["run_total"], "git_commit": locust["git_commit"], "machine": locust["machine"],
        "config": locust["config"],
    }
    result["verdict"]["passed"] = all(result["verdict"][k] for k in ("no_failures", "max_latency_ok", "p99_drift_ok", "rss_ok",
                                                                               "processes_alive_at_end"))
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(result, base.with_suffix(".png"))
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=0.0, help="requests/s to offer; 0: --fraction of the measured capacity")
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--capacity-users", type=int, default=8, help="closed-loop users of the capacity probe")
    p.add_argument("--capacity-s", type=float, default=20.0)
    p.add_argument("--windows", type=int, default=10, help="windows (Locust steps); each reports p99 and RSS")
    p.add_argument("--window-s", type=float, default=60.0)
    p.add_argument("--max-rss-growth", type=float, default=0.05)
    p.add_argument("--max-p99-drift", type=float, default=0.10)
    p.add_argument("--max-latency-ms", type=float, default=200.0, help="no answer in any window may take longer")
