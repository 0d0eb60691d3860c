"""python -m benchmarks tail: where the slowest requests spend their time, from the client and Triton's own trace.

1. Starts our server pinned to ``--server-cpus`` with every request traced (``serve --trace-file``:
   Triton's TIMESTAMPS level: gRPC read, request start, queue, compute, request end, gRPC send,
   for the ensemble and each composing model).
2. Offers ``--rate`` requests/s, truly open loop (``openloop.Generator``), for ``--seconds``, from
   this process pinned to ``--generator-cpus``, recording each call's send time, and every pause
   of this process's garbage collector.
3. Matches each call to its trace (both clocks are CLOCK_MONOTONIC) and splits its latency:
   ``client_to_server`` (send until Triton starts the request: client, HTTP/2, Triton's gRPC
   thread), each model's ``queue`` and ``compute``, ``ensemble_gaps`` (the ensemble's own
   hand-offs between steps) and ``server_to_client``.
4. Writes, for all calls and for the slowest 1%: each part's p50/p99/max and its share of
   the latency; the slowest calls one by one; a PNG of latency over time with the parts stacked.

The trace costs some latency itself, so the figures here explain the tail; they are not the headline.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.load import procs
from benchmarks.common import free_port, read_queries, stop_process_group, wait_healthy
from benchmarks.load.openloop import OK, Generator
from model_repository.runtime.cpus import parse_cpus
from model_repository.runtime.provenance import git_commit, machine, pyplot, save_figure

ROOT = Path(__file__).resolve().parent.parent


def load_traces(path: Path) -> dict[int, dict]:
    """id -> {model, parent, ts: {name: ns}}; Triton may write one trace in several pieces."""
    traces: dict[int, dict] = {}
    for entry in json.loads(path.read_text(encoding="utf-8")):
        t = traces.setdefault(entry["id"], {"model": None, "parent": None, "ts": {}})
        t["model"] = entry.get("model_name", t["model"])
        t["parent"] = entry.get("parent_id", t["parent"])
        for stamp in entry.get("timestamps", []):
            t["ts"].setdefault(stamp["name"], stamp["ns"])  # the first of a repeated name (retries never happen here)
    return traces


def server_parts(top: dict, children: list[dict]) -> dict[str, float]:
    """Seconds of each server-side part of one ensemble request (a chain of steps, as rendered by default).

    A step's ``compute`` ends when its output has moved on: at the next step's REQUEST_START, or for
    the last step at the ensemble's INFER_RESPONSE_COMPLETE. A python-backend step records
    COMPUTE_END only after its answer was handed over, and on a shared core that can come after
    the next step has computed (traced: the encoder's COMPUTE_END 2 ms into the top-k's compute);
    counted as compute, that tail was counted twice. It goes to the step's ``other``, with the
    rest of its span outside queue and compute, so ``ensemble_gaps`` goes negative by as much."""
    parts: dict[str, float] = {}
    spans = 0.0
    full = {"QUEUE_START", "COMPUTE_START", "COMPUTE_END", "REQUEST_START", "REQUEST_END"}
    chain = sorted((c for c in children if full <= set(c["ts"])), key=lambda c: c["ts"]["REQUEST_START"])
    for i, c in enumerate(chain):
        ts = c["ts"]
        handed_on = chain[i + 1]["ts"]["REQUEST_START"] if i + 1 < len(chain) else top["ts"].get("INFER_RESPONSE_COMPLETE", ts["COMPUTE_END"])
        end = min(ts["COMPUTE_END"], max(handed_on, ts["COMPUTE_START"]))
        parts[f"{c['model']}.queue"] = (ts["COMPUTE_START"] - ts["QUEUE_START"]) / 1e9
        parts[f"{c['model']}.compute"] = (end - ts["COMPUTE_START"]) / 1e9
        spans += (ts["REQUEST_END"] - ts["REQUEST_START"]) / 1e9
        parts[f"{c['model']}.other"] = (ts["REQUEST_END"] - ts["REQUEST_START"]) / 1e9 - parts[f"{c['model']}.queue"] \
            - parts[f"{c['model']}.compute"]
    total = (top["ts"]["REQUEST_END"] - top["ts"]["REQUEST_START"]) / 1e9
    parts["ensemble_gaps"] = total - spans
    return parts


def match(samples, traces: dict[int, dict], model: str, slack_s: float = 0.002) -> list[tuple]:
    """(sample, parts) for each successful call whose trace was found; calls and traces taken in time order."""
    children = defaultdict(list)
    for t in traces.values():
        if t["parent"]:
            children[t["parent"]].append(t)
    tops = sorted(((i, t) for i, t in traces.items() if t["model"] == model and not t["parent"]
                   and {"REQUEST_START", "REQUEST_END"} <= set(t["ts"])), key=lambda it: it[1]["ts"]["REQUEST_START"])
    out, j = [], 0
    for s in sorted((s for s in samples if s.status == OK), key=lambda s: s.sent_at):
        recv = s.sent_at + s.latency_s
        while j < len(tops) and tops[j][1]["ts"]["REQUEST_START"] / 1e9 < s.sent_at - slack_s:
            j += 1  # a trace that began before this call was sent belongs to no later call
        if j == len(tops):
            break
        top_id, top = tops[j]
        start, end = top["ts"]["REQUEST_START"] / 1e9, top["ts"]["REQUEST_END"] / 1e9
        if end > recv + slack_s:
            continue  # not this call's (it ended after the answer arrived): leave it for the next
        parts = {"client_to_server": start - s.sent_at, **server_parts(top, children[top_id]), "server_to_client": recv - end}
        out.append((s, parts))
        j += 1
    return out


def busy_intervals(traces: dict[int, dict], model: str) -> list[tuple[float, float]]:
    """The union of ``model``'s compute intervals (s): when its instance was executing something."""
    spans = sorted((t["ts"]["COMPUTE_START"] / 1e9, t["ts"]["COMPUTE_END"] / 1e9) for t in traces.values()
                   if t["model"] == model and {"COMPUTE_START", "COMPUTE_END"} <= set(t["ts"]))
    out: list[list[float]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def idle_while_queued(queue: tuple[float, float], busy: list[tuple[float, float]]) -> float:
    """Seconds of the queue interval during which the model executed nothing: a dispatch stall, not a backlog."""
    a, b = queue
    overlap = sum(max(0.0, min(b, e) - max(a, s)) for s, e in busy if e > a and s < b)
    return (b - a) - overlap


def overhead(parts: dict[str, float], latency_s: float) -> dict[str, float]:
    """Seconds of one call not spent computing: issue 14's "ensemble overhead".

    ``ensemble``: the ensemble's own span (Triton's REQUEST_START to REQUEST_END) minus the sum
    of its steps' compute, i.e. the steps' queue time plus every hand-off; ``end_to_end``: the
    client's latency minus the same compute, i.e. also the gRPC transport both ways."""
    compute = sum(v for k, v in parts.items() if k.endswith(".compute"))
    server = sum(v for k, v in parts.items() if k not in ("client_to_server", "server_to_client"))
    return {"steps_compute": compute, "ensemble": server - compute, "end_to_end": latency_s - compute}


def describe(matched: list[tuple], slowest_share: float = 0.01) -> dict:
    """Per part: p50/p99/max (ms) over all calls, and the mean share of latency over the slowest calls."""
    if not matched:
        return {"calls": 0}
    latency = np.array([s.latency_s for s, _ in matched])
    names = sorted({k for _, p in matched for k in p})
    cut = np.quantile(latency, 1 - slowest_share)
    slow = [(s, p) for s, p in matched if s.latency_s >= cut]
    table = {}
    for name in names:
        values = np.array([p.get(name, 0.0) for _, p in matched]) * 1e3
        slow_values = np.array([p.get(name, 0.0) for _, p in slow]) * 1e3
        table[name] = {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
                       "max_ms": float(values.max()), "slowest_mean_ms": float(slow_values.mean()),
                       "slowest_share": float(slow_values.sum() / (1e3 * sum(s.latency_s for s, _ in slow)))}
    spent = [overhead(p, s.latency_s) for s, p in matched]
    overheads = {name: {"p50_ms": float(np.percentile(v, 50) * 1e3), "p99_ms": float(np.percentile(v, 99) * 1e3)}
                 for name in spent[0] for v in [np.array([o[name] for o in spent])]}
    return {"calls": len(matched), "overhead": overheads, "latency_ms": {"p50": float(np.percentile(latency, 50) * 1e3),
                                                   "p99": float(np.percentile(latency, 99) * 1e3), "max": float(latency.max() * 1e3)},
            "slowest": {"threshold_ms": float(cut * 1e3), "calls": len(slow)}, "parts": table}


class GcPauses:
    """This process's garbage-collector pauses: (monotonic start s, seconds, generation)."""

    def __init__(self):
        self.pauses: list[tuple[float, float, int]] = []
        self._start = 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((self._start, time.perf_counter() - self._start, info["generation"]))


def plot(matched: list[tuple], path: Path, title: str) -> Path:
    plt = pyplot()
    t0 = min(s.sent_at for s, _ in matched)
    groups = {"client_to_server": [], "queue": [], "compute": [], "ensemble_gaps + other": [], "server_to_client": []}
    for _, p in matched:
        groups["client_to_server"].append(p["client_to_server"])
        groups["queue"].append(sum(v for k, v in p.items() if k.endswith(".queue")))
        groups["compute"].append(sum(v for k, v in p.items() if k.endswith(".compute")))
        groups["ensemble_gaps + other"].append(p["ensemble_gaps"] + sum(v for k, v in p.items() if k.endswith(".other")))
        groups["server_to_client"].append(p["server_to_client"])
    x = [s.sent_at - t0 for s, _ in matched]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bottom = np.zeros(len(x))
    for name, values in groups.items():
        v = np.array(values) * 1e3
        ax.bar(x, v, bottom=bottom, width=0.05, label=name)
        bottom += v
    ax.set_xlabel("seconds into the run (send time)")
    ax.set_ylabel("latency, ms")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> dict:
    server_cpus, generator_cpus = parse_cpus(args.server_cpus), parse_cpus(args.generator_cpus)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    trace = args.out.with_suffix(".trace.json").resolve()
    trace.unlink(missing_ok=True)
    grpc, http, metrics = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "model_repository", "serve", "--grpc-port", str(grpc), "--http-port", str(http),
           "--metrics-port", str(metrics), "--supervisor-metrics-port", "0", "--workdir", "artifacts/server-tail",
           "--trace-file", str(trace), "--repository", str(args.repository), *(["--cpus", args.server_cpus] if server_cpus else [])]
    log = open(args.out.with_suffix(".server.log"), "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pauses = GcPauses()
    try:
        wait_healthy(f"http://127.0.0.1:{http}/v2/health/ready", proc, args.start_timeout)
        with procs.pinned(generator_cpus):
            gen = Generator(f"127.0.0.1:{grpc}", args.model, read_queries(Path(args.queries)), timeout_s=args.timeout)
            gen.open_loop([(args.rate, min(5.0, args.seconds))], seed=args.seed + 1)  # warm-up, discarded
            processes = {**procs.server_processes(f"127.0.0.1:{grpc}"), "generator": os.getpid()}
            gc.callbacks.append(pauses)
            before, start = procs.usage(processes), time.monotonic()
            samples = gen.open_loop([(args.rate, args.seconds)], seed=args.seed,
                                    progress=lambda t, n: print(f"  {t:5.0f} s: {n} sent", file=sys.stderr, flush=True))
            cpu = procs.usage_delta(before, procs.usage(processes), time.monotonic() - start)
    finally:
        if pauses in gc.callbacks:
            gc.callbacks.remove(pauses)
        stop_process_group(proc)  # Triton writes the trace file on shutdown
        log.close()
    t_first = min(s.sent_at for s in samples)
    traces = load_traces(trace)
    matched = match(samples, traces, args.model)
    slowest = sorted(matched, key=lambda m: -m[0].latency_s)[:args.show]
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "git_commit": git_commit(), "machine": machine(),
        "pinning": {"server_cpus": list(server_cpus or []), "generator_cpus": list(generator_cpus or [])},
        "sent": len(samples), "failed": sum(s.status != OK for s in samples),
        "cpu": cpu,  # per process: CPU seconds, cores kept busy, context switches (involuntary: preempted)
        "generator_gc_pauses": {"count": len(pauses.pauses), "max_ms": max((p[1] for p in pauses.pauses), default=0.0) * 1e3,
                                "over_10ms": sum(p[1] > 0.01 for p in pauses.pauses)},
        "all": describe(matched),
        "slowest_calls": [{"at_s": s.sent_at - t_first, "latency_ms": s.latency_s * 1e3,
                           "parts_ms": {k: round(v * 1e3, 3) for k, v in sorted(p.items(), key=lambda kv: -kv[1])}}
                          for s, p in slowest],
        "queued_but_idle": queued_but_idle(traces, args.queue_floor_ms / 1e3),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(matched, args.out.with_suffix(".png"), f"{args.model} at {args.rate:g} req/s, open loop: where each call's time went")
    if not args.keep_trace:
        trace.unlink(missing_ok=True)  # large; the per-call parts above are what it was for
    return result


def queued_but_idle(traces: dict[int, dict], floor_s: float) -> dict:
    """Per composing model, over requests queued longer than ``floor_s``: the queue time, and how much of it the
    model's instance spent executing nothing (a dispatch stall) rather than others' work (a backlog)."""
    out = {}
    for model in sorted({t["model"] for t in traces.values() if t["parent"]}):
        busy = busy_intervals(traces, model)
        queued = [(t["ts"]["QUEUE_START"] / 1e9, t["ts"]["COMPUTE_START"] / 1e9) for t in traces.values()
                  if t["model"] == model and {"QUEUE_START", "COMPUTE_START"} <= set(t["ts"])]
        long = [q for q in queued if q[1] - q[0] > floor_s]
        idle = [idle_while_queued(q, busy) for q in long]
        out[model] = {"requests": len(queued), "queued_over_floor": len(long),
                      "queued_ms_total": sum(b - a for a, b in long) * 1e3, "idle_ms_total": sum(idle) * 1e3,
                      "idle_ms_max": max(idle, default=0.0) * 1e3}
    return out


def markdown(result: dict) -> str:
    d = result["all"]
    lines = [f"{result['sent']} calls ({result['failed']} failed), {d['calls']} matched to their trace; latency p50 "
             f"{d['latency_ms']['p50']:.2f} ms, p99 {d['latency_ms']['p99']:.2f} ms, max {d['latency_ms']['max']:.1f} ms; "
             f"slowest 1%: >= {d['slowest']['threshold_ms']:.1f} ms ({d['slowest']['calls']} calls)", "",
             "| part | p50 ms | p99 ms | max ms | mean in slowest 1%, ms | share of slowest 1% |", "|---|---|---|---|---|---|"]
    for name, p in sorted(d["parts"].items(), key=lambda kv: -kv[1]["slowest_share"]):
        lines.append(f"| {name} | {p['p50_ms']:.3f} | {p['p99_ms']:.3f} | {p['max_ms']:.2f} | {p['slowest_mean_ms']:.2f} | "
                     f"{p['slowest_share']:.1%} |")
    o = d["overhead"]
    lines += ["", f"per call, the steps' compute p50 {o['steps_compute']['p50_ms']:.3f} ms; what is not compute (ensemble "
              f"overhead): inside Triton p50 {o['ensemble']['p50_ms']:.3f} ms (p99 {o['ensemble']['p99_ms']:.3f}), "
              f"client to client p50 {o['end_to_end']['p50_ms']:.3f} ms (p99 {o['end_to_end']['p99_ms']:.3f})"]
    lines += ["", "| model | requests | queued > floor | queued ms, total | of which the instance idled, ms | longest idle wait, ms |",
              "|---|---|---|---|---|---|"]
    for model, q in result["queued_but_idle"].items():
        lines.append(f"| {model} | {q['requests']} | {q['queued_over_floor']} | {q['queued_ms_total']:.1f} | {q['idle_ms_total']:.1f} | "
                     f"{q['idle_ms_max']:.1f} |")
    lines += ["", "| process | CPU s | cores busy | voluntary switches | involuntary (preempted) |", "|---|---|---|---|---|"]
    for name, c in result["cpu"].items():
        lines.append(f"| {name} | {c['cpu_s']:.2f} | {c['cores_busy']:.3f} | {c['voluntary_switches']} | {c['involuntary_switches']} |")
    g = result["generator_gc_pauses"]
    lines += ["", f"generator GC pauses: {g['count']}, max {g['max_ms']:.2f} ms, {g['over_10ms']} over 10 ms"]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=("embed", "retrieve"), default="embed")
    p.add_argument("--rate", type=float, default=20.0, help="requests/s, Poisson arrivals")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--generator-cpus", default="1")
    p.add_argument("--queries", default="artifacts/corpus/python-docs/queries.jsonl")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=10, help="the slowest calls listed one by one")
    p.add_argument("--queue-floor-ms", type=float, default=5.0, help="queue waits longer than this are split into backlog and stall")
    p.add_argument("--keep-trace", action="store_true", help="keep Triton's raw trace next to the results")
    p.add_argument("--start-timeout", type=float, default=240.0)
    p.add_argument("--repository", type=Path, default=Path("artifacts/model_repository"), help="the rendered repository to serve")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/tail-embed.json"))
