"""Our own debounce: a level must hold ``debounce_ms`` to count, judged on the edges' own stamps.

gpiozero's mock pins ignore ``bounce_time``, and real long wires at a gate pick
up noise, so debounce is pure logic here, tested with a fake clock and a
property-based test (tests/test_debounce_props.py).
"""

from __future__ import annotations

import math

from agent.events import Stamp


class Debouncer:
    """Pure debounce logic, driven by explicit times so tests can use a fake clock.

    Feed it every raw edge, in time order, with :meth:`edge`; call
    :meth:`settle` at or after :meth:`deadline`.  A level must hold for
    ``debounce_s`` to count; a glitch shorter than that is dropped.  The
    accepted change carries the stamp of the first edge away from the previous
    stable level.  Only the edges' own stamps decide how long a level held:
    how late they are fed in changes nothing.

    An edge may be fed in well after its stamp (``seen``: gpiozero's callback
    thread ran late).  The next edge, which may end the level, can be as late,
    so :meth:`settle` accepts a level no sooner than ``debounce_s`` after its
    edge was seen, never on the strength of time nobody has reported on yet.
    """

    def __init__(self, debounce_s: float, initial: bool) -> None:
        self.debounce_s = debounce_s
        self.stable = initial
        self._level = initial
        self._changed_at = -math.inf
        self._seen_at = -math.inf
        self._first: Stamp | None = None

    def edge(self, *, level: bool, stamp: Stamp, seen: float | None = None) -> Stamp | None:
        """Apply one raw edge; return the stamp of a change the level it ends had already earned.

        The level before this edge held from the previous edge until
        ``stamp.mono``: if that is ``debounce_s`` or more it is accepted here,
        even when both edges waited in the queue behind a slow commit or came
        late from the callback thread.  ``seen`` is when the edge was reported
        (monotonic seconds); None means at ``stamp.mono``.
        """
        accepted = self._accept(held=stamp.mono - self._changed_at >= self.debounce_s)
        if level != self._level:
            self._level = level
            self._changed_at = stamp.mono
            self._seen_at = stamp.mono if seen is None else max(seen, stamp.mono)
            if level != self.stable and self._first is None:
                self._first = stamp
        return accepted

    def pending(self) -> Stamp | None:
        """The stamp an unaccepted change away from ``stable`` would carry, while the level still differs from it.

        A release still inside its debounce is judged by this stamp (when the
        person let go), not by when the thread happens to look.
        """
        return self._first if self._first is not None and self._level != self.stable else None

    def deadline(self) -> float | None:
        if self._first is None:
            return None
        return self._seen_at + self.debounce_s

    def settle(self, now: float) -> Stamp | None:
        """Return the stamp of an accepted change (``stable`` flipped), else None."""
        return self._accept(held=now - self._seen_at >= self.debounce_s)

    def _accept(self, *, held: bool) -> Stamp | None:
        if self._first is None or not held:
            return None
        first, self._first = self._first, None
        if self._level == self.stable:
            return None
        self.stable = self._level
        return first
