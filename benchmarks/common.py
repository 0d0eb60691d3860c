"""Small helpers shared by the load test, the planner and their reports."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def check_loopback(url: str) -> list[str]:
    """Load tests here target loopback only; refuse anything else with a clear message. -> the addresses."""
    host = url.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve the load-test target host {host!r}: {e}") from None
    outside = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    if outside:
        raise ValueError(f"load tests target loopback only (127.0.0.0/8 or ::1); {host!r} resolves to {sorted(outside)}")
    return sorted(addresses)


def error_kind(error: Exception) -> str:
    """How a failed call is counted: its gRPC status (tritonclient's exceptions) or its type name."""
    status = getattr(error, "status", None)
    return str((status() if callable(status) else None) or type(error).__name__)


def read_queries(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"query file {path} does not exist; build the default corpus with `make` or pass --queries")
    queries = [json.loads(line)["query"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not queries:
        raise ValueError(f"query file {path} has no queries")
    return queries


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} was not healthy within {timeout_s:.0f} s")


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGINT to a server started with ``start_new_session=True`` (tritonserver drains on it), SIGKILL if it lingers."""
    if proc.poll() is not None:  # already gone (e.g. it failed to start): its own error is the one to see
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def save_result(result: dict, out: Path, plot) -> dict:
    """``result`` as JSON at ``out`` and ``plot(result, png)`` beside it; -> ``result``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(result, out.with_suffix(".png"))
    return result
