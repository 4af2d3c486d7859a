"""The reference consumer in docs/examples: de-dup, gaps and re-timing, and live against an agent."""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.agentproc import AgentFactory
from tests.support.broker import Broker
from tests.support.mqtt import Central
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reference_consumer", ROOT / "docs/examples/reference_consumer.py")
assert spec is not None
assert spec.loader is not None
ref = importlib.util.module_from_spec(spec)
sys.modules["reference_consumer"] = ref
spec.loader.exec_module(ref)


def event(
    seq: int,
    *,
    eid: str | None = None,
    synced: bool = True,
    ts: str = "2026-11-29T06:00:10.000Z",
    mono_ms: int = 10_000,
    boot: str = "b1",
    device: str = "g1",
) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "id": eid or f"{seq:032x}",
            "seq": seq,
            "site": "main",
            "device": device,
            "type": "panic",
            "source": "panic",
            "test": False,
            "ts": ts,
            "clock_synced": synced,
            "boot_id": boot,
            "mono_ms": mono_ms,
            "data": {},
        }
    ).encode()


def test_consumer__dedup_on_id() -> None:
    c = ref.Consumer()
    assert len(c.handle("campus/main/g1/event/panic", event(1))) == 1
    assert c.handle("campus/main/g1/event/panic", event(1)) == []


def test_consumer__gap_reported_with_dropped_count() -> None:
    c = ref.Consumer()
    c.handle("campus/main/g1/status", json.dumps({"v": 1, "state": "online", "outbox": {"dropped": 2}}).encode())
    c.handle("campus/main/g1/event/panic", event(1))
    lines = c.handle("campus/main/g1/event/panic", event(4))
    assert lines[0].startswith("gap: seq 2..3 from main/g1 not seen")
    assert "2 dropped" in lines[0]


def test_consumer__retimes_unsynced_events_of_the_same_boot() -> None:
    c = ref.Consumer()
    c.handle("campus/main/g1/event/panic", event(1, synced=True, ts="2026-11-29T06:00:10.000Z", mono_ms=10_000))
    line = c.handle(
        "campus/main/g1/event/panic", event(2, synced=False, ts="1970-01-01T00:00:30.000Z", mono_ms=25_500)
    )[0]
    assert "at 2026-11-29T06:00:25.500Z~" in line
    unknown = c.handle(
        "campus/main/g1/event/panic", event(3, synced=False, boot="other", ts="1970-01-01T00:00:01.000Z")
    )
    assert "1970-01-01T00:00:01.000Z?" in unknown[0]


def test_consumer__retimes_from_a_synced_status_of_the_same_boot() -> None:
    """After a power cut the next synced document of a boot is usually a heartbeat, not a press."""
    c = ref.Consumer()
    status = {
        "v": 1,
        "state": "online",
        "ts": "2026-11-29T06:00:10.000Z",
        "clock_synced": True,
        "mono_ms": 10_000,
        "agent": {"boot_id": "b1"},
    }
    c.handle("campus/main/g1/status", json.dumps(status).encode())
    line = c.handle(
        "campus/main/g1/event/panic", event(1, synced=False, ts="1970-01-01T00:00:30.000Z", mono_ms=25_500)
    )[0]
    assert "at 2026-11-29T06:00:25.500Z~" in line
    older = {k: v for k, v in status.items() if k != "mono_ms"}  # an older agent's status cannot serve
    c = ref.Consumer()
    c.handle("campus/main/g1/status", json.dumps(older).encode())
    assert "?" in c.handle("campus/main/g1/event/panic", event(1, synced=False, ts="1970-01-01T00:00:30.000Z"))[0]


def test_consumer__ignores_garbage() -> None:
    c = ref.Consumer()
    assert c.handle("campus/main/g1/event/panic", b"\xff") == ["ignored non-JSON message on campus/main/g1/event/panic"]
    assert "unknown version" in c.handle("campus/main/g1/event/panic", b'{"v": 2}')[0]


@pytest.mark.broker
def test_consumer__live_against_a_real_agent(
    broker: Broker, central: Central, agent_proc: AgentFactory, device: str
) -> None:
    agent = agent_proc(broker.port, device=device)
    agent.click()
    agent.click()
    central.wait_events(2, "panic")
    c = ref.Consumer()
    lines: list[Any] = []
    for m in central.all:
        lines += c.handle(m.topic, m.payload)
        lines += c.handle(m.topic, m.payload)  # every message twice: duplicates must vanish
    alarms = [line for line in lines if line.startswith("PANIC")]
    assert len(alarms) == 2
    assert not [line for line in lines if line.startswith("gap")]


class ConsumerProc:
    """The reference consumer as a process; its stdout collected on a thread."""

    def __init__(self, port: int, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "docs/examples/reference_consumer.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--client-id",
                f"ref-{uuid.uuid4().hex[:8]}",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        assert self.proc.stderr is not None
        assert "subscribed to" in self.proc.stderr.readline()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def seqs(self, device: str) -> list[int]:
        return [int(ln.rsplit(" ", 1)[1]) for ln in list(self.lines) if ln.startswith(f"PANIC at main/{device} ")]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.mark.broker
def test_consumer__shared_subscription_gives_each_event_to_exactly_one_member(broker: Broker, device: str) -> None:
    group = f"central-{uuid.uuid4().hex[:6]}"
    members = [ConsumerProc(broker.port, "--group", group) for _ in range(2)]
    pub = Central(broker.port, topics=("none/#",))
    try:
        for seq in range(1, 21):
            pub.publish(f"campus/main/{device}/event/panic", event(seq, eid=uuid.uuid4().hex, device=device))
        # Sentinels until each member has printed one: a copy of an earlier event would have come before it.
        sentinels = itertools.count(21)

        def each_printed_a_sentinel() -> bool:
            if all(any(s > 20 for s in m.seqs(device)) for m in members):
                return True
            seq = next(sentinels)
            pub.publish(f"campus/main/{device}/event/panic", event(seq, eid=uuid.uuid4().hex, device=device))
            return False

        # interval: one sentinel per 0.05 s, so a slow member is not flooded
        eventually(
            each_printed_a_sentinel,
            20.0,
            lambda: f"a sentinel at each member: {[m.lines for m in members]}",
            interval=0.05,
        )
        got = [s for m in members for s in m.seqs(device) if s <= 20]
        assert sorted(got) == list(range(1, 21))  # every event once, across the group
        assert all(any(s <= 20 for s in m.seqs(device)) for m in members)  # and both members took a share
    finally:
        pub.close()
        for m in members:
            m.close()


# ---- --snapshots DIR: alarm photos ---------------------------------------------------------

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"
EID = "0123456789abcdef0123456789abcdef"


def test_save_photo__parts_and_numbered_names_and_redeliveries(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    topic = f"campus/main/g1/snapshot/{EID}"
    assert ref.save_photo(root, topic, JPEG, {"event_id": EID, "part": "1/2"}).endswith(f"main/g1/{EID}.jpg")
    assert ref.save_photo(root, topic, JPEG + b"2", {"part": "2/2"}).endswith(f"{EID}-2.jpg")
    assert ref.save_photo(root, topic, JPEG, {"part": "1/2"}) == f"main/g1: photo for {EID} already saved"
    # MQTT 3.1.1: no part; a new photo takes the first free name, one already saved is skipped.
    assert ref.save_photo(root, topic, JPEG + b"3", {}).endswith(f"{EID}-3.jpg")
    assert ref.save_photo(root, topic, JPEG + b"2", {}) == f"main/g1: photo for {EID} already saved"
    assert (root / "main/g1" / f"{EID}.jpg").read_bytes() == JPEG
    assert sorted(p.name for p in (root / "main/g1").iterdir()) == [f"{EID}-2.jpg", f"{EID}-3.jpg", f"{EID}.jpg"]


@pytest.mark.parametrize(
    ("topic", "payload", "props", "why"),
    [
        (f"campus/main/../snapshot/{EID}", JPEG, {}, "site or device is not a contract id"),
        ("campus/main/g1/snapshot/..", JPEG, {}, "not an event id"),
        (f"campus/main/g1/snapshot/{EID}", JPEG, {"event_id": "f" * 32}, "not an event id"),
        (f"campus/main/g1\x1b[2J/snapshot/{EID}", JPEG, {}, "campus/main/g1\\x1b[2J/snapshot"),
        (f"campus/main/g1/snapshot/{EID}", b"<html>", {}, "not a JPEG"),
    ],
)
def test_save_photo__refuses(tmp_path: Path, topic: str, payload: bytes, props: dict[str, str], why: str) -> None:
    line = ref.save_photo(tmp_path / "photos", topic, payload, props)
    assert line.startswith("refused photo on ")
    assert why in line
    assert "\x1b" not in line
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("where", ["device", "file"])
def test_save_photo__a_planted_symlink_is_not_followed(tmp_path: Path, where: str) -> None:
    root, victim = tmp_path / "photos", tmp_path / "victim"
    victim.mkdir()
    (root / "main").mkdir(parents=True)
    if where == "device":
        (root / "main/g1").symlink_to(victim)
    else:
        (root / "main/g1").mkdir()
        (root / "main/g1" / f"{EID}.jpg").symlink_to(victim / "keep")
    line = ref.save_photo(root, f"campus/main/g1/snapshot/{EID}", JPEG, {"part": "1/1"})
    assert line.startswith("refused photo on campus/main/g1/snapshot/")
    assert list(victim.iterdir()) == []


@pytest.mark.broker
def test_consumer__snapshots_saves_a_photo_sent_with_mqtt5_properties(
    broker: Broker, device: str, tmp_path: Path
) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    photos = tmp_path / "photos"
    consumer = ConsumerProc(broker.port, "--snapshots", str(photos))
    pub = Central(broker.port, topics=("none/#",))
    try:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = "image/jpeg"
        props.UserProperty = [("event_id", EID), ("camera", "gate-cam"), ("part", "2/2")]
        pub.c.publish(f"campus/main/{device}/snapshot/{EID}", JPEG, qos=1, properties=props).wait_for_publish(5)
        eventually(
            lambda: any(ln.startswith("PHOTO") for ln in list(consumer.lines)),
            20.0,
            lambda: f"the consumer to save the photo: {consumer.lines}",
        )
    finally:
        pub.close()
        consumer.close()
    path = photos / "main" / device / f"{EID}-2.jpg"
    assert [ln for ln in consumer.lines if device in ln] == [f"PHOTO for {EID} at main/{device} saved as {path}"]
    assert path.read_bytes() == JPEG
