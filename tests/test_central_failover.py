"""`campus-agent monitor` with several brokers moves to the next one when its broker dies.

paho's own reconnect retries the same host for ever: before this, a monitor
given brokers A and B whose A died printed "reconnecting" and never showed
an alarm published on B (docs/configuration.md: ``mqtt.brokers`` are tried
in order for failover).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from agent.central.clients import rotation
from agent.central.session import MonitorOptions, Target, run_monitor
from agent.central.settings import LinkSettings
from agent.config.model import BrokerAddress
from tests.central.test_monitor import enc, event, topic
from tests.support.broker import Broker, free_port
from tests.support.mqtt import Central
from tests.support.waiting import eventually

A, B, C = BrokerAddress("a", 1), BrokerAddress("b", 2), BrokerAddress("c", 3)


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (A, [B, C, A]),  # the next ones first, the broker that just failed last
        (B, [C, A, B]),
        (C, [A, B, C]),
        (None, [A, B, C]),
    ],
)
def test_rotation__next_brokers_first_the_failed_one_last(
    current: BrokerAddress | None, expected: list[BrokerAddress]
) -> None:
    assert rotation((A, B, C), current) == expected


@dataclass
class _Run:
    out: io.StringIO = field(default_factory=io.StringIO)
    err: io.StringIO = field(default_factory=io.StringIO)
    stop: threading.Event = field(default_factory=threading.Event)
    exc: list[BaseException] = field(default_factory=list)

    def printed(self, needle: str, timeout: float = 10.0) -> str:
        def seen() -> str | None:
            if self.exc:
                raise self.exc[0]
            return self.out.getvalue() if needle in self.out.getvalue() else None

        return eventually(seen, timeout, lambda: f"{needle!r} on screen; it showed:\n{self.out.getvalue()}")


def _monitor(settings: LinkSettings) -> Iterator[_Run]:
    run = _Run()

    def main() -> None:
        try:
            run_monitor(Target(settings), MonitorOptions(table_every_s=0.0), out=run.out, err=run.err, stop=run.stop)
        except BaseException as exc:  # shown by the test, not lost on its thread
            run.exc.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    eventually(lambda: "monitoring " in run.err.getvalue() or run.exc, 10, "the monitor to start")
    yield run
    run.stop.set()
    thread.join(10)


@pytest.fixture
def two_broker_monitor(own_broker: Broker, broker: Broker) -> Iterator[_Run]:
    """A monitor given the stoppable ``own_broker`` first and the session's ``broker`` second; short timeouts."""
    brokers = (BrokerAddress("127.0.0.1", own_broker.port), BrokerAddress("127.0.0.1", broker.port))
    yield from _monitor(LinkSettings(brokers, connect_timeout_s=0.5))


@pytest.mark.broker
def test_monitor__moves_to_the_second_broker_when_the_first_dies_and_shows_its_alarms(
    own_broker: Broker, broker: Broker, device: str, two_broker_monitor: _Run
) -> None:
    assert f"127.0.0.1:{own_broker.port} " in two_broker_monitor.err.getvalue()
    own_broker.stop()  # broker A is gone for good
    two_broker_monitor.printed(f"lost the connection to 127.0.0.1:{own_broker.port}")
    out = two_broker_monitor.printed(
        f"moved to broker 127.0.0.1:{broker.port}: 127.0.0.1:{own_broker.port} unreachable"
    )
    assert "(the broker kept no session for us" in out, "B never had our session: the operator must be told"
    dev = Central(broker.port, topics=("none/#",))
    try:
        doc = event(device, seq=1)
        dev.publish(topic("event/panic", device), enc(doc))
        two_broker_monitor.printed(str(doc["id"]))
    finally:
        dev.close()


@pytest.fixture
def dead_second_monitor(own_broker: Broker) -> Iterator[_Run]:
    """A monitor given the stoppable ``own_broker`` first and a port where nothing listens second."""
    brokers = (BrokerAddress("127.0.0.1", own_broker.port), BrokerAddress("127.0.0.1", free_port()))
    yield from _monitor(LinkSettings(brokers, connect_timeout_s=0.5))


@pytest.mark.broker
def test_monitor__with_no_broker_answering_says_so_once_and_takes_the_first_back(
    own_broker: Broker, dead_second_monitor: _Run
) -> None:
    own_broker.stop()
    out = dead_second_monitor.printed("no broker answers: ")
    assert "connection refused" in out
    own_broker.start()
    out = dead_second_monitor.printed(f"reconnected to 127.0.0.1:{own_broker.port}")
    assert out.count("no broker answers") == 1, "said once per outage, not at every round"
