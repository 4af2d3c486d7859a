"""The shipped example broker (config/mosquitto/), run for real with a throwaway PKI.

The example config and ACL are used as shipped; only file paths, the port
(a free one on 127.0.0.1) and persistence are swapped for the test's own.
Certificate CNs follow docs/install.md: ``{site}/{id}`` for devices,
``{site}/{id}/doctor`` for doctor, ``central`` for the centre.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.broker import MOSQUITTO, free_port, wait_port
from tests.support.certs import Issued, issue, make_ca
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "mosquitto"

# name in the pki dict -> certificate CN
IDENTITIES = {
    "gate-north-1": "main/gate-north-1",
    "gate-north-2": "main/gate-north-2",
    "doctor-gate-north-1": "main/gate-north-1/doctor",
    "central": "central",
}


@dataclass
class ExampleBroker:
    """mosquitto started from config/mosquitto/mosquitto.conf and campus.acl."""

    workdir: Path
    pki: dict[str, Issued]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def conf_text(self) -> str:
        text = (EXAMPLE / "mosquitto.conf").read_text()
        swaps = {
            "persistence true": "persistence false",
            "listener 8883": f"listener {self.port} 127.0.0.1",
            "/etc/mosquitto/certs/campus-ca.crt": str(self.pki["ca"].cert_path),
            "/etc/mosquitto/certs/broker.crt": str(self.pki["server"].cert_path),
            "/etc/mosquitto/certs/broker.key": str(self.pki["server"].key_path),
            "/etc/mosquitto/campus.acl": str(EXAMPLE / "campus.acl"),
        }
        for old, new in swaps.items():
            assert old in text, f"the example config changed: {old!r} is gone; update this fixture"
            text = text.replace(old, new)
        text = re.sub(r"^persistence_location .*$", "", text, flags=re.MULTILINE)
        head = "log_dest stderr\nlog_type all\nconnection_messages true\n"
        if os.geteuid() == 0:
            head += "user root\n"  # as root mosquitto drops to 'mosquitto', which cannot read tmp_path
        return head + text

    def start(self) -> ExampleBroker:
        self.port = self.port or free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.conf_text())
        log = self.workdir / "mosquitto.log"
        with open(log, "ab") as logf:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=logf, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, self.proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{log.read_text()}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    @property
    def log(self) -> str:
        return (self.workdir / "mosquitto.log").read_text(errors="replace")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Issued]:
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca(d)
    out = {"ca": ca, "server": issue(ca, d, "localhost", "server", server=True)}
    for name, cn in IDENTITIES.items():
        out[name] = issue(ca, d, cn, name, server=False)
    return out


@pytest.fixture
def example_broker(tmp_path: Path, pki: dict[str, Issued]) -> Iterator[ExampleBroker]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    b = ExampleBroker(workdir, pki).start()
    yield b
    b.stop()


class Client:
    """A TLS MQTT 5 client with one identity: records messages, returns PUBACK reason codes."""

    def __init__(
        self, broker: ExampleBroker, who: str, *, client_id: str | None = None, topics: tuple[str, ...] = ()
    ) -> None:
        pki = broker.pki
        self.msgs: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.connected = threading.Event()
        self.disconnects: list[int] = []
        self._pubacks: dict[int, int] = {}  # message id -> PUBACK reason code
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{who}-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.c.tls_set(
            ca_certs=str(pki["ca"].cert_path), certfile=str(pki[who].cert_path), keyfile=str(pki[who].key_path)
        )
        self.topics = topics
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.append(int(rc.value))
        self.c.on_subscribe = lambda *_a: self._subscribed.set()
        self.c.on_message = lambda _c, _u, m: self.msgs.put((m.topic, bytes(m.payload), bool(m.retain)))
        self.c.on_publish = self._on_publish
        self.c.connect("127.0.0.1", broker.port, keepalive=10)
        self.c.loop_start()
        if not self.connected.wait(10):
            raise TimeoutError(f"{who} did not connect")
        if topics and not self._subscribed.wait(10):
            raise TimeoutError(f"{who} got no SUBACK")

    def _on_connect(self, cl: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            for t in self.topics:
                cl.subscribe(t, qos=1)
            self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._lock:
            self._pubacks[mid] = int(rc.value)

    def pub(self, topic: str, payload: bytes | str, *, retain: bool = False, timeout: float = 10.0) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (0 = accepted, 135 = not authorised)."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        eventually(lambda: info.mid in self._pubacks, timeout, f"the PUBACK for {topic}")
        with self._lock:
            return self._pubacks.pop(info.mid)

    def until(self, topic: str, timeout: float = 10.0) -> list[tuple[str, bytes, bool]]:
        """Messages taken off the queue before the first one on ``topic`` (the sentinel technique)."""
        before: list[tuple[str, bytes, bool]] = []

        def sentinel() -> bool:
            while True:  # what arrived since the last poll, in order
                try:
                    msg = self.msgs.get_nowait()
                except queue.Empty:
                    return False
                if msg[0] == topic:
                    return True
                before.append(msg)

        eventually(sentinel, timeout, lambda: f"a message on {topic}; got {before}")
        return before

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def device_config(pki: dict[str, Issued], port: int, who: str = "gate-north-1") -> dict[str, Any]:
    """The ``mqtt`` section for the agent: TLS with the device's own certificate."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "tls": {
            "ca_file": str(pki["ca"].cert_path),
            "cert_file": str(pki[who].cert_path),
            "key_file": str(pki[who].key_path),
        },
    }
