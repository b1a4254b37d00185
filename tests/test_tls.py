"""TLS (issue 15): ``voxgate serve --tls-dev`` / ``--tls-cert --tls-key``, with real clients.

``voxgate serve`` runs as a child process in front of the GA fake upstream. Over ``wss://`` and
``https://`` with the development certificate: the stock openai SDK (GA) and the beta SDK,
``curl`` on the HTTP fallback, and Chromium holding a spoken conversation in the console. The
slow-client guard in front of aiohttp keeps working under TLS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from openai import AsyncOpenAI
from playwright.async_api import async_playwright

from beta_sdk import run_beta_client
from browser_helpers import (
    CHROMIUM,
    TIMEOUT_MS,
    chromium_args,
    require_chromium,
    speech_wav,
)
from gateway_helpers import UPSTREAM_KEY
from serve_helpers import ServeProcess, clean_env, voxgate_serve
from sse_helpers import curl
from voxgate.testing import FakeRealtimeServer
from voxgate.testing.responder import ResponseContext, Say
from voxgate.tls import TlsError, dev_names, fingerprint, make_dev_certificate, setup

SERVER_KEY = "vk-tls-test-key-0000000001"
QUESTION = "What is a stop loss order?"
ANSWER = "A stop loss order sells once the price falls to your level."


# ------------------------------------------------------------------------------ certificates


def test_dev_certificate_covers_this_machine_and_is_reused(tmp_path: Path) -> None:
    names = dev_names("127.0.0.1")
    cert_path, key_path = make_dev_certificate(tmp_path, names)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in alt.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (key_path.stat().st_mode & 0o777) == 0o600
    der = cert.public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).hexdigest().upper()
    assert fingerprint(cert_path.read_bytes()).replace(":", "") == expected
    # the next run reuses it (a browser exception or a pinned fingerprint stays valid) …
    first = cert_path.read_bytes()
    assert make_dev_certificate(tmp_path, names) == (cert_path, key_path)
    assert cert_path.read_bytes() == first
    # … unless it does not name the host, or is about to expire
    make_dev_certificate(tmp_path, [*names, "10.1.2.3"])
    assert cert_path.read_bytes() != first
    renewed = cert_path.read_bytes()
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=362)
    make_dev_certificate(tmp_path, names, now=soon)
    assert cert_path.read_bytes() != renewed


class _S:
    def __init__(self, **values: Any) -> None:
        self.tls_cert = values.get("tls_cert")
        self.tls_key = values.get("tls_key")
        self.tls_dev = values.get("tls_dev", False)
        self.tls_dev_dir = values.get("tls_dev_dir")
        self.host = "127.0.0.1"


def test_tls_settings_are_checked_with_one_sentence(tmp_path: Path) -> None:
    assert setup(_S()) is None
    with pytest.raises(TlsError, match="--tls-key"):
        setup(_S(tls_cert=str(tmp_path / "c.pem")))
    with pytest.raises(TlsError, match="not both"):
        setup(_S(tls_dev=True, tls_cert="c", tls_key="k"))
    with pytest.raises(TlsError, match="does not exist"):
        setup(_S(tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "k.pem")))
    cert, _ = make_dev_certificate(tmp_path / "a", ["localhost"])
    _, other_key = make_dev_certificate(tmp_path / "b", ["localhost"])
    with pytest.raises(TlsError, match="cannot use the TLS certificate"):
        setup(_S(tls_cert=str(cert), tls_key=str(other_key)))
    ok = setup(_S(tls_dev=True, tls_dev_dir=str(tmp_path / "dev")))
    assert ok is not None
    assert ok.dev


async def test_serve_refuses_half_a_tls_pair_before_binding(tmp_path: Path) -> None:
    env = clean_env(VOXGATE_API_KEYS=SERVER_KEY)
    async with voxgate_serve("--port", "0", "--tls-cert", str(tmp_path / "x.pem"), env=env) as p:
        assert await p.wait() == 2
        line = await p.err.wait_for("voxgate: ")
        assert "--tls-key" in line.string


# ------------------------------------------------------------------------------ real clients


def _transcribe(audio: bytes, fmt: Any) -> str:
    return QUESTION


def _answer(ctx: ResponseContext) -> list[Say]:
    return [Say(ANSWER)]


@asynccontextmanager
async def tls_serve(
    tmp_path: Path, **env: str
) -> AsyncIterator[tuple[ServeProcess, dict[str, str]]]:
    """Fake upstream ← ``voxgate serve --tls-dev``; yields the process and its banner facts."""
    async with FakeRealtimeServer(
        api_keys={UPSTREAM_KEY}, transcriber=_transcribe, responder=_answer, ping_interval_s=None
    ) as fake:
        values = {
            "VOXGATE_API_KEYS": SERVER_KEY,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "VOXGATE_PING_INTERVAL_S": "0",
            **env,
        }
        args = ["--port", "0", "--backend", "openai", "--openai-url", fake.url, "--tls-dev"]
        args += ["--tls-dev-dir", str(tmp_path / "tls")]
        async with voxgate_serve(*args, env=clean_env(**values)) as proc:
            port = int(
                (await proc.out.wait_for(r"serving backend '\w+' on https://[^:]+:(\d+)"))[1]
            )
            facts = {
                "port": str(port),
                "fingerprint": (await proc.out.wait_for(r"tls SHA-256 fingerprint: (\S+)"))[1],
                "cert": (await proc.out.wait_for(r"tls: development certificate \S+ (\S+)"))[1],
                "console": (await proc.out.wait_for(r"console:\s+(https://\S+)"))[1],
                "realtime": (await proc.out.wait_for(r"realtime: (wss://\S+)"))[1],
            }
            yield proc, facts


async def test_sdks_and_curl_over_tls_with_the_dev_certificate(tmp_path: Path) -> None:
    async with tls_serve(tmp_path) as (_, facts):
        cert = Path(facts["cert"])
        assert facts["fingerprint"] == fingerprint(await asyncio.to_thread(cert.read_bytes))
        assert facts["realtime"].startswith(f"wss://127.0.0.1:{facts['port']}/v1/realtime")
        ws_base = f"wss://127.0.0.1:{facts['port']}/v1"
        trust = ssl.create_default_context(cafile=str(cert))

        # the stock GA SDK over wss://, trusting the development certificate
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=ws_base)
        async with client.realtime.connect(
            model="gpt-realtime", websocket_connection_options={"ssl": trust}
        ) as conn:
            created = await asyncio.wait_for(conn.recv(), 10)
            assert created.type == "session.created"
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await conn.conversation.item.create(
                item={"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": "Hello"}]}
            )  # fmt: skip
            await conn.response.create()
            async with asyncio.timeout(10):
                async for event in conn:
                    if event.type == "response.done":
                        break
        assert event.response.status == "completed"

        # the beta SDK (which always uses wss) over the same certificate
        beta = await run_beta_client(
            "text", ws_base=ws_base, key=SERVER_KEY, question="Hi", cafile=str(cert)
        )
        assert beta["text"] == ANSWER

        # the HTTP fallback over https, with curl trusting the certificate
        status, body = await curl(
            "--cacert", str(cert), "-X", "POST", "-H", f"Authorization: Bearer {SERVER_KEY}",
            f"https://localhost:{facts['port']}/v1/realtime/sse?model=gpt-realtime",
        )  # fmt: skip
        assert status == 201
        assert body["token"].startswith("vgs_")
        # and a client that does not trust it is refused by TLS, not served in plain text
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", int(facts["port"]), ssl=ssl.create_default_context()
            )


async def test_slow_client_guard_works_under_tls(tmp_path: Path) -> None:
    async with tls_serve(tmp_path, VOXGATE_HTTP_REQUEST_TIMEOUT_S="0.5") as (_, facts):
        port = int(facts["port"])
        trust = ssl.create_default_context(cafile=facts["cert"])
        # handshake done, then silence: closed at the request-head deadline
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        # no handshake at all: closed at the handshake deadline
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        # a real request still works
        status, body = await curl("--cacert", facts["cert"], f"https://127.0.0.1:{port}/healthz")
        assert (status, body) == (200, {"status": "ok"})


@pytest.mark.browser
@pytest.mark.slow
async def test_console_over_https_and_wss_in_chromium(tmp_path: Path) -> None:
    require_chromium()
    wav = speech_wav(tmp_path / "ask.wav", [1000, QUESTION, 5000])
    async with tls_serve(tmp_path) as (_, facts), async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*chromium_args(wav), "--ignore-certificate-errors"],
        )
        try:
            page = await browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            sockets: list[str] = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            await page.goto(facts["console"])
            await page.wait_for_function("() => window.voxgateConsole?.signedIn()")
            assert await page.evaluate("() => location.protocol") == "https:"
            await page.uncheck("#processing")
            await page.click("#start")
            await page.wait_for_function(
                "() => document.getElementById('status').dataset.state === 'ready'"
            )
            assert await page.text_content("#transport") == "via WebSocket"
            answer = await page.wait_for_function(
                """() => { const el = document.querySelector('#transcript li.assistant .text');
                    return el && !el.closest('li').classList.contains('partial')
                           && el.textContent; }"""
            )
            assert await answer.json_value() == ANSWER
            assert sockets
            assert all(url.startswith(f"wss://127.0.0.1:{facts['port']}/") for url in sockets)
        finally:
            await browser.close()
