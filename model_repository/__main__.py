"""python -m model_repository serve — run Triton Inference Server on the rendered repository.

Binds to 127.0.0.1 unless --host says otherwise; stops cleanly on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from .launcher import ADMIN_HEADER, LOOPBACK, ServerConfig, ServerStartError, TritonServer
from .runtime.cpus import parse_cpus


def trace_flags(path: Path) -> tuple[str, ...]:
    """Triton's own per-request timestamps (gRPC read, queue, compute, send) for every request, into ``path``."""
    return ("--trace-config", f"triton,file={path}", "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1",
            "--trace-config", "count=-1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_repository")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start tritonserver and block until interrupted")
    serve.add_argument("--repository", type=Path, default=Path("artifacts/model_repository"), help="rendered model repository")
    serve.add_argument("--workdir", type=Path, default=Path("artifacts/server"), help="backends copy and server logs")
    serve.add_argument("--host", default=LOOPBACK, help="address to bind gRPC, HTTP and metrics to (default: loopback only)")
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--supervisor-metrics-port", type=int, default=8003,
                       help="the stub supervisor's /metrics (instances per model, restarts); 0: none")
    serve.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for all models to load")
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument("--cpus", default="", help="pin the server and its backend stubs to these CPUs, e.g. 1 or 2-7 "
                                                 "(default: all); keeps a load generator on the others")
    serve.add_argument("--trace-file", type=Path, default=None,
                       help="trace every request (Triton's TIMESTAMPS level) into this JSON, written at shutdown; "
                            "costs latency: for `python -m benchmarks tail`, not for serving")
    serve.add_argument("--allow-public-bind", action="store_true", help="allow --host beyond loopback (needs --admin-key)")
    serve.add_argument("--tls-cert", type=Path, default=None, help="PEM server certificate: gRPC over TLS")
    serve.add_argument("--tls-key", type=Path, default=None, help="PEM server key for --tls-cert")
    serve.add_argument("--admin-key", default=os.environ.get("SN_ADMIN_KEY"),
                       help=f"model control (load, unload, repository index) needs header {ADMIN_HEADER}=<key> "
                            "(default: $SN_ADMIN_KEY); required off loopback")
    args = parser.parse_args(argv)

    try:
        cpus = parse_cpus(args.cpus)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    config = ServerConfig(
        model_repository=args.repository.resolve(), workdir=args.workdir.resolve(), host=args.host,
        grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
        ready_timeout_s=args.ready_timeout, log_verbose=args.log_verbose, allow_public_bind=args.allow_public_bind,
        tls_cert=args.tls_cert, tls_key=args.tls_key, admin_key=args.admin_key,
        supervisor_metrics_port=args.supervisor_metrics_port or None, cpus=cpus,
        extra_args=trace_flags(args.trace_file.resolve()) if args.trace_file else (),
    )
    server = TritonServer(config)
    print(f"starting tritonserver on {args.host} (log: {server.log_path}) ...", flush=True)
    try:
        server.start()
    except ServerStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"ready: gRPC {server.grpc_url}  HTTP {server.http_url}  metrics {server.metrics_url}\n"
        f"query it:  .venv/bin/python -m clients query \"how do I copy a file in python\" --url {server.grpc_url}\n"
        f"Ctrl-C stops the server.",
        flush=True,
    )
    while not stop.is_set() and server.process.poll() is None:
        stop.wait(1.0)
    code = server.process.poll()
    server.stop()
    if code is not None and not stop.is_set():
        print(f"error: tritonserver exited with code {code}; log {server.log_path}:\n{server.log_tail()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
