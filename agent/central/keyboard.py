"""What the operator types at the monitor (``--ack``): Enter acknowledges, ``t`` the full table, ``q`` quits.

A daemon thread (:func:`read_keys`) only reads lines and queues them; the
print loop (:mod:`agent.central.session`, into which :class:`Keyboard` is
mixed) acts on them between batches, so a key never races the screen or
the ack desk.  Enter acknowledges the newest real alarm, a TEST press only
when none waits (:meth:`~agent.central.acks.AckDesk.next_unacked`); the ack
line is printed when the command is sent, the reply's line when it comes.

The print loop never waits for the broker's PUBACK (alarms would wait
behind it): the ack is handed to the link, and later turns look for the
broker's answer.  A refusal offers the alarm again; no answer within the
connect timeout is said, but the alarm stays sent and its reply awaited,
because the link keeps the message and may still deliver it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from agent.central.acks import ack_command
from agent.central.display import Line, LineKind, clock_text, device_key
from agent.errors import AgentError
from agent.events import iso_ms

if TYPE_CHECKING:
    import queue

    from agent.central.acks import AckDesk
    from agent.central.link import CentralLink


class Keyboard:
    """The keys pressed, as the print loop's thread handles them."""

    if TYPE_CHECKING:  # the print loop's own state and steps, which these methods share
        link: CentralLink
        wall: Callable[[], float]
        mono: Callable[[], float]
        desk: AckDesk

        def _note(self, now: float, kind: LineKind, text: str) -> None: ...
        def _emit(self, lines: list[Line], *, topic: str | None = None) -> None: ...
        def _board(self, now: float, *, full: bool) -> None: ...

    def _keys(self, pressed: queue.SimpleQueue[str]) -> bool:
        """Act on keys pressed, after the broker's answers to acks sent; False when the user asked to quit."""
        self._confirmations(self.wall(), self.mono())
        while not pressed.empty():
            key = pressed.get_nowait()
            if key in ("q", "quit"):
                return False
            if key in ("", "a"):
                self._ack(self.wall())
            elif key in ("t", "table"):
                self._board(self.wall(), full=True)
        return True

    def _ack(self, now: float) -> None:
        alarm = self.desk.next_unacked()
        if alarm is None:
            self._note(now, LineKind.WARNING, "nothing to acknowledge: no unacknowledged panic or tamper event")
            return
        cmd_id, payload = ack_command(alarm.event_id, now)
        try:
            token = self.link.send(self.desk.command_topic(alarm), payload)
        except AgentError as exc:  # nothing was queued: it will not go out later either
            self._note(now, LineKind.WARNING, f"ack not sent: {exc}")
            return
        self.desk.sent(alarm, cmd_id, now, mono=self.mono(), token=token)
        what = f"TEST {alarm.type} (no real alarm waits)" if alarm.test else alarm.type
        text = (
            f"{clock_text(now, None)}  {device_key(alarm.site, alarm.device)}  ack sent for {what} "
            f"{alarm.event_id} as {cmd_id}; waiting for the reply"
        )
        self._emit(
            [
                Line(
                    LineKind.ACK,
                    text,
                    {
                        "kind": "ack",
                        "sent": iso_ms(now),
                        "site": alarm.site,
                        "device": alarm.device,
                        "event_id": alarm.event_id,
                        "cmd_id": cmd_id,
                        "test": alarm.test,
                    },
                )
            ]
        )

    def _confirmations(self, now: float, mono: float) -> None:
        """Take the broker's answers to acks sent; say which it refused, and which it did not confirm in time."""
        for cmd_id, alarm, token, sent_at in self.desk.unconfirmed():
            settled, refused = self.link.settled(token)
            if settled and refused is not None:
                self.desk.failed(cmd_id)
                if alarm is not None:
                    self._note(
                        now,
                        LineKind.WARNING,
                        f"{alarm.key}: ack {cmd_id} not delivered: broker {self.link.broker} refused it ({refused}); "
                        "check its ACL for this user; the alarm waits for Enter again",
                    )
            elif settled:
                self.desk.confirmed(cmd_id)
            elif mono - sent_at >= self.link.settings.connect_timeout_s:
                self.desk.confirmed(cmd_id)  # stop asking; the link still delivers it if it can
                self.link.forget(token)
                if alarm is not None:
                    self._note(
                        now,
                        LineKind.WARNING,
                        f"{alarm.key}: ack {cmd_id} not confirmed by the broker within "
                        f"{self.link.settings.connect_timeout_s:g} s; it may still be delivered: "
                        "its reply is still awaited",
                    )


def read_keys(keys: TextIO, pressed: queue.SimpleQueue[str]) -> None:
    """Queue each line typed, stripped and lower-cased, until ``keys`` ends (the ``monitor-keys`` thread)."""
    for line in iter(keys.readline, ""):
        pressed.put(line.strip().lower())
