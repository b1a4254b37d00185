"""Client input limits: events per second and audio faster than real time. Pure.

Policy: *pace, never drop.* A client over its budget is not answered with errors or losses;
voxgate stops reading its socket until the budget refills, so TCP flow control slows the
sender and nothing it sent is lost (issue #6.5, #7.3). Two token buckets per session:

* events: ``rate_hz`` frames per second, bursts up to ``burst`` frames;
* audio: ``realtime_multiple`` seconds of input audio per second of wall time, bursts up to
  ``burst_s`` seconds of audio (a client re-sending what it captured during a network gap,
  or a test pushing a file, stays within it).

:meth:`ClientPacer.charge` costs two float updates per frame and returns how long to wait.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("burst", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.level = burst
        self.stamp = now

    def take(self, amount: float, now: float) -> float:
        """Spend ``amount`` (may go negative); return seconds until the level is back to 0."""
        level = min(self.burst, self.level + (now - self.stamp) * self.rate) - amount
        self.level, self.stamp = level, now
        return -level / self.rate if level < 0 else 0.0


class ClientPacer:
    """The two budgets of one client. ``rate_hz`` or ``realtime_multiple`` 0 disables one."""

    def __init__(
        self,
        *,
        rate_hz: float,
        burst: float,
        realtime_multiple: float,
        burst_s: float,
        now: float,
    ) -> None:
        self._events = TokenBucket(rate_hz, burst, now) if rate_hz > 0 else None
        self._audio = (
            TokenBucket(realtime_multiple, burst_s, now) if realtime_multiple > 0 else None
        )
        self.paced = 0  # frames after which the client had to wait
        self.paced_s = 0.0

    def charge(self, audio_s: float, now: float) -> float:
        """Count one frame carrying ``audio_s`` seconds of audio; return the wait in seconds."""
        wait = self._events.take(1.0, now) if self._events is not None else 0.0
        if audio_s and self._audio is not None:
            wait = max(wait, self._audio.take(audio_s, now))
        if wait:
            self.paced += 1
            self.paced_s += wait
        return wait
