"""A deployment of several voxgate processes for tests (issue 17): a real redis-server, N real
``voxgate serve`` processes (``--backend openai`` against a fake upstream on a real socket) and
a real nginx in front of them, rendered from ``deploy/nginx.conf.template``.

Not a test module. Every wait is for something that happens (a process's "serving" line,
nginx's "start worker processes" line, a store record), never a fixed sleep. Skips when
redis-server or nginx is missing (``scripts/system-deps`` installs both).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp
import orjson
import pytest

from gateway_helpers import SERVER_KEY, SIGNING_SECRET, UPSTREAM_KEY
from redis_helpers import RedisServer, redis_server
from serve_helpers import ServeProcess, Stream, clean_env
from voxgate.store.base import SessionRecord
from voxgate.store.redis import RedisStore

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "nginx.conf.template"
NGINX_READY = "start worker processes"
PREFIX = "vgt"
_count = itertools.count()


def nginx_binary() -> str:
    for path in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if path and os.access(path, os.X_OK):
            return path
    pytest.skip("needs nginx (apt-get install nginx-light; scripts/system-deps installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def render_nginx(prefix: Path, listen_port: int, node_ports: list[int]) -> Path:
    upstreams = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;" for p in node_ports)
    text = (
        TEMPLATE.read_text()
        .replace("${LISTEN}", f"127.0.0.1:{listen_port}")
        .replace("${UPSTREAMS}", upstreams)
        .replace("${PREFIX}", str(prefix))
    )
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


async def _spawn(*argv: str, env: dict[str, str] | None = None) -> ServeProcess:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    out, err = Stream(), Stream()
    pumps = [asyncio.create_task(out.pump(proc.stdout)), asyncio.create_task(err.pump(proc.stderr))]
    return ServeProcess(proc, out, err, pumps)


async def _stop(p: ServeProcess, sig: signal.Signals = signal.SIGKILL) -> None:
    if p.proc.returncode is None:
        p.signal(sig)
        await p.wait(timeout_s=60)
    for task in p.pumps:
        task.cancel()


@dataclass
class Node:
    index: int
    port: int
    node_id: str
    proc: ServeProcess | None = None


@dataclass
class Cluster:
    redis: RedisServer
    store: RedisStore
    nodes: list[Node]
    lb_port: int
    env: dict[str, str]
    nginx: ServeProcess | None = None
    logs: Path | None = None
    _runs: list[tuple[str, ServeProcess]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.lb_port}/v1/realtime?model=gpt-realtime"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def node_url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.nodes[i].port}/v1/realtime?model=gpt-realtime"

    def node_http(self, i: int) -> str:
        return f"http://127.0.0.1:{self.nodes[i].port}"

    def index_of(self, node_id: str) -> int:
        return next(n.index for n in self.nodes if n.node_id == node_id)

    async def start_node(self, i: int) -> None:
        node = self.nodes[i]
        env = dict(self.env, VOXGATE_NODE_ID=node.node_id)
        node.proc = await _spawn(
            sys.executable,
            "-m",
            "voxgate",
            "serve",
            "--port",
            str(node.port),
            "--backend",
            "openai",
            "--log-format",
            "json",
            "--drain-timeout",
            env.pop("DRAIN_TIMEOUT", "20"),
            env=env,
        )
        self._runs.append((node.node_id, node.proc))
        await node.proc.port()

    async def kill(self, i: int) -> None:
        """``kill -9`` node ``i`` and wait until it is gone."""
        proc = self.nodes[i].proc
        assert proc is not None
        await _stop(proc, signal.SIGKILL)

    async def terminate(self, i: int) -> int:
        """SIGTERM node ``i`` (drain) and wait for it to exit; its exit code."""
        proc = self.nodes[i].proc
        assert proc is not None
        proc.signal(signal.SIGTERM)
        code = await proc.wait(timeout_s=90)
        return code

    async def owner(self, session_id: str) -> SessionRecord | None:
        return await self.store.session(session_id)

    async def close(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                await _stop(node.proc)
        if self.logs is not None:  # every process's output, for a failed test's reader
            for n, (node_id, proc) in enumerate(self._runs):
                text = "\n".join(proc.out.lines + proc.err.lines)
                (self.logs / f"{n:02d}-{node_id}.log").write_text(text)
        if self.nginx is not None:
            await _stop(self.nginx, signal.SIGTERM)
        await self.store.aclose()
        if self.logs is not None and self.nginx is not None:
            (self.logs / "nginx.log").write_text("\n".join(self.nginx.err.lines))


@asynccontextmanager
async def cluster(
    upstream_url: str, tmp: Path, n: int = 3, **settings: str
) -> AsyncIterator[Cluster]:
    """Redis + ``n`` voxgate nodes + nginx; settings are extra ``VOXGATE_*`` variables."""
    nginx = nginx_binary()
    # keyspace notifications: tests wait on the store's changes (until_store), not on a clock
    with redis_server("--notify-keyspace-events", "KA") as redis:
        prefix = f"{PREFIX}{next(_count)}"
        env = clean_env(
            VOXGATE_OPENAI_URL=upstream_url,
            OPENAI_API_KEY=UPSTREAM_KEY,
            VOXGATE_API_KEYS=SERVER_KEY,
            VOXGATE_SECRET=SIGNING_SECRET,
            VOXGATE_REDIS_URL=redis.url,
            VOXGATE_REDIS_PREFIX=prefix,
            VOXGATE_PING_INTERVAL_S="2",
            VOXGATE_NODE_HEARTBEAT_S="1",
            VOXGATE_LOG_LEVEL="info",
            # every test client comes from 127.0.0.1: count resume handshakes as many clients
            VOXGATE_RESUME_MAX_PENDING_PER_ADDRESS="256",
        )
        env.update(settings)
        nodes = [Node(i, free_port(), f"node-{i}") for i in range(n)]
        c = Cluster(
            redis=redis,
            store=RedisStore(redis.url, node="test", prefix=prefix),
            nodes=nodes,
            lb_port=free_port(),
            env=env,
            logs=tmp,
        )
        async with AsyncExitStack() as stack:
            stack.push_async_callback(c.close)
            await asyncio.gather(*(c.start_node(i) for i in range(n)))
            nginx_dir = tmp / f"nginx-{prefix}"
            nginx_dir.mkdir(parents=True)
            conf = render_nginx(nginx_dir, c.lb_port, [node.port for node in nodes])
            c.nginx = await _spawn(nginx, "-p", str(nginx_dir), "-c", str(conf))
            await c.nginx.err.wait_for(NGINX_READY)
            yield c


async def until_store(
    c: Cluster, check: Callable[[], Awaitable[T | None]], timeout_s: float = 30.0
) -> T:
    """``check()``'s first value that is not None, re-checked on every change to this
    deployment's keys: the test Redis publishes keyspace notifications
    (``notify-keyspace-events KA``), subscribed to before the first check so no change
    between a check and the wait is missed. Waits on events, never on a clock."""
    pubsub = c.store.redis.pubsub()
    await pubsub.psubscribe(f"__keyspace@*__:{c.store.prefix}:*")
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                value = await check()
                if value is not None:
                    return value
                change = None
                while change is None:  # subscribe confirmations come back as None
                    change = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
    finally:
        await pubsub.aclose()


async def wait_for_owner(
    c: Cluster, session_id: str, not_node: str | None = None, timeout_s: float = 30.0
) -> SessionRecord:
    """The session's record once a live node (other than ``not_node``) owns it."""

    async def owned() -> SessionRecord | None:
        record = await c.owner(session_id)
        if record is not None and record.node not in ("", not_node):
            return record
        return None

    return await until_store(c, owned, timeout_s)


async def mint_key(http: str, subject: str, instructions: str = "Be brief.") -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{http}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            json={
                "session": {"type": "realtime", "instructions": instructions},
                "voxgate": {"subject": subject},
            },
        ) as resp,
    ):
        body = orjson.loads(await resp.read())
        assert resp.status == 200, body
        value: str = body["value"]
        return value
