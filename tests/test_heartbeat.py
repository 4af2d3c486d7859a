"""Heartbeats: status from live state, timer behaviour, size bounds, cameras off the button path."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config.model import InputKind
from agent.health import Health, Heartbeat, StatusSources, TestMode, read_cpu_temp
from agent.outbox import Outbox
from agent.uplink import LinkState
from agent.watched_input import InputState
from tests.support.agentproc import AgentFactory
from tests.support.broker import Broker
from tests.support.camservers import HttpCamera
from tests.support.clocks import FakeTime, synced_clock
from tests.support.contract import Validate
from tests.support.mqtt import Central
from tests.support.waiting import eventually

LINK = LinkState(
    connected=True,
    broker="b:1883",
    connected_since=1.7e9,
    reconnects=2,
    last_error=None,
    inflight=0,
    published=0,
    delivered=0,
    refused=0,
)


def _stats_two_brokers() -> dict[str, Any]:
    from agent.linkstats import LinkStats

    now = 1_800_000_000.0
    stats = LinkStats()
    for i, broker in enumerate(("broker-a.campus.example:8883", "broker-b.campus.example:8883")):
        stats.link_up(broker, now + i)
        for k in range(1000):
            stats.delivered(broker, 0.001 * (k % 97) + 12.345, now + i + k)
        stats.link_down(now + i + 2000)
    return stats.snapshot(now + 5000)


def test_status__8_inputs_8_cameras_under_4_kib_and_valid(tmp_path: Path, outbox: Outbox, validate: Validate) -> None:
    clock = synced_clock("f" * 32)
    ob = outbox
    inputs = {
        f"panic-button-{i}": InputState(
            f"panic-button-{i}",
            InputKind.PANIC_BUTTON.value,
            i,
            "fault",
            None,
            "2026-11-29T06:01:02.345Z",
            "2026-11-29T06:01:02.345Z",
        )
        for i in range(8)
    }
    cams = {
        f"camera-north-{i}": {"ok": False, "checked": "2026-11-29T06:01:02.345Z", "detail": "x" * 500} for i in range(8)
    }
    health = Health(
        site="main",
        device="gate-north-1",
        clock=clock,
        outbox=ob,
        test_mode=TestMode(clock),
        sources=StatusSources(
            link=lambda: LINK,
            inputs=lambda: inputs,
            cameras=lambda: cams,
            outputs=lambda: {"ack_led": {"pattern": "sending"}, "buzzer": {"pattern": "idle"}},
            commands=lambda: {"accepted": 10**6, "rejected": 10**6},
            warnings=lambda: ["w" * 300] * 20,
        ),
    )
    doc = validate("status", health.status())
    size = len(json.dumps(doc, separators=(",", ":")).encode())
    assert size < 4096, f"status is {size} bytes"
    health.sources.link_stats = _stats_two_brokers
    health.sources.photos = lambda: {"pending": 10**4, "bytes": 10**9, "dropped": 10**6}
    doc = validate("status", health.status())
    size = len(json.dumps(doc, separators=(",", ":")).encode())
    assert size < 6144, f"status with link figures for two brokers and photos is {size} bytes"
    assert all(len(c["detail"]) <= 120 for c in doc["cameras"].values())


def test_heartbeat__periodic_and_on_change_coalesced() -> None:
    beats: list[float] = []

    def publish() -> None:
        beats.append(time.monotonic())

    hb = Heartbeat(interval_s=0.3, publish=publish, mono=time.monotonic, min_gap_s=0.2)
    hb.start()
    try:
        eventually(lambda: len(beats) >= 3, what="three periodic beats")
        n = len(beats)
        for _ in range(20):  # a burst of changes
            hb.changed()
        eventually(lambda: len(beats) >= n + 1, what="a beat for the burst of changes", interval=0.005)
        assert len(beats) <= n + 3, "20 changes must coalesce into a few status documents"
    finally:
        hb.stop()


def test_test_mode__ends_by_itself(fake_time: FakeTime) -> None:
    clock = fake_time.clock()
    tm = TestMode(clock)
    assert tm.until() is None
    assert tm.set(2) is not None
    assert tm.active()
    fake_time.advance(119)
    assert tm.active()
    fake_time.advance(2)
    assert not tm.active()
    assert tm.until() is None


def test_cpu_temp__read_from_thermal_zone(tmp_path: Path) -> None:
    zone = tmp_path / "thermal_zone0"
    zone.mkdir()
    (zone / "temp").write_text("48234\n")
    assert read_cpu_temp(tmp_path) == 48.2
    assert read_cpu_temp(tmp_path / "missing") is None


@pytest.mark.broker
def test_press__not_delayed_by_a_hung_camera_probe(
    broker: Broker, central: Central, agent_proc: AgentFactory, device: str
) -> None:
    cam = HttpCamera("hang").start()
    try:
        agent = agent_proc(
            broker.port,
            device=device,
            cameras=[
                {"name": "gate-cam", "kind": "http_snapshot", "url": cam.url, "timeout_s": 5, "probe_interval_s": 5}
            ],
        )
        central.wait_for(lambda m: m.topic.endswith("/status") and m.doc["state"] == "online")
        eventually(lambda: cam.hits >= 1, what="the probe to be stuck inside the camera")
        delays = []
        for _ in range(5):
            t0 = time.monotonic()
            agent.click()
            m = central.wait_for(lambda m: m.topic.endswith("/event/panic"), timeout=5)
            delays.append(m.at - t0)
        # the probe hangs for its 5 s timeout: a press waiting on it would take longer than half that
        assert max(delays) < 2.5, f"press → broker took {max(delays):.3f} s while a probe hung"
        st = agent.status()["status"]
        assert st["cameras"]["gate-cam"]["ok"] is not True
    finally:
        cam.release.set()
        cam.stop()


@pytest.mark.broker
def test_stuck_button__one_fault_then_restored_end_to_end(
    broker: Broker, central: Central, agent_proc: AgentFactory, device: str, validate: Validate
) -> None:
    agent = agent_proc(
        broker.port, device=device, inputs=[{"name": "panic", "pin": 17, "debounce_ms": 0, "stuck_after_s": 1}]
    )
    agent.press()
    fault = central.wait_for(lambda m: m.topic.endswith("/event/input_fault"), timeout=10).doc
    validate("event", fault)
    assert fault["data"]["reason"] == "stuck"
    assert agent.status()["status"]["inputs"]["panic"]["state"] == "fault"
    agent.release()
    restored = central.wait_for(lambda m: m.topic.endswith("/event/input_restored"), timeout=10).doc
    validate("event", restored)
    panics = central.events("panic")
    assert len(panics) == 1, "a held button is one alarm, not a stream"


@pytest.mark.broker
def test_picamera2_missing__reported_not_fatal(broker: Broker, agent_proc: AgentFactory, device: str) -> None:
    agent = agent_proc(
        broker.port,
        device=device,
        cameras=[{"name": "door", "kind": "picamera2", "fail_after": 1, "probe_interval_s": 5}],
    )
    cam = eventually(
        lambda: (c := agent.status()["status"]["cameras"]["door"])["checked"] is not None and c,
        what="the first camera check",
    )
    assert cam["ok"] is False
    assert "picamera2" in cam["detail"]
    assert agent.proc is not None
    assert agent.proc.poll() is None


def test_no_optional_hardware_imported(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, agent.daemon, agent.cli; "
        "print(sorted(m for m in ('picamera2', 'lgpio', 'requests', 'numpy') if m in sys.modules))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert r.stdout.strip() == "[]"
