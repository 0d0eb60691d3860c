"""Small helpers shared by the load test, the planner and their reports."""
from __future__ import annotations

import ipaddress
import json
import socket
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


def read_queries(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"query file {path} does not exist; build the default corpus with `make` or pass --queries")
    queries = [json.loads(line)["query"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not queries:
        raise ValueError(f"query file {path} has no queries")
    return queries
