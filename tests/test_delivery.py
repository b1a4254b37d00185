"""Delivery: the in-process receive side. Sink while the consumer waits, else a bounded queue."""

from __future__ import annotations

import asyncio

import pytest

from voxgate.session.delivery import Delivery
from voxgate.session.ports import PeerGone


async def step() -> None:
    """One scheduling round: a task created just before runs up to its first wait.

    Not a wait for time: asyncio runs ready tasks in order, so this is deterministic.
    """
    await asyncio.sleep(0)


async def within(aw: object, seconds: float = 5) -> object:
    async with asyncio.timeout(seconds):
        return await aw  # type: ignore[misc]


class Sink:
    """Records what it was offered; takes what ``accept`` says."""

    def __init__(self, accept: object = lambda frame: True) -> None:
        self.offered: list[str | bytes] = []
        self.accept = accept

    def __call__(self, frame: str | bytes) -> bool:
        self.offered.append(frame)
        return bool(self.accept(frame))  # type: ignore[operator]


# ---------------------------------------------------------------------------- sink


async def test_sink_takes_a_frame_while_receive_waits_with_nothing_queued() -> None:
    d = Delivery(4)
    d.sink = sink = Sink(lambda frame: frame == "a")
    reading = asyncio.create_task(d.receive())
    await step()
    assert d.put_nowait("a")
    assert len(d) == 0
    assert not reading.done()
    assert d.put_nowait(b"b")  # declined: queued, and receive() returns it
    assert await within(reading) == b"b"
    assert sink.offered == ["a", b"b"]


async def test_nothing_is_offered_while_the_consumer_is_busy() -> None:
    d = Delivery(4)
    d.sink = sink = Sink()
    assert d.put_nowait("1")  # nobody waits in receive()
    assert sink.offered == []
    assert await within(d.receive()) == "1"


async def test_nothing_is_offered_while_frames_are_queued() -> None:
    d = Delivery(4)
    d.sink = sink = Sink(lambda frame: frame != "1")
    reading = asyncio.create_task(d.receive())
    await step()
    d.put_nowait("1")  # declined, queued; the consumer is woken but has not run yet
    d.put_nowait("2")
    assert sink.offered == ["1"]
    assert await within(reading) == "1"
    assert await within(d.receive()) == "2"


async def test_offer_reports_whether_the_sink_took_the_frame() -> None:
    d = Delivery(4)
    assert not d.offer("x")  # no sink
    d.sink = Sink()
    assert not d.offer("x")  # nobody waiting
    reading = asyncio.create_task(d.receive())
    await step()
    assert d.offer("x")
    reading.cancel()


# ---------------------------------------------------------------------------- bound


async def test_put_nowait_refuses_when_full_and_keeps_nothing() -> None:
    d = Delivery(2)
    assert d.put_nowait("a")
    assert d.put_nowait("b")
    assert not d.put_nowait("c")
    assert len(d) == 2
    assert [await d.receive(), await d.receive()] == ["a", "b"]


async def test_put_waits_while_full_and_proceeds_in_order_when_room_is_made() -> None:
    d = Delivery(2)
    d.put_nowait("a")
    d.put_nowait("b")
    putting = asyncio.create_task(d.put("c"))
    await step()
    assert not putting.done()
    assert len(d) == 2
    assert await d.receive() == "a"
    await within(putting)
    assert [await d.receive(), await d.receive()] == ["b", "c"]


async def test_push_front_jumps_the_queue_even_when_full() -> None:
    d = Delivery(1)
    d.put_nowait("data")
    d.push_front("control")
    assert [await d.receive(), await d.receive()] == ["control", "data"]


# ---------------------------------------------------------------------------- end


async def test_end_lets_queued_frames_drain_then_raises_peer_gone() -> None:
    d = Delivery(4)
    d.put_nowait("a")
    d.put_nowait("b")
    gone = PeerGone(1000, "bye", clean=True)
    d.end(gone)
    assert d.put_nowait("late")  # taken and dropped: nobody will read it
    assert [await d.receive(), await d.receive()] == ["a", "b"]
    with pytest.raises(PeerGone) as caught:
        await d.receive()
    assert caught.value is gone


async def test_end_with_drop_queued_raises_at_once() -> None:
    d = Delivery(4)
    d.put_nowait("a")
    d.end(PeerGone(None), drop_queued=True)
    assert len(d) == 0
    with pytest.raises(PeerGone):
        await d.receive()


async def test_end_wakes_a_waiting_receiver_and_a_blocked_producer() -> None:
    d = Delivery(1)
    reading = asyncio.create_task(d.receive())
    await step()
    gone = PeerGone(None)
    d.end(gone)
    with pytest.raises(PeerGone):
        await within(reading)
    full = Delivery(1)
    full.put_nowait("a")
    putting = asyncio.create_task(full.put("b"))
    await step()
    full.end(gone, drop_queued=True)
    await within(putting)  # returns: the frame is dropped, not delivered
    with pytest.raises(PeerGone):
        await full.receive()


async def test_first_end_wins() -> None:
    d = Delivery(1)
    first = PeerGone(1001, clean=True)
    d.end(first)
    d.end(PeerGone(None))
    with pytest.raises(PeerGone) as caught:
        await d.receive()
    assert caught.value is first
