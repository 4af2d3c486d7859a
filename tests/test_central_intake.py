"""An ``agent_started`` that says alarms may be lost, or that the outbox was another device's, reaches the operator.

A hunt found that only ``seq jumped 40 -> 44: 3 event(s) not seen yet``
was shown, which promises the events are coming; contract.md says an
``intake_recovered`` means they may be alarms lost for good, to be raised to
an operator, and ``outbox_foreign`` means another device's events were set
aside unsent.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from agent.central.display import LineKind
from agent.central.fleet import FleetView
from tests.central.test_monitor import T0, enc, event, topic


def _started(seq: int, **data: Any) -> dict[str, Any]:
    doc = event(type_="agent_started", seq=seq)
    doc["source"] = "agent"
    doc["data"] = {"reason": "boot", "pending": 0, **data}
    return doc


def _warnings(fleet: FleetView, doc: dict[str, Any]) -> list[str]:
    lines = fleet.feed(topic("event/agent_started"), enc(doc), T0 + 60)
    return [ln.text.split("WARNING  ", 1)[1] for ln in lines if ln.kind is LineKind.WARNING]


def test_intake__unreadable_intake_after_a_seq_jump_is_lost_not_late() -> None:
    fleet = FleetView(tz=dt.UTC)
    fleet.feed(topic("event/input_fault"), enc(event(type_="input_fault", seq=40)), T0)
    doc = _started(44, intake_recovered={"moved_aside": None, "unreadable_blocks": 3})
    gap, told = _warnings(fleet, doc)
    assert gap.startswith("main/gate-north-1: seq jumped 40 -> 44: 3 event(s) not seen yet")
    assert gap.endswith("some may be alarms lost at start, not late (intake unreadable)")
    assert told == (
        "main/gate-north-1: intake unreadable at start (3 block(s)): alarms before seq 44 may be lost, not late, "
        "and outbox.dropped does not count them; tell an operator and check the device's disk"
    )


def test_intake__told_even_without_a_seq_jump_and_names_where_the_file_went() -> None:
    fleet = FleetView(tz=dt.UTC)  # the device's first event seen here: no jump to show
    doc = _started(7, intake_recovered={"moved_aside": "/var/lib/campus/intake.bad\x1b[2J", "unreadable_blocks": 9})
    (told,) = _warnings(fleet, doc)
    assert "alarms before seq 7 may be lost, not late" in told
    assert "moved aside to /var/lib/campus/intake.bad\\x1b[2J;" in told, told


def test_intake__a_foreign_outbox_is_told_with_its_owner_escaped() -> None:
    fleet = FleetView(tz=dt.UTC)
    doc = _started(3, outbox_foreign={"moved_aside": "/var/lib/campus/outbox.foreign", "owner": "north/gate-9\u202e"})
    (told,) = _warnings(fleet, doc)
    assert told == (
        "main/gate-north-1: the outbox found at start was written by 'north/gate-9\\u202e' (a cloned SD card "
        "or a changed id): its events were moved aside to /var/lib/campus/outbox.foreign unsent and will not "
        "arrive; check the device's identity"
    )


def test_intake__a_copy_of_the_start_is_not_told_twice_and_a_plain_start_says_nothing() -> None:
    fleet = FleetView(tz=dt.UTC)
    doc = _started(5, intake_recovered={"moved_aside": None, "unreadable_blocks": 1})
    assert len(_warnings(fleet, doc)) == 1
    assert _warnings(fleet, doc) == []  # the same id again: a duplicate, suppressed
    assert _warnings(fleet, _started(6)) == []


def test_intake__with_seq_resumed_above_it_still_says_alarms_may_be_lost() -> None:
    fleet = FleetView(tz=dt.UTC)
    fleet.feed(topic("event/input_fault"), enc(event(type_="input_fault", seq=40)), T0)
    doc = _started(1045, seq_resumed_above=1044, intake_recovered={"moved_aside": None, "unreadable_blocks": 2})
    gap, told = _warnings(fleet, doc)
    assert "nothing to wait for; some may be alarms lost at start, not late" in gap
    assert "alarms before seq 1045 may be lost" in told
