"""A connection attempt reset by a healing link is not the broker's answer to the agent's dialect.

The soak's "blackhole x5" once ended with the broker's retained status at the
will's ``offline`` while the agent was online.  The heal resets every
connection that lived through the blackhole, including the agent's attempt
still waiting for its CONNACK, and the agent read that reset as a broker
closing the socket at its CONNECT: the first time as "does not speak MQTT 5"
(retried at once with 3.1.1, which got a CONNACK since the link was back, so it
was remembered), the second time as "closed at a retained will" (3.1.1 without
retain, remembered the same way).  From then on the birth status and the
heartbeats went out unretained, and the retained will stayed.

Here the blackhole's session is reset at once (``drop_all``) instead of waiting
for keepalive, and the heal waits until the agent's next attempt is inside the
blackhole, so every cycle lands where the soak landed only by chance.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.faults.harness import EventSink, MakeAgent, MakeBroker, log_text, wait_connected
from tests.support.agentproc import unique_id
from tests.support.faultproxy import FaultProxy
from tests.support.mqtt import retained
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker

CYCLES = 2  # the soak's failure took two resets: one cost MQTT 5, the next one retain


def test_blackhole_heal__reset_attempts_keep_mqtt_5_and_retain__retained_status_online(
    brokers: MakeBroker, proxies: Callable[[int], FaultProxy], agents: MakeAgent
) -> None:
    broker = brokers()
    proxy = proxies(broker.port)
    device = unique_id("heal")
    sink = EventSink(broker.port, device)  # straight to the broker: sees the will
    try:
        # a long CONNACK wait: the attempt inside the blackhole is still waiting when the heal resets it
        agent = agents(proxy.port, device, mqtt={"keepalive_s": 5, "connect_timeout_s": 10})
        wait_connected(agent)
        for n in range(1, CYCLES + 1):
            start = time.monotonic()
            proxy.set_blackhole(True)
            proxy.drop_all()  # the session ends at once; the agent's next attempt is swallowed
            sink.wait_status(lambda d: d.get("state") == "offline", 10, since=start, what=f"the will ({n})")
            eventually(lambda: proxy.tainted_connections > 0, 10, f"an attempt inside the blackhole ({n})")
            healed = time.monotonic()
            proxy.set_blackhole(False)  # resets that attempt before its CONNACK
            wait_connected(agent, timeout=15)
            sink.wait_status(lambda d: d.get("state") == "online", 10, since=healed, what=f"online again ({n})")
        link = agent.status()["status"]["link"]
        learnt = [line for line in log_text(agent).splitlines() if " WARNING agent.dialects: " in line]
        state = (retained(broker.port, f"campus/main/{device}/status") or {}).get("state")
        assert state == "online", f"retained status {state!r} while the agent is online: {learnt}"
        assert (link["protocol"], link["retain"]) == ("5", True), learnt
    finally:
        sink.close()
