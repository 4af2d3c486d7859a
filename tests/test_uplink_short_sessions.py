"""A broker that accepts the agent and drops it at once must not get a reconnect a second.

Found by a hunt: any session accepted by a CONNACK reset the backoff, so two
devices sharing a client id (a cloned SD card; the example broker makes the
certificate's CN the id) took the session from each other about once a
second for ever, every kick flipping the retained status through the will,
with nothing in the log naming the cause.  Now a session shorter than
``failover.STABLE_S`` counts as a failed attempt (the backoff grows, failover goes
on), a streak of them is named in the log (as MQTT 5's "session taken over"
is, from brokers that get it out), and "use another server" moves to the
next broker.

The delays are the backoff's own figures (the jitter drawn at its ceiling);
the test sleeps a few milliseconds for each, so it is quick and exact.
"""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path

import pytest

from agent.uplink import Uplink
from tests.support.broker import Broker
from tests.support.uplinkrig import Rig, mqtt_cfg
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


class _Ceiling(random.Random):
    """Full jitter drawn at its ceiling: every delay is the backoff's bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _record_delays(up: Uplink) -> list[float]:
    delays: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:
            delays.append(seconds)
        up._stopping.wait(0.02)

    up._sleep = sleep  # type: ignore[method-assign]
    up._failover._rng = _Ceiling()
    return delays


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_uplink__two_devices_with_one_client_id_back_off_and_mqtt5_names_it(
    broker: Broker, tmp_path: Path, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.uplink")
    cfg = mqtt_cfg(
        broker.port, client_id=f"main/dup-{protocol}", protocol=protocol, reconnect_min_s=1.0, reconnect_max_s=60.0
    )
    rigs = [Rig(tmp_path, cfg, "dup-a"), Rig(tmp_path, cfg, "dup-b")]
    delays = [_record_delays(r.uplink) for r in rigs]
    try:
        for r in rigs:
            r.uplink.start()
        eventually(lambda: max(len(d) for d in delays) >= 4, 30.0, "a few takeovers")
    finally:
        for r in rigs:
            r.close()
    longest = max(delays, key=len)
    assert longest[:4] == [2.0, 4.0, 8.0, 16.0], f"the backoff did not grow: {delays}"
    # mosquitto 2.0 closes the old connection before its DISCONNECT 0x8E gets out: the streak names it
    assert f"client id 'main/dup-{protocol}' may be taking the session over" in caplog.text
