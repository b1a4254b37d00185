"""When and how fast to reconnect an upstream after it was lost (issue #6). Pure.

Retryable: the close codes openai-python itself reconnects on (1001, 1005, 1006, 1011, 1012,
1013, 1015; realtime-protocol.md §7), a network loss (no close frame at all), a missed
heartbeat, and the upstream's own ``session_expired`` (its 60-minute cap; voxgate moves the
call to a fresh upstream). Never retried: anything after a fatal upstream error (bad key,
quota, unknown model, beta shape), 3000/4000 closes, and a normal 1000 close the upstream
chose on its own.

Backoff: attempt 0 is immediate (most blips heal at once); attempt n waits an "equal jitter"
delay in ``[d/2, d]`` with ``d = min(max_delay_s, base_delay_s * 2**(n-1))``, so a fleet of
sessions cut at the same moment does not reconnect in lockstep.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxgate.protocol.close import RETRYABLE_CLOSE_CODES


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    attempts: int = 10
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    connect_timeout_s: float = 5.0

    def delay_s(self, attempt: int, rand: float) -> float:
        """Wait before ``attempt`` (0-based); ``rand`` is uniform in [0, 1)."""
        if attempt <= 0:
            return 0.0
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0 ** min(attempt - 1, 60))
        return ceiling / 2 + ceiling / 2 * rand

    def worst_case_s(self) -> float:
        """Longest time all attempts can take (delays plus connect timeouts)."""
        delays = sum(
            min(self.max_delay_s, self.base_delay_s * 2.0 ** min(n - 1, 60))
            for n in range(1, self.attempts)
        )
        return delays + self.attempts * self.connect_timeout_s


def is_retryable_close(code: int | None) -> bool:
    """A close (or a loss without a close frame, ``None``) worth reconnecting after."""
    return code is None or code in RETRYABLE_CLOSE_CODES


#: Upstream error codes no reconnect can fix (a bad key, quota, model, shape): never retried.
NEVER_RETRIED_CODES: frozenset[str] = frozenset(
    {
        "invalid_api_key",
        "insufficient_quota",
        "invalid_model",
        "missing_model",
        "model_not_found",
        "beta_api_shape_disabled",
    }
)
