"""Transmission figures in status: fed by the link and PUBACKs, saved at most once an interval, kept across SIGKILL."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.cli import format_status
from agent.linkstats import LinkStats
from agent.transmission import Transmission
from tests.support.agentproc import AgentFactory
from tests.support.broker import Broker
from tests.support.clocks import FakeTime
from tests.support.contract import Validate
from tests.support.waiting import eventually


def make(tmp_path: Path, clock: FakeTime, every: float = 30.0) -> Transmission:
    return Transmission(tmp_path / "link-stats.json", wall=clock.wall, mono=clock, save_every_s=every)


def test_transmission__delivered_counts_for_the_connected_broker_only(tmp_path: Path, fake_time: FakeTime) -> None:
    t = make(tmp_path, fake_time)
    t.delivered(fake_time.wall() - 1)  # no broker yet: nothing to attribute it to
    t.link(True, "a:8883")
    t.delivered(fake_time.wall() - 0.004)
    t.delivered(fake_time.wall() - 0.5)
    fake_time.advance(60)
    t.link(False, None)
    t.delivered(fake_time.wall() - 0.1)
    transmit = t.snapshot()["transmit"]
    assert list(transmit) == ["a:8883"]
    hour = transmit["a:8883"]["1h"]
    assert hour["count"] == 2
    assert hour["max_ms"] == pytest.approx(500, rel=0.01)
    assert t.snapshot()["availability"]["24h"]["outages"] == 1  # the one running since link_down


def test_transmission__saves_at_most_once_an_interval_and_restores(tmp_path: Path, fake_time: FakeTime) -> None:
    t = make(tmp_path, fake_time, every=30.0)
    t.link(True, "a:1883")
    t.save()
    first = (tmp_path / "link-stats.json").read_bytes()
    for _ in range(10):
        t.delivered(fake_time.wall() - 0.01)
    fake_time.advance(10)
    t.save()  # 10 s after the last save: not yet
    assert (tmp_path / "link-stats.json").read_bytes() == first
    fake_time.advance(25)
    t.save()
    assert (tmp_path / "link-stats.json").read_bytes() != first
    t.close()
    t.close()  # idempotent
    again = make(tmp_path, fake_time)
    assert again.snapshot()["transmit"] == t.snapshot()["transmit"]
    assert again.snapshot()["transmit"]["a:1883"]["1h"]["count"] == 10
    # restarted: down until the next connect, so the gap counts as an outage (erring on the operator's side)
    assert again.snapshot()["availability"]["24h"]["outages"] == 1
    assert "closed" in repr(t)


def test_transmission__unreadable_or_unwritable_file_never_raises(
    tmp_path: Path, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "link-stats.json").write_text("{not json")
    t = make(tmp_path, fake_time)
    assert "start afresh" in caplog.text
    t.path = tmp_path / "missing-dir" / "x.json"
    t.save(force=True)
    t.save(force=True)
    assert caplog.text.count("cannot write") == 1


def saved_stats(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())  # written whole and renamed: never half a file
    return LinkStats.from_state(doc, time.time()).snapshot(time.time())


@pytest.mark.broker
def test_status__link_stats_survive_sigkill(
    tmp_path: Path, broker: Broker, device: str, agent_proc: AgentFactory, validate: Validate
) -> None:
    agent = agent_proc(broker.port, device=device, heartbeat={"interval_s": 5})
    agent.click()
    agent.wait_recorded(1)
    saved = tmp_path / device / "link-stats.json"

    def delivered_count(stats: dict[str, Any]) -> int:
        return sum(path["31d"]["count"] for path in stats.get("transmit", {}).values())

    def delivered_and_saved() -> dict[str, Any] | None:
        status: dict[str, Any] = agent.status()["status"]
        if (
            delivered_count(status["link"].get("stats", {})) >= 1
            and saved.exists()
            and delivered_count(saved_stats(saved)) >= 1
        ):
            return status
        return None

    status = eventually(
        delivered_and_saved,
        30.0,
        lambda: f"a delivery in the saved figures; status link: {agent.status()['status']['link']}",
        interval=0.1,
    )
    validate("status", status)
    agent.kill()
    agent.start()
    reply = agent.status()
    after = reply["status"]
    validate("status", after)
    assert delivered_count(after["link"]["stats"]) >= 1
    shown = format_status(reply)  # what `campus-agent status` prints
    assert f"via 127.0.0.1:{broker.port}: " in shown
    assert "31d n=" in shown
    assert "link up  24h " in shown
