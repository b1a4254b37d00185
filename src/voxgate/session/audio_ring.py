"""AudioRing: a bounded FIFO of audio bytes in fixed-size blocks. Pure.

The session mirror keeps the input audio appended since the last commit here (issue 11). One
contiguous ``bytearray`` would be simplest, but growing it by ``+=`` reallocates ever larger
blocks and leaves the old ones as holes the C allocator cannot hand back: with a few hundred
sessions streaming, the process's resident memory grew to twice what the buffers held. Fixed
blocks of ``block_bytes`` (64 KiB, 0.7 s of 24 kHz PCM16) are all the same size, so a block
freed at the front is the one the next append at the back reuses; there is no per-frame
object; positions are integers.
"""

from __future__ import annotations

from collections import deque

BLOCK_BYTES = 64 * 1024


class AudioRing:
    """Bytes in arrival order; :meth:`drop_front` and :meth:`take_front` consume the oldest."""

    __slots__ = ("_block", "_blocks", "_head", "_size")

    def __init__(self, block_bytes: int = BLOCK_BYTES) -> None:
        self._block = block_bytes
        self._blocks: deque[bytearray] = deque()
        self._head = 0  # bytes of _blocks[0] already consumed
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` at the back (copied into blocks; O(len(data)))."""
        n = len(data)
        if not n:
            return
        self._size += n
        blocks, block = self._blocks, self._block
        view = memoryview(data)
        if blocks:
            last = blocks[-1]
            room = block - len(last)
            if room > 0:
                last += view[:room]
                view = view[room:]
        while len(view):
            piece = bytearray(view[:block])  # a fresh block (the allocator reuses freed ones)
            blocks.append(piece)
            view = view[block:]

    def drop_front(self, n: int) -> None:
        """Forget the oldest ``n`` bytes (at most all of them)."""
        n = min(n, self._size)
        self._size -= n
        n += self._head
        blocks = self._blocks
        while blocks and n >= len(blocks[0]):
            n -= len(blocks.popleft())
        self._head = n if blocks else 0

    def take_front(self, n: int) -> bytes:
        """Remove and return the oldest ``n`` bytes (at most all of them)."""
        out = self.peek(0, n)
        self.drop_front(len(out))
        return out

    def peek(self, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` counted from the oldest, without removing them."""
        start = max(0, start)
        stop = min(stop, self._size)
        if stop <= start:
            return b""
        parts: list[bytes] = []
        pos = -self._head  # position of the current block's first byte, from the oldest
        for blk in self._blocks:
            end = pos + len(blk)
            if end > start:
                lo = max(start - pos, 0)
                hi = min(stop - pos, len(blk))
                parts.append(bytes(blk[lo:hi]))
                if end >= stop:
                    break
            pos = end
        return b"".join(parts)

    def clear(self) -> None:
        self._blocks.clear()
        self._head = 0
        self._size = 0
