"""Admission control for one server: a request is refused only when the work ahead of it would make it
wait longer than a budget, or longer than its own deadline allows.

The ensembles' tokenizer (``ensemble_tokenizer``; the clients' ``tokenizer`` takes no part, since a
ticket handed to a client would never come back) predicts a request's wait as the rows in flight
ahead of it (admitted, not yet answered) times the measured service time of one row. It admits the
request when that wait is within ``budget_ms`` and, where the request carries a timeout, when the
wait plus its own rows' service fits in it; otherwise it answers UNAVAILABLE at once (no queueing, no
compute), naming the figures. A request alone is always admitted (nothing is ahead of it), and its own
rows never count against the budget, so a big request is not starved by small ones.

**The service time** is measured where tickets come back: when a step gives back the tickets of the
requests it answered, the time since the later of the previous answer and those requests' admission,
divided by their rows, is one sample. With requests queued it is the time between answers, the
server's cost of a row under load; with none queued it is one request's whole latency. The wait is
predicted with the 90th percentile of the last ``SAMPLES`` samples: with the median, admitted waits sat
at the budget on average and 20-30% above it at p99 (benchmarks/results/admission-wait-2026-12-07/),
and a single stall (a paused stub) still moves it by no more than one sample. Until the first answer
nothing is measured and every request is admitted.

Each admitted request takes a ticket: a slot of a small table shared by the server's stubs (one file
per tritonserver process) holding its ticket number, admission time and rows. An ``embed``
request's ticket comes back from the step that pools; a ``retrieve`` request's from the search's
last step (mips_topk, or topk_merge of a sharded index), so that a search queue counts too
(``runtime.adapter.TicketReturn``). A ticket whose request never gets there (the client cancelled
it, a stub was killed) expires after ``ttl_s``; and every stub that takes part clears the table when
it (re)loads (``reset``): a stub is reloaded after it died, and the tickets of the requests it was
holding would otherwise count for ``ttl_s``. Every change holds the file's lock.
"""
from __future__ import annotations

import dataclasses
import fcntl
import mmap
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SLOTS = 4096  # tickets live at once, at most: a request beyond them is refused whatever the budget
SAMPLES = 32  # service-time samples the estimate is taken from
# int64 words: the next ticket number | SLOTS x (ticket, admitted_ns, rows) | last answer's time, samples taken,
# SAMPLES x ns a row. Everything after the first word is zeroed by a reset (and by supervisor.clear_admission).
_NEXT = 0
_SLOTS = slice(1, 1 + 3 * SLOTS)
_LAST_NS, _TAKEN = 1 + 3 * SLOTS, 2 + 3 * SLOTS
_RING = slice(3 + 3 * SLOTS, 3 + 3 * SLOTS + SAMPLES)
_WORDS = 3 + 3 * SLOTS + SAMPLES


def table_path(server_pid: int | None = None) -> Path:
    """The table of the tritonserver process whose stubs share it (a stub's parent)."""
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return root / f"scalingnote-admission-{server_pid or os.getppid()}"


@dataclasses.dataclass(frozen=True)
class Decision:
    ticket: int  # 0: refused (or admission is off)
    rows_ahead: int  # rows admitted and not yet answered when it arrived
    row_ns: int  # the service time of one row it was judged with (0: not measured yet)
    reason: str = ""  # why it was refused: "budget", "deadline" or "full"

    @property
    def wait_ms(self) -> float:
        return self.rows_ahead * self.row_ns / 1e6


class Admission:
    def __init__(self, path: Path, budget_ms: float, ttl_s: float = 5.0):
        if budget_ms < 0 or ttl_s <= 0:
            raise ValueError(f"admission: budget_ms must be >= 0 and ttl_s > 0; got {budget_ms} and {ttl_s}")
        self.path, self.budget_ms, self.ttl_ns = Path(path), budget_ms, int(ttl_s * 1e9)
        size = 8 * _WORDS
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)  # zero-filled: no ticket is live, nothing measured
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, size)
        self._words = np.frombuffer(self._map, dtype=np.int64)
        self._slots = self._words[_SLOTS].reshape(SLOTS, 3)

    def _live(self, now_ns: int) -> np.ndarray:
        return (self._slots[:, 0] != 0) & (now_ns - self._slots[:, 1] < self.ttl_ns)

    def in_flight(self) -> int:
        """Rows admitted and not yet answered (expired tickets not counted)."""
        return int(self._slots[self._live(time.monotonic_ns()), 2].sum())

    def row_ns(self) -> int:
        """The service time of one row the wait is predicted with: the 90th percentile of the last samples,
        so that the budget bounds the wait rather than being its average (0: nothing measured yet)."""
        taken = int(self._words[_TAKEN])
        return int(np.percentile(self._words[_RING][:min(taken, SAMPLES)], 90)) if taken else 0

    def admit(self, rows: int, timeout_us: int = 0) -> Decision:
        """Admit ``rows`` unless the predicted wait exceeds the budget or, with a ``timeout_us`` (the
        request's own, 0: none), the wait plus its own service exceeds that timeout."""
        if self.budget_ms == 0:
            return Decision(0, 0, 0)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = time.monotonic_ns()
            live = self._live(now)
            ahead, row_ns = int(self._slots[live, 2].sum()), self.row_ns()
            ticket = int(self._words[_NEXT]) + 1
            slot = ticket % SLOTS
            if live[slot]:  # SLOTS tickets live at once
                return Decision(0, ahead, row_ns, "full")
            if ahead * row_ns > self.budget_ms * 1e6:
                return Decision(0, ahead, row_ns, "budget")
            if timeout_us and (ahead + rows) * row_ns > timeout_us * 1e3:
                return Decision(0, ahead, row_ns, "deadline")
            self._words[_NEXT] = ticket
            self._slots[slot] = (ticket, now, rows)
            return Decision(ticket, ahead, row_ns)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def reset(self) -> None:
        """Forget every ticket and every sample: a (re)loaded stub's requests from before are gone,
        whoever held them, and what was measured before it died says little of the server now."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._words[1:] = 0
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self, *tickets: int) -> None:
        """Give back the tickets of requests answered together (0, or one already expired and reused:
        nothing happens), and take one service-time sample from them."""
        tickets = tuple(t for t in tickets if t > 0)
        if not tickets:
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = time.monotonic_ns()
            rows, admitted = 0, now
            for ticket in tickets:
                slot = ticket % SLOTS
                if self._slots[slot, 0] == ticket:
                    rows += int(self._slots[slot, 2])
                    admitted = min(admitted, int(self._slots[slot, 1]))
                    self._slots[slot] = 0
            if rows:
                taken = int(self._words[_TAKEN])
                self._words[_RING.start + taken % SAMPLES] = (now - max(admitted, int(self._words[_LAST_NS]))) // rows
                self._words[_TAKEN] = taken + 1
                self._words[_LAST_NS] = now
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self, unlink: bool = False) -> None:
        self._words = self._slots = None  # views of the map must go before it closes
        self._map.close()
        os.close(self._fd)
        if unlink:
            self.path.unlink(missing_ok=True)


def refusal(d: Decision, rows: int, budget_ms: float, timeout_us: int) -> str:
    """The UNAVAILABLE message of a refused request: what it was judged with, and what to do."""
    ahead = f"{d.rows_ahead} rows ahead x {d.row_ns / 1e6:.1f} ms a row"
    if d.reason == "deadline":
        return (f"server busy: predicted wait {d.wait_ms:.0f} ms ({ahead}) plus this request's {rows} rows exceeds its "
                f"timeout of {timeout_us / 1e3:g} ms; retry with backoff")
    if d.reason == "full":
        return f"server busy: {SLOTS} requests in flight, the most admission tracks; retry with backoff"
    return f"server busy: predicted wait {d.wait_ms:.0f} ms ({ahead}) exceeds admission_budget_ms {budget_ms:g}; retry with backoff"
