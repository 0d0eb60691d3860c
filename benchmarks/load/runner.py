"""The Locust runner: one headless Locust run in a subprocess under a hard time limit, with the
generator's and the server's processes recorded. Every load-driven benchmark calls ``run_load``."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks.common import check_loopback
from benchmarks.load import procs
from benchmarks.load.options import add_load_options, locust_arguments
from model_repository.runtime.cpus import parse_cpus

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
GRACE_S = 60.0


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    add_load_options(p)
    p.add_argument("--processes", type=int, default=1, help="Locust worker processes (histograms are merged)")
    p.add_argument("--generator-cpus", default="", help="cores the load generator may use, e.g. 1 or 2-3 (taskset's list form); "
                                                          "keep them apart from the server's. Recorded in the results")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/load.json"), help="results JSON; the PNG goes next to it")


def run_load(args: argparse.Namespace) -> dict:
    """Run Locust headless in a subprocess under a hard time limit; return the results JSON."""
    check_loopback(args.grpc_url)
    if args.target != "triton":
        check_loopback(args.http_url)
    n_steps = len([s for s in args.steps.split(",") if s.strip()])
    run_time = args.warmup + n_steps * args.step_time
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--run-time", f"{int(run_time + 5)}s", "--stop-timeout", str(int(args.grpc_timeout + 2)),
        *locust_arguments(args), "--results-json", str(args.out),
    ]
    if args.processes > 1:
        cmd += ["--processes", str(args.processes)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    limit = run_time + 2 * args.grpc_timeout + GRACE_S  # the end waits up to --stop-timeout for the workers' last calls
    print(f"locust: {n_steps} steps x {args.step_time:g} s ({args.load_mode} loop, {args.model}); hard limit {limit:.0f} s",
          file=sys.stderr, flush=True)
    generator_cpus = parse_cpus(getattr(args, "generator_cpus", ""))
    pin = (lambda: os.sched_setaffinity(0, generator_cpus)) if generator_cpus else None
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, preexec_fn=pin)
    generator = {"processes": args.processes, "cpus": procs.cpus(proc.pid), "pinned": bool(generator_cpus)}
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise RuntimeError(f"locust did not stop within its hard limit of {limit:.0f} s and was killed") from None
    finally:
        if proc.poll() is None:  # we were stopped (SIGTERM, Ctrl-C): the generator must not outlive the run
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if code == 3:
        raise RuntimeError("the run was refused and wrote no results: the client's counts and the server's disagree "
                           "(or a worker's last counts never came); the numbers are in the log above")
    if code not in (0, 1) or not args.out.exists():  # 1: the run had failed requests; they are in the JSON
        raise RuntimeError(f"locust exited with code {code} and wrote no results to {args.out}")
    result = json.loads(args.out.read_text(encoding="utf-8"))
    result["generator"] = generator
    result["server_processes"] = server_facts(args)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def server_facts(args: argparse.Namespace) -> dict:
    """Cores and threads of the processes that served the run, read from /proc while they still run."""
    pids = getattr(args, "server_pids", None)
    if pids is None and args.target == "triton":
        try:
            pids = procs.server_processes(args.grpc_url)
        except RuntimeError as e:  # e.g. a server on another user's namespace: say so rather than guess
            return {"error": str(e)}
    return procs.facts(pids or {})
