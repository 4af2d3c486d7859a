"""Acknowledging alarms: the contract's ``ack`` command, and matching its reply.

Used by ``campus-agent monitor --ack`` (alarms come and go, replies arrive
among events) and by ``campus-agent ack`` (one command, one reply).  Pure
logic: the caller publishes and feeds the replies in, so it is tested without
a broker.  Not thread-safe: one thread uses it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import OrderedDict
from dataclasses import dataclass

from agent.central.display import (
    MAX_REASON,
    Alarm,
    Line,
    LineKind,
    clock_text,
    decode,
    device_key,
    escape,
    warning_line,
)
from agent.events import CONTRACT_VERSION, is_event_id, iso_ms, new_id

REPLY_TIMEOUT_S = 10.0
_MAX_UNACKED = 1000
_MAX_LATE = 256
valid_event_id = is_event_id


@dataclass(frozen=True)
class Reply:
    """A device's answer to a command (``R/reply``)."""

    cmd_id: str
    ok: bool
    error: str | None


def ack_command(event_id: str, wall: float) -> tuple[str, bytes]:
    """A fresh ``ack`` command for ``event_id``: its ``id`` and its payload."""
    cmd_id = f"c-{new_id()}"
    doc = {"v": CONTRACT_VERSION, "id": cmd_id, "ts": iso_ms(wall), "event_id": event_id}
    return cmd_id, json.dumps(doc, separators=(",", ":")).encode()


def parse_reply(payload: bytes) -> Reply | None:
    """The reply in ``payload``, or ``None`` when it is not a readable one."""
    doc = decode(payload)
    if isinstance(doc, str):
        return None
    cmd_id, ok, error = doc.get("cmd_id"), doc.get("ok"), doc.get("error")
    if not isinstance(cmd_id, str) or not isinstance(ok, bool):
        return None
    return Reply(cmd_id, ok, error if isinstance(error, str) else None)


class AckDesk:
    """Which alarms still wait for an ack, and which acks still wait for a reply.

    An alarm whose ack is refused, or unanswered after ``reply_timeout_s``
    seconds, is offered again: the operator should not believe a device
    signalled "help is coming" when it did not.  An ack given up on may still
    arrive (the link sends it again after a reconnect), so its reply is still
    matched later (the newest 256) and shown.  A reply counts only from the
    device the ack went to: another device cannot confirm an ack it never got.

    Args:
        prefix: the topic prefix (``mqtt.topic_prefix``).
        reply_timeout_s: how long to wait for a device's reply, in seconds.
        tz: time zone of the printed clock times; ``None`` is the local one.

    """

    def __init__(
        self, prefix: str = "campus", *, reply_timeout_s: float = REPLY_TIMEOUT_S, tz: dt.tzinfo | None = None
    ) -> None:
        self.prefix = prefix
        self.reply_timeout_s = reply_timeout_s
        self._tz = tz
        self._unacked: OrderedDict[tuple[str, str, str], Alarm] = OrderedDict()  # (site, device, id)
        self._sent: dict[str, tuple[Alarm, float]] = {}
        self._late: OrderedDict[str, Alarm] = OrderedDict()
        self._unconfirmed: dict[str, tuple[int, float]] = {}

    def __repr__(self) -> str:
        return f"<AckDesk {len(self._unacked)} alarms unacknowledged, {len(self._sent)} acks awaiting a reply>"

    def command_topic(self, alarm: Alarm) -> str:
        return f"{self.prefix}/{alarm.site}/{alarm.device}/cmd/ack"

    def offer(self, alarm: Alarm) -> None:
        """A new panic or tamper event: it may now be acknowledged."""
        self._unacked[_key(alarm)] = alarm
        self._unacked.move_to_end(_key(alarm))
        if len(self._unacked) > _MAX_UNACKED:  # a test press goes first: a real alarm must stay ackable
            oldest_test = next((k for k, a in self._unacked.items() if a.test), None)
            if oldest_test is not None:
                del self._unacked[oldest_test]
            else:
                self._unacked.popitem(last=False)

    def next_unacked(self) -> Alarm | None:
        """The alarm Enter acknowledges: the newest real one waiting, else the newest test press, else ``None``.

        A technician's test press arriving after a real panic must not take the
        operator's ack from the panic: its presser would get no "help is coming".
        """
        newest_test = None
        for alarm in reversed(self._unacked.values()):
            if not alarm.test:
                return alarm
            newest_test = newest_test or alarm
        return newest_test

    def unacked(self) -> list[Alarm]:
        """Every alarm not yet acknowledged from here, newest first (at most 1,000)."""
        return list(reversed(self._unacked.values()))

    def sent(
        self, alarm: Alarm, cmd_id: str, now: float, *, mono: float | None = None, token: int | None = None
    ) -> None:
        """``cmd_id`` acknowledges ``alarm``; its reply is now expected.

        ``mono`` is ``now`` on the monotonic clock (default ``now``): the reply
        timeout is a span, which a step of the wall clock must not stretch.
        ``token`` names the publish while the broker has not confirmed it
        (:meth:`unconfirmed`).
        """
        self._unacked.pop(_key(alarm), None)
        m = now if mono is None else mono
        self._sent[cmd_id] = (alarm, m)
        if token is not None:
            self._unconfirmed[cmd_id] = (token, m)

    def unconfirmed(self) -> list[tuple[str, Alarm | None, int, float]]:
        """Acks the broker has not confirmed yet: (cmd_id, its alarm while a reply is awaited, token, sent at)."""
        return [(c, self.awaiting(c), token, at) for c, (token, at) in self._unconfirmed.items()]

    def confirmed(self, cmd_id: str) -> None:
        """The broker answered ``cmd_id``'s publish, or nobody waits for that answer any more."""
        self._unconfirmed.pop(cmd_id, None)

    def awaiting(self, cmd_id: str) -> Alarm | None:
        """The alarm ``cmd_id`` acknowledges while its reply is awaited, else ``None``."""
        entry = self._sent.get(cmd_id)
        return entry[0] if entry is not None else None

    def failed(self, cmd_id: str) -> None:
        """The ack ``cmd_id`` was not published, or the broker refused it: offer its alarm again."""
        self._unconfirmed.pop(cmd_id, None)
        entry = self._sent.pop(cmd_id, None)
        if entry is not None:
            self.offer(entry[0])

    def feed(self, topic: str, payload: bytes, at: float) -> list[Line]:
        """Take a message; a reply to one of our acks becomes a line, anything else nothing."""
        if not (topic.startswith(f"{self.prefix}/") and topic.endswith("/reply")):
            return []
        reply = parse_reply(payload)
        if reply is None:
            problem = decode(payload)
            why = problem if isinstance(problem, str) else "no cmd_id or ok"
            return [warning_line(at, f"{escape(topic)}: unreadable reply ({why}); ignored", self._tz)]
        entry = self._sent.get(reply.cmd_id)
        alarm = entry[0] if entry is not None else self._late.get(reply.cmd_id)
        if alarm is None:
            return []  # a reply to another client's command
        if topic != f"{self.prefix}/{alarm.site}/{alarm.device}/reply":
            why = f"{escape(topic)}: a reply to ack {reply.cmd_id} of {alarm.key}, from another device; ignored"
            return [warning_line(at, why, self._tz)]
        self._sent.pop(reply.cmd_id, None)
        self._late.pop(reply.cmd_id, None)
        if not reply.ok:
            self.offer(alarm)
        elif entry is None:  # given up on and offered again meanwhile: acknowledged after all
            self._unacked.pop(_key(alarm), None)
        verdict = "accepted" if reply.ok else f"REFUSED: {(reply.error or 'no reason given')[:MAX_REASON]}"
        if entry is None:
            verdict += f" (late: after the {self.reply_timeout_s:g} s wait)"
        text = (
            f"{clock_text(at, self._tz)}  {device_key(alarm.site, alarm.device)}  "
            f"ack of {alarm.type} {alarm.event_id} {escape(verdict)}"
        )
        record = {
            "kind": "reply",
            "arrived": iso_ms(at),
            "site": alarm.site,
            "device": alarm.device,
            "cmd_id": reply.cmd_id,
            "event_id": alarm.event_id,
            "ok": reply.ok,
            "error": reply.error,
        }
        return [Line(LineKind.REPLY, text, record)]

    def tick(self, now: float, *, mono: float | None = None) -> list[Line]:
        """Give up on acks that got no reply in time, and offer their alarms again; ``mono`` as in :meth:`sent`."""
        m = now if mono is None else mono
        lines: list[Line] = []
        for cmd_id, (alarm, sent_at) in list(self._sent.items()):
            if m - sent_at > self.reply_timeout_s:
                del self._sent[cmd_id]
                self._remember_late(cmd_id, alarm)
                self.offer(alarm)
                lines.append(
                    warning_line(
                        now,
                        f"{alarm.key}: no reply to ack {cmd_id} within "
                        f"{self.reply_timeout_s:g} s; is the device online?",
                        self._tz,
                    )
                )
        return lines

    def _remember_late(self, cmd_id: str, alarm: Alarm) -> None:
        self._late[cmd_id] = alarm
        if len(self._late) > _MAX_LATE:
            self._late.popitem(last=False)


def _key(alarm: Alarm) -> tuple[str, str, str]:
    return (alarm.site, alarm.device, alarm.event_id)
