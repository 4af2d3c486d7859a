"""The stop request: the one thing SIGTERM and SIGINT touch, safe inside a signal handler.

A :class:`threading.Event` is the obvious flag, and it deadlocks here:
``Event.set()`` takes the Event's (non-reentrant) lock, and Python runs a
signal handler on the main thread between two bytecodes, including the few
that ``Event.wait()`` runs with that same lock held.  A SIGTERM landing there
makes the handler wait for a lock its own thread holds, forever; the agent
then ignores systemd's stop until the SIGKILL after ``TimeoutStopSec``.  That
was a rare hang of a stop right after ``READY=1`` (the main thread enters its
wait then); tests/test_stop_bounded.py reproduces it.

So the flag is a plain attribute plus one byte written to a pipe, with no
lock anywhere: a waiter polls the pipe's read end, and a signal during that
poll interrupts it, runs the handler, and the retried poll sees the byte.
"""

from __future__ import annotations

import contextlib
import math
import os
import select

from agent.closing import Closing


class StopFlag(Closing):
    """Set once, from a signal handler or any thread; :meth:`wait` wakes at once when it is."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._set = False
        self._closed = False

    def set(self) -> None:
        """Ask for a stop; takes no lock, so a signal handler may call it at any moment."""
        if self._set:
            return
        self._set = True
        with contextlib.suppress(OSError):  # full: the waiter is woken already; closed: there is none
            os.write(self._w, b"\0")

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds or until set; True if set (as ``Event.wait``)."""
        if not self._set and not self._closed:
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile by stop(): the flag is set then
                poller = select.poll()
                poller.register(self._r, select.POLLIN)
                poller.poll(math.ceil(max(0.0, timeout) * 1000))
        return self._set

    def close(self) -> None:
        """Set the flag (a later signal then writes nothing) and release the pipe; idempotent."""
        if self._closed:
            return
        self.set()
        self._closed = True
        os.close(self._r)
        os.close(self._w)

    @property
    def closed(self) -> bool:
        return self._closed

    def _repr_state(self) -> str:
        return "set" if self._set else "clear"
