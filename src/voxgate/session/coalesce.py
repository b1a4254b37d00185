"""Coalescing of repeated identical errors to one client (no error floods). Pure.

Policy: the first error of a kind (code, param, message) goes out at once. Identical errors
within ``window_s`` of it are counted, not sent. The next one after the window goes out with the
count of those suppressed in between. At most ``max_kinds`` kinds are tracked (oldest forgotten).
"""

from __future__ import annotations

ErrorKey = tuple[str | None, str | None, str]


class ErrorCoalescer:
    def __init__(self, window_s: float, max_kinds: int = 64) -> None:
        self.window_s = window_s
        self.max_kinds = max_kinds
        self._seen: dict[ErrorKey, list[float | int]] = {}
        self.suppressed_total = 0

    def admit(self, key: ErrorKey, now: float) -> int | None:
        """Return None to suppress this error, or the number suppressed since the last one sent."""
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window_s:
            suppressed = int(entry[1]) if entry is not None else 0
            if entry is None and len(self._seen) >= self.max_kinds:
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = [now, 0]
            return suppressed
        entry[1] = int(entry[1]) + 1
        self.suppressed_total += 1
        return None
