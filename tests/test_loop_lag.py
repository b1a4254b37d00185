"""The event-loop lag metric (voxgate_event_loop_lag_*): its arithmetic, and a live session
feeding it from its clock wakes."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client import CollectorRegistry

from gateway_helpers import SERVER_KEY, TIMEOUT_S, fake_and_gateway, recv_until
from voxgate.app import METRICS
from voxgate.observability.loop_lag import LoopLag


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels or None)
    assert value is not None, name
    return value


def test_a_hold_lands_in_its_bucket_and_sets_the_max() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry)
    lag.record(0.0005)  # an ordinary wake
    lag.record(0.080)  # the loop was held for ~80 ms
    lag.record(0.001)
    lag.record(-0.0004)  # asyncio runs timers up to one clock resolution early: no lag
    assert sample(registry, "voxgate_event_loop_lag_seconds_count") == 4
    assert sample(registry, "voxgate_event_loop_lag_seconds_bucket", le="0.001") == 3
    assert sample(registry, "voxgate_event_loop_lag_seconds_bucket", le="0.05") == 3
    assert sample(registry, "voxgate_event_loop_lag_seconds_bucket", le="0.1") == 4
    assert abs(sample(registry, "voxgate_event_loop_lag_max_seconds") - 0.080) < 1e-9
    assert abs(sample(registry, "voxgate_event_loop_lag_seconds_sum") - 0.0815) < 1e-9


async def test_a_running_session_reports_its_clock_wakes() -> None:
    """The samples come from the sessions' own clock wakes (about one per second each)."""
    async with fake_and_gateway() as (_fake, gw):
        lag = gw.app[METRICS].loop_lag
        woke = asyncio.Event()
        record = lag.record

        def recorded(late_s: float) -> None:
            record(late_s)
            woke.set()

        lag.record = recorded  # type: ignore[method-assign]
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
            ) as ws,
        ):
            await recv_until(ws, "session.created")
            await asyncio.wait_for(woke.wait(), TIMEOUT_S)
            metrics = await (await http.get(gw.http_url + "/metrics")).text()
        count = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("voxgate_event_loop_lag_seconds_count")
        )
        assert count >= 1
