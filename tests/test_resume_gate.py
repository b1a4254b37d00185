"""ResumeGate: pending unauthenticated resume handshakes. At the per-address bound and at the
global bound the *oldest* pending one (of that address, or of all) is evicted; a newcomer is
never refused."""

from __future__ import annotations

from collections.abc import Callable

from voxgate.transports.resume_gate import ResumeGate


class Evictions:
    """Evict callbacks that record which handshake was ended."""

    def __init__(self) -> None:
        self.ended: list[str] = []

    def __call__(self, name: str) -> Callable[[], None]:
        return lambda: self.ended.append(name)


def test_per_address_bound_evicts_that_addresses_oldest_handshake() -> None:
    gate = ResumeGate(max_pending=10, max_per_address=2)
    ev = Evictions()
    gate.enter("10.0.0.9", ev("other"))  # older than all, but from another address
    gate.enter("10.0.0.1", ev("a1"))
    gate.enter("10.0.0.1", ev("a2"))
    gate.enter("10.0.0.1", ev("a3"))
    assert ev.ended == ["a1"]
    assert gate.evicted == 1
    assert gate.pending_from("10.0.0.1") == 2
    assert gate.pending_from("10.0.0.9") == 1
    assert len(gate) == 3


def test_global_bound_evicts_the_oldest_and_calls_its_callback() -> None:
    gate = ResumeGate(max_pending=3, max_per_address=10)
    ev = Evictions()
    for i in range(3):
        gate.enter(f"10.0.0.{i}", ev(f"h{i}"))
    gate.enter("10.0.0.9", ev("new"))
    assert ev.ended == ["h0"]
    assert gate.evicted == 1
    assert len(gate) == 3
    gate.enter("10.0.0.8", ev("newer"))
    assert ev.ended == ["h0", "h1"]
    assert gate.pending_from("10.0.0.0") == gate.pending_from("10.0.0.1") == 0


def test_newcomer_is_never_refused() -> None:
    gate = ResumeGate(max_pending=4, max_per_address=2)
    ev = Evictions()
    tickets = {gate.enter("10.0.0.1", ev(f"silent{i}")) for i in range(300)}
    assert len(tickets) == 300  # each one admitted, with its own ticket
    assert len(ev.ended) == 298
    assert gate.pending_from("10.0.0.1") == 2


def test_leave_frees_the_addresses_slot_without_evicting_anyone() -> None:
    gate = ResumeGate(max_pending=10, max_per_address=1)
    ev = Evictions()
    ticket = gate.enter("10.0.0.1", ev("a"))
    gate.leave(ticket)
    assert gate.pending_from("10.0.0.1") == 0
    assert len(gate) == 0
    gate.enter("10.0.0.1", ev("b"))
    assert ev.ended == []


def test_leave_after_eviction_is_harmless() -> None:
    gate = ResumeGate(max_pending=1, max_per_address=1)
    ev = Evictions()
    first = gate.enter("10.0.0.1", ev("first"))
    gate.enter("10.0.0.2", ev("second"))
    gate.leave(first)  # its handshake ends later and leaves: the count was already settled
    gate.leave(first)
    assert len(gate) == 1
    assert gate.pending_from("10.0.0.2") == 1
    assert gate.pending_from("10.0.0.1") == 0
    assert ev.ended == ["first"]


def test_evict_callback_may_leave_its_own_ticket() -> None:
    gate = ResumeGate(max_pending=1, max_per_address=1)
    tickets: list[int] = []

    def abort_and_leave() -> None:
        gate.leave(tickets[0])  # what the aborted handshake's finally does, if it ran at once

    tickets.append(gate.enter("10.0.0.1", abort_and_leave))
    gate.enter("10.0.0.2", lambda: None)
    assert len(gate) == 1
    assert gate.pending_from("10.0.0.2") == 1  # the newcomer is counted once
    assert gate.pending_from("10.0.0.1") == 0  # the evicted one is not counted at all
