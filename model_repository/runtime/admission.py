"""Admission control for one server: a bound on the rows between the tokenizer and the step that
answers (pooling for ``embed``, the search for ``retrieve``).

The ensembles' tokenizer (``ensemble_tokenizer``; the clients' ``tokenizer`` takes no part, since
a ticket handed to a client would never come back) admits a request only while fewer than ``limit_rows`` rows are in flight ahead
of it; otherwise it answers UNAVAILABLE at once (no queueing, no compute), and the requests it
admitted wait behind fewer than ``limit_rows`` rows of encoder work. A request's own rows do not
count against it: a 64-row batch is not starved by a trickle of one-row queries, but while it
is in flight it holds the rows it brought, so the requests behind it are refused until it is
encoded (they would have waited for all of it).
Each admitted request takes a ticket: a slot of a small table shared by the server's stubs
(one file per tritonserver process) holding its ticket number, admission time and rows.
An ``embed`` request's ticket comes back from pool_normalize once pooled (or the query_encoder
once encoded, when the encoder pools: render's ``pooling_step``); a ``retrieve`` request's from
the search's last step (mips_topk, or topk_merge of a sharded index), so that a search queue
counts too (``runtime.adapter.TicketReturn``). A ticket whose request
never gets there (the client cancelled it, a stub was killed) expires after ``ttl_s``, so
a lost ticket costs capacity for seconds, never for good; and every stub that takes part
clears the table when it (re)loads (``reset``): a stub is reloaded after it died, and the
tickets of the requests it was holding would otherwise refuse every request for ``ttl_s``.
Clearing may admit up to ``limit_rows`` rows too many for one moment; that is the price.
Every change holds the file's lock: the tokenizer and pool stubs (and several instances of
each) share the table.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SLOTS = 4096  # tickets live at once, at most; far above any limit on rows
_NEXT, _HEADER = 0, 1  # int64 words: the next ticket number, then SLOTS x (ticket, admitted_ns, rows)


def table_path(server_pid: int | None = None) -> Path:
    """The table of the tritonserver process whose stubs share it (a stub's parent)."""
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return root / f"scalingnote-admission-{server_pid or os.getppid()}"


class Admission:
    def __init__(self, path: Path, limit_rows: int, ttl_s: float = 5.0):
        if limit_rows < 0 or ttl_s <= 0:
            raise ValueError(f"admission: limit_rows must be >= 0 and ttl_s > 0; got {limit_rows} and {ttl_s}")
        self.path, self.limit_rows, self.ttl_ns = Path(path), limit_rows, int(ttl_s * 1e9)
        size = 8 * (_HEADER + 3 * SLOTS)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)  # zero-filled: no ticket is live
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, size)
        words = np.frombuffer(self._map, dtype=np.int64)
        self._header, self._slots = words[:_HEADER], words[_HEADER:].reshape(SLOTS, 3)

    def _live(self, now_ns: int) -> np.ndarray:
        return (self._slots[:, 0] != 0) & (now_ns - self._slots[:, 1] < self.ttl_ns)

    def in_flight(self) -> int:
        """Rows admitted and not yet answered (expired tickets not counted)."""
        return int(self._slots[self._live(time.monotonic_ns()), 2].sum())

    def admit(self, rows: int) -> tuple[int, int]:
        """(ticket, rows in flight before it); ticket 0: refused, or admission is off (limit 0)."""
        if self.limit_rows == 0:
            return 0, 0
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = time.monotonic_ns()
            live = self._live(now)
            in_flight = int(self._slots[live, 2].sum())
            if in_flight >= self.limit_rows:  # its own rows do not count: a request alone is always admitted
                return 0, in_flight
            ticket = int(self._header[_NEXT]) + 1
            slot = ticket % SLOTS
            if live[slot]:  # SLOTS live tickets: cannot happen while limit_rows < SLOTS
                return 0, in_flight
            self._header[_NEXT] = ticket
            self._slots[slot] = (ticket, now, rows)
            return ticket, in_flight
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def reset(self) -> None:
        """Forget every ticket: a (re)loaded stub's requests from before are gone, whoever held them."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._slots[:] = 0
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self, ticket: int) -> None:
        """Give a ticket back (0, or one already expired and reused: nothing happens)."""
        if ticket <= 0:
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            slot = ticket % SLOTS
            if self._slots[slot, 0] == ticket:
                self._slots[slot] = 0
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self, unlink: bool = False) -> None:
        self._header = self._slots = None  # views of the map must go before it closes
        self._map.close()
        os.close(self._fd)
        if unlink:
            self.path.unlink(missing_ok=True)
