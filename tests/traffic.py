"""Steady client traffic for fault tests: every call's start, end, answer and error, and what they add up to.

``Traffic`` runs N threads, each with its own ``RetrievalClient``, calling ``call(client, i)`` in a
loop until stopped. ``summary`` counts failures and measures the recovery after a fault; the fault
tests write it to ``artifacts/faults/<name>.json`` (``write_result``).
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from clients.retrieval import NO_RETRY, RetrievalClient, RetryPolicy
from tests.conftest import ARTIFACTS

RESULTS = ARTIFACTS / "faults"


@dataclasses.dataclass(frozen=True)
class Call:
    start: float  # time.monotonic()
    end: float
    value: Any = None
    error: str | None = None

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1e3


class Traffic:
    def __init__(self, url: str, call: Callable[[RetrievalClient, int], Any], clients: int = 8,
                 retry: RetryPolicy = NO_RETRY, timeout_s: float = 30.0):
        self.url, self.call, self.clients, self.retry, self.timeout_s = url, call, clients, retry, timeout_s
        self.calls: list[Call] = []
        self.retries = 0  # attempts the clients repeated (RetryPolicy)
        self._halt = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]
        self.pauses: list[tuple[float, float]] = []  # (start, seconds) this process was not scheduled (> 0.25 s)
        self._threads.append(threading.Thread(target=self._watch, daemon=True))
        self.wall_at_start = time.time() - time.monotonic()  # monotonic -> wall clock, for the server's log

    def _watch(self, period_s: float = 0.01, report_s: float = 0.25) -> None:
        """A canary: a sleep that overshoots by seconds means this process (or the machine) stalled, not the server."""
        while not self._halt.is_set():
            start = time.monotonic()
            time.sleep(period_s)
            late = time.monotonic() - start - period_s
            if late > report_s:
                self.pauses.append((start, round(late, 3)))

    def _run(self, n: int) -> None:
        with RetrievalClient(self.url, timeout_s=self.timeout_s, retry=self.retry, seed=n) as client:
            i = n
            while not self._halt.is_set():
                start = time.monotonic()
                try:
                    value = self.call(client, i)
                    self.calls.append(Call(start, time.monotonic(), value))
                except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                    self.calls.append(Call(start, time.monotonic(), error=f"{type(e).__name__}: {e}"[:300]))
                i += self.clients
            self.retries += client.retries

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 30)

    def back_at(self, fault_at: float) -> float | None:
        """Unrounded: the start of the first call (of those ending after ``fault_at``) from which on every call
        succeeded; ``fault_at`` itself if none failed, None if the run never got there. ``summary``'s
        ``recovery_s`` is this, less ``fault_at``, rounded to the millisecond: compare calls with this."""
        after = sorted((c for c in self.calls if c.end >= fault_at), key=lambda c: c.start)
        last_bad = max((i for i, c in enumerate(after) if c.error), default=None)
        if last_bad is None:
            return fault_at
        return after[last_bad + 1].start if last_bad + 1 < len(after) else None

    def slow(self, threshold_ms: float, since: float, until: float, answer: Callable[[Any], Any] = str) -> list[dict]:
        """The calls that started in [since, until] and took over ``threshold_ms``, each with ``answer`` of its
        value and what else happened meanwhile: calls other clients completed during it (many: it was stuck
        alone, not the machine) and this process's own stalls (the canary) that overlap it. Start offsets are
        from ``since``."""
        calls = list(self.calls)
        out = []
        for c in sorted(calls, key=lambda c: -c.ms):
            if c.ms <= threshold_ms or not since <= c.start <= until:
                continue
            out.append({"start_s": round(c.start - since, 3), "ms": round(c.ms, 1), "error": c.error,
                        "answer": None if c.value is None else answer(c.value),
                        "completed_meanwhile": sum(1 for o in calls if o is not c and c.start < o.end < c.end),
                        "process_stalls": [p for p in self.pauses if p[0] < c.end and p[0] + p[1] > c.start],
                        "wall": time.strftime("%H:%M:%S", time.localtime(c.start + self.wall_at_start))})
        return out

    def answered_since_last_failure(self) -> int:
        """Successful calls that started after the last failed call started (all of them if none failed)."""
        calls = list(self.calls)  # the threads append while this reads
        last = max((c.start for c in calls if c.error), default=float("-inf"))
        return sum(1 for c in calls if not c.error and c.start > last)

    @property
    def failures(self) -> list[Call]:
        return [c for c in self.calls if c.error]

    def summary(self, fault_at: float | None = None, window_s: float = 2.0) -> dict:
        """Counts and latencies; with ``fault_at``: failures after it, the time back to service
        (from the fault to the start of the first call from which on every call succeeded) and the
        latencies of the calls that started within ``window_s`` of it."""
        calls = sorted(self.calls, key=lambda c: c.start)
        ms = np.array([c.ms for c in calls if not c.error]) if calls else np.zeros(0)
        out = {"clients": self.clients, "requests": len(calls), "failed": len(self.failures), "retries": self.retries,
               "errors": sorted({c.error for c in self.failures})[:5],
               "latency_ms": _percentiles(ms)}
        if fault_at is not None:
            after = [c for c in calls if c.end >= fault_at]
            back = self.back_at(fault_at)  # None: never back within the run
            near = np.array([c.ms for c in calls if abs(c.start - fault_at) <= window_s and not c.error])
            recovery = None if back is None else round(max(0.0, back - fault_at), 3)
            out.update({
                "failed_after_fault": sum(1 for c in after if c.error),
                "recovery_s": recovery,
                f"latency_ms_within_{window_s:g}s_of_fault": _percentiles(near),
            })
        return out


def _percentiles(ms: np.ndarray) -> dict:
    if not len(ms):
        return {"n": 0}
    return {"n": int(len(ms)), "p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2),
            "max": round(float(ms.max()), 2)}


def write_result(name: str, result: dict) -> Path:
    """artifacts/faults/<name>.json: what a fault cost, for the closing note and benchmarks/results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"test": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}, indent=2) + "\n",
                    encoding="utf-8")
    print(f"{name}: {json.dumps(result)}")
    return path
