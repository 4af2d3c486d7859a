"""The monitor's print loop and the one-shot ack: the only code that touches the screen.

One thread (the caller's) owns the fleet view, the ack desk and ``out``;
paho's thread only puts messages in the inbox (:mod:`agent.central.link`).

Decisions, for a centre with tens of thousands of devices:

- **Alarms first.** Each turn takes everything already queued
  (:class:`~agent.central.inbox.Backlog`) and handles its events at once,
  then at most :data:`_BATCH` of the statuses, replies and photos, so a
  panic that arrives behind 20,000 retained statuses is printed first.
  Events are told by their topic level, never by a substring.
- **Ticks at most once a second**, never per message: overdue detection is
  a heap pop per passed deadline (:mod:`agent.central.deadlines`).  No tick
  while the link is down, nor until :data:`SETTLE_S` after a reconnect's
  renewed subscriptions are confirmed: the retained statuses that re-arm
  the deadlines come behind that SUBACK (a second at 20,000 devices), and a
  deaf monitor must not call a heartbeating device overdue.  A board ticks
  first when nothing waits unread and the run is settled or on its first
  subscription, and the final board (``--once``) always: its header then
  counts what its rows show.
- **Spans on the monotonic clock** (``mono``): the loop's timers, the settle
  time and what the fleet view and the ack desk measure; the wall clock
  (``wall``) only for printed times and comparing with devices' ``ts``.  A
  step of the host's clock must not hide a dead device or flag a live fleet.
- **Photos after events** (``--snapshots DIR``): a photo, in turn with the statuses, is checked here and
  written on :class:`~agent.central.photos.PhotoSaver`'s thread; its PHOTO
  line is printed when the file is in place (:mod:`agent.central.photos`).
- **Every line is scrubbed on the way out** (:mod:`agent.central.screen`,
  mixed in here): no control character from a device reaches the terminal,
  whatever code path built the line.  Keys pressed are acted on between
  batches, on this thread (:mod:`agent.central.keyboard`, mixed in too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.central.acks import AckDesk, Reply, ack_command, parse_reply
from agent.central.display import LineKind, escape
from agent.central.fleet import FleetView
from agent.central.inbox import Backlog
from agent.central.keyboard import Keyboard, read_keys
from agent.central.link import CentralLink, Inbox, Incoming, LinkNote, unpack
from agent.central.photos import PhotoDesk, PhotoSaver, check, is_snapshot
from agent.central.photos import subscription as photo_subscription
from agent.central.screen import Screen, why
from agent.central.settings import LinkSettings
from agent.errors import AgentError

EXIT_OK, EXIT_FAIL = 0, 1
TABLE_EVERY_S = 10.0
TICK_S = 1.0
SETTLE_S = 2.0
_FIRST_TABLE_S = 1.0
_IDLE_S = 0.25
_BATCH = 5000
_FINISH_S = 1.0


@dataclass(frozen=True)
class Target:
    """Where the monitor connects, and the topic prefix it watches."""

    link: LinkSettings
    prefix: str = "campus"


@dataclass(frozen=True)
class MonitorOptions:
    """What ``campus-agent monitor`` shows; times in seconds, 0 or ``None`` meaning never.

    ``full_table`` prints every device (problem first) where the default
    board shows the header, the devices that need attention and the alarms.
    """

    site: str | None = None
    json: bool = False
    table_every_s: float = TABLE_EVERY_S
    duration_s: float | None = None
    overdue_after_s: float | None = None
    full_table: bool = False
    snapshots: Path | None = None


def subscriptions(prefix: str, site: str | None, *, replies: bool, photos: bool = False) -> list[str]:
    """The contract's central-side topics, for one site or (``None``) the whole fleet."""
    scope = f"{prefix}/{site or '+'}/+"
    return (
        [f"{scope}/status", f"{scope}/event/#"]
        + ([f"{scope}/reply"] if replies else [])
        + ([photo_subscription(prefix, site)] if photos else [])
    )


def run_monitor(
    target: Target,
    opts: MonitorOptions,
    *,
    out: TextIO,
    err: TextIO,
    keys: TextIO | None = None,
    stop: threading.Event | None = None,
    wall: Callable[[], float] = time.time,
    mono: Callable[[], float] = time.monotonic,
) -> int:
    """Connect, subscribe and print until ``stop``, the duration, ``q`` or Ctrl-C.

    ``keys`` is where Enter presses come from (``--ack``); ``None`` turns
    acknowledging off.  Raises :class:`~agent.errors.AgentError` when no broker
    can be reached.
    """
    inbox: Inbox = queue.SimpleQueue()
    with contextlib.ExitStack() as stack:
        saver = None
        if opts.snapshots is not None:
            try:
                saver = stack.enter_context(PhotoSaver(opts.snapshots))
            except OSError as exc:
                raise AgentError(
                    f"--snapshots {opts.snapshots}: {exc.strerror or exc}; give a directory this user "
                    "may create and write"
                ) from None
        link = stack.enter_context(CentralLink(target.link, inbox, wall=wall))
        broker = link.connect()
        link.subscribe(subscriptions(target.prefix, opts.site, replies=keys is not None, photos=saver is not None))
        scope = f"{target.prefix}/{opts.site or '+'}/+"
        hint = (
            "; Enter acknowledges the newest real alarm (a TEST press only when none waits), "
            "t + Enter prints every device, q quits"
            if keys
            else ""
        )
        print(
            f"monitoring {scope} on {broker} as {link.client_id} (MQTT {link.protocol}){hint}; Ctrl-C stops",
            file=err,
            flush=True,
        )
        pressed: queue.SimpleQueue[str] = queue.SimpleQueue()
        if keys is not None:
            threading.Thread(target=read_keys, args=(keys, pressed), name="monitor-keys", daemon=True).start()
        session = _Session(link, inbox, target.prefix, opts, out, wall=wall, mono=mono, saver=saver)
        return session.run(stop or threading.Event(), pressed)


class _Session(Keyboard, Screen):
    """The print loop: the only thread that touches the fleet view, the desk and ``out``."""

    def __init__(
        self,
        link: CentralLink,
        inbox: Inbox,
        prefix: str,
        opts: MonitorOptions,
        out: TextIO,
        *,
        wall: Callable[[], float],
        mono: Callable[[], float] = time.monotonic,
        saver: PhotoSaver | None = None,
    ) -> None:
        self.link, self.inbox, self.opts, self.out, self.wall, self.mono = link, inbox, opts, out, wall, mono
        self.prefix = prefix
        self.fleet = FleetView(prefix, overdue_after_s=opts.overdue_after_s)
        self.desk = AckDesk(prefix)
        self.saver = saver
        self.photos = PhotoDesk()
        self._next_table: float | None = None
        self._next_tick = 0.0
        self._listening: tuple[float, float] | None = None  # the link's SUBACK stamp, and when it was seen here
        self._first_listening: float | None = None  # the run's first SUBACK stamp: before it, no device was known
        self._closing = False
        self.backlog = Backlog(inbox, prefix)

    def run(self, stop: threading.Event, pressed: queue.SimpleQueue[str]) -> int:
        start = self.mono()
        end = start + self.opts.duration_s if self.opts.duration_s is not None else None
        every = self.opts.table_every_s
        self._next_table = start + min(_FIRST_TABLE_S, every) if every > 0 else None
        self._next_tick = start + TICK_S
        try:
            while not stop.is_set():
                now = self.mono()
                if end is not None and now >= end:
                    break
                try:
                    if not self._turn(now, end, pressed):
                        break
                except Exception as exc:  # one turn's surprise (the board, a tick, a photo) must not end the watch
                    self._note(self.wall(), LineKind.WARNING, f"the monitor's loop failed ({why(exc)}); carrying on")
                    stop.wait(_IDLE_S)
        except KeyboardInterrupt:
            pass
        self._catch_up()
        if self.saver is not None:
            self.saver.close()  # what is queued is written first, so its lines are printed below
            self._saved()
        self._closing = True  # the last board ticks whatever the state: there is no later one
        self._board(self.wall(), full=self.opts.full_table)
        return EXIT_OK

    def _turn(self, now: float, end: float | None, pressed: queue.SimpleQueue[str]) -> bool:
        """Messages, keys, the tick and the board, each once; False when the user asked to quit.

        ``now`` and the timers are monotonic.  Each timer moves on before its
        work, so work that raises runs again only when next due, never in a loop.
        """
        due = (end, self._next_table, self._next_tick)
        self._drain(max(0.0, min(_IDLE_S, *(t - now for t in due if t is not None))))
        self._saved()
        if not self._keys(pressed):
            return False
        now = self.mono()
        settled = self._settled(now)
        if now >= self._next_tick:
            self._next_tick = now + TICK_S
            if settled:  # a deaf monitor is not a silent fleet
                wall = self.wall()
                self._emit(self.fleet.tick(wall, mono=now) + self.desk.tick(wall, mono=now))
        if self._next_table is not None and now >= self._next_table:
            self._next_table = now + self.opts.table_every_s
            self._board(self.wall(), full=self.opts.full_table)
        return True

    def _settled(self, mono: float) -> bool:
        """True once the link has listened :data:`SETTLE_S` seconds, timed on the monotonic clock.

        The link stamps its SUBACK on the wall clock; this loop times each new
        stamp from the turn that first sees it (a fraction of a second late,
        never early), so a step of the wall clock cannot stop the ticks.
        """
        since = self.link.listening_since
        if since is None:
            self._listening = None
            return False
        if self._first_listening is None:
            self._first_listening = since
        if self._listening is None or self._listening[0] != since:
            self._listening = (since, mono)
        return mono - self._listening[1] >= SETTLE_S

    def _drain(self, wait: float) -> None:
        """Handle every event that has arrived, then at most a batch of the rest, so keys and ticks get their turn.

        Waits up to ``wait`` seconds for a first message only when nothing is left over from an earlier turn.
        """
        mono, events = self.backlog.take(0.0 if self.backlog else wait, self.mono)
        for event in events:
            self._incoming(event, mono)
        del events
        for at, item in self.backlog.handed(_BATCH):
            if isinstance(item, LinkNote):
                self._note(self.wall(), LineKind.LINK, item.text)
            elif self.saver is not None and is_snapshot(self.prefix, item.topic):
                self._photo(self.saver, item)
            else:
                self._incoming(item, at)

    def _drained(self) -> bool:
        return not self.backlog and self.inbox.empty()

    def _board(self, now: float, *, full: bool) -> None:
        """Print the board, ticking first when that is safe, so its header counts what its rows show.

        Safe: the subscriptions confirmed and nothing waiting unread, and either
        settled or still on the run's first subscription (no device's deadline
        predates it).  The final board ticks whether or not all was read (there
        is no later one), but never while the link is down: a deaf monitor
        must not call a silent fleet overdue.
        """
        mono = self.mono()
        settled = self._settled(mono)  # also notes the run's first SUBACK stamp
        since = self.link.listening_since
        first = since is not None and since == self._first_listening
        if since is not None and (first or settled) and (self._closing or self._drained()):
            self._next_tick = mono + TICK_S
            self._emit(self.fleet.tick(now, mono=mono) + self.desk.tick(now, mono=mono))
        super()._board(now, full=full)

    def _catch_up(self) -> None:
        """Handle what is already queued, for at most :data:`_FINISH_S`: the final board shows it."""
        end = self.mono() + _FINISH_S
        while not self._drained() and self.mono() < end:
            self._drain(0.0)

    def _photo(self, saver: PhotoSaver, item: Incoming) -> None:
        """Check a photo and hand it to the saver; a refusal is a warning now, a saved photo a line later."""
        photo = check(
            self.prefix,
            item.topic,
            item.payload,
            item.arrival,
            content_type=item.content_type,
            user_properties=item.user_properties,
        )
        why = photo if isinstance(photo, str) else saver.submit(photo, item.payload)
        if why is not None:
            self._emit([self.photos.refused(item.arrival, why)])

    def _saved(self) -> None:
        """Print what the saver has finished since the last turn."""
        if self.saver is None:
            return
        now = self.wall()
        for outcome in self.saver.outcomes():
            self._emit(self.photos.lines(outcome, now))

    def _incoming(self, item: Incoming, mono: float | None = None) -> None:
        """Show one message; ``mono`` is its arrival on the monotonic clock (``None``: its wall ``arrival``)."""
        try:
            lines = self.fleet.feed(item.topic, item.payload, item.arrival, retained=item.retained, mono=mono)
            if item.topic.endswith("/reply"):
                lines += self.desk.feed(item.topic, item.payload, item.arrival)
            self._emit(lines, topic=item.topic)
        except Exception as exc:  # one unforeseen message must not end the watch (retained: at every start)
            self._note(
                item.arrival, LineKind.WARNING, f"a message on {escape(item.topic[:200])} was not read ({why(exc)})"
            )


def send_ack(target: Target, site: str, device: str, event_id: str, *, timeout: float) -> tuple[str, Reply | None]:
    """Publish one ``ack`` and wait ``timeout`` seconds for its reply: (cmd_id, reply or None)."""
    root = f"{target.prefix}/{site}/{device}"
    inbox: Inbox = queue.SimpleQueue()
    with CentralLink(dataclasses.replace(target.link, session_expiry_s=0), inbox, name="ack") as link:
        link.connect()
        link.subscribe([f"{root}/reply"])
        cmd_id, payload = ack_command(event_id, time.time())
        link.publish(f"{root}/cmd/ack", payload)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = inbox.get(timeout=left)
            except queue.Empty:
                break
            for got in unpack(item):
                if isinstance(got, Incoming) and got.topic == f"{root}/reply":
                    reply = parse_reply(got.payload)
                    if reply is not None and reply.cmd_id == cmd_id:
                        return cmd_id, reply
        return cmd_id, None
