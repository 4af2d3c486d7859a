"""The button's path through the agent: what a recorded event does to the other parts, and what it leaves on disk.

Mixed into :class:`agent.daemon.Agent` (one object: the parts are the agent's,
built in its start order), apart from the wiring because it is one rule set of
its own: a recorded alarm lights the LED and asks for its photo, a delivered
one shows as sent and counts in the transmission figures, an input's last
event is noted; the agent's own events (started, a photo that will not come)
are recorded; and the state file keeps the seq mark, test mode's end and the
latest alarms, which the next start reads back (agent/carryover.py) before
the inputs are armed.

The inputs are armed before the photo store is opened (its ``quick_check``
may read a big file for seconds; the button comes first), so an alarm
recorded in between (a press as the agent starts, a button held through a
restart) waits in :attr:`_photo_wait` and is handed to the photos as they are
built (:meth:`_photos_built`); should the start fail first, the stop reports
it ``stopped`` (:meth:`_photos_never_came`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from agent.carryover import carry_alarms, resumable_test_mode_s
from agent.events import Clock, EventType
from agent.outbox import OutboxRow
from agent.recorder import Hooks
from agent.statefile import State

if TYPE_CHECKING:
    from agent.chores import Chores
    from agent.config.model import Config
    from agent.health import Heartbeat
    from agent.indicators import Indicators
    from agent.inputs import Inputs
    from agent.outbox import Outbox
    from agent.recorder import Recorder
    from agent.statefile import StateFile
    from agent.testmode import TestMode
    from agent.transmission import Transmission
    from agent.uplink import Uplink

# The daemon's own logger: these lines read as they did before the split.
log = logging.getLogger("agent.daemon")


class ButtonPath:
    """The recorder's side of :class:`~agent.daemon.Agent`: its hooks, its own events and the state file."""

    if TYPE_CHECKING:  # the agent's parts and state, which these methods share
        cfg: Config
        clock: Clock
        outbox: Outbox | None
        recorder: Recorder | None
        inputs: Inputs | None
        uplink: Uplink | None
        indicators: Indicators | None
        photos: Any
        _photo_wait: list[tuple[str, str]] | None  # (event id, source) asked for before the photos were built
        _photo_lock: threading.Lock
        heartbeat: Heartbeat
        test_mode: TestMode
        transmission: Transmission
        chores: Chores
        _silent: dict[str, bool]
        _state: StateFile
        _state_lock: threading.Lock
        _start_reason: str
        _run_from_seq: int

    def _recorder_hooks(self) -> Hooks:
        def alarm_recorded(event_id: str, source: str) -> None:  # committed (or held) already
            if self.indicators is not None:
                self.indicators.alarm_recorded(event_id, silent=self._silent.get(source, False))
            self._ask_photo(event_id, source)

        def alarm_delivered(event_id: str) -> None:
            if self.indicators is not None:
                self.indicators.alarm_delivered(event_id)
            if self.photos is not None:
                self.photos.alarm_delivered(event_id)

        def noted(source: str, ts: str, test: bool) -> None:
            if self.inputs is not None:
                self.inputs.note_event(source, ts, test=test)

        return Hooks(
            wake=lambda: self.uplink.wake() if self.uplink is not None else None,
            offer=lambda rows: self.uplink.offer(rows) if self.uplink is not None else None,
            changed=self.heartbeat.changed,
            alarm_recorded=alarm_recorded,
            alarm_delivered=alarm_delivered,
            noted=noted,
            mark=self.save_state,
        )

    def _ask_photo(self, event_id: str, source: str) -> None:
        """Queue the alarm's stills, or keep the request while the photos are still being built (never waits)."""
        photos = self.photos
        if photos is None:
            with self._photo_lock:  # against the hand-over: a request kept after it would never be made
                photos = self.photos
                if photos is None:
                    if self._photo_wait is not None:
                        self._photo_wait.append((event_id, source))
                    return
        photos.request(event_id, source)

    def _photos_built(self, photos: Any) -> None:
        """Make ``photos`` the agent's, first handing it the requests kept since the inputs were armed.

        Handed over in the order they were made, before any later one: requests only
        queue (agent/snapshots.py), so the lock is held for no capture.
        """
        with self._photo_lock:
            for event_id, source in self._photo_wait or ():
                photos.request(event_id, source)
            self._photo_wait = None
            self.photos = photos

    def _photos_never_came(self) -> None:
        """A start that failed before the photos were built: its kept requests are reported ``stopped``.

        Called once the inputs are closed (no alarm comes after), before the chores are.
        """
        with self._photo_lock:
            kept, self._photo_wait = self._photo_wait or [], None
        for event_id, source in kept:
            for camera in self.cfg.snapshots.cameras_for(source):
                self._snapshot_failed(event_id, camera, "stopped", "the agent stopped before its cameras started")

    def _record_started(self) -> None:
        assert self.outbox is not None
        assert self.recorder is not None
        rec = self.outbox.recovery
        data: dict[str, Any] = {"reason": self._start_reason, "pending": rec.pending}
        if rec.moved_aside is not None:
            data["outbox_recovered"] = {"moved_aside": str(rec.moved_aside), "salvaged": rec.salvaged}
        if rec.intake is not None:  # alarms in it may never come: the centre must not wait on the seq jump alone
            aside = rec.intake.moved_aside
            data["intake_recovered"] = {
                "moved_aside": None if aside is None else str(aside),
                "unreadable_blocks": rec.intake.unreadable_blocks,
            }
        if rec.seq_resumed_above is not None:
            data["seq_resumed_above"] = rec.seq_resumed_above
        if self.outbox.foreign is not None:  # another device's waiting events, kept unsent: the centre should know
            aside, owner = self.outbox.foreign
            data["outbox_foreign"] = {"moved_aside": str(aside), "owner": owner}
        self.recorder.record(EventType.AGENT_STARTED, "agent", self.clock.stamp(), data)
        self.save_state()

    def save_state(self) -> None:
        """Keep the boot id, the seq high-water mark (reserved seqs included) and test mode's end outside the outbox.

        Any thread may call it (the heartbeat's tick, a held event's reservation, a test-mode
        command): reading the state and writing it happen under one lock, so an older mark
        never lands after a newer one.
        """
        if self.outbox is None:
            return
        with self._state_lock:  # what is read too: a snapshot saved after a newer one would undo it
            inputs = self.inputs.states() if self.inputs is not None else {}
            alarms = tuple(self.recorder.latest_alarms()) if self.recorder is not None else ()
            seqs = tuple(self.recorder.latest_alarm_seqs()) if self.recorder is not None else ()
            kept = tuple((n, i.last_event, i.last_test) for n, i in inputs.items())
            self._state.save(
                State(
                    self.clock.boot_id,
                    self.outbox.top_seq(),
                    *self.test_mode.ends(),
                    alarms=alarms,
                    inputs=kept,
                    alarm_seqs=seqs,
                )
            )

    def _carry_alarms(self, before: State) -> None:
        """The last run's alarms to the LED and buzzer (agent/carryover.py); before the inputs are armed."""
        assert self.recorder is not None
        assert self.outbox is not None
        assert self.indicators is not None
        carry_alarms(
            before, outbox=self.outbox, recorder=self.recorder, indicators=self.indicators, silent=self._silent
        )

    def _resume_test_mode(self, before: State) -> None:
        """Test mode set before a restart goes on to its end, if a clock can say when (agent/carryover.py)."""
        from agent.cmdparse import MAX_MINUTES  # noqa: PLC0415 - the limit only, not the command handler

        left = resumable_test_mode_s(before, self.clock, MAX_MINUTES)
        if left is not None:
            until = self.test_mode.set(left / 60)
            log.warning("test mode resumed after the restart, until %s: presses go out as tests", until)

    def _snapshot_failed(self, event_id: str, camera: str, reason: str, detail: str) -> None:
        """A photo of alarm ``event_id`` will not come: say why, as an event of its own (any thread).

        Stamped now, committed on the chores thread: ``busy`` (an alarm storm) and
        ``stopped`` come from the inputs thread's deferred step, where a commit
        (up to the recorder's write wait, then an fsync) held the next press.  One
        queue for every thread's reports keeps them in the order they were made.
        """
        recorder = self.recorder
        assert recorder is not None
        stamp = self.clock.stamp()
        data = {"event_id": event_id, "reason": reason, "detail": detail[:200]}
        self.chores.run_soon(lambda: recorder.record(EventType.SNAPSHOT_FAILED, camera, stamp, data))

    def _delivered(self, row: OutboxRow) -> None:
        assert self.recorder is not None
        self.recorder.delivered(row)
        self.transmission.delivered(row.created, this_run=row.seq >= self._run_from_seq)
