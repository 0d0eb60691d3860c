"""Turn a load test's histograms and metrics snapshots into JSON, a table and a PNG."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from benchmarks.load import procs, triton_metrics
from model_repository.runtime.provenance import git_commit, machine, pyplot, save_figure

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
COUNT_TOLERANCE = 0.005  # client and server counts further apart than this: the run is refused, nothing written
# a success is counted by Triton just after its answer leaves, and time-stamped by the client when its
# calling thread has it: calls answered this close to a scrape may be counted on either side of it
SKEW_S = 0.05
CONFIG_KEYS = ("grpc_url", "model", "queries", "batch_size", "k", "load_mode", "arrivals", "steps", "step_time", "warmup",
               "users_per_rps", "grpc_timeout", "bad_request_every")


def latency_ms(hist) -> dict:
    if hist is None or hist.get_total_count() == 0:
        return {}
    out = {name: hist.get_value_at_percentile(p) / 1e3 for name, p in PERCENTILES.items()}
    out["min"], out["max"], out["mean"] = hist.get_min_value() / 1e3, hist.get_max_value() / 1e3, hist.get_mean_value() / 1e3
    return out


def assemble(options, recorder, final_snapshot: dict, ensemble_steps: list[str], targets: list[float], users_for) -> dict:
    steps = []
    for i, target in enumerate(targets):
        # measured: boundaries follow the shape's 1 s tick, which runs late on a loaded machine
        started, ended = recorder.step_started.get(i), recorder.step_started.get(i + 1)
        duration = ended - started if started is not None and ended is not None else options.step_time
        hist = recorder.hist.get(i)
        ok = hist.get_total_count() if hist is not None else 0
        errors = dict(recorder.errors.get(i, {}))
        failed = sum(errors.values())
        before, after = recorder.snapshots.get(i, {}), recorder.snapshots.get(i + 1, final_snapshot)
        server, cpu = None, (recorder.cpu_stat.get(i), recorder.cpu_stat.get(i + 1))
        if before and after and "error" not in before and "error" not in after:
            server = triton_metrics.breakdown(before, after, options.model, ensemble_steps)
        steps.append({
            "index": i,
            "target": target,
            "target_unit": "users" if options.load_mode == "closed" else "requests/s",
            "users": users_for(options, target),
            "duration_s": duration,
            "issued": recorder.issued.get(i, ok + failed),
            "succeeded": ok,
            "failed": failed,
            "errors": errors,
            "offered_rps": recorder.issued.get(i, ok + failed) / duration,
            "achieved_rps": ok / duration,
            "error_rate": failed / (ok + failed) if ok + failed else 0.0,
            "latency_ms": latency_ms(hist),
            "failure_latency_ms": latency_ms(recorder.fail_hist.get(i)),
            "server": server,
            # the hypervisor's share of each core over the step: latency no setting of ours can remove
            "cpu_steal": procs.steal_fraction(*cpu) if all(cpu) else None,
        })
    first = recorder.snapshots.get(-1) or recorder.snapshots.get(0) or {}
    server_total = None
    if first and final_snapshot and "error" not in first:
        server_total = triton_metrics.breakdown(first, final_snapshot, options.model, ensemble_steps)["models"][options.model]["requests"]
    return {
        "run_total": {  # warm-up included: the whole run, immune to step-boundary skew between processes
            "issued": sum(recorder.issued.values()),
            "succeeded": sum(h.get_total_count() for h in recorder.hist.values()),
            "failed": sum(sum(c.values()) for c in recorder.errors.values()),
            "server_requests": server_total,
            "succeeded_by_worker": dict(recorder.succeeded_by_worker),  # multi-process runs: what each worker sent
        },
        "config": {k: getattr(options, k) for k in CONFIG_KEYS},
        "machine": machine(),
        "git_commit": git_commit(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "latency_source": "HDR histogram, microsecond precision, call time measured in the calling thread",
        "steps": steps,
    }


def count_check(client: int, server: int, slack: int = 0) -> dict:
    allowed = max(COUNT_TOLERANCE * max(client, server), slack)
    return {"client_succeeded": client, "server_succeeded": server, "difference": client - server,
            "allowed": allowed, "ok": abs(client - server) <= allowed}


def reconcile(recorder, final_snapshot: dict, final_scraped_at: tuple[float, float], model: str, n_steps: int) -> dict:
    """The client's successes against Triton's own ``nv_inference_request_success`` of ``model``.

    Per step, the client's successes are those *answered* between the scrapes that open and close
    it (at each scrape's midpoint). A call answered within ``SKEW_S`` of a scrape (the scrape's own
    duration included) may have been counted by Triton on either side of it, so a step may differ
    by the number of such calls at its two ends, and by no more (or by ``COUNT_TOLERANCE``). The
    whole run (warm-up included) must agree within ``COUNT_TOLERANCE``. ``status`` is ``ok``,
    ``mismatch`` (the caller refuses the run), or ``unverified`` when a scrape failed.
    """
    windows = [w for w in (-1, *range(n_steps)) if w in recorder.snapshots]
    snaps = [recorder.snapshots[w] for w in windows] + [final_snapshot]
    failed = [w for w, snap in zip([*windows, "final"], snaps) if not snap or "error" in snap]
    if not windows or failed:
        return {"status": "unverified", "reason": f"metrics scrape failed at window(s) {failed or 'all'}", "model": model}
    served = [snap.get(model, {}).get("requests", 0.0) for snap in snaps]
    answered = np.sort(np.asarray(recorder.ok_at, dtype=np.float64))
    scraped = np.asarray([recorder.scraped_at[w] for w in windows] + [final_scraped_at], dtype=np.float64)
    count_before = lambda t: int(np.searchsorted(answered, t))  # noqa: E731
    cuts = [count_before(scraped[i].mean()) for i in range(len(scraped))]
    near = [count_before(t1 + SKEW_S) - count_before(t0 - SKEW_S) for t0, t1 in scraped]
    steps = {}
    for i, w in enumerate(windows):
        steps[str(w)] = count_check(cuts[i + 1] - cuts[i], int(served[i + 1] - served[i]), near[i] + near[i + 1])
        steps[str(w)]["answered_near_its_scrapes"] = near[i] + near[i + 1]
    run = count_check(len(answered), int(served[-1] - served[0]))
    passed = run["ok"] and all(c["ok"] for c in steps.values())
    return {"status": "ok" if passed else "mismatch", "model": model, "tolerance": COUNT_TOLERANCE,
            "skew_s": SKEW_S, "run": run, "steps": steps}


def format_steps(result: dict) -> str:
    header = f"{'step':>4}{'target':>10}{'offered/s':>11}{'achieved/s':>11}{'errors':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
    rows = [header, "-" * len(header)]
    for s in result["steps"]:
        lat = s["latency_ms"] or {k: float("nan") for k in PERCENTILES}
        rows.append(f"{s['index']:>4}{s['target']:>10g}{s['offered_rps']:>11.1f}{s['achieved_rps']:>11.1f}{s['failed']:>8}"
                    f"{lat['p50']:>9.2f}{lat['p90']:>9.2f}{lat['p99']:>9.2f}{lat['p99.9']:>10.2f}")
    return "\n".join(rows)


def _axes(nrows: int = 1, figsize=(7, 4.5), **kwargs):
    return pyplot().subplots(nrows=nrows, figsize=figsize, **kwargs)


def _finish(fig, ax, path: Path, *, title: str, xlabel: str, ylabel: str, slo_p99_ms: float | None) -> Path:
    """SLO line, log latency axis, labels, legend; save as PNG."""
    plt = pyplot()
    if slo_p99_ms is not None:
        ax.axhline(slo_p99_ms, color="red", linestyle="--", label=f"SLO p99 {slo_p99_ms:g} ms")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot(result: dict, path: Path, slo_p99_ms: float | None = None) -> Path:
    """Latency percentiles against achieved QPS, one point per step."""
    fig, ax = _axes()
    steps = [s for s in result["steps"] if s["latency_ms"]]
    x = [s["achieved_rps"] for s in steps]
    for name in PERCENTILES:
        ax.plot(x, [s["latency_ms"][name] for s in steps], marker="o", label=name)
    cfg = result["config"]
    title = f"{cfg['model']} · {cfg['load_mode']} loop · batch {cfg['batch_size']} · {result['machine']['cpu_count']} CPUs"
    return _finish(fig, ax, path, title=title, xlabel="achieved requests/s", ylabel="latency, ms (log)", slo_p99_ms=slo_p99_ms)


def plot_compare(summary: dict, path: Path) -> Path:
    """p99 at the fixed open-loop rate: every round as a dot, the median as a bar, per system."""
    fig, ax = _axes()
    names = list(summary["systems"])
    for i, name in enumerate(names):
        p99 = summary["systems"][name]["fixed_rate_p99_ms"]
        if p99["median"] is not None:
            ax.bar(i, p99["median"], color=f"C{i}", alpha=0.5, label=f"{name}: median {p99['median']:.1f} ms")
        runs = [v for v in p99["runs"] if v is not None]
        ax.plot([i] * len(runs), runs, "o", color=f"C{i}")
    ax.set_xticks(range(len(names)), names)
    index = summary.get("index")
    rows = f" · {index['count']:,} documents" if index else ""
    title = f"{summary['model']}{rows}, all-MiniLM-L6-v2 on CPU · {summary['fixed_rps']:g} req/s open loop · {summary['repeats']} rounds"
    return _finish(fig, ax, path, title=title, xlabel="system (dots: rounds; bar: median)",
                   ylabel="p99 latency, ms (log)", slo_p99_ms=summary["slo_p99_ms"])


def plot_compare_load(summary: dict, path: Path) -> Path:
    """p99 against offered open-loop load, every system on the same axes: each round's capacity search
    as a line through its points in rate order (filled: held the SLO), the median capacity as a mark."""
    fig, ax = _axes()
    for i, (name, s) in enumerate(summary["systems"].items()):
        median = s["capacity_rps"]["median"]
        for j, x in enumerate(r for r in s["rounds"] if r.get("capacity")):
            points = sorted((p for p in x["capacity"]["points"] if p["p99_ms"] is not None), key=lambda p: p["rate_rps"])
            label = f"{name}: capacity {median:g} req/s (median)" if j == 0 and median else (name if j == 0 else None)
            ax.plot([p["rate_rps"] for p in points], [p["p99_ms"] for p in points], "-", color=f"C{i}", alpha=0.6, label=label)
            for p in points:
                ax.plot(p["rate_rps"], p["p99_ms"], "o", color=f"C{i}", fillstyle="full" if p["held"] else "none")
        if median:
            ax.axvline(median, color=f"C{i}", linestyle=":", alpha=0.8)
    index = summary.get("index")
    rows = f" · {index['count']:,} documents" if index else ""
    title = f"{summary['model']}{rows}, open loop · {summary['repeats']} rounds · filled: held (p99, errors, delivery); open: failed"
    return _finish(fig, ax, path, title=title, xlabel="offered requests/s (Poisson)", ylabel="p99 latency, ms (log)",
                   slo_p99_ms=summary["slo_p99_ms"])
