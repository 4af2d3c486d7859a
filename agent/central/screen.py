"""The print loop's way out: every line and board the monitor shows passes through here.

Mixed into the print loop (:mod:`agent.central.session`), whose thread alone
writes to ``out``; what the loop decides to show, this renders.  Every line is
scrubbed on the way out: fields were escaped where they were read, and
:func:`~agent.central.display.escape` runs once more over each line
(backslashes left alone) so no control character from a device can reach the
terminal, whatever code path built the line.  A line that cannot be rendered
becomes a warning naming its source, never an exception that ends the watch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from agent.central import board
from agent.central.display import Line, LineKind, clock_text, escape, json_line
from agent.events import iso_ms

if TYPE_CHECKING:
    from agent.central.acks import AckDesk
    from agent.central.fleet import FleetView
    from agent.central.link import CentralLink
    from agent.central.photos import PhotoDesk
    from agent.central.session import MonitorOptions


class Screen:
    """Notes, lines and boards written to ``out`` by the print loop's thread."""

    if TYPE_CHECKING:  # the print loop's own state, which these methods share
        link: CentralLink
        opts: MonitorOptions
        out: TextIO
        wall: Callable[[], float]
        mono: Callable[[], float]
        fleet: FleetView
        desk: AckDesk
        photos: PhotoDesk

    def _note(self, now: float, kind: LineKind, text: str) -> None:
        label = "WARNING" if kind is LineKind.WARNING else "LINK   "
        self._emit(
            [
                Line(
                    kind,
                    f"{clock_text(now, None)}  {label}  {text}",
                    {"kind": kind.value, "arrived": iso_ms(now), "text": text},
                )
            ]
        )

    def _emit(self, lines: list[Line], *, topic: str | None = None) -> None:
        for line in lines:
            self.out.write(self._render(line, topic) + "\n")
            if line.alarm is not None:  # offered even if its line could not be printed: the board lists it
                self.desk.offer(line.alarm)
                self.photos.alarm(line.alarm)
        if lines:
            self.out.flush()

    def _render(self, line: Line, topic: str | None) -> str:
        """``line`` as printed; one that cannot be (a record no encoder takes) becomes a warning naming its source.

        The message was already acknowledged to the broker: an exception here
        would lose it to the monitor and end the watch, every later alarm unshown.
        """
        try:
            return json_line(line.record) if self.opts.json else escape(line.text, backslash=False)
        except Exception as exc:
            site, device = line.record.get("site"), line.record.get("device")
            who = f"{site}/{device}" if isinstance(site, str) and isinstance(device, str) else "?"
            where = f" on {topic[:200]}" if topic is not None else ""
            text = escape(f"{who}: {line.kind.value} line{where} not printed ({why(exc)})")
            now = self.wall()
            warning = f"{clock_text(now, None)}  WARNING  {text}"
            return json_line({"kind": "warning", "arrived": iso_ms(now), "text": text}) if self.opts.json else warning

    def _board(self, now: float, *, full: bool) -> None:
        alarms, down, mono = self.desk.unacked(), self.link.down_since, self.mono()
        photo_of = self.photos.photo_of
        if self.opts.json:
            self._emit(
                board.summary_lines(self.fleet, alarms, now, full=full, photo_of=photo_of, down_since=down, mono=mono)
            )
            return
        real, tests = board.tally(alarms)
        text = (
            board.table(self.fleet, real, now, tests=tests, down_since=down, mono=mono)
            if full
            else board.summary(self.fleet, alarms, now, photo_of=photo_of, down_since=down, mono=mono)
        )
        self.out.write("\n" + "\n".join(escape(ln, backslash=False) for ln in text.splitlines()) + "\n\n")
        self.out.flush()


def why(exc: Exception) -> str:
    """An exception in a warning line: its type and the start of its text."""
    return f"{type(exc).__name__}: {str(exc)[:100]}"
