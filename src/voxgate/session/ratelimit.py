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
    """The two budgets of one client. ``rate_hz`` or ``realtime_multiple`` 0 disables one.

    :meth:`charge` runs once per client frame on the hot path, so both buckets are refilled
    from one shared timestamp with plain float arithmetic (no method call per bucket); the
    result is the same as two :class:`TokenBucket` s.
    """

    __slots__ = (
        "_audio_burst",
        "_audio_level",
        "_audio_rate",
        "_event_burst",
        "_event_level",
        "_event_rate",
        "_stamp",
        "paced",
        "paced_s",
    )

    def __init__(
        self,
        *,
        rate_hz: float,
        burst: float,
        realtime_multiple: float,
        burst_s: float,
        now: float,
    ) -> None:
        inf = 1e18  # a disabled budget: never below zero (no inf: inf * 0.0 is nan)
        self._event_rate = rate_hz if rate_hz > 0 else inf
        self._event_burst = burst if rate_hz > 0 else inf
        self._event_level = self._event_burst
        self._audio_rate = realtime_multiple if realtime_multiple > 0 else inf
        self._audio_burst = burst_s if realtime_multiple > 0 else inf
        self._audio_level = self._audio_burst
        self._stamp = now
        self.paced = 0  # frames after which the client had to wait
        self.paced_s = 0.0

    def charge(self, audio_s: float, now: float) -> float:
        """Count one frame carrying ``audio_s`` seconds of audio; return the wait in seconds."""
        elapsed = now - self._stamp
        self._stamp = now
        events = self._event_level + elapsed * self._event_rate
        if events > self._event_burst:
            events = self._event_burst
        events -= 1.0
        audio = self._audio_level + elapsed * self._audio_rate
        if audio > self._audio_burst:
            audio = self._audio_burst
        audio -= audio_s
        self._event_level, self._audio_level = events, audio
        if events >= 0.0 and (audio >= 0.0 or not audio_s):
            return 0.0
        wait = -events / self._event_rate if events < 0.0 else 0.0
        if audio_s and audio < 0.0:  # a frame without audio waits for the events budget only
            wait = max(wait, -audio / self._audio_rate)
        self.paced += 1
        self.paced_s += wait
        return wait
