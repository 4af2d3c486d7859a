"""The monitor measures silence on the monotonic clock: a step of its host's wall clock changes nothing.

The monitor host's clock may step (NTP correcting a host that ran ahead, a
VM resumed).  With deadlines on the wall clock, a step back of an hour left
a dead device unflagged for an hour more, and a step forward flagged the
whole fleet overdue at once.  Here the wall clock and the monotonic clock
are two fake clocks that part ways.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import queue
import threading
import time
import types
from typing import Any

import pytest

from agent.central import board, session
from agent.central.acks import AckDesk
from agent.central.board import DeviceState
from agent.central.display import Alarm, Line
from agent.central.fleet import FleetView
from agent.central.link import Incoming
from agent.central.session import MonitorOptions, _Session
from agent.events import iso_ms
from tests.support.waiting import eventually

T0 = dt.datetime(2026, 11, 29, 6, 0, 0, tzinfo=dt.UTC).timestamp()
HOUR = 3600.0


class Clocks:
    """A wall clock and a monotonic clock: both advance with time, only the wall clock steps."""

    def __init__(self) -> None:
        self.wall, self.mono = T0, 5000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def step(self, seconds: float) -> None:
        self.wall += seconds


def status(device: str, ts: float, *, heartbeat_s: int | None = 30) -> bytes:
    doc: dict[str, Any] = {"v": 1, "site": "main", "device": device, "state": "online", "ts": iso_ms(ts)}
    doc["clock_synced"] = True
    if heartbeat_s is not None:
        doc["heartbeat_s"] = heartbeat_s
    return json.dumps(doc).encode()


def beat(fleet: FleetView, c: Clocks, device: str = "gate-1", **kw: Any) -> list[Line]:
    return fleet.feed(f"campus/main/{device}/status", status(device, c.wall, **kw), c.wall, mono=c.mono)


def overdue(fleet: FleetView, c: Clocks) -> list[str]:
    return [ln.text for ln in fleet.tick(c.wall, mono=c.mono) if "OVERDUE" in ln.text]


def test_fleet__a_dead_device_is_overdue_on_time_when_the_wall_clock_steps_back() -> None:
    c, fleet = Clocks(), FleetView(tz=dt.UTC)
    for _ in range(5):
        beat(fleet, c)
        c.advance(30)
    c.step(-HOUR)
    c.advance(59)  # 89 s of silence
    assert overdue(fleet, c) == []
    c.advance(2)
    [line] = overdue(fleet, c)
    assert "no heartbeat for 91 s (expected every 30 s)" in line
    assert fleet.counts()[DeviceState.OVERDUE] == 1


def test_fleet__a_forward_step_flags_no_heartbeating_device() -> None:
    c, fleet = Clocks(), FleetView(tz=dt.UTC)
    devices = [f"gate-{i}" for i in range(50)]
    for rnd in range(6):
        for d in devices:
            beat(fleet, c, d)
        if rnd == 2:
            c.step(HOUR)
        for _ in range(30):
            c.advance(1)
            assert overdue(fleet, c) == []
    assert fleet.counts()[DeviceState.ONLINE] == 50


def test_fleet__a_learned_interval_and_its_deadline_survive_a_step_between_heartbeats() -> None:
    c, fleet = Clocks(), FleetView(tz=dt.UTC)
    for k in range(8):  # no heartbeat_s: the interval is learned from the gaps
        beat(fleet, c, heartbeat_s=None)
        c.advance(10)
        if k == 4:
            c.step(-HOUR)
        assert overdue(fleet, c) == []
    assert fleet.rows(c.wall, mono=c.mono)[0].interval_s == 10
    c.advance(21)  # 31 s silent: past 3 learned intervals
    [line] = overdue(fleet, c)
    assert "expected every 10 s" in line


def test_fleet__a_retained_status_counts_from_its_ts_then_on_the_monotonic_clock() -> None:
    c, fleet = Clocks(), FleetView(tz=dt.UTC)
    fleet.feed("campus/main/old/status", status("old", c.wall - 100), c.wall, retained=True, mono=c.mono)
    fleet.feed("campus/main/new/status", status("new", c.wall - 60), c.wall, retained=True, mono=c.mono)
    [line] = overdue(fleet, c)
    assert "main/old" in line
    c.step(-HOUR)
    c.advance(29)
    assert overdue(fleet, c) == []
    c.advance(2)
    [line] = overdue(fleet, c)
    assert "main/new" in line


def test_board__ages_count_real_seconds_across_a_step() -> None:
    c, fleet = Clocks(), FleetView(tz=dt.UTC)
    beat(fleet, c, "quiet")
    beat(fleet, c, "gone")
    will = {"v": 1, "site": "main", "device": "gone", "state": "offline", "reason": "lost", "ts": iso_ms(c.wall)}
    fleet.feed("campus/main/gone/status", json.dumps(will).encode(), c.wall, mono=c.mono)
    c.step(-HOUR)
    c.advance(95)
    text = board.table(fleet, 0, c.wall, mono=c.mono)
    assert "main/gone               offline   (lost) 95 s ago" in text
    assert "main/quiet              OVERDUE   95 s ago" in text
    records = [ln.record for ln in board.summary_lines(fleet, [], c.wall, full=True, mono=c.mono)]
    ages = {r["device"]: r["heartbeat_age_s"] for r in records if r["kind"] == "device"}
    assert ages["quiet"] == pytest.approx(95.0)


@pytest.mark.parametrize("step", [-HOUR, HOUR], ids=["back", "forward"])
def test_board__an_alarm_waiting_for_its_ack_ages_in_real_seconds_across_a_step(step: float) -> None:
    """Its age was the wall clock's: a step back showed an alarm waiting 95 s as arrived in the future."""
    c, fleet = Clocks(), FleetView(tz=dt.UTC)
    doc = {"v": 1, "id": "a" * 32, "seq": 1, "type": "panic", "source": "panic", "ts": iso_ms(c.wall), "data": {}}
    lines = fleet.feed("campus/main/gate-1/event/panic", json.dumps(doc).encode(), c.wall, mono=c.mono)
    alarms = [ln.alarm for ln in lines if ln.alarm is not None]
    assert len(alarms) == 1
    c.step(step)
    c.advance(95)
    text = board.summary(fleet, alarms, c.wall, mono=c.mono)
    assert "95 s ago" in text.splitlines()[-1]


@pytest.mark.parametrize(("step", "timed_out"), [(-HOUR, True), (HOUR, False)], ids=["back", "forward"])
def test_ack_desk__a_reply_timeout_counts_real_seconds_across_a_step(step: float, timed_out: bool) -> None:
    c, desk = Clocks(), AckDesk(reply_timeout_s=10, tz=dt.UTC)
    alarm = Alarm("main", "gate-1", "0" * 32, "panic", c.wall)
    desk.offer(alarm)
    desk.sent(alarm, "c-1", c.wall, mono=c.mono)
    c.step(step)
    c.advance(11 if timed_out else 1)
    lines = desk.tick(c.wall, mono=c.mono)
    assert bool(lines) is timed_out
    assert (desk.next_unacked() == alarm) is timed_out


def test_session__flags_a_silent_device_after_the_wall_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The print loop's tick timer and settle time ran on the wall clock too: a step back stopped every tick."""
    monkeypatch.setattr(session, "SETTLE_S", 0.0)
    offset = [0.0]

    def wall() -> float:
        return time.time() + offset[0]

    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    link = types.SimpleNamespace(listening_since=wall(), down_since=None)
    out = io.StringIO()
    opts = MonitorOptions(table_every_s=0, overdue_after_s=0.5)
    watch = _Session(link, inbox, "campus", opts, out, wall=wall)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=watch.run, args=(stop, queue.SimpleQueue()), daemon=True)
    thread.start()
    try:
        inbox.put(Incoming("campus/main/gate-1/status", status("gate-1", wall()), False, wall()))
        eventually(lambda: "first status seen" in out.getvalue(), what="the status taken")
        offset[0] = -HOUR
        eventually(lambda: "OVERDUE" in out.getvalue(), timeout=5, what=lambda: f"OVERDUE; printed {out.getvalue()!r}")
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
