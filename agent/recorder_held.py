"""Events the recorder holds in memory, on their way to disk: the ``recorder-retry`` thread and what it stores.

Mixed into :class:`agent.recorder.Recorder` (one object, one ``_put_lock`` and
one ``_lock``): the recorder's module docstring gives the rules.  Kept apart
from the recording path (what happens while a press is recorded) because this
half runs later and elsewhere: on the ``recorder-retry`` thread, every
:data:`RETRY_S` or at once on news, at stop, and for the uplink, which reads
:meth:`HeldEvents.held` after the outbox rows and sends them directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.errors import OutboxError, OutboxFullError
from agent.events import Event
from agent.outbox import Outbox, OutboxRow

if TYPE_CHECKING:
    from agent.recent import RecentEvents
    from agent.recorder_hooks import Hooks

# The recorder's own logger: these lines read as they did before the split.
log = logging.getLogger("agent.recorder")

RETRY_S = 1.0


@dataclass(frozen=True)
class Held:
    """One event held in memory, and the row it is sent as (under its reserved seq)."""

    event: Event
    row: OutboxRow


class HeldEvents:
    """The held-events half of :class:`~agent.recorder.Recorder`; see the module docstring."""

    if TYPE_CHECKING:  # the recorder's own state and steps, which these methods share
        outbox: Outbox
        hooks: Hooks
        _put_lock: threading.Lock
        _lock: threading.Lock
        _recent: RecentEvents
        _held: dict[str, Held]
        _was_held: dict[str, bool]
        _failing: bool
        _retry: threading.Event
        _retry_s: float
        _closed: bool
        _thread: threading.Thread | None

        @staticmethod
        def _call(hook: Callable[..., None], *args: Any) -> None: ...

    def held(self) -> list[OutboxRow]:
        """Events held in memory, oldest first, ready to send directly (the uplink's hook; it sends alarms first)."""
        with self._lock:
            return [h.row for h in self._held.values()]

    def held_count(self) -> int:
        return len(self._held)

    def flush_held(self) -> int:
        """Store held events the outbox takes now, in seq order; return how many were stored.

        Once SQLite fails in a round, only real alarms are tried further, in
        the outbox's intake alone: a press held while a commit was stuck gets
        on disk while SQLite still fails.
        """
        stored = 0
        handed: list[OutboxRow] = []  # still held when stored: the sender learns of each (it may be below a cursor)
        sqlite_failed = False
        with self._put_lock:
            for held in self.held():
                with self._lock:
                    if held.id not in self._held:
                        continue  # delivered directly meanwhile: nothing left to store
                    event = self._held[held.id].event
                real = event.type.is_alarm and not event.test
                if sqlite_failed and not real:
                    continue
                try:
                    seq = (
                        self._intake_only(event, held)
                        if sqlite_failed
                        else self.outbox.put(event, seq=held.seq, created=held.created)
                    )
                except OutboxFullError:
                    continue  # a non-alarm that does not fit must not keep an alarm behind it off the disk
                except OutboxError:
                    sqlite_failed = True
                    seq = self._intake_only(event, held) if real else None
                if seq is None:
                    continue
                stored += 1
                if self._now_stored(held.id, seq, sqlite_works=not sqlite_failed):
                    handed.append(held)
        if handed and self.hooks.offer is not None:
            self._call(self.hooks.offer, handed)  # due at once, even below its lane's cursor
        if stored:
            self._call(self.hooks.wake)
            self._call(self.hooks.changed)
        return stored

    def _now_stored(self, event_id: str, seq: int, *, sqlite_works: bool) -> bool:
        """Bookkeeping for a held event just stored; False when it had been delivered meanwhile."""
        if sqlite_works:
            self._failing = False
        with self._lock:
            delivered_meanwhile = self._held.pop(event_id, None) is None
            if not delivered_meanwhile:
                self._was_held[event_id] = True
            self._recent.mark(event_id, on_disk=True)
        log.warning("event %s kept in memory is now recorded as seq %d", event_id, seq)
        if delivered_meanwhile:
            self._ack_stored(seq)
        return not delivered_meanwhile

    def _intake_only(self, event: Event, held: OutboxRow) -> int | None:
        """Its seq if the outbox's intake took the held alarm (SQLite untouched), else None."""
        try:
            taken = self.outbox.take_in_now([event], [held.seq], wait_s=RETRY_S, created=held.created)
        except OutboxError:
            return None
        return None if taken is None else taken[0].seq

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run_retry, name="recorder-retry", daemon=True)
            self._thread.start()

    def _run_retry(self) -> None:
        while True:
            self._retry.wait(self._retry_s if self._held else None)
            self._retry.clear()
            if self._closed:
                return
            try:
                self.flush_held()
            except Exception:
                log.exception("storing events held in memory failed; they are kept and retried")

    def _ack_stored(self, seq: int) -> None:
        try:
            self.outbox.ack([seq])
        except OutboxError as exc:
            log.warning("%s; the event may be sent once more", exc)
