"""A truly open-loop load generator: arrivals run on a clock and never wait on answers.

The Locust open-loop mode gives each user a schedule, but a user waits for its own call, so a
slow server holds arrivals back (the committed "3x" overload run offered 1.0-1.4x of what the
server admitted). Here one asyncio loop fires every arrival at its Poisson time as its own task
over ``tritonclient.grpc.aio``; how late each one was sent is recorded too, so a generator that
could not keep up shows in the results instead of hiding in them.

Every call is one sample: ``(scheduled s, send lag s, latency s, status)``. ``windows`` cuts
them into fixed windows (offered, admitted, rejected, p50/p99 of each); ``closed_loop`` is the
capacity probe (``users`` back-to-back callers).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import random
import time

import numpy as np

from benchmarks.common import error_kind

OK = "OK"
REJECTED = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")  # what a shedding server answers


@dataclasses.dataclass(frozen=True)
class Sample:
    scheduled_s: float  # arrival time, from the start of the run
    lag_s: float  # how much later than scheduled it was sent
    latency_s: float
    status: str  # OK or the gRPC status, e.g. StatusCode.UNAVAILABLE
    message: str = ""
    sent_at: float = 0.0  # time.perf_counter() when sent: CLOCK_MONOTONIC on Linux, the clock of Triton's traces


def arrivals(phases: list[tuple[float, float]], seed: int) -> list[float]:
    """Poisson arrival times (s) for consecutive phases of (requests/s, seconds)."""
    rng = random.Random(seed)
    out, start = [], 0.0
    for rate, seconds in phases:
        t = start
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= start + seconds:
                break
            out.append(t)
        start += seconds
    return out


def _status(error: Exception) -> tuple[str, str]:
    message = error.message() if callable(getattr(error, "message", None)) else str(error)
    return error_kind(error), str(message)[:300]


class ProbeFailed(RuntimeError):
    """The closed-loop capacity probe met failed calls, so its figure is not the server's capacity."""


class Generator:
    """One gRPC channel, one event loop; ``texts`` are cycled one per request."""

    def __init__(self, url: str, model: str, texts: list[str], k: int = 10, timeout_s: float = 10.0):
        self.url, self.model, self.k, self.timeout_s = url, model, k, timeout_s
        self.texts = itertools.cycle(texts)
        self.unrecorded_ok = 0  # successful calls that are no sample (connection warm-ups), for reconciling counts

    @contextlib.asynccontextmanager
    async def _connected(self):
        """The channel, opened with one call before any clock starts (counted in ``unrecorded_ok``)."""
        # imported here, not with the module: the GPU image runs `python -m benchmarks gpu-suite` without tritonclient
        from tritonclient.grpc.aio import InferenceServerClient

        from clients.retrieval import request_inputs

        self._request_inputs = request_inputs
        async with InferenceServerClient(self.url) as client:
            if (await self._one(client, 0.0, time.perf_counter())).status == OK:
                self.unrecorded_ok += 1
            yield client

    async def _one(self, client, scheduled: float, t0: float) -> Sample:
        sent = time.perf_counter()
        inputs = self._request_inputs(self.model, [next(self.texts)], self.k if self.model == "retrieve" else None)
        try:
            await client.infer(self.model, inputs, client_timeout=self.timeout_s)
            return Sample(scheduled, sent - t0 - scheduled, time.perf_counter() - sent, OK, sent_at=sent)
        except Exception as e:  # noqa: BLE001 - every failure is a sample, with its status
            code, message = _status(e)
            return Sample(scheduled, sent - t0 - scheduled, time.perf_counter() - sent, code, message, sent_at=sent)

    async def _open(self, times: list[float], progress) -> list[Sample]:
        async with self._connected() as client:
            tasks = []
            t0 = time.perf_counter()
            next_report = 5.0
            for t in times:
                delay = t0 + t - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(self._one(client, t, t0)))
                if progress and t >= next_report:
                    progress(t, len(tasks))
                    next_report += 5.0
            return list(await asyncio.gather(*tasks))

    def open_loop(self, phases: list[tuple[float, float]], seed: int = 0, progress=None) -> list[Sample]:
        """Offer ``phases`` of (requests/s, seconds) back to back; one sample per arrival."""
        return asyncio.run(self._open(arrivals(phases, seed), progress))

    async def _closed(self, users: int, seconds: float) -> tuple[int, dict[str, int], str, float]:
        async with self._connected() as client:
            t0 = time.perf_counter()
            done, failed, first_message = 0, {}, ""

            async def user():
                nonlocal done, first_message
                while time.perf_counter() - t0 < seconds:
                    sample = await self._one(client, 0.0, t0)
                    if sample.status == OK:
                        done += 1
                    else:
                        failed[sample.status] = failed.get(sample.status, 0) + 1
                        first_message = first_message or sample.message

            await asyncio.gather(*(user() for _ in range(users)))
            return done, failed, first_message, time.perf_counter() - t0

    def closed_loop(self, users: int, seconds: float) -> float:
        """Successful requests/s with ``users`` callers sending back to back: the capacity probe.

        A probe that meets any failed call raises ``ProbeFailed``: its callers retry at once, so
        against a server that sheds load (admission, a queue policy) it measures the refusals'
        churn, not the capacity (10-15 req/s against a server that serves 66, seen here).
        """
        done, failed, message, elapsed = asyncio.run(self._closed(users, seconds))
        if failed:
            raise ProbeFailed(
                f"capacity probe: {sum(failed.values())} of {done + sum(failed.values())} calls failed "
                f"({', '.join(f'{k}: {v}' for k, v in sorted(failed.items()))}; first: {message!r}). A server that "
                "refuses load cannot measure its own capacity: measure it against the same repository rendered "
                "without admission or queue policy, and pass that figure with --capacity-rps")
        return done / elapsed


def percentile_ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values) * 1e3, q, method="higher")) if values else None


def windows(samples: list[Sample], window_s: float) -> list[dict]:
    """Per window of ``window_s`` (by scheduled arrival): offered rate, admitted and rejected counts and tails."""
    if not samples:
        return []
    n = max(1, math.ceil(max(s.scheduled_s for s in samples) / window_s))
    out = []
    for w in range(n):
        inside = [s for s in samples if w * window_s <= s.scheduled_s < (w + 1) * window_s]
        ok = [s.latency_s for s in inside if s.status == OK]
        rejected = [s.latency_s for s in inside if s.status in REJECTED]
        other = [s for s in inside if s.status != OK and s.status not in REJECTED]
        out.append({
            "start_s": w * window_s, "offered_rps": len(inside) / window_s, "admitted_rps": len(ok) / window_s,
            "issued": len(inside), "admitted": len(ok), "rejected": len(rejected), "other_errors": len(other),
            "admitted_ms": {"p50": percentile_ms(ok, 50), "p99": percentile_ms(ok, 99), "max": percentile_ms(ok, 100)},
            "rejected_ms": {"p50": percentile_ms(rejected, 50), "p99": percentile_ms(rejected, 99)},
            "send_lag_ms_p99": percentile_ms([s.lag_s for s in inside], 99),
        })
    return out


def summary(samples: list[Sample]) -> dict:
    """Counts by status (with one message each) and the tails over a whole phase."""
    by_status: dict[str, int] = {}
    messages: dict[str, str] = {}
    for s in samples:
        by_status[s.status] = by_status.get(s.status, 0) + 1
        messages.setdefault(s.status, s.message)
    ok = [s.latency_s for s in samples if s.status == OK]
    rejected = [s.latency_s for s in samples if s.status in REJECTED]
    return {
        "issued": len(samples), "by_status": by_status, "messages": {k: v for k, v in messages.items() if v},
        "admitted_ms": {"p50": percentile_ms(ok, 50), "p99": percentile_ms(ok, 99), "max": percentile_ms(ok, 100)},
        "rejected_ms": {"p50": percentile_ms(rejected, 50), "p99": percentile_ms(rejected, 99)},
        "send_lag_ms": {"p99": percentile_ms([s.lag_s for s in samples], 99),
                        "max": percentile_ms([s.lag_s for s in samples], 100)},
    }
