"""transports/sse_leg.py: one event stream as a client connection (no sockets)."""

from __future__ import annotations

import pytest

from voxgate.session.ports import PeerGone
from voxgate.transports.sse_leg import SseLeg, sse_event


def test_sse_event_numbers_a_frame_and_splits_line_breaks() -> None:
    assert sse_event(7, '{"type":"x"}') == 'id: 7\ndata: {"type":"x"}\n\n'
    pretty = '{\n  "type": "x"\r\n}'
    assert sse_event(8, pretty) == 'id: 8\ndata: {\ndata:   "type": "x"\ndata: }\n\n'


async def test_frames_are_numbered_as_the_replay_log_and_controls_are_kept_here() -> None:
    controls: list[str] = []
    leg = SseLeg(first_seq=5, limit_frames=8, on_control=controls.append)
    assert leg.write_text('{"type":"a"}')
    token = '{"type":"voxgate.session.resumable","resume_token":"vgr_x"}'
    assert leg.write_text(token)
    await leg.send_text('{"type":"b"}')
    chunk = await leg.next_chunk(1.0)
    assert chunk == 'id: 5\ndata: {"type":"a"}\n\nid: 6\ndata: {"type":"b"}\n\n'
    assert controls == [token]
    assert leg.last_seq == 6
    assert leg.started.is_set()


async def test_a_full_stream_refuses_write_text_and_a_ping_counts_once_flushed() -> None:
    leg = SseLeg(first_seq=1, limit_frames=8, high_bytes=10)
    assert leg.write_text('{"type":"long enough"}')
    assert not leg.writable
    assert not leg.write_text('{"type":"b"}')
    chunk = await leg.next_chunk(1.0)
    assert chunk is not None
    assert leg.writable
    await leg.ping()
    chunk = await leg.next_chunk(1.0)
    assert chunk == ": ping\n\n"
    assert leg.heard == 0
    leg.flushed(chunk)
    assert leg.heard == 1
    assert await leg.next_chunk(0.01) == ": heartbeat\n\n"


async def test_close_is_the_last_event_and_drop_hands_back_unread_client_frames() -> None:
    leg = SseLeg(first_seq=1, limit_frames=8)
    await leg.close(1000, "bye")
    assert await leg.next_chunk(1.0) == 'event: close\ndata: {"code":1000,"reason":"bye"}\n\n'
    assert await leg.next_chunk(1.0) is None
    with pytest.raises(PeerGone):
        await leg.send_text("{}")

    other = SseLeg(first_seq=1, limit_frames=8)
    assert other.inbound.put_nowait('{"type":"one"}')
    assert other.inbound.put_nowait(b"\x00\x01")
    assert other.drop() == ['{"type":"one"}', b"\x00\x01"]
    with pytest.raises(PeerGone) as gone:
        await other.receive()
    assert not gone.value.clean  # a dropped stream: a resumable session is detached, not ended
    assert await other.next_chunk(1.0) is None
