"""What ``/readyz`` says about the backend: a cached, rate-limited probe result.

Owns: :class:`BackendHealth`, one per app. ``check()`` runs the backend's probe at most once
per ``ok_ttl_s`` while it passes and once per ``fail_ttl_s`` while it fails; callers arriving
while a probe runs share it (a burst of ``/readyz`` calls opens one upstream connection).
Sessions report what they learn on the way (``note_upstream_auth_failed``: OpenAI refused the
gateway's own key), which ``/readyz`` shows until a later probe passes. Every change of state
is logged once.

Must not: probe per session, or hold anything but the last result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

log = structlog.get_logger(__name__)

#: Problem codes a backend's probe returns (``backends/probe.py``) and ``/readyz`` reports.
UPSTREAM_UNREACHABLE: Final = "upstream_unreachable"
UPSTREAM_AUTH_FAILED: Final = "upstream_auth_failed"
UPSTREAM_REFUSED: Final = "upstream_refused"
LLM_UNREACHABLE: Final = "llm_unreachable"

PROBE_TIMEOUT: Final = "probe_timeout"
PROBE_FAILED: Final = "probe_failed"
#: One sentence per problem code, for ``/readyz`` and the start-up warning.
DETAILS: Final[dict[str, str]] = {
    UPSTREAM_UNREACHABLE: "voxgate cannot reach the upstream realtime server "
    "(check VOXGATE_OPENAI_URL and the network).",
    UPSTREAM_AUTH_FAILED: "the upstream refused voxgate's own key (check OPENAI_API_KEY).",
    UPSTREAM_REFUSED: "the upstream answered with an error instead of a session "
    "(check the model, quota and VOXGATE_OPENAI_URL).",
    LLM_UNREACHABLE: "the local LLM server does not answer (check VOXGATE_LOCAL_LLM_URL).",
    PROBE_TIMEOUT: "the backend did not answer its health probe in time.",
    PROBE_FAILED: "the backend's health probe failed (see the log).",
}

Probe = Callable[[], Awaitable[str | None]]


class BackendHealth:
    """The backend's last known problem (None: fine), refreshed by a rate-limited probe.

    Args:
        probe: the backend's ``probe()``; None for a backend that cannot be probed.
        ok_ttl_s: how long a passing result is reused.
        fail_ttl_s: how long a failing result (or a session's report) is reused.
        timeout_s: a probe taking longer counts as ``probe_timeout``.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        probe: Probe | None,
        *,
        ok_ttl_s: float = 30.0,
        fail_ttl_s: float = 5.0,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._ok_ttl_s = ok_ttl_s
        self._fail_ttl_s = fail_ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._problem: str | None = None
        self._checked_at: float | None = None
        self._running: asyncio.Task[str | None] | None = None
        self.probes_run = 0

    @property
    def problem(self) -> str | None:
        """The last known problem, without probing."""
        return self._problem

    async def check(self) -> str | None:
        """The backend's problem code, probing when the cached result is stale."""
        if self._probe is None or self._fresh():
            return self._problem
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._run(self._probe))
        # shield: a /readyz caller that hangs up must not cancel the probe others wait on
        return await asyncio.shield(self._running)

    def note_upstream_auth_failed(self) -> None:
        """A session saw the upstream refuse the gateway's own key (not a client's)."""
        self._set(UPSTREAM_AUTH_FAILED)

    def _fresh(self) -> bool:
        if self._checked_at is None:
            return False
        ttl = self._ok_ttl_s if self._problem is None else self._fail_ttl_s
        return self._clock() - self._checked_at < ttl

    async def _run(self, probe: Probe) -> str | None:
        self.probes_run += 1
        try:
            async with asyncio.timeout(self._timeout_s):
                problem = await probe()
        except TimeoutError:
            problem = PROBE_TIMEOUT
        except Exception as exc:  # a bug in a probe must not turn /readyz into a 500
            log.error("backend.probe_failed", error=f"{type(exc).__name__}: {exc}")
            problem = PROBE_FAILED
        self._set(problem)
        return problem

    def _set(self, problem: str | None) -> None:
        before, self._problem = self._problem, problem
        self._checked_at = self._clock()
        if problem == before:
            return
        if problem is None:
            log.info("backend.healthy", was=before)
        elif problem == UPSTREAM_AUTH_FAILED:
            log.error("backend.unhealthy", problem=problem, detail=DETAILS[problem])
        else:
            log.warning("backend.unhealthy", problem=problem, detail=DETAILS.get(problem))
