"""runtime.admission: admission by predicted wait (rows ahead x the measured service time of a row),
shared by the stubs through one table."""
from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from model_repository.runtime import admission as admission_module
from model_repository.runtime.admission import SAMPLES, SLOTS, Admission, refusal

MS = 1_000_000


class Clock:
    """time.monotonic_ns under the test's control."""

    def __init__(self):
        self.ns = 10**12

    def __call__(self) -> int:
        return self.ns

    def at(self, ms: float) -> Clock:
        self.ns = 10**12 + int(ms * MS)
        return self


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(admission_module, "time", type("T", (), {"monotonic_ns": staticmethod(c)}))
    return c


def measured(gate: Admission, clock: Clock, row_ms: float, n: int = 3) -> float:
    """n one-row requests queued at once and answered row_ms apart: the estimate becomes row_ms. -> the time after."""
    start = (clock.ns - 10**12) / MS
    tickets = [gate.admit(1).ticket for _ in range(n)]
    for i, ticket in enumerate(tickets, 1):
        clock.at(start + i * row_ms)
        gate.release(ticket)
    return start + n * row_ms


def test_nothing_measured_admits_everything(tmp_path, clock):
    gate = Admission(tmp_path / "table", budget_ms=1)
    decisions = [gate.admit(64) for _ in range(50)]
    assert all(d.ticket for d in decisions) and gate.row_ns() == 0 and gate.in_flight() == 50 * 64


def test_the_service_time_is_the_time_between_answers_and_an_idle_gap_does_not_count(tmp_path, clock):
    gate = Admission(tmp_path / "table", budget_ms=1000)
    end = measured(gate, clock, 10.0)
    assert gate.row_ns() == 10 * MS
    clock.at(end + 5000)  # idle for 5 s, then one request alone: its own latency, not the gap
    ticket = gate.admit(2).ticket
    clock.at(end + 5000 + 24)
    gate.release(ticket)
    assert sorted(gate._words[admission_module._RING][:4] // MS) == [10, 10, 10, 12]
    clock.at(end + 6000)
    tickets = [gate.admit(1).ticket for _ in range(4)]
    clock.at(end + 6020)
    gate.release(*tickets)  # answered together (one batch): one sample of 20 ms over 4 rows
    assert sorted(gate._words[admission_module._RING][:5] // MS) == [5, 10, 10, 10, 12]


def test_refused_once_the_predicted_wait_exceeds_the_budget_and_told_the_figures(tmp_path, clock):
    gate = Admission(tmp_path / "table", budget_ms=50)
    measured(gate, clock, 10.0)
    admitted = [gate.admit(1) for _ in range(6)]  # 0, 1, ... 5 rows ahead: a wait of 0 to 50 ms
    assert all(d.ticket for d in admitted) and [d.rows_ahead for d in admitted] == [0, 1, 2, 3, 4, 5]
    refused = gate.admit(1)
    assert (refused.ticket, refused.rows_ahead, refused.row_ns, refused.reason) == (0, 6, 10 * MS, "budget")
    assert refusal(refused, 1, 50, 0) == ("server busy: predicted wait 60 ms (6 rows ahead x 10.0 ms a row) exceeds "
                                          "admission_budget_ms 50; retry with backoff")
    gate.release(admitted[0].ticket)
    assert gate.admit(1).ticket  # 5 ahead again


def test_a_request_alone_and_a_big_request_behind_few_are_admitted(tmp_path, clock):
    """Its own rows never count against the budget: nothing ahead is no wait, whatever it brings."""
    gate = Admission(tmp_path / "table", budget_ms=30)
    measured(gate, clock, 10.0)
    alone = gate.admit(64)
    assert alone.ticket and alone.rows_ahead == 0
    assert gate.admit(1).reason == "budget"  # 64 rows ahead: 640 ms
    gate.release(alone.ticket)
    small = gate.admit(1)
    big = gate.admit(64)
    assert small.ticket and big.ticket and big.rows_ahead == 1


def test_a_request_whose_timeout_the_wait_would_miss_is_refused(tmp_path, clock):
    gate = Admission(tmp_path / "table", budget_ms=1000)
    measured(gate, clock, 10.0)
    ahead = [gate.admit(1).ticket for _ in range(2)]
    assert gate.admit(1, timeout_us=30_000).ticket  # 2 ahead + its own row = 30 ms: it fits
    late = gate.admit(1, timeout_us=30_000)  # 3 ahead + 1 = 40 ms
    assert (late.ticket, late.reason) == (0, "deadline")
    assert refusal(late, 1, 1000, 30_000) == ("server busy: predicted wait 30 ms (3 rows ahead x 10.0 ms a row) plus this "
                                              "request's 1 rows exceeds its timeout of 30 ms; retry with backoff")
    assert gate.admit(1).ticket and all(ahead)  # no timeout: within the budget


def test_one_stall_moves_the_estimate_by_one_sample(tmp_path, clock):
    gate = Admission(tmp_path / "table", budget_ms=100)
    end = measured(gate, clock, 10.0, n=SAMPLES - 1)
    ticket = gate.admit(1).ticket
    clock.at(end + 5000)  # a search stub paused for 5 s
    gate.release(ticket)
    assert gate.row_ns() == 10 * MS
    assert sum(gate.admit(1).ticket > 0 for _ in range(12)) == 11  # 0..10 rows ahead fit 100 ms


def test_reset_forgets_every_ticket_and_every_sample(tmp_path, clock):
    """A stub reloaded after it died clears the tickets its lost requests held (else: counted for ttl_s)."""
    tokenizer, encoder = Admission(tmp_path / "table", budget_ms=15), Admission(tmp_path / "table", budget_ms=0)
    measured(tokenizer, clock, 10.0)
    held = [tokenizer.admit(1).ticket for _ in range(2)]
    assert all(held) and tokenizer.admit(1).ticket == 0
    encoder.reset()
    assert tokenizer.in_flight() == 0 and tokenizer.row_ns() == 0 and tokenizer.admit(1).ticket
    encoder.release(held[0])  # a ticket from before the reset: nothing happens
    assert tokenizer.in_flight() == 1


def test_the_table_is_shared_through_its_file(tmp_path):
    tokenizer, pool = Admission(tmp_path / "table", budget_ms=1000), Admission(tmp_path / "table", budget_ms=0)
    ticket = tokenizer.admit(2).ticket
    assert pool.in_flight() == 2
    pool.release(ticket)
    assert tokenizer.in_flight() == 0 and tokenizer.row_ns() > 0  # the returning step measured it
    pool.release(ticket)  # twice: nothing happens
    assert tokenizer.admit(2).ticket


def test_a_lost_ticket_expires(tmp_path):
    gate = Admission(tmp_path / "table", budget_ms=1000, ttl_s=0.2)
    gate.admit(1)  # never released: its request was cancelled
    assert gate.in_flight() == 1
    time.sleep(0.25)
    assert gate.in_flight() == 0


def test_a_stale_ticket_cannot_free_the_slot_it_used_to_hold(tmp_path):
    gate = Admission(tmp_path / "table", budget_ms=10**9, ttl_s=0.05)
    old = gate.admit(1).ticket
    time.sleep(0.06)  # expired; the slot is taken again SLOTS tickets later
    for _ in range(SLOTS - 1):
        gate.release(gate.admit(1).ticket)
    reused = gate.admit(1).ticket
    assert reused % SLOTS == old % SLOTS and reused != old
    gate.release(old)
    assert gate.in_flight() == 1


def test_more_live_tickets_than_the_table_holds_are_refused(tmp_path):
    gate = Admission(tmp_path / "table", budget_ms=10**9)
    assert all(gate.admit(1).ticket for _ in range(SLOTS))
    full = gate.admit(1)
    assert (full.ticket, full.reason) == (0, "full") and "4096 requests in flight" in refusal(full, 1, 1, 0)


def test_off_admits_everything_without_tickets(tmp_path):
    gate = Admission(tmp_path / "table", budget_ms=0)
    assert {gate.admit(1000).ticket for _ in range(10)} == {0}
    assert gate.in_flight() == 0


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"budget_ms must be >= 0 and ttl_s > 0; got -1 and 5.0"):
        Admission(tmp_path / "table", budget_ms=-1)


def _churn(path, n, seen):
    gate = Admission(path, budget_ms=10**6)
    tickets = []
    for _ in range(n):
        ticket = gate.admit(1).ticket
        tickets.append(ticket)
        gate.release(ticket)
    seen.put(tickets)


def test_processes_racing_take_distinct_tickets_and_give_every_one_back(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    seen = ctx.Queue()
    procs = [ctx.Process(target=_churn, args=(tmp_path / "table", 400, seen)) for _ in range(4)]
    for p in procs:
        p.start()
    tickets = [t for _ in procs for t in seen.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
    assert len(set(tickets)) == len(tickets) == 1600 and min(tickets) > 0
    gate = Admission(tmp_path / "table", 1)
    assert gate.in_flight() == 0 and gate.row_ns() > 0


def test_the_supervisor_clears_the_table_as_reset_does(tmp_path, clock):
    """After a reload the supervisor (standard library only: the image runs it as a script) clears the
    server's table: the tickets of requests that failed at the dead stub stop counting, the ticket
    numbers go on, and its idea of the table's path is the stubs' own."""
    from model_repository import supervisor
    from model_repository.runtime.admission import table_path

    pid = 2**22 + os.getpid()  # no server has this pid: a table of its own
    assert supervisor.admission_table(pid) == table_path(pid)
    gate = Admission(table_path(pid), 35)
    try:
        measured(gate, clock, 10.0)
        held = [gate.admit(3).ticket for _ in range(2)]
        assert all(held) and gate.in_flight() == 6 and not gate.admit(1).ticket
        supervisor.clear_admission(pid)
        assert gate.in_flight() == 0 and gate.row_ns() == 0
        after = gate.admit(1).ticket
        assert after == held[-1] + 1 and gate.in_flight() == 1  # the header (next ticket) is kept
        gate.release(held[0])  # a ticket from before the clear: nothing happens
        assert gate.in_flight() == 1
        supervisor.clear_admission(pid + 1)  # no table: nothing to do, no error
    finally:
        gate.close(unlink=True)
