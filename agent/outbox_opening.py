"""What the outbox says and does about the file it finds at start: another device's, recovered, or replaced.

Kept apart from :mod:`agent.outbox` (what is stored and when) because these
run once, before any event, and share nothing with the outbox's locks or
counters: they take a path and what :mod:`agent.outbox_db` found, and leave
the decision in the log where a technician reads it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.errors import printable
from agent.outbox_db import Recovery, owner
from agent.outbox_recovery import move_foreign

# The outbox's own logger: these lines read as they did before the split.
log = logging.getLogger("agent.outbox")


def set_aside_foreign(path: Path, intake_path: Path, who: str) -> tuple[Path, str] | None:
    """Move an outbox another device wrote (and its intake) aside, unsent; where it went and whose it was.

    None when the file is ``who``'s own or there is none.  A cloned SD card,
    or a new device id, must not send the other device's events as this one's.
    """
    was = owner(path)
    if was is None or was == who:
        return None
    aside = move_foreign(path, intake_path, was)
    log.critical(
        "outbox %s was written by device %s, not %s (a cloned SD card, or a new device id); moved it "
        "and its intake to %s unsent: its events are not this device's to send",
        path,
        printable(was),
        who,
        aside,
    )
    return aside, was


def log_recovery(path: Path, rec: Recovery) -> None:
    """Say what opening ``path`` had to repair: a file moved aside and salvaged, a seq resumed above the mark."""
    if rec.moved_aside is not None:
        log.critical(
            "outbox %s was unreadable (%s); moved it to %s, salvaged %d events into a new outbox; "
            "keep the old file for inspection",
            path,
            rec.reason,
            rec.moved_aside,
            rec.salvaged,
        )
    if rec.seq_resumed_above is not None:
        log.warning(
            "outbox %s counts seq lower than agent-state.json's mark %s: it was deleted or replaced; "
            "seq resumes above %d so it never goes back",
            path,
            rec.seq_mark,
            rec.seq_resumed_above,
        )
