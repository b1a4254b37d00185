"""The ordered pre-ready buffer: client frames that arrive before the upstream is ready.

Policy at the limit: refuse (``push`` returns False) and the session ends with a clear error;
nothing is ever dropped silently, and frames leave in exactly the order they came. Bounded by
the sum of frame lengths in characters (frames are JSON text; audio is ASCII base64, so
characters equal bytes on the wire for the traffic that fills it). Pure.
"""

from __future__ import annotations

from collections import deque


class PreBuffer:
    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._frames: deque[str] = deque()
        self._bytes = 0
        self.total_frames = 0
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def push(self, frame: str) -> bool:
        """Append ``frame``; return False (and keep nothing) if it would pass the limit."""
        size = len(frame)
        if self._bytes + size > self.limit_bytes:
            return False
        self._frames.append(frame)
        self._bytes += size
        self.total_frames += 1
        self.total_bytes += size
        return True

    def pop(self) -> str | None:
        """Remove and return the oldest frame, or None when empty."""
        if not self._frames:
            return None
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        return frame
