"""RFC 6455 framing, sans I/O: bytes in, messages or a FrameError with its close code out."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxgate.protocol.wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    close_payload,
    frame_header,
    masked_frame,
    parse_close,
    xor_mask,
)

LIMIT = 1 << 20


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """A server frame (unmasked), built independently of :func:`frame_header`."""
    n = len(payload)
    first = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = struct.pack("!BB", first, n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 126, n)
    else:
        head = struct.pack("!BBQ", first, 127, n)
    return head + payload


def parse(data: bytes, limit: int = LIMIT) -> list[tuple[int, bytes]]:
    return FrameParser(limit).feed(data)


def error_code(data: bytes, limit: int = LIMIT) -> int:
    with pytest.raises(FrameError) as caught:
        parse(data, limit)
    return caught.value.code


# ---------------------------------------------------------------------------- §5.6 data


def test_text_and_binary_messages() -> None:
    data = frame(OP_TEXT, "héllo".encode()) + frame(OP_BINARY, b"\x00\xff")
    assert parse(data) == [(OP_TEXT, "héllo".encode()), (OP_BINARY, b"\x00\xff")]


def test_empty_messages() -> None:
    assert parse(frame(OP_TEXT) + frame(OP_BINARY)) == [(OP_TEXT, b""), (OP_BINARY, b"")]


def test_16_bit_and_64_bit_lengths() -> None:
    mid, big = b"m" * 126, b"b" * 65536
    assert parse(frame(OP_BINARY, mid) + frame(OP_BINARY, big)) == [
        (OP_BINARY, mid),
        (OP_BINARY, big),
    ]


# ---------------------------------------------------------------------------- §5.4 fragments


def test_fragments_are_reassembled_with_control_frames_delivered_between() -> None:
    data = (
        frame(OP_TEXT, b"one ", fin=False)
        + frame(OP_PING, b"p")
        + frame(OP_CONT, b"two ", fin=False)
        + frame(OP_PONG, b"q")
        + frame(OP_CONT, b"three")
        + frame(OP_BINARY, b"next")
    )
    assert parse(data) == [
        (OP_PING, b"p"),
        (OP_PONG, b"q"),
        (OP_TEXT, b"one two three"),
        (OP_BINARY, b"next"),
    ]


def test_message_split_across_feeds_is_returned_once_complete() -> None:
    parser = FrameParser(LIMIT)
    data = frame(OP_TEXT, b"x" * 300)
    assert parser.feed(data[:1]) == []
    assert parser.feed(data[1:3]) == []
    assert parser.feed(data[3:200]) == []
    assert parser.feed(data[200:] + frame(OP_TEXT, b"y")) == [
        (OP_TEXT, b"x" * 300),
        (OP_TEXT, b"y"),
    ]


payloads = st.binary(max_size=70_000) | st.binary(max_size=130)
messages = st.lists(
    st.tuples(st.sampled_from([OP_TEXT, OP_BINARY]), payloads, st.integers(1, 3)),
    min_size=1,
    max_size=5,
)


def encode(msgs: list[tuple[int, bytes, int]]) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Each message in ``parts`` fragments with a ping after every fragment but the last."""
    out, expected = b"", []
    for opcode, payload, parts in msgs:
        step = max(1, -(-len(payload) // parts))
        chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            out += frame(opcode if i == 0 else OP_CONT, chunk, fin=last)
            if not last:
                out += frame(OP_PING, b"%d" % i)
                expected.append((OP_PING, b"%d" % i))
        expected.append((opcode, payload))
    return out, expected


@given(msgs=messages, cuts=st.lists(st.integers(0, 200_000), max_size=8))
def test_any_split_of_the_stream_yields_the_same_messages(
    msgs: list[tuple[int, bytes, int]], cuts: list[int]
) -> None:
    data, expected = encode(msgs)
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    parser = FrameParser(LIMIT)
    got = []
    for a, b in itertools.pairwise(bounds):
        got += parser.feed(data[a:b])
    assert got == expected


small_messages = st.lists(
    st.tuples(st.sampled_from([OP_TEXT, OP_BINARY]), st.binary(max_size=300), st.integers(1, 3)),
    min_size=1,
    max_size=3,
)


@given(msgs=small_messages)
def test_byte_at_a_time_yields_the_same_messages(msgs: list[tuple[int, bytes, int]]) -> None:
    data, expected = encode(msgs)
    parser = FrameParser(LIMIT)
    got = []
    for i in range(len(data)):
        got += parser.feed(data[i : i + 1])
    assert got == expected


# ---------------------------------------------------------------------------- errors


def test_masked_server_frame_is_a_protocol_error() -> None:
    assert error_code(masked_frame(OP_TEXT, b"hi", b"abcd")) == 1002


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10])
def test_reserved_bits_are_a_protocol_error(rsv: int) -> None:
    assert error_code(frame(OP_TEXT, b"hi", rsv=rsv)) == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_reserved_opcodes_are_a_protocol_error(opcode: int) -> None:
    assert error_code(frame(opcode, b"")) == 1002


def test_frame_over_the_limit_is_too_big_before_its_payload_arrives() -> None:
    header_only = frame(OP_BINARY, b"x" * 101)[:2]
    assert error_code(header_only, limit=100) == 1009


def test_fragmented_message_over_the_limit_is_too_big() -> None:
    data = frame(OP_TEXT, b"x" * 60, fin=False) + frame(OP_CONT, b"x" * 60)
    assert error_code(data, limit=100) == 1009


def test_continuation_without_a_first_frame_is_a_protocol_error() -> None:
    assert error_code(frame(OP_CONT, b"orphan")) == 1002


def test_new_message_before_the_last_one_finished_is_a_protocol_error() -> None:
    assert error_code(frame(OP_TEXT, b"a", fin=False) + frame(OP_BINARY, b"b")) == 1002


def test_fragmented_control_frame_is_a_protocol_error() -> None:
    assert error_code(frame(OP_PING, b"p", fin=False)) == 1002


def test_control_frame_over_125_bytes_is_a_protocol_error() -> None:
    assert error_code(frame(OP_PING, b"p" * 126)) == 1002


def test_close_payload_round_trips() -> None:
    assert parse_close(close_payload(1001, "going away")) == (1001, "going away")
    assert parse_close(b"") == (None, "")


def test_close_reason_is_cut_to_fit_a_control_frame() -> None:
    payload = close_payload(1000, "é" * 100)
    assert len(payload) <= 125
    assert parse(frame(OP_CLOSE, payload)) == [(OP_CLOSE, payload)]


def test_one_byte_close_payload_is_a_protocol_error() -> None:
    with pytest.raises(FrameError) as caught:
        parse_close(b"\x03")
    assert caught.value.code == 1002


def test_non_utf8_close_reason_is_invalid_data() -> None:
    with pytest.raises(FrameError) as caught:
        parse_close(b"\x03\xe8\xff\xfe")
    assert caught.value.code == 1007


@pytest.mark.parametrize("code", [0, 999, 1005, 1006, 1015])
def test_close_code_that_must_not_be_sent_is_a_protocol_error(code: int) -> None:
    with pytest.raises(FrameError) as caught:
        parse_close(code.to_bytes(2, "big"))
    assert caught.value.code == 1002


# ---------------------------------------------------------------------------- writing


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_frame_header_length_encodings(length: int, header: bytes) -> None:
    assert frame_header(OP_TEXT, length) == header
    assert frame_header(OP_TEXT, length, mask_bit=0x80)[1] == header[1] | 0x80


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_unmasked_frame_from_frame_header_parses(length: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    assert parse(frame_header(OP_BINARY, length) + payload) == [(OP_BINARY, payload)]


def unmask(data: bytes) -> tuple[int, int, bytes]:
    """(opcode, fin, payload) of one masked client frame, unmasked byte by byte."""
    b0, b1 = data[0], data[1]
    assert b1 & 0x80, "client frames must be masked"
    n, p = b1 & 0x7F, 2
    if n == 126:
        (n,), p = struct.unpack_from("!H", data, 2), 4
    elif n == 127:
        (n,), p = struct.unpack_from("!Q", data, 2), 10
    key, body = data[p : p + 4], data[p + 4 :]
    assert len(body) == n
    return b0 & 0x0F, b0 & 0x80, bytes(c ^ key[i % 4] for i, c in enumerate(body))


@given(
    opcode=st.sampled_from([OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE]),
    payload=st.binary(max_size=70_000) | st.binary(max_size=200),
    key=st.binary(min_size=4, max_size=4),
)
def test_masked_frame_round_trips_through_unmasking(
    opcode: int, payload: bytes, key: bytes
) -> None:
    assert unmask(masked_frame(opcode, payload, key)) == (opcode, 0x80, payload)


@given(key=st.binary(min_size=4, max_size=4), payload=st.binary(max_size=2000))
def test_xor_mask_is_a_byte_by_byte_xor(key: bytes, payload: bytes) -> None:
    expected = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    assert xor_mask(key, payload) == expected
    assert xor_mask(key, expected) == payload
