"""python -m benchmarks overload: capacity first, then `factor` x capacity, truly open loop, over time.

1. Capacity: ``--capacity-users`` closed-loop callers for ``--capacity-s`` (after a discarded
   warm-up of the same length); or ``--capacity-rps`` when already measured.
2. Three phases, one open-loop run (``benchmarks/load/openloop.py``: arrivals never wait on answers):
   calm (``--calm-fraction`` x capacity), storm (``--factor`` x capacity), calm again.
3. Per ``--window-s`` window: offered and admitted rate, p50/p99 of the admitted and of the
   rejected, and how late the generator sent (its own health).

Verdicts, each with its numbers: the admitted keep p99 <= ``--admitted-slo-factor`` x the SLO
in every storm window; rejections carry UNAVAILABLE or RESOURCE_EXHAUSTED and nothing else
fails; rejection p99 against ``--max-rejection-p99-ms``; the server admits at least
``--min-goodput`` of its capacity during the storm; the calm after it meets the SLO again.
The server's queue policy per model and the CPU pinning of generator and server are recorded.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.load import openloop, triton_metrics
from benchmarks.common import check_loopback, read_queries, save_result
from benchmarks.load.procs import pinned, server_processes
from model_repository.runtime.cpus import cpus_allowed, parse_cpus
from model_repository.runtime.provenance import git_commit, machine, save_figure


def queue_policies(url: str, model: str) -> dict:
    """Each step's dynamic batching, queue policy and admission budget, as the server reports it."""
    from clients.retrieval import RetrievalClient  # here: `python -m benchmarks` must start without tritonclient (the GPU image)

    with RetrievalClient(url) as client:
        out = {}
        for step in client.ensemble_steps(model):
            config = client.model_config(step)
            out[step] = {"max_batch_size": config.get("max_batch_size"), "dynamic_batching": config.get("dynamic_batching"),
                         **{k: v["string_value"] for k, v in config.get("parameters", {}).items() if k.startswith("admission_")}}
        return out


class CountMismatch(RuntimeError):
    """The client's count of answered requests and the server's disagree: nothing is written from such a run."""


def reconcile(samples: list, before: dict, after: dict, model: str, unrecorded_ok: int, max_mismatch: float) -> dict:
    """Client-side successes against Triton's own success counter of the ensemble over the same run."""
    client_ok = sum(1 for s in samples if s.status == openloop.OK)
    server_ok = int(after.get(model, {}).get("requests", 0) - before.get(model, {}).get("requests", 0)) - unrecorded_ok
    mismatch = abs(server_ok - client_ok) / max(client_ok, 1)
    counts = {"client_ok": client_ok, "server_ok": server_ok, "mismatch": mismatch, "max_mismatch": max_mismatch}
    if mismatch > max_mismatch:
        raise CountMismatch(f"{model}: the client counted {client_ok} answers, Triton {server_ok} "
                            f"({mismatch:.2%} apart, limit {max_mismatch:.2%}); is another client using this server?")
    return counts


def verdicts(windows: list[dict], storm: list[dict], after: list[dict], storm_summary: dict, capacity: float,
             args: argparse.Namespace) -> dict:
    limit = args.admitted_slo_factor * args.slo_p99_ms
    worst = max((w["admitted_ms"]["p99"] or 0.0) for w in storm) if storm else None
    others = {k: n for k, n in storm_summary["by_status"].items() if k != openloop.OK and k not in openloop.REJECTED}
    rejection_p99 = storm_summary["rejected_ms"]["p99"]
    admitted_rps = sum(w["admitted"] for w in storm) / (len(storm) * args.window_s) if storm else 0.0
    recovered = after[-1]["admitted_ms"]["p99"] if after else None
    lag = max((w["send_lag_ms_p99"] or 0.0) for w in windows)
    v = {
        "admitted_p99_worst_window_ms": worst, "admitted_p99_limit_ms": limit,
        "admitted_p99_ok": worst is not None and worst <= limit,
        "rejection_p99_ms": rejection_p99, "rejection_p99_limit_ms": args.max_rejection_p99_ms,
        "rejection_fast": rejection_p99 is not None and rejection_p99 <= args.max_rejection_p99_ms,
        "other_errors": others, "only_clear_rejections": not others,
        "storm_admitted_rps": admitted_rps, "goodput_of_capacity": admitted_rps / capacity if capacity else None,
        "goodput_ok": bool(capacity) and admitted_rps >= args.min_goodput * capacity,
        "recovered_p99_ms": recovered, "recovered": recovered is not None and recovered <= args.slo_p99_ms,
        "generator_send_lag_p99_ms": lag, "generator_kept_up": lag <= 10.0,
    }
    v["passed"] = all(v[k] for k in ("admitted_p99_ok", "rejection_fast", "only_clear_rejections", "goodput_ok",
                                     "recovered", "generator_kept_up"))
    return v


def plot(result: dict, path: Path) -> Path:
    from benchmarks.load.report import _axes  # matplotlib with the Agg backend

    fig, ax = _axes()
    ws = result["windows"]
    xs = [w["start_s"] + result["window_s"] / 2 for w in ws]
    ax.plot(xs, [w["admitted_ms"]["p99"] for w in ws], "o-", label="admitted p99 (ms)")
    ax.plot(xs, [w["rejected_ms"]["p99"] for w in ws], "x--", label="rejected p99 (ms)")
    ax.axhline(result["slo_p99_ms"], color="grey", lw=0.8, ls=":", label="SLO")
    ax.axhline(result["verdict"]["admitted_p99_limit_ms"], color="red", lw=0.8, ls=":", label="admitted limit")
    ax.set_yscale("log")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("latency p99 per window (ms)")
    ax2 = ax.twinx()
    ax2.plot(xs, [w["offered_rps"] for w in ws], color="tab:green", lw=1, label="offered req/s")
    ax2.plot(xs, [w["admitted_rps"] for w in ws], color="tab:olive", lw=1, label="admitted req/s")
    ax2.set_ylabel("requests/s")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="upper left")
    ax.set_title(f"overload: {result['model']}, {result['factor']:g}x capacity ({result['capacity_rps']:.0f} req/s) "
                 f"in the middle phase")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return path


def plot_policies(results: dict[str, dict], path: Path) -> Path:
    """Admitted p99 and admitted rate per window over time, one line per queue policy (name -> result)."""
    from benchmarks.load.report import _axes

    fig, (ax, ax2) = _axes(nrows=2, sharex=True, figsize=(8, 7))
    for name, r in results.items():
        xs = [w["start_s"] + r["window_s"] / 2 for w in r["windows"]]
        ax.plot(xs, [w["admitted_ms"]["p99"] for w in r["windows"]], "o-", label=name)
        ax2.plot(xs, [w["admitted_rps"] / r["capacity_rps"] for w in r["windows"]], "o-", label=name)
    first = next(iter(results.values()))
    ax.axhline(first["verdict"]["admitted_p99_limit_ms"], color="red", lw=0.8, ls=":", label="2x SLO")
    ax.set_yscale("log")
    ax.set_ylabel("admitted p99 per window (ms)")
    ax.legend(fontsize=8)
    ax2.set_ylabel("admitted / capacity")
    ax2.set_xlabel(f"seconds into the run (storm: {first['phases'][1]['rps'] / first['capacity_rps']:g}x capacity "
                   f"from {first['phases'][0]['seconds']:g} s to {first['phases'][0]['seconds'] + first['phases'][1]['seconds']:g} s)")
    ax.set_title(f"overload, {first['model']}: queue policies side by side")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return path


def run(args: argparse.Namespace) -> dict:
    check_loopback(args.grpc_url)
    with pinned(parse_cpus(args.generator_cpus)):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    texts = read_queries(Path(args.queries))
    server_pid = server_processes(args.grpc_url)["tritonserver"]
    generator = openloop.Generator(args.grpc_url, args.model, texts, args.k, args.grpc_timeout)
    capacity = args.capacity_rps
    if not capacity:
        generator.closed_loop(args.capacity_users, args.capacity_s)  # warm-up, discarded
        capacity = generator.closed_loop(args.capacity_users, args.capacity_s)
        print(f"overload: capacity {capacity:.1f} req/s ({args.capacity_users} closed-loop callers)", flush=True)
    phases = [(args.calm_fraction * capacity, args.calm_s), (args.factor * capacity, args.storm_s),
              (args.calm_fraction * capacity, args.calm_s)]
    print(f"overload: {phases[0][0]:.0f} req/s for {args.calm_s:g} s, {phases[1][0]:.0f} for {args.storm_s:g} s, "
          f"{phases[2][0]:.0f} for {args.calm_s:g} s", flush=True)
    metrics_url = triton_metrics.url_for(args.grpc_url, args.metrics_url)
    before, warm = triton_metrics.scrape_settled(metrics_url, args.model), generator.unrecorded_ok
    samples = generator.open_loop(phases, seed=args.seed,
                                  progress=lambda t, n: print(f"  {t:5.0f} s: {n} requests sent", flush=True))
    counts = reconcile(samples, before, triton_metrics.scrape_settled(metrics_url, args.model), args.model,
                       generator.unrecorded_ok - warm, args.max_count_mismatch)
    windows = openloop.windows(samples, args.window_s)
    storm_start, storm_end = args.calm_s, args.calm_s + args.storm_s
    storm = [w for w in windows if storm_start <= w["start_s"] and w["start_s"] + args.window_s <= storm_end]
    after = [w for w in windows if w["start_s"] >= storm_end]
    storm_summary = openloop.summary([s for s in samples if storm_start <= s.scheduled_s < storm_end])
    result = {
        "model": args.model, "slo_p99_ms": args.slo_p99_ms, "factor": args.factor, "capacity_rps": capacity,
        "capacity_measured": not args.capacity_rps, "phases": [{"rps": r, "seconds": s} for r, s in phases],
        "window_s": args.window_s, "windows": windows, "storm": storm_summary, "counts": counts,
        "whole_run": openloop.summary(samples),
        "verdict": verdicts(windows, storm, after, storm_summary, capacity, args),
        "queue_policy": queue_policies(args.grpc_url, args.model),
        "pinning": {"generator_cpus": sorted(os.sched_getaffinity(0)), "server_cpus": cpus_allowed(server_pid)},
        "generator": "benchmarks/load/openloop.py: one asyncio loop, tritonclient.grpc.aio, Poisson arrivals",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
        "git_commit": git_commit(), "machine": machine(),
    }
    return save_result(result, args.out, plot)


def format_windows(result: dict) -> str:
    lines = ["   t s  offered  admitted  adm p50  adm p99  rej p99  lag p99 (ms; req/s)"]
    for w in result["windows"]:
        f = lambda v: f"{v:8.1f}" if v is not None else "       -"  # noqa: E731
        lines.append(f"{w['start_s']:6.0f} {w['offered_rps']:8.1f} {w['admitted_rps']:9.1f} {f(w['admitted_ms']['p50'])} "
                     f"{f(w['admitted_ms']['p99'])} {f(w['rejected_ms']['p99'])} {f(w['send_lag_ms_p99'])}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grpc-url", default="127.0.0.1:8001", help="our server (loopback only)")
    p.add_argument("--model", choices=("embed", "retrieve"), default="retrieve")
    p.add_argument("--queries", default="artifacts/corpus/python-docs/queries.jsonl")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--metrics-url", default="", help="Triton metrics (default: same host as --grpc-url, port 8002)")
    p.add_argument("--max-count-mismatch", type=float, default=0.005,
                   help="client and Triton success counts may differ by this fraction, else the run fails")
    p.add_argument("--grpc-timeout", type=float, default=10.0, help="deadline of one call, seconds")
    p.add_argument("--slo-p99-ms", type=float, required=True)
    p.add_argument("--factor", type=float, default=3.0, help="storm rate as a multiple of the capacity")
    p.add_argument("--capacity-rps", type=float, default=0.0, help="skip the capacity probe (0: measure it)")
    p.add_argument("--capacity-users", type=int, default=8)
    p.add_argument("--capacity-s", type=float, default=10.0)
    p.add_argument("--calm-fraction", type=float, default=0.5)
    p.add_argument("--calm-s", type=float, default=10.0)
    p.add_argument("--storm-s", type=float, default=30.0)
    p.add_argument("--window-s", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generator-cpus", default="", help="pin this generator, e.g. 0 (start the server with --cpus on others)")
    p.add_argument("--admitted-slo-factor", type=float, default=2.0)
    p.add_argument("--max-rejection-p99-ms", type=float, default=5.0)
    p.add_argument("--min-goodput", type=float, default=0.7, help="admitted rate in the storm, as a fraction of capacity")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/overload.json"))
