"""The outbox's filesystem fills up (a small tmpfs), during a broker outage.

What agent/outbox.py documents and this checks, phase by phase:

* low: free space drops to HEADROOM_BYTES + 600 KiB.  ``max_page_count`` is
  cut to what still fits above the 4 MiB headroom, the agent logs an ERROR
  ("outbox filesystem ... is nearly full ... alarms are still recorded") and
  the status says ``outbox.disk_low: true``; presses are still committed
  durably (a real ``seq``).
* gone: free space drops below the headroom.  Once the last pages are used a
  put raises OutboxFullError (no non-alarm row is left to evict): the agent
  logs CRITICAL, keeps the press in memory (logged as "held ... in memory"), shows a status
  warning, and retries every second.
* back: the filler is deleted.  Every press held in memory is committed
  ("kept in memory is now recorded as seq N"), ``disk_low`` clears, and once
  the link is back every press of every phase reaches the central.

The agent_started event is delivered before the outage, so no non-alarm row
can be evicted and "lost" needs no allowance for the documented eviction.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import format_status
from agent.errors import ControlError
from agent.outbox import HEADROOM_BYTES
from tests.faults.harness import (
    EventSink,
    MakeAgent,
    MakeBroker,
    Rec,
    count,
    describe_missing,
    log_size,
    log_text,
    modes,
    read_recorded,
    seq_problems,
    settle,
    wait_connected,
    wait_logged,
)
from tests.support.agentproc import AgentProc, unique_id
from tests.support.faultproxy import FaultProxy
from tests.support.tmpfs import free_bytes, small_tmpfs
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker

KIB = 1024
MIB = 1024 * KIB
HELD = re.compile(r"CRITICAL agent\.recorder: .*the event is not recorded on disk.*kept (\d+) events in memory only")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, 16) as d:
        yield d


def _fill_to(filler: Path, free_left: int) -> None:
    """Grow the filler file until the filesystem has about ``free_left`` bytes free."""
    grow = free_bytes(filler.parent) - free_left
    if grow <= 0:
        return
    size = filler.stat().st_size if filler.exists() else 0
    fd = os.open(filler, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, size, grow)
    finally:
        os.close(fd)


def _ob(agent: AgentProc) -> dict[str, Any]:
    """The status document's ``outbox`` part (JSON)."""
    ob: dict[str, Any] = agent.status()["status"]["outbox"]
    return ob


def _until(agent: AgentProc, pred: Callable[[dict[str, Any]], object], timeout: float, what: str) -> None:
    """Until ``pred`` holds for the agent's outbox status."""
    eventually(lambda: pred(_ob(agent)), timeout, what, retry_on=(ControlError,))


def _press_until_held(agent: AgentProc, mark: int, limit: int = 3000, timeout: float = 60) -> int:
    """Press until the log says a press was held in memory (no page left on disk); return the presses made."""
    made = 0

    def one_more() -> bool:
        nonlocal made
        if HELD.search(log_text(agent, mark)):
            return True
        assert made < limit, f"outbox never ran out of room after {limit} presses"
        agent.click()
        made += 1
        return False

    eventually(one_more, timeout, "the outbox to run out of room", interval=0)
    return made


def _panics(agent: AgentProc, n: int) -> list[Rec]:
    return [r for r in wait_logged(agent, n).values() if r.type == "panic"]


@pytest.mark.parametrize("mode", modes())
def test_disk_full__reserve_then_memory_then_recovery__nothing_lost(
    mode: str, small_fs: Path, brokers: MakeBroker, proxies: Callable[[int], FaultProxy], agents: MakeAgent
) -> None:
    cycles = count(mode, 1, 4)
    t0 = time.monotonic()
    broker = brokers()
    proxy = proxies(broker.port)
    device = unique_id("full")
    sink = EventSink(broker.port, device)
    filler = small_fs / "filler"
    held_total = clicks = 0
    try:
        agent = agents(proxy.port, device, outbox={"path": str(small_fs / "outbox.db"), "max_mb": 2})
        wait_connected(agent)
        _until(agent, lambda ob: ob["pending"] == 0, 10, "agent_started to be delivered")
        assert _ob(agent)["disk_low"] is False
        for _ in range(cycles):
            proxy.set_down(True)
            wait_connected(agent, up=False)
            mark = log_size(agent)

            # low: above the headroom, below the cap.  The limits are only re-read on a
            # put (see test_disk_low__status_says_so_while_idle), so press once first.
            _fill_to(filler, HEADROOM_BYTES + 600 * KIB)
            time.sleep(1.1)  # the outbox re-reads free space at most once a second: let that second pass
            agent.click()
            clicks += 1
            _until(agent, lambda ob: ob["disk_low"], 5, "status outbox.disk_low")
            text = log_text(agent, mark)
            assert re.search(
                r"ERROR agent\.outbox: outbox filesystem \S+ is nearly full .*alarms are still recorded", text
            ), text[-2000:]
            for _ in range(40):
                agent.click()
            clicks += 40
            panics = _panics(agent, clicks)
            assert all(r.seq is not None for r in panics), "presses in the reserve were not committed to disk"
            assert "warnings" not in agent.status()["status"]

            # gone: below the headroom; press until the outbox has no page left
            _fill_to(filler, 1 * MIB)
            n = _press_until_held(agent, mark)
            for _ in range(5):
                agent.click()
            clicks += n + 5
            _panics(agent, clicks)
            reply = agent.status()
            st = reply["status"]
            assert st["outbox"]["disk_low"] is True
            warn = [w for w in st.get("warnings", []) if "events held in memory" in w]
            assert warn, f"no status warning while presses are held in memory: {st.get('warnings')}"
            shown = format_status(reply)  # what `campus-agent status` prints
            assert "DISK LOW" in shown
            assert "WARNING" in shown
            held = [r for r in read_recorded(agent.log).values() if r.seq is None]
            assert len(held) >= 6, "presses while the disk is full must still be taken (in memory)"
            held_total += len(held)
            assert agent.proc is not None
            assert agent.proc.poll() is None

            # back: space returns, memory is flushed to disk, the link returns
            filler.unlink()
            eventually(
                lambda: all(r.seq is not None for r in read_recorded(agent.log).values()),
                10,
                "presses held in memory to be committed",
            )
            _until(agent, lambda ob: not ob["disk_low"], 5, "disk_low to clear")
            assert "has room again" in log_text(agent, mark)
            assert "warnings" not in agent.status()["status"]
            proxy.set_down(False)
            wait_connected(agent)
            _until(agent, lambda ob: ob["pending"] == 0, 30, "outbox to drain")

        recorded = read_recorded(agent.log)
        row = settle(
            f"disk full x{cycles}",
            t0,
            recorded,
            sink,
            timeout=30,
            note=f"{held_total} presses held in memory while the disk was full",
        )
        assert row.lost == 0, describe_missing(row, recorded)
        assert not seq_problems(recorded, sink)
        assert agent.stop() == 0
        with contextlib.closing(sqlite3.connect(small_fs / "outbox.db")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        sink.close()
        filler.unlink(missing_ok=True)


# ---- agent bugs this scenario found (now fixed): these keep them fixed ----


def test_disk_low__status_says_so_while_idle(small_fs: Path, brokers: MakeBroker, agents: MakeAgent) -> None:
    broker = brokers()
    agent = agents(broker.port, unique_id("idle"), outbox={"path": str(small_fs / "outbox.db"), "max_mb": 2})
    wait_connected(agent)
    assert _ob(agent)["disk_low"] is False
    _fill_to(small_fs / "filler", HEADROOM_BYTES + 600 * KIB)
    _until(agent, lambda ob: ob["disk_low"], 4, "status outbox.disk_low without a press")


def test_outbox__put_right_after_space_returns_is_durable(small_fs: Path) -> None:
    from agent.errors import OutboxFullError
    from agent.events import Clock, Event, EventType
    from agent.outbox import Outbox

    clock, now = Clock(synced=lambda: True), [0.0]
    filler = small_fs / "filler"
    with Outbox(small_fs / "outbox.db", site="main", device="d", max_mb=2, mono=lambda: now[0]) as ob:
        _fill_to(filler, HEADROOM_BYTES + 64 * KIB)
        now[0] += 2.0  # past the 1 s limits cache
        for _ in range(5000):
            try:
                ob.put(Event.create(clock, EventType.PANIC, "panic"))
            except OutboxFullError:
                break
        else:
            pytest.fail("the outbox never filled")
        filler.unlink()  # space is back; no time passes
        ob.put(Event.create(clock, EventType.PANIC, "panic"))  # raises OutboxFullError today


def test_disk_full__held_press_shows_its_seq_once_saved(
    small_fs: Path, brokers: MakeBroker, proxies: Callable[[int], FaultProxy], agents: MakeAgent
) -> None:
    broker = brokers()
    proxy = proxies(broker.port)
    agent = agents(proxy.port, unique_id("held"), outbox={"path": str(small_fs / "outbox.db"), "max_mb": 2})
    wait_connected(agent)
    _until(agent, lambda ob: ob["pending"] == 0, 10, "agent_started to be delivered")
    proxy.set_down(True)
    mark = log_size(agent)
    filler = small_fs / "filler"
    _fill_to(filler, 1 * MIB)
    time.sleep(1.1)  # let the outbox's 1 s free-space cache expire (a span of time, not an event)
    _press_until_held(agent, mark)
    held = eventually(lambda: [r for r in read_recorded(agent.log).values() if r.seq is None], 5, "a held press")
    filler.unlink()
    eventually(lambda: all(r.seq is not None for r in read_recorded(agent.log).values()), 10, "held presses saved")
    proxy.set_down(False)
    _until(agent, lambda ob: ob["pending"] == 0, 30, "outbox to drain")
    shown = {e["id"]: e for e in agent.recent()}
    rec = read_recorded(agent.log)
    for r in held:
        assert shown[r.id]["seq"] == rec[r.id].seq, f"recent shows {shown[r.id]}"
        assert shown[r.id]["delivered"] is True, f"recent shows {shown[r.id]}"


def test_outbox__opening_on_a_full_disk_uses_the_reserve_and_records(
    small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite cannot open a WAL database on a full disk (it must size the -shm file): an agent started on a
    card filled by something else did not run at all.  The outbox's 1 MiB reserve is given up instead."""
    from agent.ballast import ballast_path
    from agent.events import Clock, Event, EventType
    from agent.outbox import Outbox

    db = small_fs / "outbox.db"
    Outbox(db, site="main", device="d").close()
    assert ballast_path(db).stat().st_size == 1024 * 1024, "written while there is room"
    (small_fs / "outbox.db-shm").unlink(missing_ok=True)
    _fill_to(small_fs / "filler", 0)
    with Outbox(db, site="main", device="d") as ob:
        assert ob.put(Event.create(Clock(synced=lambda: True), EventType.PANIC, "panic")) == 1
    assert "deleted the agent's 1024 KiB reserve" in caplog.text
    assert not ballast_path(db).exists(), "not written again while the disk is full"


def test_outbox__opening_on_a_full_disk_without_a_reserve_says_the_disk_is_full(small_fs: Path) -> None:
    """SQLite says only "disk I/O error"; the message also said "cannot open outbox" twice."""
    from agent.ballast import ballast_path
    from agent.errors import OutboxError
    from agent.outbox import Outbox

    db = small_fs / "outbox.db"
    Outbox(db, site="main", device="d").close()
    ballast_path(db).unlink()
    (small_fs / "outbox.db-shm").unlink(missing_ok=True)
    _fill_to(small_fs / "filler", 0)
    with pytest.raises(OutboxError) as caught:
        Outbox(db, site="main", device="d").close()
    text = str(caught.value)
    assert text.count("cannot open outbox") == 1, text
    assert "the disk holding it is full" in text
