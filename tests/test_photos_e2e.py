"""A still with every alarm, end to end: the agent as a process, a loopback HTTP camera, a real mosquitto."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agentproc import AgentFactory, AgentProc
from tests.support.broker import Broker
from tests.support.contract import Validate
from tests.support.mqtt import Central, Msg
from tests.support.snapcam import SnapCamera
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


def photo_config(cam: SnapCamera) -> dict[str, Any]:
    return {
        "inputs": [{"name": "panic", "kind": "panic_button", "pin": 17, "debounce_ms": 0, "snapshot": ["gate-cam"]}],
        "cameras": [
            {"name": "gate-cam", "kind": "http_snapshot", "url": cam.url, "probe_interval_s": 3600, "timeout_s": 2}
        ],
    }


def wait_status(agent: AgentProc, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
    """The agent's status document, once ``pred`` accepts it."""
    return eventually(
        lambda: st if pred(st := agent.status()["status"]) else None,
        timeout,
        lambda: f"a matching status; last: {agent.status()['status']}",
    )


@pytest.fixture
def camera() -> Iterator[SnapCamera]:
    cam = SnapCamera(size=200_000).start()
    yield cam
    cam.stop()


def test_photo__follows_its_alarm_with_mqtt5_properties(
    broker: Broker, device: str, agent_proc: AgentFactory, camera: SnapCamera, validate: Validate
) -> None:
    central = Central(broker.port, topics=(f"campus/+/{device}/#",))
    try:
        agent = agent_proc(broker.port, device=device, **photo_config(camera))
        agent.click()
        photo = central.wait_for(lambda m: "/snapshot/" in m.topic, timeout=20)
        arrived = [m.topic for m in central.all]
        event = next(m for m in central.all if m.topic.endswith("/event/panic"))
        doc = validate("event", event.doc)
        assert photo.topic == f"campus/main/{device}/snapshot/{doc['id']}"
        assert arrived.index(event.topic) < arrived.index(photo.topic)  # the alarm first, always
        assert photo.payload == camera.jpeg
        assert not photo.retain
        assert photo.props is not None
        assert photo.props["content_type"] == "image/jpeg"
        assert photo.props["user"]["event_id"] == doc["id"]
        assert photo.props["user"]["camera"] == "gate-cam"
        st = wait_status(agent, lambda s: s.get("photos", {}).get("pending") == 0)
        validate("status", st)
    finally:
        central.close()


def test_photo__camera_error_is_a_snapshot_failed_event_and_the_alarm_still_goes(
    broker: Broker, device: str, agent_proc: AgentFactory, validate: Validate
) -> None:
    cam = SnapCamera("error500").start()
    central = Central(broker.port, topics=(f"campus/+/{device}/#",))
    try:
        agent = agent_proc(broker.port, device=device, **photo_config(cam))
        agent.click()
        alarm = central.wait_events(1, "panic")[0]
        failed = central.wait_events(1, "snapshot_failed")[0]
        validate("event", failed)
        assert failed["data"]["event_id"] == alarm["id"]
        assert failed["data"]["reason"] == "http_error"
        assert failed["source"] == "gate-cam"
        assert not any("/snapshot/" in m.topic for m in central.all)
    finally:
        central.close()
        cam.stop()


def test_photo__kept_through_an_outage_and_a_sigkill_then_delivered(
    tmp_path: Path, device: str, agent_proc: AgentFactory, camera: SnapCamera
) -> None:
    b = Broker(tmp_path / "broker").start()
    try:
        agent = agent_proc(b.port, device=device, **photo_config(camera))
        b.stop()
        agent.click()
        wait_status(agent, lambda s: s.get("photos", {}).get("pending") == 1)
        agent.kill()  # the alarm is in the outbox, the photo in photos.db: both must survive
        b.start()
        central = Central(b.port, topics=(f"campus/+/{device}/#",))
        try:
            agent.start()
            photo = central.wait_for(lambda m: "/snapshot/" in m.topic, timeout=30)
            events: list[Msg] = [m for m in central.all if m.topic.endswith("/event/panic")]
            assert events, "the alarm must arrive before its photo"
            assert photo.topic.endswith(events[0].doc["id"])
            assert photo.payload == camera.jpeg
        finally:
            central.close()
    finally:
        b.stop()
