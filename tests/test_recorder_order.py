"""What the recorder tells whom, in which order, around a press's commit.

A central may have the event the moment it is offered to the sender, so the
status's recent list and the input's last event must already show it; the log
line, the LED and the status wake-up come after the offer; from the inputs
thread they wait until the PUBLISH has travelled (``record_deferring``).
"""

from __future__ import annotations

from pathlib import Path

from agent.events import Clock, EventType
from agent.outbox import Outbox, OutboxRow
from agent.recorder import Recorder
from agent.recorder_hooks import Hooks


def test_order__the_recent_list_shows_an_event_before_it_is_offered_and_feedback_follows(tmp_path: Path) -> None:
    clock = Clock()
    calls: list[str] = []
    with Outbox(tmp_path / "outbox.db", site="main", device="d") as ob:
        rec = Recorder(ob, clock=clock, site="main", device="d")

        def offer(rows: list[OutboxRow]) -> None:  # a hook's exception would be logged, not raised: record
            calls.append("offer" if all(rec.knows(r.id) for r in rows) else "offer before the status lists it")

        rec.hooks = Hooks(
            offer=offer,
            wake=lambda: calls.append("wake"),
            alarm_recorded=lambda *_a: calls.append("alarm_recorded"),
            noted=lambda *_a: calls.append("noted"),
            changed=lambda: calls.append("changed"),
        )
        rec.record_many([(EventType.PANIC, "panic", clock.stamp(), {"pin": 17, "contact": "normally_open"})])
        rec.close()
    assert calls == ["noted", "offer", "alarm_recorded", "changed"]


def test_order__record_deferring_leaves_the_feedback_to_its_caller(tmp_path: Path) -> None:
    """The inputs thread gets the log line, LED and status back, to run once the PUBLISH has travelled."""
    clock = Clock()
    calls: list[str] = []
    with Outbox(tmp_path / "outbox.db", site="main", device="d") as ob:
        rec = Recorder(ob, clock=clock, site="main", device="d")
        rec.hooks = Hooks(
            offer=lambda rows: calls.append(f"offer {len(rows)}"),
            alarm_recorded=lambda *_a: calls.append("alarm_recorded"),
            noted=lambda *_a: calls.append("noted"),
            changed=lambda: calls.append("changed"),
        )
        press = (EventType.PANIC, "panic", clock.stamp(), {"pin": 17, "contact": "normally_open"})
        later = rec.record_deferring([press, press])
        assert calls == ["noted", "noted", "offer 2"]
        assert ob.pending() == 2  # durable before anything is left for later
        later()
        rec.close()
    assert calls == ["noted", "noted", "offer 2", "alarm_recorded", "alarm_recorded", "changed"]
