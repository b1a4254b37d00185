"""ByteRing: a bounded FIFO of bytes in fixed, preallocated blocks. Pure.

The session mirror keeps the input audio appended since the last commit in one (issue 11), and
the replay log the frames a resumable client may ask for again. One growing ``bytearray``
would be simplest, but growing it reallocates ever larger blocks and leaves holes the C
allocator keeps: with a few hundred streaming sessions the process's resident memory grew to
twice what the buffers held. Here every block is allocated once at its full size
(``block_bytes``, 16 KiB: 0.34 s of 24 kHz PCM16) and filled in place, so all blocks are the
same size and a block freed at the front is what the next one at the back reuses; at most one
partly filled block is slack; there is no object per frame; positions are integers.
"""

from __future__ import annotations

from collections import deque

BLOCK_BYTES = 16 * 1024


class ByteRing:
    """Bytes in arrival order; :meth:`drop_front` and :meth:`take_front` consume the oldest."""

    __slots__ = ("_block", "_blocks", "_fill", "_head", "_size")

    def __init__(self, block_bytes: int = BLOCK_BYTES) -> None:
        self._block = block_bytes
        self._blocks: deque[bytearray] = deque()
        self._head = 0  # bytes of _blocks[0] already consumed
        self._fill = block_bytes  # bytes written into _blocks[-1] (full: a new block is next)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def allocated_bytes(self) -> int:
        """What the blocks take in memory (the contents plus at most one block of slack)."""
        return len(self._blocks) * self._block

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Add ``data`` at the back (copied into blocks; O(len(data))); return the new size."""
        n = len(data)
        fill = self._fill
        if 0 < n <= self._block - fill:  # the common case: it fits the current block
            self._blocks[-1][fill : fill + n] = data
            self._fill = fill + n
            self._size += n
            return self._size
        if not n:
            return self._size
        self._size += n
        block = self._block
        view = memoryview(data)
        pos = 0
        while pos < n:
            fill = self._fill
            if fill == block:
                self._blocks.append(bytearray(block))
                fill = 0
            take = min(block - fill, n - pos)
            self._blocks[-1][fill : fill + take] = view[pos : pos + take]
            self._fill = fill + take
            pos += take
        return self._size

    def drop_front(self, n: int) -> None:
        """Forget the oldest ``n`` bytes (at most all of them)."""
        n = min(n, self._size)
        if not n:
            return
        self._size -= n
        head = self._head + n
        blocks, block = self._blocks, self._block
        while len(blocks) > 1 and head >= block:
            blocks.popleft()
            head -= block
        if self._size == 0:  # empty: keep no block (an idle session holds nothing)
            blocks.clear()
            head, self._fill = 0, block
        self._head = head

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
        block = self._block
        parts: list[bytes] = []
        at = self._head + start  # absolute position in the block sequence
        end = self._head + stop
        while at < end:
            index, offset = divmod(at, block)
            take = min(block - offset, end - at)
            parts.append(bytes(self._blocks[index][offset : offset + take]))
            at += take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def clear(self) -> None:
        self._blocks.clear()
        self._head = 0
        self._fill = self._block
        self._size = 0


#: The mirror's name for it: pending input audio.
AudioRing = ByteRing
