"""The outbox's events on the wire: the send window, the live session and the one lock both sit behind.

Two threads publish events: the sender in its rounds, and a committing
thread (inputs, cameras) through :meth:`EventSender.offer` the moment its
commit returns, so a press does not wait for the sender to wake up, read the
row back and publish it.  Both go through :meth:`EventSender.fill` under
:attr:`EventSender.lock`, so the window's bookkeeping (cursors, in flight,
pacing) is never changed by two threads at once and no row goes out twice in
a session.  The PUBLISH packets are written to the socket by the publishing
thread (:meth:`agent.session.Session.writing`) unless paho's network thread
is reading or writing at that moment.  The committing thread never waits for
the lock: when the sender holds it, the sender's next round publishes the
rows.  It publishes only rows the window takes from memory
(agent/sendwindow.py, the hand-off), never a backlog read from SQLite: that
is the sender's work.
"""

from __future__ import annotations

import logging
import threading

from agent.outbox import OutboxRow
from agent.sendwindow import SendWindow
from agent.session import Session

log = logging.getLogger(__name__)


class EventSender:
    """Publishes what the send window allows on the live session.

    Args:
        window: the send window (reset by the sender per connection, under :attr:`lock`).
        topic_root: ``{prefix}/{site}/{device}``; events go to ``{topic_root}/event/{type}``.
        idle_s: the longest wait the sender is told when nothing is due.

    """

    def __init__(self, window: SendWindow, topic_root: str, idle_s: float) -> None:
        self.window = window
        self.lock = threading.Lock()
        self.live: Session | None = None  # set and cleared under lock; offer() publishes only on it
        self.published = 0
        self._prefix = f"{topic_root}/event/"
        self._idle_s = idle_s

    def offer(self, rows: list[OutboxRow], now: float) -> bool:
        """Hand in rows just committed and publish them at once if the window picks them; never waits.

        Returns whether the sender must still be woken (something is left for its round).
        Never raises: the rows are durable and the sender has them.
        """
        self.window.hand(rows)
        if not self.lock.acquire(blocking=False):
            return True
        try:
            s = self.live
            if s is None or s.lost.is_set():
                return True
            self.fill(s, now, memory_only=True)
            return self.window.handed_waiting()
        except Exception:
            log.exception("uplink: publishing from the committing thread failed; the sender sends it")
            return True
        finally:
            self.lock.release()

    def fill(self, s: Session, now: float, *, memory_only: bool = False) -> float:
        """Publish what the window allows, real alarms first; return how long to wait.  Hold :attr:`lock`."""
        rows = self.window.take(now, memory_only=memory_only)
        if rows:
            with s.writing():  # on the wire from this thread as the block ends
                for row in rows:
                    mid = s.publish(self._prefix + row.type, row.payload)
                    if mid is None:
                        return self._idle_s  # the connection is going; on_disconnect wakes the sender
                    self.window.sent(mid, row)
                    self.published += 1
        return self.window.wait_s(now, self._idle_s)

    def __repr__(self) -> str:
        return f"<EventSender live={self.live is not None} published={self.published} {self.window!r}>"
