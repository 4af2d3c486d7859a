"""``doctor`` against brokers that speak no MQTT 5 or keep no retained messages, as the agent meets them."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.doctor.runner import Host, run_doctor
from tests.support.agentproc import write_config
from tests.support.broker import Broker
from tests.support.fakebroker import GateProxy

pytestmark = pytest.mark.broker
DEV = "gate-doc-1"


def doctor(tmp_path: Path, port: int, **mqtt: Any) -> tuple[int, str]:
    cfg = write_config(tmp_path / "agent", port, device=DEV, mqtt=mqtt)
    with contextlib.suppress(OSError):  # no agent runs: doctor only probes the socket path
        Path(yaml.safe_load(cfg.read_text())["control"]["socket"]).parent.rmdir()
    out = io.StringIO()
    rc = run_doctor(cfg, timeout_s=2.0, out=out, host=Host(clock_synced=lambda: True, systemctl=None))
    return rc, out.getvalue()


@pytest.mark.parametrize("v5", ["close", "0x84"])
def test_doctor__auto_tries_3_1_1_when_the_broker_speaks_no_mqtt5(tmp_path: Path, broker: Broker, v5: str) -> None:
    with GateProxy(broker.port, v5=v5) as gate:
        rc, out = doctor(tmp_path, gate.port)
    assert rc == 0, out
    assert f"broker 127.0.0.1:{gate.port}: no MQTT 5 (" in out
    assert "refusal visibility" in out
    assert f"broker 127.0.0.1:{gate.port}: MQTT 3.1.1 login accepted" in out
    assert "round trip: published and received" in out
    assert gate.connects == [5, 4]


def test_doctor__explicit_5_against_a_broker_without_it_fails_and_names_the_fix(tmp_path: Path, broker: Broker) -> None:
    with GateProxy(broker.port, v5="0x84") as gate:
        rc, out = doctor(tmp_path, gate.port, protocol="5")
    assert rc == 1
    assert "MQTT 5: CONNACK Unsupported protocol version" in out
    assert "set mqtt.protocol: auto" in out


def test_doctor__retainless_broker_says_retain_unavailable(tmp_path: Path) -> None:
    b = Broker(tmp_path / "no-retain", listener_extra="allow_anonymous true\nretain_available false\n").start()
    try:
        rc, out = doctor(tmp_path, b.port)
    finally:
        b.stop()
    assert rc == 0, out
    assert f"WARN  broker 127.0.0.1:{b.port}: retain unavailable" in out
    assert "round trip: published and received" in out
    assert "check mqtt.username" not in out
