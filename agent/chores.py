"""A thread for small disk chores that must not run where they are asked for.

The centre's ``test_mode`` command arrives on paho's network thread: writing
the state file there (two fsyncs) would hold the PUBLISH of an alarm pressed
meanwhile, and the heartbeat's thread may itself be waiting (a status waits on
the outbox behind a slow commit).  So the command hands "save, then reply" to
this thread: the reply goes only once what it says survives a restart.

A ``snapshot_failed`` event is committed here too (agent/buttonpath.py): in an
alarm storm, or while the agent stops, the inputs thread reports stills it
cannot queue, and a commit there would hold the next press.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from agent.closing import Closing

log = logging.getLogger(__name__)

Chore = Callable[[], None]


class Chores(Closing):
    """Runs chores one at a time, in order, on its own thread (started with the first one)."""

    def __init__(self, name: str = "chores") -> None:
        self._name = name
        self._queue: deque[Chore | None] = deque()  # not the queue module: an idle agent does not load it (memory)
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def run_soon(self, chore: Chore) -> None:
        """Queue ``chore``; returns at once.  After :meth:`close` it runs on the caller's thread."""
        with self._lock:
            if self._closed:
                run = True
            else:
                run = False
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
                self._queue.append(chore)
                self._lock.notify()
        if run:
            self._do(chore)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._lock.wait()
                chore = self._queue.popleft()
            if chore is None:
                return
            self._do(chore)

    @staticmethod
    def _do(chore: Chore) -> None:
        try:
            chore()
        except Exception:
            log.exception("a chore failed; carrying on")

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued (waiting ``timeout`` at most), then stop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.append(None)
            self._lock.notify()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("chores still running after %.0f s at stop (a stuck disk?); not waiting", timeout)

    @property
    def closed(self) -> bool:
        return self._closed
