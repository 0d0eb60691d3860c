"""python -m benchmarks load|plan — load tests and capacity planning against a running server.

Talks to the server over gRPC (and its metrics endpoint) only; never imports server code.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks import report, triton_metrics
from benchmarks.common import check_loopback

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
GRACE_S = 60.0


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grpc-url", default="127.0.0.1:8001")
    p.add_argument("--metrics-url", default="")
    p.add_argument("--model", choices=["embed", "retrieve"], default="retrieve")
    p.add_argument("--queries", default="artifacts/corpus/python-docs/queries.jsonl")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--load-mode", choices=["closed", "open"], default="closed")
    p.add_argument("--steps", default="1,2,4", help="users (closed) or requests/s (open), comma-separated")
    p.add_argument("--step-time", type=float, default=10.0)
    p.add_argument("--users-per-rps", type=float, default=0.1)
    p.add_argument("--grpc-timeout", type=float, default=10.0)
    p.add_argument("--bad-request-every", type=int, default=0)
    p.add_argument("--processes", type=int, default=1, help="Locust worker processes (histograms are merged)")
    p.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/load.json"), help="results JSON; the PNG goes next to it")


def run_load(args: argparse.Namespace) -> dict:
    """Run Locust headless in a subprocess under a hard time limit; return the results JSON."""
    check_loopback(args.grpc_url)
    n_steps = len([s for s in args.steps.split(",") if s.strip()])
    run_time = n_steps * args.step_time
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--run-time", f"{int(run_time + 5)}s", "--stop-timeout", str(int(args.grpc_timeout + 2)),
        "--grpc-url", args.grpc_url, "--model", args.model, "--queries", args.queries,
        "--batch-size", str(args.batch_size), "--k", str(args.k), "--load-mode", args.load_mode,
        "--steps", args.steps, "--step-time", str(args.step_time), "--users-per-rps", str(args.users_per_rps),
        "--grpc-timeout", str(args.grpc_timeout), "--bad-request-every", str(args.bad_request_every),
        "--results-json", str(args.out),
    ]
    if args.metrics_url:
        cmd += ["--metrics-url", args.metrics_url]
    if args.processes > 1:
        cmd += ["--processes", str(args.processes)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    limit = run_time + args.grpc_timeout + GRACE_S
    print(f"locust: {n_steps} steps x {args.step_time:g} s ({args.load_mode} loop, {args.model}); hard limit {limit:.0f} s",
          file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise RuntimeError(f"locust did not stop within its hard limit of {limit:.0f} s and was killed") from None
    if code not in (0, 1) or not args.out.exists():  # 1: the run had failed requests; they are in the JSON
        raise RuntimeError(f"locust exited with code {code} and wrote no results to {args.out}")
    return json.loads(args.out.read_text(encoding="utf-8"))


def cmd_load(args: argparse.Namespace) -> int:
    result = run_load(args)
    png = report.plot(result, args.out.with_suffix(".png"))
    print(report.format_steps(result))
    for step in result["steps"]:
        if step["server"]:
            print(f"\nstep {step['index']} (target {step['target']:g} {step['target_unit']}): where the time goes")
            print(triton_metrics.format_table(step["server"]))
        if step["errors"]:
            print(f"step {step['index']} errors: {step['errors']}")
    print(f"\nresults: {args.out}\nplot:    {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    add_load_arguments(sub.add_parser("load", help="a stepped Locust load test over gRPC"))
    args = parser.parse_args(argv)
    try:
        return {"load": cmd_load}[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
