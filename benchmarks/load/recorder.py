"""Per-step HDR histograms of one Locust process, and their merge on the master.

Kept free of Locust imports (Locust monkey-patches the interpreter with gevent on import).
"""
from __future__ import annotations

from array import array
from collections import Counter

from hdrh.histogram import HdrHistogram

HDR_MIN_US, HDR_MAX_US, HDR_DIGITS = 1, 120_000_000, 3


class Recorder:
    """Per-step HDR histograms (µs), error counts and counts of issued calls of this process."""

    def __init__(self):
        self.step = 0
        self.hist: dict[int, HdrHistogram] = {}
        self.fail_hist: dict[int, HdrHistogram] = {}  # latency of failed calls: a rejection must be fast
        self.errors: dict[int, Counter] = {}
        self.issued: Counter = Counter()
        self.snapshots: dict[int, dict] = {}  # master/local: metrics at the start of each step
        self.step_started: dict[int, float] = {}
        self.cpu_stat: dict[int, dict] = {}  # master/local: /proc/stat per core at each step's start (procs.cpu_stat)
        self.scraped_at: dict[int, tuple[float, float]] = {}  # master/local: (before, after) each step's scrape, monotonic
        self.ensemble_steps: list[str] = []  # master/local: the composing models the served ensemble runs
        self.succeeded_by_worker: Counter = Counter()  # master: successful calls merged from each worker
        # when each success was answered (time.monotonic() in the calling thread; one clock for every
        # process on this host): binned against the scrape times, it is what Triton counted between them
        self.ok_at = array("d")
        self.finals: set[str] = set()  # master: workers whose last count (after their users stopped) has arrived
        self.missing_finals = 0  # master: workers whose last count never came (the run is refused)

    def _h(self, step: int, failed: bool = False) -> HdrHistogram:
        if step not in self.hist:
            self.hist[step] = HdrHistogram(HDR_MIN_US, HDR_MAX_US, HDR_DIGITS)
            self.fail_hist[step] = HdrHistogram(HDR_MIN_US, HDR_MAX_US, HDR_DIGITS)
            self.errors[step] = Counter()
        return self.fail_hist[step] if failed else self.hist[step]

    def record(self, step: int, latency_us: int, error: str | None, answered_at: float) -> None:
        self._h(step, failed=error is not None).record_value(min(max(latency_us, HDR_MIN_US), HDR_MAX_US))
        if error is not None:
            self.errors[step][error] += 1
        else:
            self.ok_at.append(answered_at)

    def drain(self) -> dict:
        """Everything recorded since the last drain, encoded for the master."""
        encode = lambda h: h.encode().decode() if h.get_total_count() else ""  # noqa: E731
        payload = {}
        for s in set(self.hist) | set(self.issued):
            h = self.hist.get(s)
            payload[str(s)] = {
                "hdr": encode(h) if h is not None else "", "fail_hdr": encode(self.fail_hist[s]) if h is not None else "",
                "errors": dict(self.errors.get(s, {})), "issued": self.issued[s],
            }
        payload = {"steps": payload, "ok_at": self.ok_at.tolist()}
        self.hist, self.fail_hist, self.errors, self.issued, self.ok_at = {}, {}, {}, Counter(), array("d")
        return payload

    def merge(self, payload: dict, worker: str = "") -> None:
        self.ok_at.extend(payload["ok_at"])
        for s, part in payload["steps"].items():
            step = int(s)
            self._h(step)  # a report may carry only issued requests, none completed yet
            for key, failed in (("hdr", False), ("fail_hdr", True)):
                if part[key]:
                    before = self._h(step, failed).get_total_count()
                    self._h(step, failed).decode_and_add(part[key])
                    if not failed:
                        self.succeeded_by_worker[worker] += self._h(step).get_total_count() - before
            self.errors[step].update(part["errors"])
            self.issued[step] += part["issued"]
