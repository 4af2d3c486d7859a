"""What the operator types at the monitor (``--ack``): Enter acknowledges, ``t`` the full table, ``q`` quits.

A daemon thread (:func:`read_keys`) only reads lines and queues them; the
print loop (:mod:`agent.central.session`, into which :class:`Keyboard` is
mixed) acts on them between batches, so a key never races the screen or
the ack desk.  Enter acknowledges the newest real alarm, a TEST press only
when none waits (:meth:`~agent.central.acks.AckDesk.next_unacked`); the ack
line is printed when the command is sent, the reply's line when it comes.
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
        """Act on keys pressed; False when the user asked to quit."""
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
        self.desk.sent(alarm, cmd_id, now, mono=self.mono())
        try:
            self.link.publish(self.desk.command_topic(alarm), payload)
        except AgentError as exc:
            self.desk.failed(cmd_id)
            self._note(now, LineKind.WARNING, f"ack not sent: {exc}")
            return
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


def read_keys(keys: TextIO, pressed: queue.SimpleQueue[str]) -> None:
    """Queue each line typed, stripped and lower-cased, until ``keys`` ends (the ``monitor-keys`` thread)."""
    for line in iter(keys.readline, ""):
        pressed.put(line.strip().lower())
