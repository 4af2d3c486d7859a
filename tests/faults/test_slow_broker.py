"""The broker is slow to acknowledge: the proxy delays every chunk by 2 s each way.

A press must still be recorded at once (it never waits for the network), and
every press must arrive in the end.  The full run also drops the connection
under latency, so the agent has to reconnect through the slow link (CONNECT
and CONNACK take 2 s each way: connect_timeout_s is raised to allow it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.harness import (
    EventSink,
    MakeAgent,
    MakeBroker,
    count,
    describe_missing,
    modes,
    read_recorded_settled,
    rng_for,
    seq_problems,
    settle,
    wait_connected,
    wait_logged,
)
from tests.support.agentproc import unique_id
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.broker

LATENCY = 2.0


@pytest.mark.parametrize("mode", modes())
def test_slow_broker__presses_recorded_at_once__all_delivered(
    mode: str, brokers: MakeBroker, proxies: Callable[[int], FaultProxy], agents: MakeAgent
) -> None:
    presses = count(mode, 12, 150)
    rng = rng_for("slow-broker", mode)
    t0 = time.monotonic()
    broker = brokers()
    proxy = proxies(broker.port)
    device = unique_id("slow")
    sink = EventSink(broker.port, device)
    try:
        agent = agents(proxy.port, device, mqtt={"keepalive_s": 10, "connect_timeout_s": 10})
        wait_connected(agent)
        proxy.set_latency(LATENCY)
        record_s: list[float] = []
        for i in range(presses):
            if mode == "full" and i == presses // 2:
                proxy.drop_all()  # reconnect through the slow link, presses keep coming
            t = time.monotonic()
            agent.click()
            wait_logged(agent, i + 1, timeout=5)
            record_s.append(time.monotonic() - t)
            time.sleep(rng.uniform(0.0, 0.2))  # a person's pace between presses
        recorded = read_recorded_settled(agent)
        row = settle(
            f"slow broker +{LATENCY:g}s x{presses}",
            t0,
            recorded,
            sink,
            timeout=30,
            note=f"press recorded in <= {max(record_s) * 1000:.0f} ms "
            f"(median {sorted(record_s)[len(record_s) // 2] * 1000:.0f} ms)",
        )
        # half the broker's latency: a press that waited on the broker would take >= LATENCY
        assert max(record_s) < LATENCY / 2, f"a press took {max(record_s):.2f} s to be recorded behind a slow broker"
        assert row.lost == 0, describe_missing(row, recorded)
        assert not seq_problems(recorded, sink)
        proxy.set_latency(0.0)
        wait_connected(agent)
        assert agent.stop() == 0
    finally:
        sink.close()
