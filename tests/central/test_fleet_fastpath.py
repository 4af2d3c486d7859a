"""The heartbeat fast path: a known device's status topic is checked once, its payload every time; one hand-off per burst."""

from __future__ import annotations

import json
import queue
from typing import Any

import pytest

import agent.central.fleet as fleet_module
from agent.central.board import DeviceState
from agent.central.display import valid_id as display_valid_id
from agent.central.fleet import FleetView
from agent.central.link import Incoming, LinkNote, unpack
from agent.central.session import MonitorOptions, _Session
from tests.central.test_fleet_scale import T0, Out, StubLink, name, panic, status, topic


def test_fleet__a_known_status_topic_is_checked_once_not_per_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = display_valid_id

    def counted(text: str) -> bool:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(fleet_module, "valid_id", counted)
    fleet = FleetView()
    for beat in range(50):
        for i in range(20):
            site, device = name(i)
            fleet.feed(topic(i), status(site, device, T0 + 30 * beat), T0 + 30 * beat)
    assert len(calls) == 2 * 20  # site and device of each of the 20 topics, once
    assert fleet.counts()[DeviceState.ONLINE] == 20


@pytest.mark.parametrize(
    ("why", "payload", "warning"),
    [
        ("not JSON", b"{nope", "payload is not JSON"),
        ("another device's name", status("site-0", "gate-99999", T0 + 30), "device 'gate-99999' is not the topic's"),
        ("another site's name", status("site-3", "gate-00000", T0 + 30), "site 'site-3' is not the topic's"),
        ("an unknown state", json.dumps({"state": "\x1b[2Jgone"}).encode(), "status with state '\\x1b[2Jgone'"),
        ("too large", b" " * 70_000, "too large"),
    ],
)
def test_fleet__a_known_topic_still_gets_every_payload_checked(why: str, payload: bytes, warning: str) -> None:
    fleet = FleetView()
    site, device = name(0)
    assert fleet.feed(topic(0), status(site, device, T0), T0) != []  # "first status seen": the topic is now known
    lines = fleet.feed(topic(0), payload, T0 + 30)
    assert len(lines) == 1, why
    assert warning in lines[0].text
    assert "\x1b" not in lines[0].text
    row = fleet.rows(T0 + 30)[0]
    assert (row.state, row.heard) == (DeviceState.ONLINE, T0)  # the bad one changed nothing


def test_fleet__offline_then_online_on_a_known_topic_is_shown() -> None:
    fleet = FleetView()
    site, device = name(0)
    fleet.feed(topic(0), status(site, device, T0), T0)
    offline = json.dumps({"v": 1, "site": site, "device": device, "state": "offline", "reason": "lost"}).encode()
    assert "OFFLINE" in fleet.feed(topic(0), offline, T0 + 5)[0].text
    assert "(was offline)" in fleet.feed(topic(0), status(site, device, T0 + 10), T0 + 10)[0].text


def test_session__a_panic_at_the_end_of_a_burst_of_statuses_is_printed_first() -> None:
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    doc = panic("site-1", "gate-00001", 1, T0)
    burst = tuple(Incoming(topic(i), status(*name(i), T0), retained=False, arrival=T0) for i in range(3000))
    inbox.put((*burst, Incoming("campus/site-1/gate-00001/event/panic", doc, retained=False, arrival=T0)))
    out = Out()
    opts = MonitorOptions(table_every_s=0)
    session = _Session(StubLink(), inbox, "campus", opts, out, wall=lambda: T0)  # type: ignore[arg-type]
    session._drain(0.0)
    assert json.loads(doc)["id"] in out.lines[0]
    assert len(out.lines) == 3001
    assert len(session.fleet) == 3000


def test_link__unpack_keeps_arrival_order() -> None:
    a = Incoming("t/a", b"", retained=False, arrival=1.0)
    b = Incoming("t/b", b"", retained=False, arrival=1.0)
    note = LinkNote(up=True, text="back")
    assert list(unpack((a, b))) == [a, b]
    assert list(unpack(a)) == [a]
    assert list(unpack(note)) == [note]
