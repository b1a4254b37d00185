"""Test helpers shipped for voxgate's and users' own tests.

:class:`FakeRealtimeServer` is a fake OpenAI Realtime server on a real socket that behaves as
``shared/realtime-protocol.md`` describes the real one (close codes and all). The pure pieces
it stands on are exported too: the responder policy types, test audio helpers, and the
per-connection records.
"""

from voxgate.testing.audio import b64, silence, tone
from voxgate.testing.core import AudioLedger, FakeSession
from voxgate.testing.fake_upstream import FakeRealtimeServer
from voxgate.testing.fault_proxy import (
    Direction,
    DirectionStats,
    FaultProxy,
    Outcome,
    ProxyConnection,
    RefuseMode,
)
from voxgate.testing.handshake import Handshake, mask_key
from voxgate.testing.records import ConnectionRecord
from voxgate.testing.responder import (
    CallTool,
    Reply,
    ResponseContext,
    Say,
    default_responder,
    default_transcriber,
    schema_arguments,
)

__all__ = [
    "AudioLedger",
    "CallTool",
    "ConnectionRecord",
    "Direction",
    "DirectionStats",
    "FakeRealtimeServer",
    "FakeSession",
    "FaultProxy",
    "Handshake",
    "Outcome",
    "ProxyConnection",
    "RefuseMode",
    "Reply",
    "ResponseContext",
    "Say",
    "b64",
    "default_responder",
    "default_transcriber",
    "mask_key",
    "schema_arguments",
    "silence",
    "tone",
]
