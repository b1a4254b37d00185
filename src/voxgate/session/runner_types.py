"""What a session runner is given and what it counts: its config, its counters, a client link.

Plain data, split from :mod:`voxgate.session.runner` so the runner module holds only behaviour.
:class:`ClientLink` carries an ``asyncio.Event`` (set when the client connection leaves the
session), which is why this module imports asyncio.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from voxgate.session.clock import ClockConfig
from voxgate.session.ports import ClientConnection, EncodedTextWriter
from voxgate.session.reconnect import ReconnectPolicy


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    ready_timeout_s: float
    max_session_s: float
    ping_interval_s: float = 0.0
    client_send_timeout_s: float = 10.0
    #: None: the backend cannot be reconnected (the in-process local engine)
    reconnect: ReconnectPolicy | None = None
    #: move to a fresh upstream at a quiet point after this long (None: never)
    recycle_after_s: float | None = None
    #: how long a detached resumable client may take to come back (0: no resume)
    resume_grace_s: float = 0.0
    #: the replay log's bound: bytes of frame text, or (None) ``replay_s`` seconds of the
    #: session's output audio as it travels (resized when the format is known or changes)
    replay_bytes: int | None = None
    replay_s: float = 30.0
    client_events_per_s: float = 0.0
    client_events_burst: float = 0.0
    client_audio_multiple: float = 0.0
    client_audio_burst_s: float = 0.0

    def clock(self) -> ClockConfig:
        return ClockConfig(
            max_session_s=self.max_session_s,
            ping_interval_s=self.ping_interval_s,
            client_send_timeout_s=self.client_send_timeout_s,
            resume_grace_s=self.resume_grace_s,
            recycle_after_s=self.recycle_after_s,
        )


@dataclass(slots=True)
class SessionStats:
    """Counters of one session, logged at close and folded into metrics."""

    started_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    first_audio_at: float | None = None
    client_frames: int = 0
    client_bytes: int = 0
    upstream_frames: int = 0
    upstream_bytes: int = 0
    flushed_frames: int = 0
    flushed_bytes: int = 0
    prebuffer_peak_bytes: int = 0
    reconnects: int = 0
    reconnect_gaps_ms: list[float] = field(default_factory=list)
    recycles: int = 0
    detaches: int = 0
    resumes: int = 0
    stalls: int = 0
    paced_frames: int = 0
    replay_dropped_frames: int = 0
    client_audio_bytes: int = 0  # raw audio received in binary frames (voxgate.v1)


@dataclass(frozen=True, slots=True)
class Restored:
    """A session rebuilt from another node's snapshot (issue 17, transports/handoff.py)."""

    #: events the client says it has (it may be ahead of the snapshot)
    received: int
    #: the events after ``received`` the snapshot still has, in order (replayed first)
    missed: tuple[str, ...]
    #: events the client missed that the snapshot no longer had (reported, not replayed)
    lost: int
    #: its next resume token (the one it presented was consumed)
    token: str
    #: the client's binary audio the snapshot covers (it re-sends what came after)
    input_audio_bytes: int
    #: why it moved: ``node_lost`` (its node died) or ``migrated`` (handed over)
    cause: str


@dataclass(eq=False)
class ClientLink:
    """One client connection attached to a session; ``done`` is set when it leaves.

    ``write_encoded`` is the connection's own (None: it sends only what it encodes itself).
    """

    conn: ClientConnection
    done: asyncio.Event = field(default_factory=asyncio.Event)
    write_encoded: Callable[[bytes], bool] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        conn = self.conn
        if isinstance(conn, EncodedTextWriter):
            self.write_encoded = conn.write_encoded
