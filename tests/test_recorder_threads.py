"""Long-lived threads on the recording path survive faults and keep what they hold (issue 9 item 5).

Here: the uplink's sender when the outbox fails an ack (a commit stuck past its
busy timeout raises OutboxError on the sender's thread).  The row must stay
in the outbox, be sent again and end up acknowledged; the thread carries on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from agent.errors import OutboxError
from agent.events import Event, EventType
from agent.outbox import Outbox
from agent.recorder import Recorder
from agent.uplink import Uplink
from tests.support.broker import Broker
from tests.support.clocks import synced_clock
from tests.support.mqtt import Central
from tests.support.uplinkrig import mqtt_cfg
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker
CLOCK = synced_clock()


class AckFailsOnce(Outbox):
    failures = 1

    def ack(self, seqs: Iterable[int]) -> int:
        if self.failures:
            self.failures -= 1
            raise OutboxError(f"outbox {self.path}: cannot delete acknowledged events: database is locked")
        return super().ack(seqs)


def test_sender__survives_an_ack_failure_and_resends_the_row(
    tmp_path: Path, broker: Broker, device: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = f"campus/main/{device}"
    outbox = AckFailsOnce(tmp_path / "outbox.db", site="main", device=device)
    delivered: list[int] = []
    central = Central(broker.port, topics=(f"{root}/event/#",))
    uplink = Uplink(
        mqtt_cfg(broker.port, client_id=device),
        topic_root=root,
        outbox=outbox,
        status=lambda: {"v": 1, "state": "online"},
        offline=lambda reason: {"v": 1, "state": "offline", "reason": reason},
        on_delivered=lambda row: delivered.append(row.seq),
    )
    try:
        uplink.start()
        event = Event.create(CLOCK, EventType.PANIC, "panic")
        seq = outbox.put(event)
        uplink.wake()
        eventually(
            lambda: outbox.pending() == 0 and delivered,
            30.0,
            lambda: f"the row whose ack failed to be acknowledged ({outbox.pending()} pending)",
        )
        assert delivered == [seq]
        # the PUBACK can reach the agent before the broker's copy reaches the central subscriber
        eventually(
            lambda: len([d for d in central.events("panic") if d["id"] == event.id]) >= 2,
            what="the row sent again after the failed ack (two copies at the central subscriber)",
        )
        assert "failed unexpectedly; reconnecting" in caplog.text
    finally:
        uplink.stop()
        central.close()
        outbox.close()


class Unusable(Outbox):
    """An outbox on a disk that fails every read and write (I/O errors)."""

    def next_batch(self, after_seq: int, limit: int, *, urgent: bool | None = None) -> Any:
        raise sqlite3.DatabaseError("disk I/O error")

    def _insert(self, rows: Any, *, all_alarms: bool) -> list[int]:
        raise sqlite3.OperationalError("disk I/O error")


def test_sender__sends_held_alarms_while_the_outbox_can_neither_read_nor_write(
    tmp_path: Path, broker: Broker, device: str
) -> None:
    root = f"campus/main/{device}"
    outbox = Unusable(tmp_path / "outbox.db", site="main", device=device, intake=False)  # no disk: no intake either
    recorder = Recorder(outbox, clock=CLOCK, site="main", device=device, retry_s=0.5)
    central = Central(broker.port, topics=(f"{root}/event/#",))
    uplink = Uplink(
        mqtt_cfg(broker.port, client_id=device),
        topic_root=root,
        outbox=outbox,
        status=lambda: {"v": 1, "state": "online"},
        offline=lambda reason: {"v": 1, "state": "offline", "reason": reason},
        on_delivered=recorder.delivered,
        held=recorder.held,
    )
    recorder.hooks.wake = uplink.wake
    try:
        uplink.start()
        recorder.record_many([(EventType.PANIC, "panic", CLOCK.stamp(), {})])
        held = recorder.recent()[0]
        msg = central.wait_for(lambda m: m.topic == f"{root}/event/panic", timeout=20)
        assert (msg.doc["id"], msg.doc["seq"]) == (held["id"], held["seq"])
        eventually(lambda: recorder.held_count() == 0, 20.0, "the PUBACK of the directly sent alarm to be processed")
    finally:
        uplink.stop()
        central.close()
        recorder.close()
        outbox.close()
