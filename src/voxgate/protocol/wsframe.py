"""RFC 6455 framing, sans I/O: what voxgate needs to write frames itself and to parse a server's.

Two users. The client-facing adapter writes unmasked server frames straight to its transport on
the hot path (:func:`frame_header`). voxgate's own upstream WebSocket client
(:mod:`voxgate.backends.ws_client`) parses what a server sends with :class:`FrameParser`
(unmasked frames, fragmentation, control frames between fragments, size limit) and writes
masked client frames (:func:`masked_frame`).

Errors are :class:`FrameError` with the close code the RFC asks for (1002 protocol error, 1009
too big). UTF-8 validation of text is the caller's (it decodes anyway). Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack
_UNPACK2 = struct.Struct("!H").unpack_from
_UNPACK8 = struct.Struct("!Q").unpack_from

Masker = Callable[[bytes, bytes], bytes | bytearray]
"""``masker(key4, payload) -> masked payload``."""


class FrameError(Exception):
    """The peer broke RFC 6455; close the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def frame_header(opcode: int, length: int, *, mask_bit: int = 0) -> bytes:
    """The header of one final frame (FIN set) of ``length`` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return _LEN1(first, mask_bit | length)
    if length < 65536:
        return _LEN2(first, mask_bit | 126, length)
    return _LEN3(first, mask_bit | 127, length)


def xor_mask(key: bytes, payload: bytes) -> bytes:
    """Mask (or unmask) ``payload`` with a 4-byte ``key`` (pure Python, big-int XOR)."""
    n = len(payload)
    if not n:
        return b""
    repeated = int.from_bytes(key * ((n >> 2) + 1), "little") & ((1 << (8 * n)) - 1)
    return (int.from_bytes(payload, "little") ^ repeated).to_bytes(n, "little")


def masked_frame(opcode: int, payload: bytes, key: bytes, masker: Masker = xor_mask) -> bytes:
    """A complete masked client frame (RFC 6455 §5.3)."""
    return bytes(frame_header(opcode, len(payload), mask_bit=0x80) + key + masker(key, payload))


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame: the code, then at most 123 bytes of UTF-8 reason."""
    return code.to_bytes(2, "big") + reason.encode("utf-8")[:123]


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """``(code, reason)`` of a received close frame (``(None, "")`` when it carries none).

    Raises:
        FrameError: a 1-byte payload or a reason that is not UTF-8.
    """
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise FrameError(1002, "close frame with a 1-byte payload")
    code = _UNPACK2(payload)[0]
    if not _sendable_close_code(code):
        raise FrameError(1002, f"close code {code} may not be sent (RFC 6455 §7.4)")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(1007, "close reason is not UTF-8") from None
    return code, reason


def _sendable_close_code(code: int) -> bool:
    """RFC 6455 §7.4: 1000-1003, 1007-1014 and 3000-4999; never 1004-1006, 1015, or other."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class FrameParser:
    """Turns the bytes a server sends into whole messages. Not thread-safe; one per connection.

    :meth:`feed` returns ``(opcode, payload)`` for every message completed by the new bytes:
    data messages (``OP_TEXT``/``OP_BINARY``) reassembled from their fragments, and control
    frames (``OP_CLOSE``/``OP_PING``/``OP_PONG``) as they come, even between fragments.
    A frame that is still arriving costs one append per chunk (its size is known from its
    header), never a re-parse, so a large message costs linear time.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._need = 0  # bytes the incomplete frame at the head of _buf needs in total
        self._frag_opcode = 0
        self._frag = bytearray()
        #: nothing held (no partial frame, no unfinished fragmented message): a caller may
        #: take a whole frame itself without going through :meth:`feed`
        self.idle = True

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Parse ``data``; return the messages it completes, in order.

        Raises:
            FrameError: a masked, reserved, oversized or malformed frame.
        """
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                self.idle = False
                return []
            data = bytes(self._buf)
            self._buf.clear()
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(data)
        need = 0
        while end - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            if b1 & 0x80:
                raise FrameError(1002, "a server must not mask its frames")
            if b0 & 0x70:
                raise FrameError(1002, "reserved bits set (no extension was negotiated)")
            length = b1 & 0x7F
            p = pos + 2
            if length == 126:
                if end - p < 2:
                    break
                length = _UNPACK2(data, p)[0]
                p += 2
            elif length == 127:
                if end - p < 8:
                    break
                length = _UNPACK8(data, p)[0]
                p += 8
            if length > self.max_message_bytes:
                raise FrameError(1009, f"frame of {length} bytes is over the limit")
            if end - p < length:
                need = p - pos + length
                break
            self._frame(b0, data[p : p + length], out)
            pos = p + length
        if pos < end:
            self._buf += data[pos:]
        self._need = need
        self.idle = not self._buf and not self._frag_opcode
        return out

    def _frame(self, b0: int, payload: bytes, out: list[tuple[int, bytes]]) -> None:
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if opcode >= 0x8:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise FrameError(1002, f"reserved control opcode {opcode}")
            if not fin or len(payload) > 125:
                raise FrameError(1002, "fragmented or oversized control frame")
            out.append((opcode, payload))
        elif opcode == OP_CONT:
            if not self._frag_opcode:
                raise FrameError(1002, "continuation frame without a first frame")
            self._frag += payload
            if len(self._frag) > self.max_message_bytes:
                raise FrameError(1009, "fragmented message is over the limit")
            if fin:
                out.append((self._frag_opcode, bytes(self._frag)))
                self._frag_opcode = 0
                self._frag = bytearray()
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._frag_opcode:
                raise FrameError(1002, "new message before the last one was finished")
            if fin:
                out.append((opcode, payload))
            else:
                self._frag_opcode = opcode
                self._frag = bytearray(payload)
        else:
            raise FrameError(1002, f"reserved data opcode {opcode}")
