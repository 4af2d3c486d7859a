"""Edge → durable event: one commit per batch, events held in memory, and the recent-events list.

The inputs thread, the camera threads and the agent's start all record
through :meth:`Recorder.record_many`, which never raises: whatever the outbox
does (full, locked past its busy timeout, an I/O error, a bug), every event is
either committed or held in memory, and said so in the log.

Held events keep ``seq`` order and never lose their place:

* each gets a seq at once (:meth:`Outbox.reserve_seq`), so it can be sent
  before it is on disk and keeps that seq when it gets there;
* while any event is held, or the last write failed and none has worked
  since, or another thread's commit is still running after
  :data:`WRITE_WAIT_S`, new events join the queue behind it instead of
  overtaking it on the way to disk, so the inputs thread never waits on an
  outbox already known to be failing (the retry thread finds out when it
  works again); except real alarms: they go into the outbox's intake when
  that takes them without a long wait (:meth:`Outbox.take_in_now`: SQLite is
  not touched) under seqs reserved in their batch's order, so a press is on
  disk even while SQLite fails (it may arrive before the held events);
* the ``recorder-retry`` thread stores them as soon as the outbox takes
  writes again (tried every :data:`RETRY_S`, at once when news arrives); an
  alarm is tried even when a non-alarm before it does not fit a full disk
  (agent/recorder_held.py);
* the uplink reads :meth:`Recorder.held` after the outbox rows and sends them
  directly while the link is up; one acknowledged that way is not stored at
  all, one already stored is deleted from the outbox.
* The memory queue is bounded (:data:`MAX_HELD`); past it the oldest
  non-alarm goes first, an alarm only when nothing else is left, and every
  drop is counted in the status's ``outbox.dropped``.

The ids a centre may acknowledge across a restart are agent/recorder_known.py's;
the hooks the rest of the agent hears through, agent/recorder_hooks.py's.

Recent events (agent/recent.py) are frozen values in a tuple that is
replaced, never changed in place, so readers on other threads (the control
socket, paho's thread for a centre's ack) iterate a snapshot that cannot
change under them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from agent.closing import Closing
from agent.errors import OutboxError, OutboxFullError
from agent.events import Clock, Event, EventType, Stamp
from agent.outbox import Outbox, OutboxRow
from agent.recent import RecentEvent, RecentEvents
from agent.recorder_held import RETRY_S, Held, HeldEvents
from agent.recorder_hooks import Hooks
from agent.recorder_known import KnownAlarms

log = logging.getLogger(__name__)

Item = tuple[EventType, str, Stamp, Mapping[str, Any]]
MAX_HELD = 10_000
# How long an event waits for another thread's commit before it is held instead: a healthy commit (an fsync on
# an SD card) ends well within it; one stuck in SQLite's busy timeout does not, and the inputs thread goes on.
WRITE_WAIT_S = 0.4
_INPUT_TYPES = frozenset((EventType.PANIC, EventType.TAMPER, EventType.INPUT_FAULT, EventType.INPUT_RESTORED))


class Recorder(HeldEvents, KnownAlarms, Closing):
    """Makes events durable (or holds them), keeps the recent list, answers the uplink about held events.

    Args:
        outbox: where events are committed.
        clock: stamps, boot id.
        site: for the stored document.
        device: for the stored document.
        test_mode: whether a press stamped at this monotonic time counts as a test.
        hooks: see :class:`Hooks`; may be filled in after construction.
        max_held: bound of the memory fallback.

    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        clock: Clock,
        site: str,
        device: str,
        test_mode: Callable[[float], bool] = lambda _mono: False,
        hooks: Hooks | None = None,
        max_held: int = MAX_HELD,
        retry_s: float = RETRY_S,
    ) -> None:
        self.outbox = outbox
        self.hooks = hooks or Hooks()
        self._clock = clock
        self._site = site
        self._device = device
        self._test_mode = test_mode
        self._max_held = max_held
        self._retry_s = retry_s
        self._put_lock = threading.Lock()  # one writer of the outbox at a time, in seq order
        self._lock = threading.Lock()  # guards the fields below; never held across I/O
        self._recent = RecentEvents()  # replaced under _lock; readers take a snapshot (agent/recent.py)
        self._held: dict[str, Held] = {}  # insertion order is seq order
        self._was_held: dict[str, bool] = {}  # id -> stored since; forgotten once delivered
        self._remembered: dict[str, int | None] = {}  # alarm id -> seq from before a restart, oldest first
        self._latest: dict[str, int] = {}  # this run's alarm id -> seq, oldest first (agent/recorder_known.py)
        self._dropped = 0
        self._failing = False  # the last write failed and none has worked since
        self._retry = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    # ---- recording -----------------------------------------------------------------

    def record(self, type: EventType, source: str, stamp: Stamp, data: Mapping[str, Any]) -> None:  # noqa: A002
        """Make one event durable, then wake the sender (cameras, agent_started)."""
        self.record_many([(type, source, stamp, data)])

    def record_many(self, items: list[Item]) -> None:
        """Make events durable in one commit (one fsync), or hold them; never raises (cameras, agent_started)."""
        self.record_deferring(items)()

    def record_deferring(self, items: list[Item]) -> Callable[[], None]:
        """Make events durable in one commit (one fsync), or hold them, and publish them; never raises.

        Called on the inputs thread with everything one poll accepted: under a
        burst of presses, group commit keeps the button path from queueing
        behind one fsync per event.  Returns what may wait a few milliseconds
        (the log lines, the LED and buzzer, the status): the inputs thread runs
        it once the PUBLISH has travelled, so it does not compete with the
        alarm's delivery for the CPU (docs/architecture.md, the hand-off).
        The returned callable never raises.
        """
        made = []
        for type_, source, stamp, data in items:
            test = type_.is_alarm and self._test_mode(stamp.mono if stamp is not None else self._clock.mono())
            made.append((Event.create(self._clock, type_, source, at=stamp, test=test, data=data), test))
        events = [e for e, _ in made]
        created = self._clock.wall()  # a held event keeps it: its wait counts in the transmission time
        rows, reserved, held_early = self._store(made, created)
        seqs = [r.seq if r is not None else None for r in rows]
        held = [e for e, s in zip(events, seqs, strict=True) if s is None]
        if late := [e for e in held if e.id not in held_early]:
            self._hold(late, reserved, created)
        with self._lock:
            fresh = tuple(
                RecentEvent(
                    e.id,
                    s if s is not None else reserved[e.id],
                    e.type.value,
                    e.source,
                    e.ts,
                    test,
                    on_disk=s is not None,
                )
                for (e, test), s in zip(made, seqs, strict=True)
            )
            self._recent.add(fresh)
            self._note_alarms(fresh)
        for event, test in made:  # the inputs' last_event/last_test in status: before a central can have it
            if event.type in _INPUT_TYPES:  # a camera may share an input's name
                self._call(self.hooks.noted, event.source, event.ts, test)
        # After what status shows (a central may have the event at once), before the log line, LED, status.
        stored = [r for r in rows if r is not None]
        if stored and self.hooks.offer is not None:
            self._call(self.hooks.offer, stored)  # the rows as committed: the sender reads nothing back
        if held or not stored or self.hooks.offer is None:
            self._call(self.hooks.wake)  # held events go out in the sender's round
        if held:
            self._retry_held()

        def later() -> None:
            for (event, test), seq in zip(made, seqs, strict=True):
                self._announce(event, test, seq, reserved.get(event.id))
            self._call(self.hooks.changed)

        return later

    def _store(
        self, made: list[tuple[Event, bool]], created: float
    ) -> tuple[list[OutboxRow | None], dict[str, int], set[str]]:
        """Make (event, test) pairs durable: a row each, or None for one to be held.

        Also returns the seqs reserved and the ids of the events already held (:meth:`_queue_behind`).
        """
        events = [e for e, _ in made]
        with self._lock:
            queue_behind = bool(self._held) or self._failing
        if not queue_behind:
            if self._put_lock.acquire(timeout=WRITE_WAIT_S):
                try:
                    return self._put(events), {}, set()
                finally:
                    self._put_lock.release()
            log.warning("another commit to the outbox is still running; %d events join the memory queue", len(events))
        return self._queue_behind(made, created)

    def _queue_behind(
        self, made: list[tuple[Event, bool]], created: float
    ) -> tuple[list[OutboxRow | None], dict[str, int], set[str]]:
        """Events behind held ones (or a stuck commit) keep the batch's seq order; real alarms go to the intake.

        A power cut must not take a press with the memory queue, so each real
        alarm is made durable in the outbox's intake when that takes it
        without a long wait and without SQLite (:meth:`Outbox.take_in_now`).
        A batch of real alarms alone is numbered by the intake (out of the
        saved mark until its block is synced).  In a mixed batch every event
        gets its seq reserved in the batch's order, and the others are held,
        visible in seq order, before the alarms' wait for the intake: a camera
        event held meanwhile gets a higher seq and comes after them.
        ``_failing`` stays as it is; the retry thread stores the held events.
        Test presses are held: stored ahead of the held events, they would
        overtake them in the routine lane (contract, "Order").
        """
        events = [e for e, _ in made]
        rows: list[OutboxRow | None] = [None] * len(events)
        alarms = [i for i, (e, test) in enumerate(made) if e.type.is_alarm and not test]
        if not alarms:
            return rows, {}, set()
        if len(alarms) == len(events):
            return list(self._into_intake(events, None) or rows), {}, set()
        reserved = {e.id: self.outbox.reserve_seq() for e in events}
        others = [e for i, e in enumerate(events) if i not in set(alarms)]
        self._hold(others, reserved, created)
        taken = self._into_intake([events[i] for i in alarms], [reserved[events[i].id] for i in alarms])
        for i, row in zip(alarms, taken or (), strict=False):
            rows[i] = row
        return rows, reserved, {e.id for e in others}

    def _into_intake(self, events: list[Event], seqs: list[int] | None) -> list[OutboxRow] | None:
        try:
            return self.outbox.take_in_now(events, seqs)
        except Exception:
            log.exception("recording %d alarms in the outbox's intake failed; kept in memory", len(events))
            return None

    def _put(self, events: list[Event]) -> list[OutboxRow | None]:
        """Commit what the outbox takes; None for each event it did not."""
        try:
            rows = self.outbox.put_rows(events)
        except OutboxFullError:
            pass  # one by one: alarms still fit the reserve where the whole batch did not
        except OutboxError as exc:
            self._failing = True
            log.critical("%s; kept %d events in memory only, retrying every second", exc, len(events))
            return [None] * len(events)
        except Exception:
            self._failing = True
            log.critical(
                "recording %d events failed unexpectedly; kept in memory, retrying every second",
                len(events),
                exc_info=True,
            )
            return [None] * len(events)
        else:
            self._failing = False
            return list(rows)
        one_by_one: list[OutboxRow | None] = []
        for event in events:
            try:
                one_by_one.append(self.outbox.put_row(event))
                self._failing = False
            except OutboxError as exc:
                self._failing = True
                log.critical("%s; kept %d events in memory only, retrying every second", exc, len(self._held) + 1)
                one_by_one.append(None)
            except Exception:
                self._failing = True
                log.critical(
                    "recording a %s event failed unexpectedly; kept in memory", event.type.value, exc_info=True
                )
                one_by_one.append(None)
        return one_by_one

    def _hold(self, events: list[Event], reserved: dict[str, int], created: float) -> None:
        """Hold ``events`` in memory under reserved seqs, saved as the high-water mark before anyone can send them.

        The sender publishes held events as soon as they are in :meth:`held`;
        a seq published before the mark is on disk could, after a power cut,
        be given to a different event.  ``reserved`` may already have seqs
        for them (given in the batch's order, :meth:`_queue_behind`).
        """
        for event in events:
            if event.id not in reserved:
                reserved[event.id] = self.outbox.reserve_seq()
        self._call(self.hooks.mark)
        with self._lock:
            last = next(reversed(self._held.values())).row.seq if self._held else 0
            for event in events:
                seq = reserved[event.id]
                row = OutboxRow(
                    seq, event.id, event.type.value, event.type.is_alarm, created, event.body(self._site, self._device)
                )
                self._held[event.id] = Held(event, row)
                self._was_held[event.id] = False
            if min(reserved[e.id] for e in events) < last:  # another thread's hold came in between: seq order
                self._held = dict(sorted(self._held.items(), key=lambda kv: kv[1].row.seq))
            while len(self._held) > self._max_held:
                self._drop_one()
        self._ensure_thread()

    def _drop_one(self) -> None:
        victim = next((k for k, h in self._held.items() if not h.event.type.is_alarm), next(iter(self._held)))
        gone = self._held.pop(victim)
        self._was_held.pop(victim, None)
        self._dropped += 1
        self.outbox.note_dropped(1)
        log.error(
            "memory fallback full (%d events): dropped %s event %s seq %d (%d dropped so far)%s",
            self._max_held,
            gone.event.type.value,
            victim,
            gone.row.seq,
            self._dropped,
            "" if not gone.event.type.is_alarm else "; every held event is an alarm",
        )

    def _announce(self, event: Event, test: bool, seq: int | None, reserved: int | None) -> None:
        if event.type.is_alarm:
            self._call(self.hooks.alarm_recorded, event.id, event.source)
        what = f"{event.type.value}{' (test)' if test else ''} from {event.source}"
        if seq is not None:
            log.info("recorded %s as seq %d (id %s)", what, seq, event.id)
        else:
            log.error("held %s in memory, not yet on disk (id %s); reserved seq %s", what, event.id, reserved)

    # ---- delivery and the recent list ----------------------------------------------------

    def delivered(self, row: OutboxRow) -> None:
        """The broker acknowledged ``row`` (from the outbox or sent directly from memory)."""
        with self._lock:
            self._recent.mark(row.id, delivered=True)
            self._held.pop(row.id, None)
            stored = self._was_held.pop(row.id, False)
        if stored:
            self._ack_stored(row.seq)  # sent directly but also stored since: the stored copy need not go
        if row.alarm:
            self._call(self.hooks.alarm_delivered, row.id)

    def recent(self) -> list[dict[str, Any]]:
        """The last :data:`~agent.recent.RECENT` events, newest first, as plain dicts (a snapshot)."""
        return self._recent.as_dicts()

    @property
    def dropped(self) -> int:
        """Events the memory fallback had to drop (also in the outbox's ``dropped``)."""
        return self._dropped

    # ---- lifetime ----------------------------------------------------------------------

    @staticmethod
    def _call(hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            log.exception("recorder hook %s failed; the event itself is safe", getattr(hook, "__name__", hook))

    def close(self) -> None:
        """Stop the retry thread after one last attempt to store what is held; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._retry.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(15.0)
        if self._held:
            try:
                self.flush_held()
            except Exception:
                log.exception("storing held events at stop failed")
        if self._held:
            log.critical(
                "stopping with %d events not on disk (ids %s); they are lost",
                len(self._held),
                ", ".join(list(self._held)[:20]),
            )

    def _retry_held(self) -> None:
        """Wake the retry thread; after the stop (a commit stuck through it failed at last) try here, and say so."""
        self._retry.set()
        if not self._closed:
            return
        try:
            self.flush_held()
        except Exception:
            log.exception("storing events held after the stop failed")
        if self._held:
            log.critical(
                "a commit stuck through the stop failed: %d events not on disk (ids %s); they are lost "
                "if the process ends now",
                len(self._held),
                ", ".join(list(self._held)[:20]),
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def _repr_state(self) -> str:
        return f"recent={len(self._recent)} held={len(self._held)} dropped={self._dropped}"


__all__ = ["MAX_HELD", "RETRY_S", "WRITE_WAIT_S", "Hooks", "Item", "Recorder"]
