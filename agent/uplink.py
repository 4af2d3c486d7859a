"""The link to the broker: outbox to broker, status, replies and commands, on one sender thread.

One sender thread owns the whole connection life cycle.  Each connection
attempt is a fresh :class:`~agent.session.Session` (paho's reconnect is off),
so paho's in-memory queue never outlives a connection and is never what we
rely on: after every reconnect the sender re-publishes whatever is still in the
outbox, oldest first.  A row is deleted only when its PUBACK arrives with a
success reason code; an MQTT 5 broker that refuses a publish (reason >= 0x80)
still makes paho report it as "published", so refusals are kept and retried.

A connection counts as working only once the broker's CONNACK accepts it:
only then is "connected" logged and the backoff reset.  Anything short of that
(TCP, TLS, no CONNACK, closed before CONNACK, CONNACK refused) is a failed
attempt, and failed attempts walk the broker list.  A failure that is about the
dialect (MQTT 5 not spoken, retain switched off; see :mod:`agent.dialects`) is
retried on the same broker at once in the dialect that works.

Reconnects use exponential backoff with full jitter (no lock-step storms;
the attempts are :mod:`agent.attempts`, mixed in).  A session whose broker
keeps a publish unacknowledged ends (:mod:`agent.overdue`).  Events never wait
for the command subscription (see :mod:`agent.linkstate`).
"""

from __future__ import annotations

import logging
import math
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.attempts import Attempts
from agent.brokers import backoff_delay, describe_connect_error, tls_context
from agent.closing import Closing
from agent.config.model import MqttConfig
from agent.connack import RETAIN_NOT_SUPPORTED, Dialect
from agent.dialects import Dialects
from agent.errors import OutboxError
from agent.eventsend import EventSender
from agent.failover import Ended, Failover
from agent.linkstate import CommandHandler, CommandRoute, LinkState
from agent.outbox import Outbox, OutboxRow
from agent.outgoing import MAX_BESIDE, Outgoing, beside_slots, encode
from agent.overdue import PubackDeadline, Waiting, deadline_s
from agent.pubacks import PubAcks
from agent.receivemax import inflight_for
from agent.sendwindow import SendWindow
from agent.session import Session
from agent.sidelane import SideLane

if TYPE_CHECKING:  # photos are imported only by agents that take them (memory)
    from agent.photosend import PhotoDrain

log = logging.getLogger(__name__)

StatusProvider = Callable[[], dict[str, Any]]

_SHUTDOWN_ACK_TIMEOUT_S = 2.0
_IDLE_S = 10.0  # longest wait while connected with nothing due; any news wakes the sender at once


class Uplink(Attempts, Closing):
    """Drains the outbox to the broker and carries status, replies and commands.

    Args:
        cfg: the ``mqtt`` section of the config.
        topic_root: ``{prefix}/{site}/{device}``.
        outbox: where events come from and where PUBACKs are recorded.
        status: returns a fresh status document (birth message and heartbeats).
        offline: returns the ``offline`` document for a ``reason``.
        on_command: called on paho's thread per command.
        on_link: called when the link goes up or down.
        on_delivered: called on the sender thread for every acknowledged row.
        held: events held in memory because the outbox cannot store them
            (agent/recorder.py); sent directly after the outbox rows while the
            link is up, acknowledged through ``on_delivered`` and never acked
            in the outbox by the sender.
        photos: stills of alarms (agent/photos.py), sent one at a time when no
            event is waiting, so a new alarm overtakes them; never in the last
            slot of a broker's Receive Maximum, which an alarm may need.

    """

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        topic_root: str,
        outbox: Outbox,
        status: StatusProvider,
        offline: Callable[[str], dict[str, Any]],
        on_command: CommandHandler | None = None,
        on_link: Callable[[LinkState], None] | None = None,
        on_delivered: Callable[[OutboxRow], None] | None = None,
        held: Callable[[], list[OutboxRow]] | None = None,
        photos: PhotoDrain | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.root = topic_root
        self.outbox = outbox
        self._status = status
        self._offline = offline
        self._on_command = on_command
        self._on_link = on_link
        self._photos = photos
        self._failover = Failover(cfg, rng or random.Random())  # noqa: S311 - jitter, not cryptography
        self._wall = wall
        self._mono = mono
        self._status_topic = f"{topic_root}/status"
        self._cmd_prefix = f"{topic_root}/cmd/"
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._outgoing = Outgoing()  # the newest status and the command replies
        self._beside = MAX_BESIDE  # of them unacknowledged at most: the slots no event takes (outgoing.py)
        self._session: Session | None = None
        self._dialect: Dialect | None = None  # of the last session the broker accepted
        self._dialects = Dialects(cfg.protocol)
        self._commands = CommandRoute(f"{topic_root}/cmd/", answer_s=deadline_s(cfg.keepalive_s))
        self._connected_since: float | None = None  # monotonic: the wall-clock time is worked out when asked
        self._sessions = 0  # accepted by a CONNACK; every one after the first is a reconnect
        self._ended = Ended(None)  # how the last accepted session ended
        self._overdue = False  # the session is ending because its broker lost an event (a failed attempt)
        self._by_agent = False  # the agent ended the session (a deadline, a stop), not the broker or the link
        self._photo_slot = True  # the broker's Receive Maximum leaves an alarm a slot beside a photo
        self._last_error: str | None = None
        self._status_broken = False  # the status builder raised: said once, until it works again
        self._window = SendWindow(outbox, max_inflight=cfg.max_inflight, rate_per_s=cfg.drain_rate_per_s)
        self._side = SideLane(
            topic_root, held=held, photos=photos, on_delivered=on_delivered, window=self._window, mono=mono
        )
        self._events = EventSender(self._window, topic_root, _IDLE_S)  # its lock: the window and the live session
        self._pubacks = PubAcks(self._window, self._side, outbox, topic_root, on_delivered)
        self._deadline = PubackDeadline(self._window, self._side, self._pubacks, cfg.keepalive_s, mono)
        self.progress = self._mono()

    # ---- public surface ------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None or self._closed:
            return
        self._thread = threading.Thread(target=self._run, name="uplink-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Tell the sender a new row is in the outbox (called after put)."""
        self._wake.set()

    def offer(self, rows: list[OutboxRow]) -> None:
        """Rows just committed: published from this thread at once when the window picks them (eventsend.py)."""
        if self._events.offer(rows, self._mono()):
            self._wake.set()

    def publish_status(self, doc: dict[str, Any]) -> None:
        """Publish ``doc`` (retained where the broker allows); only the latest waiting one is ever sent."""
        self._outgoing.status(doc)
        self._wake.set()

    def publish(self, subtopic: str, doc: dict[str, Any]) -> None:
        """Publish a small document (a command reply) under the topic root, QoS 1."""
        self._outgoing.reply(f"{self.root}/{subtopic}", doc)
        self._wake.set()

    def _up_for(self) -> float:
        """Seconds this connection has lasted (on the monotonic clock: a clock step moves its start with it)."""
        return 0.0 if self._connected_since is None else self._mono() - self._connected_since

    def state(self) -> LinkState:
        s, d = self._session, self._dialect
        return LinkState(
            connected=self._connected_since is not None,
            broker=str(s.broker) if s is not None else None,
            connected_since=None if self._connected_since is None else self._wall() - self._up_for(),
            reconnects=max(0, self._sessions - 1),
            last_error=self._last_error,
            inflight=len(self._window),
            published=self._events.published + self._side.published,
            delivered=self._pubacks.delivered + self._side.delivered,
            refused=self._pubacks.refused + self._side.refused,
            protocol=d.protocol if d is not None else None,
            retain=d.retain if d is not None else True,
            commands_available=self._commands.available,
            commands_reason=self._commands.reason,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Say ``offline``/``shutdown`` if connected, then disconnect cleanly."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("uplink: the sender thread is still running %g s after the stop; leaving it", timeout)
            self._thread = None

    def close(self) -> None:
        """Stop for good (idempotent); a closed uplink does not start again."""
        self._closed = True
        self.stop()

    @property
    def closed(self) -> bool:
        return self._closed

    def _repr_id(self) -> str:
        return self.root

    def _repr_state(self) -> str:
        st = self.state()
        if st.connected:
            where = f"connected to {st.broker} MQTT {st.protocol}{'' if st.retain else ' no retain'}"
        else:
            where = f"disconnected ({st.last_error or 'connecting'})"
        return f"{where} inflight={st.inflight}"

    # ---- one accepted session ------------------------------------------------

    def _serve_session(self, s: Session) -> None:
        self._dialect = Dialect(s.dialect.protocol, s.can_retain)
        if self._photos is not None:
            self._photos.limit = s.max_packet_size  # a photo over it would end the session, again and again
            self._photos.mqtt5 = s.dialect.protocol == "5"  # strikes count only where no limit can be announced
        self._connected_since = self._mono()
        self._sessions += 1
        self._last_error = None
        self._outgoing.new_session()
        log.info(
            "connected to broker %s (MQTT %s%s); %d events to send",
            s.broker,
            s.dialect.protocol,
            "" if self._dialect.retain else ", retain unavailable",
            self.outbox.pending(),
        )
        self._pubacks.begin(self._mono())
        with self._events.lock:
            self._window.reset()
            inflight, self._photo_slot = inflight_for(s, self.cfg.max_inflight, photos=self._photos is not None)
            self._window.max_inflight = inflight
            self._beside = beside_slots(s.receive_maximum, inflight)
            self._events.live = s
            wait = self._send_round(s, first=True)  # events first: never behind a status document or the subscription
        self._commands.begin()
        subscription = self._tend_commands(s, "todo", announce=False)  # the birth says it
        wait = min(wait, max(0.05, self._commands.wait_s(subscription, self._mono())))
        if (birth := self._fresh_status()) is not None:  # after SUBSCRIBE: a central that sees "online" can command
            self._outgoing.sent(self._publish_status(s, birth), self._mono())
        with self._events.lock:  # a photo's bytes on a slow link would hold up the SUBACK and the birth
            wait = min(wait, self._send_beside(s))  # replies from the last session, behind the birth
            self._send_photo(s)
        self._notify_link()
        while not s.lost.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            self.progress = self._mono()
            if self._stopping.is_set():
                with self._events.lock:
                    self._events.live = None  # offer() leaves the window alone from here on
                self._by_agent = True
                self._say_goodbye(s)
                return
            with self._events.lock:
                wait = self._send_round(s)
                waiting = self._deadline.waiting()  # under the lock the round holds anyway
            subscription = self._tend_commands(s, subscription)
            overdue = self._puback_overdue(s, waiting)
            if overdue is not None:
                self._commands.ended(s, subscription, self._mono())
                self._last_error, self._by_agent = overdue, True
                return  # closed cleanly on the way out (no will); the next session sends it again
            if waiting[0] or waiting[1] is not None:  # no news may come: look again in a while
                wait = min(wait, max(0.05, self._deadline.deadline_s / 4))
            wait = min(wait, max(0.05, self._commands.wait_s(subscription, self._mono())))
        if s.lost_code == RETAIN_NOT_SUPPORTED:
            self._dialects.retain_refused(s.broker, s.dialect)
        self._commands.ended(s, subscription, self._mono())
        self._last_error = f"connection lost: {s.lost_reason}"

    def _puback_overdue(self, s: Session, waiting: Waiting) -> str | None:
        """Why to end a session whose broker lost a PUBLISH or its PUBACK, or None; sets ``_overdue`` for an event.

        The rule is agent/overdue.py's; only a lost event makes the attempt a failed one.
        """
        late = self._deadline.late(waiting)
        if late is None:
            return None
        if late.event:
            self._overdue = True  # a failed attempt: the broker lost an event
        return self._say_overdue(s, late.what, late.waited)

    def _say_overdue(self, s: Session, what: str, waited: float) -> str:
        why = f"no PUBACK for {what} in {waited:.0f} s"
        log.warning("broker %s: %s while the link answers; reconnecting so it is sent again", s.broker, why)
        return why

    def _tend_commands(self, s: Session, subscription: str, *, announce: bool = True) -> str:
        subscription, changed = self._commands.tend(s, subscription, self._mono(), lambda: self.outbox.pending() == 0)
        if changed and announce and (doc := self._fresh_status()) is not None:
            self.publish_status(doc)
        return subscription

    def _fresh_status(self) -> dict[str, Any] | None:
        """A status document, or None if it cannot be built: a status is not worth the session carrying alarms."""
        try:
            doc = self._status()
        except Exception:
            if not self._status_broken:
                log.exception("uplink: the status document cannot be built; carrying on without it")
            self._status_broken = True
            return None
        self._status_broken = False
        return doc

    def _command(self, topic: str, payload: bytes, retained: bool) -> None:
        if self._on_command is None or not topic.startswith(self._cmd_prefix):
            return
        name = topic[len(self._cmd_prefix) :]
        try:
            self._on_command(name, payload, retained=retained)
        except Exception:
            log.exception("command %r could not be handled; ignoring it", name)

    def _send_round(self, s: Session, *, first: bool = False) -> float:
        """Settle acks, fill the window, then status/replies and a photo (not in the ``first``); how long to wait."""
        self._outgoing.acked(self._pubacks.settle(self._mono()))
        try:
            wait = self._events.fill(s, self._mono())  # events first: an alarm never queues behind a status document
        except (OutboxError, sqlite3.Error) as exc:  # the outbox cannot be read: held events still go
            log.error("outbox: %s; sending only the events held in memory", exc)  # noqa: TRY400 - says it all
            wait = _IDLE_S
        wait = min(wait, self._side.send_held(s))  # a held event waiting for the pace is due then
        if not first:
            wait = min(wait, self._send_beside(s))
            self._send_photo(s)
        return wait

    def _send_beside(self, s: Session) -> float:
        """The waiting status and replies, in the slots no event takes; how long until one more may go, if one waits.

        paho sends its queue in order: one handed over beyond the broker's
        Receive Maximum would hold the next alarm up (outgoing.py).
        """
        now, stale_s = self._mono(), self._deadline.deadline_s
        photo = 1 if self._side.photo_in_flight() is not None else 0
        status, replies = self._outgoing.take(self._beside - photo - self._outgoing.unacked(now, stale_s))
        if status is not None:
            self._outgoing.sent(self._publish_status(s, status), now)
        for reply in replies:
            self._outgoing.sent(s.publish(*reply), now, reply)
        return self._outgoing.stale_in(now, stale_s) if self._outgoing.waiting else math.inf

    def _send_photo(self, s: Session) -> None:
        idle = self._photo_slot and len(self._window) == 0 and self.outbox.pending() == 0
        self._side.send_photo(s, events_idle=idle)

    def _publish_status(self, s: Session, doc: dict[str, Any]) -> int | None:
        return s.publish(self._status_topic, encode(doc), retain=True)

    def _say_goodbye(self, s: Session) -> None:
        mid = self._publish_status(s, self._offline("shutdown"))
        waits = set() if mid is None else {mid}
        if mid is not None:  # replies still waiting go behind it, in the same wait: a stop is no reason to lose them
            waits |= {m for reply in self._outgoing.take()[1] if (m := s.publish(*reply)) is not None}
        deadline = self._mono() + _SHUTDOWN_ACK_TIMEOUT_S
        while waits and self._mono() < deadline and not s.lost.is_set():
            waits -= self._pubacks.settle(self._mono())
            if not waits:
                break
            self._wake.wait(0.05)
            self._wake.clear()
        s.close()
        log.info("disconnected from broker %s (shutdown)", s.broker)

    def _notify_link(self) -> None:
        if self._on_link is not None:
            try:
                self._on_link(self.state())
            except Exception:
                log.exception("link-change handler failed; carrying on")


__all__ = ["CommandHandler", "LinkState", "Uplink", "backoff_delay", "describe_connect_error", "tls_context"]
