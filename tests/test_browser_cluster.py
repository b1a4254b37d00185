"""The browser client across nodes (issue 17), in a real Chromium: three real ``voxgate serve``
processes behind a real nginx on one real redis-server, the fake upstream behind them.

The console is signed in on one node (the cookie is signed with the shared secret, so every
node accepts it), then loaded through nginx: its WebSocket goes through the load balancer. The
node holding the call is killed mid-answer (``kill -9``), or drained (SIGTERM: the page gets
``voxgate.session.migrate``); either way the page resumes the same session on another node and
the conversation goes on, no event twice.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from browser_helpers import chromium, console_stats, speech_wav, start_hands_free, wait_for_state
from cluster_helpers import wait_for_owner
from test_cluster import deployment, snapshot_where

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(240)]

QUESTION = "What is a stop loss order and when should I place one?"
FOLLOW_UP = "Thank you, that helps a lot."
WAIT_S = 30.0


async def _open_through_the_balancer(browser, c):  # type: ignore[no-untyped-def]
    login = await c.nodes[0].proc.out.wait_for(r'"console":"([^"]+)"')  # type: ignore[union-attr]
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(WAIT_S * 1000)
    await page.goto(login.group(1))  # signs in on node 0: a cookie every node accepts
    await page.wait_for_function("() => window.voxgateConsole && window.voxgateConsole.signedIn()")
    await page.goto(f"{c.http}/")
    await page.wait_for_function("() => window.voxgateConsole && window.voxgateConsole.signedIn()")
    return page


async def test_the_page_resumes_on_another_node_after_kill_9_and_after_a_drain(
    tmp_path: Path,
) -> None:
    wav = speech_wav(tmp_path / "ask.wav", [800, QUESTION, 5000, FOLLOW_UP, 9000])
    async with deployment(tmp_path, DRAIN_TIMEOUT="30") as (fake, c), chromium(wav) as browser:
        page = await _open_through_the_balancer(browser, c)
        await start_hands_free(page)
        sid = await page.wait_for_function("() => window.voxgateConsole.client.sessionId")
        session_id = await sid.json_value()
        owner = await wait_for_owner(c, session_id)

        # 1. kill -9 of the node streaming the answer to the question
        upstream = await fake.wait_for_connection(4)  # three readiness probes, then the call
        await upstream.wait_for_sent("response.output_audio.delta", timeout_s=WAIT_S)
        await snapshot_where(c, session_id, lambda s: len(s.running) == 1)
        await c.kill(c.index_of(owner.node))
        await page.wait_for_function("() => window.voxgateConsole.stats().resumes === 1")
        await wait_for_state(page, "ready")
        second = await wait_for_owner(c, session_id, not_node=owner.node)

        # the answer is asked for again on the rebuilt upstream, and the follow-up answered
        # (the fake upstream transcribes every turn as "spoken words", answers "Turn N: …")
        await page.wait_for_function(
            "() => document.querySelectorAll('#transcript li.user').length >= 2",
            timeout=60_000,
        )
        await page.wait_for_function(
            "() => [...document.querySelectorAll('#transcript li.assistant .text')]"
            ".some((el) => el.textContent.startsWith('Turn 2:'))",
            timeout=60_000,
        )

        # 2. SIGTERM of the node that holds it now: the page is told to move, and does
        c.nodes[c.index_of(second.node)].proc.signal(signal.SIGTERM)  # type: ignore[union-attr]
        await page.wait_for_function("() => window.voxgateConsole.stats().resumes === 2")
        await wait_for_state(page, "ready")
        third = await wait_for_owner(c, session_id, not_node=second.node)
        assert third.node not in (owner.node, second.node)

        stats = await console_stats(page)
        print(
            f"resume_ms={stats['resumeMs']} moved={stats['movedResumes']} "
            f"migrations={stats['migrations']} replayed={stats['replayedEvents']} "
            f"lost={stats['lostEvents']}"
        )
        assert stats["sessions"] == 1  # the same session throughout, never a fresh one
        assert stats["movedResumes"] == 2
        assert stats["migrations"] == 1
        assert stats["resumeFailures"] == 0
        assert stats["duplicateEvents"] == 0
        assert (await page.locator('#log li[data-type="session.created"]').count()) == 1
        assert (await page.locator('#log li[data-type="voxgate.session.migrate"]').count()) == 1
