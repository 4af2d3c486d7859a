"""seq around a SQLite commit: what ``top_seq`` says meanwhile, and a counter behind the table.

A commit takes its seqs from the outbox's counter before its transaction
(so ``reserve_seq`` on another thread can never get the same one) and may give
them back if it fails.  Meanwhile ``top_seq`` must say what is used or
reserved, not what a commit has only taken: the state file's mark and the
send window's reset read it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.errors import OutboxError
from agent.events import Event, EventType
from agent.outbox import Outbox
from agent.sendwindow import SendWindow
from tests.support.clocks import synced_clock

CLOCK = synced_clock()
ROOT = Path(__file__).resolve().parent.parent


def cam() -> Event:
    return Event.create(CLOCK, EventType.CAMERA_FAULT, "cam", data={"reason": "timeout"})


class _AtInsert:
    """The outbox's connection, running ``then`` when the commit reaches its INSERT."""

    def __init__(self, conn: sqlite3.Connection, then: Any) -> None:
        self._conn, self._then = conn, then

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("INSERT INTO outbox"):
            self._then()
        return self._conn.execute(sql, *args)


_CRASH_MID_COMMIT = """
import os
from pathlib import Path
from agent.events import Event, EventType
from agent.outbox import Outbox
from tests.support.clocks import synced_clock
from tests.test_outbox_seq import _AtInsert, cam
ob = Outbox(Path({path!r}), site="s", device="d", intake=False)
ob.put(cam())
def saved_then_power_cut():
    Path({mark!r}).write_text(str(ob.top_seq()))  # the heartbeat's tick saves the mark now
    os._exit(9)
ob._conn = _AtInsert(ob._conn, saved_then_power_cut)
ob.put(cam())
"""


def test_outbox_seq__a_mark_saved_during_a_commit_then_a_crash_is_not_a_replaced_file(tmp_path: Path) -> None:
    path, mark = tmp_path / "o.db", tmp_path / "mark"
    child = textwrap.dedent(_CRASH_MID_COMMIT.format(path=str(path), mark=str(mark)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, env=env, check=False, timeout=60).returncode
    assert rc == 9
    saved = int(mark.read_text())
    with Outbox(path, site="s", device="d", seq_mark=saved) as ob:
        assert ob.recovery.seq_resumed_above is None, f"mark {saved}: the same file taken for a replaced one"
        assert ob.put(cam()) == 2


def test_outbox_seq__a_row_committed_after_a_reset_during_a_failed_commit_is_still_handed(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", site="s", device="d", intake=False) as ob:
        w = SendWindow(ob, max_inflight=4, rate_per_s=1e6)
        ob.put(cam())
        for mid, row in enumerate(w.take(1.0), 1):
            w.sent(mid, row)
        w.settle(1, refused=False, now=1.0)
        ob.ack([1])
        conn = ob._conn

        def reset_then_fail() -> None:
            w.reset()  # the sender starts a new connection meanwhile; it takes no outbox lock
            raise sqlite3.OperationalError("disk I/O error")

        ob._conn = _AtInsert(conn, reset_then_fail)  # type: ignore[assignment]
        with pytest.raises(OutboxError):
            ob.put(cam())
        ob._conn = conn
        assert w.take(2.0) == []
        row = ob.put_row(cam())
        assert row.seq == 2, "the failed commit gave its seq back"
        w.hand([row])
        assert w.take(3.0, memory_only=True) == [row], "the hand-off was taken for a row from before the reset"


def test_outbox_seq__a_counter_behind_the_table_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, site="s", device="d", intake=False) as ob:
        top = max(ob.put(cam()) for _ in range(3))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE sqlite_sequence SET seq = 1 WHERE name = 'outbox'")  # edited by hand
    conn.close()
    with Outbox(path, site="s", device="d", intake=False) as ob:
        assert ob.put(cam()) == top + 1, "a seq already in the table was given again"


def test_outbox_seq__a_salvaged_file_whose_rename_failed_is_not_salvaged_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next start salvaged it again: its rows, delivered and deleted meanwhile, were pending once more,
    and the counter was set back to the old file's top (only the state file's mark saved seq from reuse)."""
    from agent.outbox_recovery import SALVAGED, unsalvaged

    db = tmp_path / "outbox.db"
    with Outbox(db, site="s", device="d", intake=False) as ob:
        ob.put_rows([cam() for _ in range(300)])
    data = bytearray(db.read_bytes())
    data[2 * 4096 : 3 * 4096] = b"\xa5" * 4096  # a damaged page: quick_check fails, most rows stay readable
    db.write_bytes(bytes(data))
    rename = Path.rename

    def refuse_the_last_rename(self: Path, target: Path | str) -> Path:
        if str(target).endswith(SALVAGED):
            raise PermissionError(1, "Operation not permitted")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", refuse_the_last_rename)
    with Outbox(db, site="s", device="d", intake=False) as ob:
        monkeypatch.undo()
        assert ob.recovery.moved_aside is not None
        rows = ob.next_batch(0, 10_000)
        assert rows, "salvaged"
        assert ob.ack([r.seq for r in rows]) == len(rows)
        top = ob.put(cam())
        assert ob.ack([top]) == 1
    with Outbox(db, site="s", device="d", intake=False) as again:
        assert again.next_batch(0, 10_000) == [], "delivered rows are not salvaged a second time"
        assert again.put(cam()) == top + 1, "the counter is never set back"
    assert unsalvaged(db) == [], "its rename was done at the next start"
