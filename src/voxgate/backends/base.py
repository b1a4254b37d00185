"""The upstream interface every backend implements (OpenAI over WebSocket, the local engine).

The types live with the session that uses them (:mod:`voxgate.session.ports`); this module
names them for backends, so a backend imports ``voxgate.backends.base`` and never the session's
internals.
"""

from __future__ import annotations

from voxgate.session.ports import (
    Backend,
    FrameSink,
    PeerGone,
    UpstreamConnectError,
    UpstreamConnection,
    UpstreamTarget,
)

__all__ = [
    "Backend",
    "FrameSink",
    "PeerGone",
    "UpstreamConnectError",
    "UpstreamConnection",
    "UpstreamTarget",
]
