"""CPU pinning: which CPUs a process may run on, as a load test records and the launcher sets it."""
from __future__ import annotations

import os
from pathlib import Path


def parse_cpus(spec: str) -> tuple[int, ...] | None:
    """'0', '0,2' or '0-3' -> CPU numbers this process may use; '' -> None (no pinning)."""
    if not spec.strip():
        return None
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"--cpus must look like 0, 0,2 or 0-3; got {spec!r}") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise ValueError(f"--cpus {spec!r} asks for CPUs {sorted(cpus)}; this process may use {sorted(allowed)}")
    return tuple(sorted(cpus))


def cpus_allowed(pid: int) -> str:
    """The kernel's list of CPUs process ``pid`` may run on, e.g. '1' or '0-15'."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return "?"
