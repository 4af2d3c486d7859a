"""The agent is SIGKILLed at random moments while the button keeps being pressed.

Two kinds of rounds, mixed at random:

* plain: the agent is started and killed after a random 0.05-1.5 s, which
  lands anywhere from module import through start-up to steady state;
* drain: the broker link is down (the proxy refuses connections), presses pile
  up in the outbox, the link comes back and the agent is killed at a random
  moment of the paced drain (``drain_rate_per_s`` is lowered so a drain lasts
  about a second).

The central stays connected to the broker the whole time; only the agent
dies.  At the end one last agent drains everything and the sets are compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from agent.errors import ControlError
from tests.faults.harness import (
    EventSink,
    MakeAgent,
    MakeBroker,
    Presser,
    count,
    describe_missing,
    log_size,
    modes,
    read_recorded,
    rng_for,
    seq_problems,
    settle,
    spawn,
    wait_connected,
)
from tests.support.agentproc import unique_id
from tests.support.faultproxy import FaultProxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker

DRAIN_RATE = 150  # events per second while draining a backlog


@pytest.mark.parametrize("mode", modes())
def test_sigkill__random_moments_and_mid_drain__nothing_lost(
    mode: str, brokers: MakeBroker, proxies: Callable[[int], FaultProxy], agents: MakeAgent
) -> None:
    kills = count(mode, 10, 100)
    rng = rng_for("sigkill", mode)
    t0 = time.monotonic()
    broker = brokers()
    proxy = proxies(broker.port)
    device = unique_id("kill")
    sink = EventSink(broker.port, device)
    drains = mid_drain = 0
    try:
        agent = agents(proxy.port, device, start=False, mqtt={"drain_rate_per_s": DRAIN_RATE, "max_inflight": 20})
        runs: list[int] = []
        presser = Presser(agent, rng, gap=(0.005, 0.03), max_s=kills * 10 + 60).start()
        try:
            for i in range(kills):
                drain = i % 4 == 3 or rng.random() < 0.15
                if drain:
                    drains += 1
                    proxy.set_down(True)
                runs.append(log_size(agent))
                spawn(agent)
                if drain:
                    eventually(agent.status, 20, "agent to answer", retry_on=(ControlError,))
                    for _ in range(rng.randint(80, 250)):  # a backlog of about 1 s at DRAIN_RATE
                        agent.click()
                    proxy.set_down(False)
                    wait_connected(agent, timeout=15)
                    time.sleep(rng.uniform(0.0, 1.2))  # somewhere in the drain
                    mid_drain += agent.status()["status"]["outbox"]["pending"] > 0
                else:
                    time.sleep(rng.uniform(0.05, 1.5))  # the random moment of the kill: import, start-up or running
                assert agent.proc is not None
                assert agent.proc.poll() is None, f"agent died by itself:\n{agent.log.read_text()[-3000:]}"
                agent.kill()
            proxy.set_down(False)
            runs.append(log_size(agent))
            agent.start()
        finally:
            presser.stop()
        recorded = read_recorded(agent.log, runs)
        row = settle(
            f"agent SIGKILLed x{kills}",
            t0,
            recorded,
            sink,
            timeout=120,
            note=f"{drains} drain rounds ({mid_drain} killed with a backlog left), {presser.ok} presses, {len(runs)} processes",
        )
        assert row.lost == 0, describe_missing(row, recorded)
        problems = seq_problems(recorded, sink)
        assert not problems, problems
        eventually(
            lambda: agent.status()["status"]["outbox"]["pending"] == 0,
            30,
            "outbox to drain",
            retry_on=(ControlError,),
        )
        assert agent.stop() == 0
    finally:
        sink.close()
