"""The reference consumer against a device that sends what it likes: never down, never fooled, nothing printed raw."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.broker import Broker
from tests.support.mqtt import Central
from tests.support.waiting import eventually
from tests.test_reference_consumer import ROOT, ref

EID = "0123456789abcdef0123456789abcdef"
TOPIC = "campus/main/gate-a/event/panic"


def panic(**over: object) -> bytes:
    doc: dict[str, Any] = {
        "v": 1,
        "id": EID,
        "seq": 5,
        "site": "main",
        "device": "gate-a",
        "type": "panic",
        "source": "panic",
        "test": False,
        "ts": "2026-11-29T06:00:10.000Z",
        "clock_synced": True,
        "boot_id": "b1",
        "mono_ms": 10_000,
        "data": {},
    }
    doc.update(over)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


POISON = [
    (panic(id=...), "id ? is not 32 lower-case hex digits"),
    (panic(id=[1]), "id [1] is not 32 lower-case hex digits"),
    (panic(seq="x"), "seq x is not a whole number from 1"),
    (panic(seq=None), "seq ? is not a whole number from 1"),
    (panic(site="hq"), "site hq is not the topic's (main)"),
    (panic(device="vault"), "device vault is not the topic's (gate-a)"),
    (panic(type="input_restored"), "type input_restored is not the topic's (panic)"),
]


@pytest.mark.parametrize(("payload", "why"), POISON)
def test_consumer__a_malformed_event_is_one_warning_and_the_next_is_shown(payload: bytes, why: str) -> None:
    c = ref.Consumer()
    assert c.handle(TOPIC, payload) == [f"ignored event on {TOPIC}: {why}"]
    [line] = c.handle(TOPIC, panic())  # the same id, well formed: not taken for a copy of the refused one
    assert line.startswith("PANIC at main/gate-a from panic at 2026-11-29T06:00:10.000Z seq 5")


@pytest.mark.parametrize(
    ("over", "when"),
    [
        ({"ts": "yesterday"}, "yesterday?"),
        ({"ts": 5}, "5?"),
        ({"mono_ms": "x", "clock_synced": False}, "2026-11-29T06:00:10.000Z?"),
        ({"mono_ms": 10**30, "clock_synced": False, "boot_id": "b0"}, "2026-11-29T06:00:10.000Z?"),
    ],
)
def test_consumer__an_alarm_whose_time_cannot_be_read_is_shown_with_its_time_unknown(
    over: dict[str, Any], when: str
) -> None:
    c = ref.Consumer()
    c.handle(TOPIC, panic(id="f" * 32, seq=4, boot_id="b0", mono_ms=1))  # a synced event: boot b0 has an offset
    [line] = c.handle(TOPIC, panic(**over))
    assert line == f"PANIC at main/gate-a from panic at {when} seq 5"


def test_consumer__an_error_in_handling_is_a_warning_and_the_event_is_not_marked_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = ref.Consumer()

    def broken(*_a: object) -> str:
        raise RuntimeError("disk \x1b[2J gone")

    monkeypatch.setattr(ref.Consumer, "retime", broken)
    assert c.handle(TOPIC, panic()) == [
        f"WARNING ignored message on {TOPIC}: RuntimeError: disk \\x1b[2J gone",
    ]
    monkeypatch.undo()
    assert c.handle(TOPIC, panic())[0].startswith("PANIC at main/gate-a")  # its redelivery is shown


def test_consumer__nothing_a_device_sends_is_printed_raw() -> None:
    c = ref.Consumer()
    status = {"v": 1, "state": "online\x1b[2J", "outbox": {"dropped": "\u202e9"}}
    assert c.handle("campus/main/gate-a/status", json.dumps(status).encode()) == [
        "main/gate-a is online\\x1b[2J",
    ]
    c.handle(TOPIC, panic(id="1" * 32, seq=1))
    gap, alarm = c.handle(TOPIC, panic(source="\x1b[1;1Hall clear\r\n", ts="\x9b2J"))
    assert "device reports \\u202e9 dropped" in gap
    assert alarm == "PANIC at main/gate-a from \\x1b[1;1Hall clear\\r\\n at \\x9b2J? seq 5"
    assert c.handle("campus/main/gate\x1b/status", b"{}") == [
        "ignored message on campus/main/gate\\x1b/status: site or device is not a contract id"
    ]
    assert ref.shown("a\\x1b \u2028 é") == "a\\\\x1b \\u2028 é"  # a backslash a device sent cannot pose as an escape


def test_consumer__an_id_is_its_own_devices() -> None:
    c = ref.Consumer()
    assert c.handle("campus/main/gate-b/event/panic", panic(device="gate-b"))[0].startswith("PANIC at main/gate-b")
    assert c.handle(TOPIC, panic())[0].startswith("PANIC at main/gate-a"), "gate-b's id hid gate-a's panic"
    assert c.handle(TOPIC, panic()) == []


class Proc:
    """The reference consumer as a process with a fixed client id; stdout collected on a thread."""

    def __init__(self, port: int, client_id: str, *, new_session: bool) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "docs/examples/reference_consumer.py"),
                "--port",
                str(port),
                "--client-id",
                client_id,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        assert self.proc.stderr is not None
        if new_session:  # a resumed session keeps its subscriptions: nothing to wait for
            assert "subscribed to" in self.proc.stderr.readline()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def mine(self, device: str) -> list[str]:
        return [ln for ln in list(self.lines) if device in ln]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def end_session(port: int, client_id: str) -> None:
    """Connect once with a clean start: the broker forgets the persistent session the test made."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    c.connect("127.0.0.1", port, clean_start=True)
    c.loop_start()
    try:
        eventually(c.is_connected, 10.0, "a clean-start connection")
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.mark.broker
def test_consumer__one_poison_event_neither_stops_it_nor_comes_back_after_a_restart(
    broker: Broker, device: str
) -> None:
    """paho 2 re-raises an on_message error out of loop_forever before the PUBACK: the session would resend it forever."""
    topic = f"campus/main/{device}/event/panic"
    client_id = f"ref-{uuid.uuid4().hex[:8]}"
    pub = Central(broker.port, topics=("none/#",))
    first = Proc(broker.port, client_id, new_session=True)
    again: Proc | None = None
    try:
        pub.publish(topic, panic(device=device, id=..., seq=1))
        pub.publish(topic, panic(device=device, id="a" * 32, seq=2))
        eventually(
            lambda: any(ln.startswith(f"PANIC at main/{device} ") for ln in first.mine(device)),
            10.0,
            lambda: f"the panic after a malformed event: {first.mine(device)}, exit {first.proc.poll()}",
        )
        assert first.proc.poll() is None
        assert first.mine(device)[0] == f"ignored event on {topic}: id ? is not 32 lower-case hex digits"
        first.close()
        again = Proc(broker.port, client_id, new_session=False)
        pub.publish(topic, panic(device=device, id="b" * 32, seq=3))  # waits in the session if not yet connected
        eventually(
            lambda: again.mine(device), 10.0, lambda: f"the next panic after a restart, exit {again.proc.poll()}"
        )
        assert again.mine(device) == [f"PANIC at main/{device} from panic at 2026-11-29T06:00:10.000Z seq 3"]
    finally:
        pub.close()
        first.close()
        if again is not None:
            again.close()
        end_session(broker.port, client_id)
