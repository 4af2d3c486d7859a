"""A half-open link: the proxy accepts and forwards nothing, so only keepalive notices.

paho needs between K and 2K (+ up to 1 s of loop granularity) to give up on a
silent link (fault-proxy.md); the agent must notice within 2K + 1 s, the
broker must publish the agent's will (retained offline/lost), and every press
made before, during and after the blackhole must reach the central.

Detection is timed from the moment the blackhole starts to the agent's own
log line ("connection lost"), by the wall clock both processes share.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable

import pytest

from agent.errors import ControlError
from tests.faults.harness import (
    EventSink,
    MakeAgent,
    MakeBroker,
    count,
    describe_missing,
    log_size,
    log_text,
    modes,
    read_recorded,
    rng_for,
    seq_problems,
    settle,
    wait_connected,
)
from tests.support.agentproc import AgentProc, unique_id
from tests.support.faultproxy import FaultProxy
from tests.support.mqtt import retained
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker

K = 5  # keepalive_s: the smallest the config allows
LOST_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING agent\.uplink: broker \S+ connection lost", re.MULTILINE
)


def _press_recorded(agent: AgentProc, n: int, limit_s: float = K / 2) -> float:
    """Click n times; each must show in recent() within limit_s. Return the slowest.

    The ceiling is half the keepalive: a press held behind the dead link would
    wait at least K seconds, so a loaded machine cannot make this fail.
    """
    worst = 0.0
    for _ in range(n):
        before = {e["id"] for e in agent.recent()}
        t = time.monotonic()
        agent.click()
        eventually(
            lambda: {e["id"] for e in agent.recent() if e["type"] == "panic"} - before,
            5,
            "press recorded",
            interval=0.01,
            retry_on=(ControlError,),
        )
        worst = max(worst, time.monotonic() - t)
    assert worst < limit_s, f"a press took {worst:.2f} s to be recorded"
    return worst


def _log_time(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()


@pytest.mark.parametrize("mode", modes())
def test_blackhole__keepalive_detects__will_fires__nothing_lost(
    mode: str, brokers: MakeBroker, proxies: Callable[[int], FaultProxy], agents: MakeAgent
) -> None:
    cycles = count(mode, 1, 5)
    rng = rng_for("blackhole", mode)
    t0 = time.monotonic()
    broker = brokers()
    proxy = proxies(broker.port)
    device = unique_id("hole")
    sink = EventSink(broker.port, device)  # straight to the broker: sees the will
    detections: list[float] = []
    wills: list[float] = []
    try:
        agent = agents(proxy.port, device, mqtt={"keepalive_s": K, "connect_timeout_s": 3})
        wait_connected(agent)
        for n in range(1, cycles + 1):
            _press_recorded(agent, 3)
            # a random phase of the keepalive cycle; at least 0.3 s after the last PUBACK, so the
            # measured time is paho's detection plus the agent's, not the test's own scheduling
            time.sleep(rng.uniform(0.3, K + 0.3))
            mark = log_size(agent)
            start_wall, start = time.time(), time.monotonic()
            proxy.set_blackhole(True)
            _press_recorded(agent, 3)  # recorded at once while the link is silently dead

            m = eventually(
                lambda: LOST_LINE.search(log_text(agent, mark)), 3 * K + 2, "the agent to notice the dead link"
            )
            detected = _log_time(m[1]) - start_wall
            detections.append(detected)
            assert detected <= 2 * K + 1, f"dead link noticed after {detected:.2f} s (> 2K + 1 = {2 * K + 1} s)"
            assert not agent.status()["link"]["connected"]

            will_t, will = sink.wait_status(
                lambda d: d.get("state") == "offline", 3 * K, since=start, what="the broker to publish the will"
            )
            wills.append(will_t - start)
            assert will["reason"] == "lost"
            assert (retained(broker.port, f"campus/main/{device}/status") or {}).get("state") == "offline"

            _press_recorded(agent, 3)  # still recorded while the agent retries into the blackhole
            proxy.set_blackhole(False)
            wait_connected(agent, timeout=3 + 2 + 10)  # connect_timeout + backoff + slack
            sink.wait_status(lambda d: d.get("state") == "online", 10, since=start, what="online again")
            state = (retained(broker.port, f"campus/main/{device}/status") or {}).get("state")
            assert state == "online", f"cycle {n}: the retained status is {state!r} (is retain still used?)"
            _press_recorded(agent, 3)
        recorded = read_recorded(agent.log)
        note = (
            f"{cycles} blackholes, K={K} s: agent noticed after {min(detections):.1f}-{max(detections):.1f} s, "
            f"will after {min(wills):.1f}-{max(wills):.1f} s"
        )
        row = settle(f"blackhole x{cycles}", t0, recorded, sink, timeout=30, note=note)
        assert row.lost == 0, describe_missing(row, recorded)
        assert not seq_problems(recorded, sink)
        assert (retained(broker.port, f"campus/main/{device}/status") or {}).get("state") == "online"
    finally:
        sink.close()
