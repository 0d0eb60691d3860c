"""runtime.admission: the bound on rows in flight that the tokenizer enforces, shared by stubs."""
from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from model_repository.runtime.admission import SLOTS, Admission


def test_admits_while_fewer_rows_than_the_limit_are_ahead(tmp_path):
    gate = Admission(tmp_path / "table", limit_rows=8)
    tickets = [gate.admit(3)[0] for _ in range(3)]  # 0, 3 and 6 rows ahead: each admitted
    assert all(tickets) and gate.in_flight() == 9
    assert gate.admit(1) == (0, 9)  # 9 rows ahead >= 8: refused, and told what was in flight
    gate.release(tickets[0])
    assert gate.in_flight() == 6 and gate.admit(1)[0] and gate.admit(1)[0]
    assert gate.admit(1) == (0, 8)


def test_a_request_alone_is_admitted_whatever_its_rows(tmp_path):
    gate = Admission(tmp_path / "table", limit_rows=4)
    ticket, before = gate.admit(64)
    assert ticket and before == 0
    assert gate.admit(1) == (0, 64)


def test_a_big_request_is_not_starved_by_a_trickle_of_small_ones(tmp_path):
    """Its own rows do not count: with 1 row ahead, 64 rows are admitted (and then hold their place)."""
    gate = Admission(tmp_path / "table", limit_rows=8)
    small = gate.admit(1)[0]
    big, before = gate.admit(64)
    assert small and big and before == 1
    assert gate.admit(1) == (0, 65)
    gate.release(big)
    assert gate.admit(1)[0]


def test_reset_forgets_every_ticket(tmp_path):
    """A stub reloaded after it died clears the tickets its lost requests held (else: refusals for ttl_s)."""
    tokenizer, encoder = Admission(tmp_path / "table", limit_rows=2), Admission(tmp_path / "table", limit_rows=0)
    held = [tokenizer.admit(1)[0] for _ in range(2)]
    assert all(held) and tokenizer.admit(1)[0] == 0
    encoder.reset()
    assert tokenizer.in_flight() == 0 and tokenizer.admit(1)[0]
    encoder.release(held[0])  # a ticket from before the reset: nothing happens
    assert tokenizer.in_flight() == 1


def test_the_table_is_shared_through_its_file(tmp_path):
    tokenizer, pool = Admission(tmp_path / "table", limit_rows=2), Admission(tmp_path / "table", limit_rows=0)
    ticket = tokenizer.admit(2)[0]
    assert pool.in_flight() == 2
    pool.release(ticket)
    assert tokenizer.in_flight() == 0
    pool.release(ticket)  # twice: nothing happens
    assert tokenizer.admit(2)[0]


def test_a_lost_ticket_expires(tmp_path):
    gate = Admission(tmp_path / "table", limit_rows=1, ttl_s=0.2)
    gate.admit(1)  # never released: its request was cancelled
    assert gate.admit(1)[0] == 0
    time.sleep(0.25)
    assert gate.in_flight() == 0 and gate.admit(1)[0]


def test_a_stale_ticket_cannot_free_the_slot_it_used_to_hold(tmp_path):
    gate = Admission(tmp_path / "table", limit_rows=SLOTS + 1, ttl_s=0.05)
    old = gate.admit(1)[0]
    time.sleep(0.06)  # expired; the slot is taken again SLOTS tickets later
    for _ in range(SLOTS - 1):
        gate.release(gate.admit(1)[0])
    reused = gate.admit(1)[0]
    assert reused % SLOTS == old % SLOTS and reused != old
    gate.release(old)
    assert gate.in_flight() == 1


def test_off_admits_everything_without_tickets(tmp_path):
    gate = Admission(tmp_path / "table", limit_rows=0)
    assert {gate.admit(1000) for _ in range(10)} == {(0, 0)}
    assert gate.in_flight() == 0


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="limit_rows must be >= 0"):
        Admission(tmp_path / "table", limit_rows=-1)


def _churn(path, limit, n, seen):
    gate = Admission(path, limit_rows=limit)
    peak = 0
    for _ in range(n):
        ticket, before = gate.admit(1)
        if ticket:
            peak = max(peak, before + 1)
            gate.release(ticket)
    seen.put(peak)


def test_processes_racing_never_exceed_the_limit(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    seen = ctx.Queue()
    procs = [ctx.Process(target=_churn, args=(tmp_path / "table", 3, 400, seen)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    peaks = [seen.get(timeout=5) for _ in procs]
    assert max(peaks) <= 3 and Admission(tmp_path / "table", 3).in_flight() == 0


def test_the_supervisor_clears_the_table_as_reset_does(tmp_path):
    """After a reload the supervisor (standard library only: the image runs it as a script) clears the
    server's table: the tickets of requests that failed at the dead stub stop counting, the ticket
    numbers go on, and its idea of the table's path is the stubs' own."""
    from model_repository import supervisor
    from model_repository.runtime.admission import table_path

    pid = 2**22 + os.getpid()  # no server has this pid: a table of its own
    assert supervisor.admission_table(pid) == table_path(pid)
    gate = Admission(table_path(pid), 8)
    try:
        held = [gate.admit(3)[0] for _ in range(3)]
        assert all(held) and gate.in_flight() == 9 and not gate.admit(1)[0]
        supervisor.clear_admission(pid)
        assert gate.in_flight() == 0
        after = gate.admit(1)[0]
        assert after == held[-1] + 1 and gate.in_flight() == 1  # the header (next ticket) is kept
        gate.release(held[0])  # a ticket from before the clear: nothing happens
        assert gate.in_flight() == 1
        supervisor.clear_admission(pid + 1)  # no table: nothing to do, no error
    finally:
        gate.close(unlink=True)
