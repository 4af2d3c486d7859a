"""The broker restarts again and again while the panic button keeps being pressed.

The central keeps a persistent session on a broker with persistence on, so an
event published while the central is reconnecting is queued for it; without
that, the test would count the broker's forgetting as the agent's loss.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import (
    EventSink,
    MakeAgent,
    MakeBroker,
    Presser,
    count,
    describe_missing,
    modes,
    read_recorded_settled,
    rng_for,
    seq_problems,
    settle,
    wait_connected,
)
from tests.support.agentproc import unique_id

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("mode", modes())
def test_broker_restarts__presses_continue__nothing_lost(mode: str, brokers: MakeBroker, agents: MakeAgent) -> None:
    restarts = count(mode, 5, 50)
    rng = rng_for("broker-restarts", mode)
    t0 = time.monotonic()
    broker = brokers(persistence=True)
    device = unique_id("bounce")
    sink = EventSink(broker.port, device, persistent=True)
    try:
        agent = agents(broker.port, device)
        wait_connected(agent)
        presser = Presser(agent, rng, gap=(0.01, 0.05), max_s=restarts * 8 + 30).start()
        try:
            for _ in range(restarts):
                time.sleep(rng.uniform(0.1, 0.8))  # up for a random while, presses flowing
                broker.stop()  # SIGTERM: mosquitto saves the central's session and queue
                time.sleep(rng.uniform(0.0, 0.6))  # down for a random while, presses buffered
                broker.start()
                wait_connected(agent, timeout=15)
        finally:
            presser.stop()
        assert presser.ok > restarts, f"only {presser.ok} presses went through"
        recorded = read_recorded_settled(agent)
        row = settle(
            f"broker restarted x{restarts}",
            t0,
            recorded,
            sink,
            timeout=60,
            note=f"{presser.ok} presses, {sink.out_of_order()} out-of-order first arrivals",
        )
        assert row.lost == 0, describe_missing(row, recorded)
        assert not seq_problems(recorded, sink)
        assert agent.stop() == 0
    finally:
        sink.close()
