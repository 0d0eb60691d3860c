"""The processes behind a served endpoint, read from /proc: which they are, their cores, threads and RSS.

Results record these next to their latencies, so a reader sees how the server and the load
generator shared the machine (the pinning) and how many threads each peer ran.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import urlsplit

STUB = "triton_python_backend_stub"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces): field 3 (state) first."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def _status_value(path: Path, key: str) -> int | None:
    """The first number of line ``key:`` in a /proc status file."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _ppid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def server_processes(grpc_url: str) -> dict[str, int]:
    """name -> pid: the tritonserver serving ``grpc_url`` (found by its --grpc-port) and its stubs, by model."""
    port = urlsplit(f"//{grpc_url}").port
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    servers = [pid for pid in pids if (args := _cmdline(pid)) and Path(args[0]).name == "tritonserver"
               and f"--grpc-port={port}" in args]
    if len(servers) != 1:
        raise RuntimeError(f"expected one tritonserver with --grpc-port={port} on this machine; found {servers}")
    out = {"tritonserver": servers[0]}
    for pid in pids:
        args = _cmdline(pid)
        if len(args) > 8 and Path(args[0]).name == STUB and _ppid(pid) == servers[0]:
            out[f"stub:{args[8]}"] = pid  # the instance name, e.g. mips_topk_0_0
    return out


def rss_bytes(pid: int) -> int | None:
    kib = _status_value(Path(f"/proc/{pid}/status"), "VmRSS")
    return None if kib is None else kib * 1024


def threads(pid: int) -> int | None:
    return _status_value(Path(f"/proc/{pid}/status"), "Threads")


def cpus(pid: int = 0) -> list[int] | None:
    """The cores ``pid`` may run on (its affinity); 0: this process."""
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None


@contextlib.contextmanager
def pinned(cores):
    """This process on ``cores`` (None or empty: unchanged) while inside, its own affinity restored after,
    so a benchmark run in-process (as the tests do) does not leave its caller pinned."""
    before = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def facts(processes: dict[str, int]) -> dict[str, dict]:
    """name -> {pid, cpus, threads} of each running process: the pinning and thread counts a result records."""
    return {name: {"pid": pid, "cpus": cpus(pid), "threads": threads(pid)} for name, pid in processes.items()}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used, all its threads included."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def context_switches(pid: int) -> dict[str, int]:
    """Voluntary and involuntary (preempted) context switches, summed over ``pid``'s threads."""
    out = {"voluntary": 0, "involuntary": 0}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for name, key in (("voluntary", "voluntary_ctxt_switches"), ("involuntary", "nonvoluntary_ctxt_switches")):
            out[name] += _status_value(task / "status", key) or 0
    return out


def usage(processes: dict[str, int]) -> dict[str, dict]:
    """name -> CPU seconds and context switches so far; the difference of two calls is a run's share."""
    return {name: {"cpu_s": cpu_seconds(pid), **context_switches(pid)} for name, pid in processes.items()}


def usage_delta(before: dict[str, dict], after: dict[str, dict], seconds: float) -> dict[str, dict]:
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        cpu = (a["cpu_s"] or 0.0) - (b.get("cpu_s") or 0.0)
        out[name] = {"cpu_s": cpu, "cores_busy": cpu / seconds if seconds else None,
                     "voluntary_switches": a["voluntary"] - b.get("voluntary", 0),
                     "involuntary_switches": a["involuntary"] - b.get("involuntary", 0)}
    return out


def cpu_stat(path: Path = Path("/proc/stat")) -> dict[int, tuple[int, int]]:
    """core -> (all jiffies, stolen jiffies) since boot, from the ``cpuN`` lines of /proc/stat. Steal is
    time the hypervisor ran something else while this virtual core wanted to run: it inflates every
    latency measured here, and no setting of ours can remove it."""
    out = {}
    for line in path.read_text(encoding="ascii").splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal (guest is inside user)
            out[int(name[3:])] = (sum(ticks), ticks[7] if len(ticks) > 7 else 0)
    return out


def steal_fraction(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[str, float | None]:
    """core -> the share of its time stolen between two ``cpu_stat`` readings (None: no time passed)."""
    out = {}
    for core, (total, steal) in sorted(after.items()):
        t0, s0 = before.get(core, (total, steal))
        out[str(core)] = (steal - s0) / (total - t0) if total > t0 else None
    return out
