"""Settings (DESIGN.md "Config"): environment with the ``VOXGATE_`` prefix, ``.env``, CLI overrides.

``OPENAI_API_KEY`` keeps its standard name. Secrets are ``SecretStr`` so they never print in a
``repr`` or a log line.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Every knob of a voxgate process. Defaults serve the offline local engine on loopback."""

    model_config = SettingsConfigDict(
        env_prefix="VOXGATE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    backend: Literal["local", "openai"] = "local"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    openai_url: str = "wss://api.openai.com/v1/realtime"
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "VOXGATE_OPENAI_API_KEY")
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    secret: SecretStr | None = None
    redis_url: str | None = None

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"

    default_model: str = "gpt-realtime"
    #: Connect + ``session.created`` + embedded config applied, or the session fails.
    ready_timeout_s: float = Field(default=10.0, gt=0)
    #: Client events held before the upstream is ready, in bytes of frame text.
    prebuffer_bytes: int = Field(default=4 * MIB, ge=1024)
    #: Largest client frame accepted (OpenAI allows 15 MiB of audio per append, ~20 MiB base64).
    max_frame_bytes: int = Field(default=24 * MIB, ge=64 * 1024)
    #: Largest upstream frame accepted.
    max_upstream_frame_bytes: int = Field(default=32 * MIB, ge=64 * 1024)
    #: Longest session started with a server key; ek_ keys carry their own cap.
    max_session_s: float = Field(default=4 * 3600.0, gt=0)
    #: Concurrent sessions in this process, and per subject (the end user of an ek_ key).
    max_sessions: int = Field(default=1000, ge=1)
    max_sessions_per_subject: int = Field(default=5, ge=1)
    #: A client whose socket accepts no data for this long is treated as gone (0 disables).
    client_send_timeout_s: float = Field(default=10.0, ge=0)
    #: WebSocket ping interval towards clients and upstreams (0 disables). 10 s measured safe
    #: (bench/resilience.py heartbeat: pongs up to 9.9 s late under overload killed nothing at
    #: 10 s; 1 s dropped sessions); a dead peer is found 20-30 s after its last frame.
    ping_interval_s: float = Field(default=10.0, ge=0)
    #: Identical errors to one client within this window are coalesced into one, with a count.
    error_coalesce_window_s: float = Field(default=1.0, ge=0)
    #: glibc's mmap threshold, fixed at start so freed socket buffers return to the kernel
    #: (``voxgate/runtime.py``); 0 leaves the allocator's own adaptive threshold.
    malloc_mmap_threshold_bytes: int = Field(default=512 * 1024, ge=0)
    #: Largest HTTP header field (ek_ keys with long instructions travel in headers).
    max_header_bytes: int = Field(default=64 * 1024, ge=8190)
    #: A client must send a complete request head (and a POST body) within this long; at most
    #: this many connections may be half-open at once (the oldest is closed beyond it).
    http_request_timeout_s: float = Field(default=10.0, gt=0)
    http_max_pending_connections: int = Field(default=256, ge=1)

    # upstream resilience (issue 6)
    #: Attempts to reconnect a lost upstream, backoff (equal jitter) and per-attempt timeout.
    reconnect_attempts: int = Field(default=10, ge=0, le=100)
    reconnect_base_delay_s: float = Field(default=0.2, gt=0)
    reconnect_max_delay_s: float = Field(default=5.0, gt=0)
    reconnect_connect_timeout_s: float = Field(default=5.0, gt=0)
    #: Move a session to a fresh upstream at a quiet point after this long (OpenAI caps a
    #: session at 60 minutes); 0 disables.
    upstream_max_session_s: float = Field(default=55 * 60.0, ge=0)
    #: Session mirror bounds: conversation items (bytes of JSON), and, in seconds of the
    #: session's input format, audio since the last commit and recent user turns' audio (44 s
    #: is 2 MiB of 24 kHz PCM16, 344 KiB of G.711). ``*_bytes`` set a byte bound instead.
    mirror_items_bytes: int = Field(default=512 * 1024, ge=4096)
    mirror_audio_s: float = Field(default=44.0, ge=1.0)
    mirror_turn_audio_s: float = Field(default=22.0, ge=0)
    mirror_audio_bytes: int | None = Field(default=None, ge=48_000)
    mirror_turn_audio_bytes: int | None = Field(default=None, ge=0)
    #: Client input limits (pacing, never dropping): frames per second with a burst, and audio
    #: faster than real time by this multiple with a burst of seconds of audio; 0 disables.
    client_max_events_per_s: float = Field(default=250.0, ge=0)
    client_events_burst: float = Field(default=1000.0, ge=1)
    client_max_audio_realtime: float = Field(default=4.0, ge=0)
    client_audio_burst_s: float = Field(default=30.0, ge=1)

    # client resilience (issue 7)
    #: How long a dropped voxgate.v1 client may take to resume (0 disables resume).
    resume_grace_s: float = Field(default=30.0, ge=0)
    #: Server events kept per resumable session for replay: this many seconds of the session's
    #: output audio as it travels (base64 in JSON; 30 s is 2 MiB for 24 kHz PCM16, 341 KiB for
    #: G.711), or ``replay_bytes`` of frame text when set. Clients that ack keep ~1 s.
    replay_s: float = Field(default=30.0, ge=1.0)
    replay_bytes: int | None = Field(default=None, ge=64 * 1024)
    #: How long a resuming connection may take to send its resume request (it is
    #: unauthenticated until then, so the wait is short).
    resume_wait_s: float = Field(default=2.0, gt=0)
    #: Unauthenticated resume handshakes waiting at once (the oldest is dropped for a new one)
    #: and per client address (more are refused).
    resume_max_pending: int = Field(default=256, ge=1)
    resume_max_pending_per_address: int = Field(default=8, ge=1)

    # several nodes on one Redis (issue 17, docs/operations.md)
    #: Key prefix in ``VOXGATE_REDIS_URL``'s database (several deployments may share one Redis).
    redis_prefix: str = Field(default="vg", min_length=1, max_length=64)
    #: This process's node id in the deployment (random per process when unset).
    node_id: str | None = Field(default=None, min_length=1, max_length=64)
    #: Snapshots of resumable sessions (what another node needs to rebuild one): written this
    #: long after the conversation changes, and at least this often while anything changes;
    #: what a node that dies loses is bounded by it (docs/operations.md, "What a node death
    #: loses").
    snapshot_debounce_s: float = Field(default=0.05, ge=0, le=5)
    snapshot_interval_s: float = Field(default=1.0, gt=0, le=60)
    #: Events a snapshot keeps for a client that missed them (non-audio events after the
    #: client's last ack; a hand-off from a live node keeps the whole replay log instead).
    snapshot_replay_bytes: int = Field(default=64 * 1024, ge=0, le=16 * MIB)
    #: Largest snapshot (items + turn audio kept for untranscribed turns); oldest items first.
    snapshot_max_bytes: int = Field(default=2 * MIB, ge=64 * 1024, le=64 * MIB)
    #: Node heartbeat period (a node is dead after three missed beats) and how long a resume
    #: landing on another node waits for the owning node to hand the session over.
    node_heartbeat_s: float = Field(default=2.0, gt=0, le=60)
    handoff_timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: Draining hands opted-in sessions off at a quiet point (no response running, nobody
    #: speaking), or regardless once this share of the drain timeout has passed.
    migrate_quiet_share: float = Field(default=0.5, ge=0, le=1)
    #: Clients told to move per second while draining (the other nodes adopt at this rate).
    migrate_rate_per_s: float = Field(default=50.0, gt=0)

    # tracing (issue 17): OpenTelemetry spans per session (connect, turns, tool calls,
    # reconnects, resumes). ``off`` (default), ``otlp`` (OTLP/HTTP to
    # ``OTEL_EXPORTER_OTLP_ENDPOINT``, the standard variable), or ``console`` (stderr).
    traces: Literal["off", "otlp", "console"] = "off"

    # more ways in (issue 15)
    #: Serve clients that speak the retired beta protocol (``OpenAI-Beta: realtime=v1``)
    #: through a translating adapter; false refuses them as OpenAI does now.
    beta_clients: bool = True
    #: HTTP/SSE fallback: a heartbeat comment on an idle event stream this often (proxies
    #: close silent streams), and client frames a session holds while its stream reconnects.
    sse_heartbeat_s: float = Field(default=15.0, gt=0)
    sse_pending_frames: int = Field(default=512, ge=16)
    #: TLS: certificate chain and private key (PEM) to serve https/wss; or a development
    #: certificate made (and kept) in ``tls_dev_dir`` for this machine's names.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_dev: bool = False
    tls_dev_dir: str | None = None
    #: Reverse proxies (addresses or networks, comma-separated) whose ``X-Forwarded-For``,
    #: ``-Proto`` and ``-Host`` voxgate believes; empty: the headers are ignored.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # local engine (issue 4)
    local_llm_url: str | None = None
    local_llm_model: str = "llama3.2"
    local_llm_api_key: SecretStr | None = None
    #: ASR decoders (users mid-utterance at once; ~95 MB each) and the final-transcript pass:
    #: ``stream`` (the live decoder's result, fast) or ``batch`` (re-decode, ~300 ms slower).
    local_asr_decoders: int = Field(default=4, ge=1, le=64)
    local_asr_final: Literal["stream", "batch"] = "stream"
    #: Speech recogniser (issue 13): ``whisper`` (CTranslate2, the bundled tiny.en) or
    #: ``pocketsphinx`` (smallest install, much less accurate).
    asr: Literal["whisper", "pocketsphinx"] = "whisper"
    #: A CTranslate2 Whisper model folder to use instead of the bundled tiny.en.
    local_asr_model_path: str | None = None
    #: Whisper partial transcripts every this much speech (0: the final transcript only).
    local_asr_partial_ms: int = Field(default=0, ge=0, le=10_000)
    knowledge_path: str | None = None

    # server-side tools and proactive messages (issue 14)
    #: Python modules whose ``@voxgate.tools.tool`` functions every session gets
    #: (comma-separated, e.g. ``examples.trading_coach.tools``).
    tools: str | None = None
    #: MCP servers whose tools sessions get: a JSON object ``{"label": {"command": …, "args":
    #: […]} | {"url": "http://…/mcp"}}``, or the path of a file holding one.
    mcp_servers: str | None = None
    #: The ``search_knowledge`` tool over ``knowledge_path`` (auto: on with a knowledge path
    #: or the local engine), and how often its notes are checked for changes.
    knowledge_tool: Literal["auto", "on", "off"] = "auto"
    knowledge_reload_s: float = Field(default=1.0, ge=0)
    #: A tool call that takes longer becomes an error output (a tool may set its own).
    tool_timeout_s: float = Field(default=10.0, gt=0)
    #: Tool calls running at once per session, and waiting or running (more get an error).
    tool_concurrency: int = Field(default=4, ge=1, le=256)
    tool_max_pending: int = Field(default=32, ge=1, le=4096)
    #: Proactive messages: longest ``expires_in`` accepted, and delivery records kept.
    message_max_expires_s: float = Field(default=3600.0, gt=0)
    message_records: int = Field(default=10_000, ge=16)

    # WebRTC and phone calls (issue 16)
    #: STUN/TURN servers for voxgate's side of WebRTC calls, comma-separated URLs
    #: (``stun:host:3478``, ``turn:host:3478?transport=udp``, ``turns:host:5349``); TURN ones
    #: use the username/password below. None: host candidates only (public address or LAN).
    webrtc_ice_servers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webrtc_turn_username: str | None = None
    webrtc_turn_password: SecretStr | None = None
    #: Assistant audio one call may hold ahead of real time; its events wait beyond it.
    webrtc_playout_max_s: float = Field(default=60.0, gt=0, le=600)
    #: Phone lines (Twilio Media Streams): JSON object from the called number (E.164, as the
    #: TwiML passes it in the ``to`` parameter) or ``"*"`` (any other) to the session config
    #: that line's calls start with (instructions, voice, tools …; formats are always μ-law).
    phone_lines: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("openai_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("must be a ws:// or wss:// URL")
        return value

    @field_validator("local_llm_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.strip().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("webrtc_ice_servers", mode="before")
    @classmethod
    def _split_ice(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for url in value:
                if not str(url).startswith(("stun:", "stuns:", "turn:", "turns:")):
                    raise ValueError("each ICE server is a stun:, stuns:, turn: or turns: URL")
        return value

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for part in value:
                ipaddress.ip_network(str(part), strict=False)  # ValueError names the bad one
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def api_key_values(self) -> list[str]:
        return [k.get_secret_value() for k in self.api_keys]
