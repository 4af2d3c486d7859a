"""The fleet view with what brokers and devices really send: retained copies, test presses, odd numbers, hangs."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from agent.central import board
from agent.central.display import Alarm, LineKind, json_line
from agent.central.fleet import FleetView
from tests.central.test_monitor import T0, enc, event, offline, status, topic


@pytest.fixture
def fleet() -> FleetView:
    return FleetView(tz=dt.UTC)


def _overdue(fleet: FleetView, now: float) -> list[str]:
    return [ln.text for ln in fleet.tick(now) if "OVERDUE" in ln.text]


def _strict_json(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


# ---- heartbeat learning ------------------------------------------------------------


def test_fleet__an_overdue_stretch_is_not_learned_as_the_heartbeat_interval(fleet: FleetView) -> None:
    """The hour a device was silent (and flagged) became its interval: its next silence went unflagged for 3 h."""
    fleet.feed(topic("status"), enc(status()), T0)
    assert _overdue(fleet, T0 + 91)
    fleet.feed(topic("status"), enc(status()), T0 + 3600)  # heartbeat back
    assert fleet.rows(T0 + 3600)[0].interval_s == 30
    assert _overdue(fleet, T0 + 3600 + 91)


def test_fleet__a_gap_from_a_stale_retained_status_is_not_learned(fleet: FleetView) -> None:
    """The gap from a retained status's hour-old ts to the next live one was learned as the interval."""
    fleet.feed(topic("status"), enc(status(ts=T0 - 3600)), T0, retained=True)
    assert _overdue(fleet, T0 + 1)
    fleet.feed(topic("status"), enc(status(ts=T0 + 5)), T0 + 5)
    assert fleet.rows(T0 + 5)[0].interval_s == 30
    assert _overdue(fleet, T0 + 5 + 91)


def test_fleet__two_hangs_of_an_hour_and_more_are_never_an_interval(fleet: FleetView) -> None:
    """A gap longer than the agent's largest heartbeat (1 h) is never learned, even when it repeats: a hang."""
    t = T0
    for _ in range(3):
        fleet.feed(topic("status"), enc(status()), t)
        assert _overdue(fleet, t + 91)
        t += 5400
    assert fleet.rows(t)[0].interval_s == 30


def test_fleet__a_status_that_names_its_heartbeat_is_judged_by_it_from_the_first(fleet: FleetView) -> None:
    """A device with a 5-minute heartbeat was OVERDUE for its first intervals, until its gaps were learned."""
    fleet.feed(topic("status"), enc({**status(), "heartbeat_s": 300}), T0)
    assert fleet.rows(T0)[0].interval_s == 300
    assert not _overdue(fleet, T0 + 600), "two intervals of silence: not yet overdue"
    assert _overdue(fleet, T0 + 901), "past three"
    for junk in (True, "300", 0.5, 1e9, None):
        fleet.feed(topic("status", "gate-2"), enc({**status("gate-2"), "heartbeat_s": junk}), T0)
        row = next(r for r in fleet.rows(T0) if r.key == "main/gate-2")
        assert row.interval_s == 30, f"{junk!r} is no interval: the default, then learned"


# ---- retained copies ---------------------------------------------------------------


def test_fleet__a_retained_event_is_a_warning_not_an_alarm(fleet: FleetView) -> None:
    """A retained panic (events are never retained) was shown as a fresh unacknowledged alarm at every start."""
    lines = fleet.feed(topic("event/panic"), enc(event(seq=9, ts=T0 - 3 * 86400)), T0, retained=True)
    assert [ln.kind for ln in lines] == [LineKind.WARNING]
    assert lines[0].alarm is None
    assert "campus/main/gate-north-1/event/panic: a retained event" in lines[0].text
    assert fleet.events == 0


def test_fleet__a_retained_event_on_a_hostile_topic_is_escaped(fleet: FleetView) -> None:
    """The warning names the topic: a device's bytes never reach the terminal raw."""
    [line] = fleet.feed("campus/main/gate-1/event/panic\x1b[2J", enc(event("gate-1")), T0, retained=True)
    assert "\x1b" not in line.text
    assert "\\x1b[2J" in line.text


def test_fleet__a_redelivered_stale_status_does_not_flag_a_silent_device_twice(fleet: FleetView) -> None:
    """After a monitor reconnect, the same stale retained status made the device online, then OVERDUE again."""
    stale = enc(status(ts=T0 - 3600))
    fleet.feed(topic("status"), stale, T0, retained=True)
    assert _overdue(fleet, T0 + 1)
    assert fleet.feed(topic("status"), stale, T0 + 60, retained=True) == []
    assert _overdue(fleet, T0 + 61) == []
    assert fleet.rows(T0 + 61)[0].state.value == "overdue"


def test_fleet__a_redelivered_copy_is_known_by_its_ts_even_from_an_unsynced_clock(fleet: FleetView) -> None:
    """Without a synchronised clock the ts cannot be compared, but the same ts is the same document."""
    doc = enc(status(ts=T0 - 3600, synced=False))
    fleet.feed(topic("status"), doc, T0)
    assert _overdue(fleet, T0 + 91)
    assert fleet.feed(topic("status"), doc, T0 + 120, retained=True) == []
    assert fleet.rows(T0 + 121)[0].state.value == "overdue"  # not silently online, to be flagged again later


def test_fleet__a_retained_status_that_changes_a_known_device_is_announced(fleet: FleetView) -> None:
    """A device that went offline while the monitor was disconnected was never announced."""
    assert fleet.feed(topic("status"), enc(status()), T0, retained=True) == []  # first status: quiet
    [line] = fleet.feed(topic("status"), enc(offline()), T0 + 60, retained=True)
    assert "OFFLINE" in line.text
    assert "lost: the broker lost its connection (will)" in line.text
    assert fleet.feed(topic("status"), enc(offline()), T0 + 90, retained=True) == []  # said once
    [back] = fleet.feed(topic("status"), enc(status(ts=T0 + 100)), T0 + 100, retained=True)
    assert "online           (was offline)" in back.text


def test_fleet__a_redelivered_will_keeps_when_the_device_went_offline(fleet: FleetView) -> None:
    fleet.feed(topic("status"), enc(status()), T0)
    fleet.feed(topic("status"), enc(offline()), T0 + 5)
    assert fleet.feed(topic("status"), enc(offline()), T0 + 60, retained=True) == []
    assert fleet.rows(T0 + 65)[0].offline_at == T0 + 5


# ---- test presses and the board ------------------------------------------------------


def test_board__a_test_press_is_marked_and_not_counted_as_an_alarm(fleet: FleetView) -> None:
    """A test press looked exactly like a real alarm on the board and in its count."""
    real, test = event(seq=1), event(seq=2, test=True)
    alarms = [ln.alarm for doc in (real, test) for ln in fleet.feed(topic("event/panic"), enc(doc), T0) if ln.alarm]
    assert [a.test for a in alarms] == [False, True]
    newest_first = list(reversed(alarms))
    lines = board.summary(fleet, newest_first, T0 + 5, tz=dt.UTC).splitlines()
    assert "1 unacknowledged alarm and 1 test press;" in lines[0]
    [real_line] = [ln for ln in lines if real["id"] in ln]
    [test_line] = [ln for ln in lines if test["id"] in ln]
    assert "TEST" in test_line
    assert "TEST" not in real_line
    records = [ln.record for ln in board.summary_lines(fleet, newest_first, T0 + 5, full=False)]
    assert (records[0]["unacknowledged_alarms"], records[0]["unacknowledged_tests"]) == (1, 1)
    assert [r["test"] for r in records if r["kind"] == "alarm"] == [True, False]


@pytest.mark.parametrize("device", ["gate-north-1", "gate-north-12345", "a-very-long-device-name-indeed"])
def test_board__an_alarm_line_keeps_the_device_and_the_type_apart(fleet: FleetView, device: str) -> None:
    """A device key of 17 characters or more ran into the event type: 'main/gate-north-1panic'."""
    alarm = Alarm("main", device, "a" * 32, "panic", T0)
    [line] = [ln for ln in board.summary(fleet, [alarm], T0 + 5, tz=dt.UTC).splitlines() if ln.startswith("ALARM")]
    assert f"ALARM  main/{device} " in line
    assert line.split()[2] == "panic"


def test_board__short_keys_keep_their_columns(fleet: FleetView) -> None:
    alarm = Alarm("north", "gate-00001", "b" * 32, "panic", T0)
    text = board.summary(fleet, [alarm], T0 + 12, tz=dt.UTC)
    assert f"ALARM  north/gate-00001 panic     12 s ago          id {'b' * 32} not acknowledged" in text


def test_board__the_header_says_when_the_monitor_is_not_connected(fleet: FleetView) -> None:
    head = board.header(fleet, 0, T0 + 30, dt.UTC, down_since=T0)
    assert head.startswith("06:01:32.345  NOT CONNECTED since 06:01:02, figures stale; 0 devices:")
    assert "NOT CONNECTED" not in board.header(fleet, 0, T0 + 30, dt.UTC)
    [summary] = board.summary_lines(fleet, [], T0 + 30, full=False, down_since=T0)
    assert (summary.record["connected"], summary.record["disconnected_since"]) == (False, "2026-11-29T06:01:02.345Z")


# ---- numbers and seq -------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_json_line__non_finite_numbers_from_a_payload_are_written_as_null(fleet: FleetView, value: bytes) -> None:
    """--json printed NaN and Infinity back (Python reads them): lines no JSON parser takes."""
    doc = enc(event(seq=5)).replace(b'"pin": 17', b'"pin": ' + value)
    [line] = fleet.feed(topic("event/panic"), doc, T0)
    assert line.alarm is not None  # the alarm is still shown
    record = _strict_json(json_line(line.record))
    assert isinstance(record, dict)
    assert record["data"]["pin"] is None


def test_fleet__seq_resumed_above_is_not_reported_as_events_to_wait_for(fleet: FleetView) -> None:
    """The contract's deliberate jump after a replaced outbox was announced as ~1000 events 'not seen yet'."""
    fleet.feed(topic("event/panic"), enc(event(seq=3)), T0)
    started = event(seq=1004, type_="agent_started")
    started["data"] = {"reason": "restart", "pending": 0, "seq_resumed_above": 1003}
    warn, shown = fleet.feed(topic("event/agent_started"), enc(started), T0 + 10)
    assert warn.kind is LineKind.WARNING
    assert "not seen yet" not in warn.text
    assert "seq jumped 3 -> 1004: its outbox was deleted or replaced and seq resumed above 1003" in warn.text
    assert "nothing to wait for" in warn.text
    assert shown.kind is LineKind.EVENT


def test_fleet__a_jump_past_seq_resumed_above_still_counts_what_is_missing(fleet: FleetView) -> None:
    fleet.feed(topic("event/panic"), enc(event(seq=3)), T0)
    started = event(seq=1006, type_="agent_started")
    started["data"] = {"reason": "restart", "pending": 2, "seq_resumed_above": 1003}
    warn, _shown = fleet.feed(topic("event/agent_started"), enc(started), T0 + 10)
    assert "but 2 event(s) above 1003 not seen yet" in warn.text
