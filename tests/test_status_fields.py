"""Status fields a centre acts on: what they count, which clock they are on, how big the document gets.

- ``outbox.pending`` counts events held in memory (SQLite failing): a centre
  following the contract's "Gaps" rule wrote off a held event as evicted once a
  status said ``pending: 0``.
- ``mono_ms`` beside ``agent.boot_id``: the contract re-times an unsynced event
  from a later synced *status*, which had no ``mono_ms``.
- ``test_mode_until`` follows a clock step: it named an end days in the past
  while test mode ran on.
- The size the contract states holds for the largest status the config allows.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.daemon import Agent
from agent.events import Clock, Event, EventType
from agent.health import Health, StatusSources, TestMode
from agent.linkstate import LinkState
from agent.linkstats import MAX_PATHS, LinkStats
from agent.notify import Notifier
from agent.outbox import Outbox
from agent.outbox_rows import OutboxRow
from agent.outgoing import encode
from agent.recorder import Recorder
from agent.watched_input import InputState
from tests.support.agentproc import write_config
from tests.support.broker import Broker
from tests.support.clocks import FakeTime
from tests.support.waiting import eventually
from tests.test_held_durable import CountingOutbox

Validate = Any
LINK = LinkState(True, "b:1883", 1.7e9, 0, None, 0, 0, 0, 0, "5", True, True, None)
CONTRACT = Path(__file__).parents[1] / "docs" / "contract.md"


def _t(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _health(clock: Clock, outbox: Outbox, **sources: Any) -> Health:
    return Health(
        site="main",
        device="gate-1",
        clock=clock,
        outbox=outbox,
        sources=StatusSources(link=lambda: LINK, inputs=dict, **sources),
        test_mode=TestMode(clock),
    )


# ---- outbox.pending counts held events ------------------------------------------------------


@pytest.fixture
def locked(tmp_path: Path, fake_time: FakeTime) -> Iterator[tuple[CountingOutbox, sqlite3.Connection]]:
    """An outbox whose SQLite write lock another connection holds: its commits fail after 0.1 s."""
    ob = CountingOutbox(tmp_path / "outbox.db", site="main", device="gate-1", wall=fake_time.wall, busy_timeout_s=0.1)
    conn = sqlite3.connect(ob.path, isolation_level=None, timeout=10)
    conn.execute("BEGIN IMMEDIATE")
    yield ob, conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()
    ob.close()


def test_status__pending_counts_an_event_held_in_memory(
    locked: tuple[CountingOutbox, sqlite3.Connection], fake_time: FakeTime, validate: Validate
) -> None:
    outbox, conn = locked
    clock = fake_time.clock()
    recorder = Recorder(outbox, clock=clock, site="main", device="gate-1", retry_s=60.0)
    try:
        recorder.record(EventType.CAMERA_FAULT, "cam", clock.stamp(), {})
        assert recorder.held_count() == 1
        eventually(lambda: outbox.failed >= 2, what="the retry thread's first attempt")
        fake_time.advance(30)
        h = _health(clock, outbox, held=recorder.held)
        ob = validate("status", h.status())["outbox"]
        assert (ob["pending"], ob["oldest_age_s"], ob["dropped"]) == (1, 30.0, 0), (
            f"{ob}: a centre reads pending 0 as 'a missing seq was evicted' while this one is still on its way"
        )

        conn.execute("ROLLBACK")  # SQLite takes writes again: the held event moves to the outbox
        assert recorder.flush_held() == 1
        assert recorder.held_count() == 0
        assert validate("status", h.status())["outbox"]["pending"] == 1, "counted once, not in both places"
    finally:
        recorder.close()


def test_status__pending_from_memory_counts_held_events_too(outbox: Outbox, fake_time: FakeTime) -> None:
    """The outbox cannot be read: its in-memory count is sent, and the held events belong in it too."""
    row = OutboxRow(seq=7, id="a" * 32, type="camera_fault", alarm=False, created=fake_time.wall(), body="{}")
    outbox.close()  # stats() now raises
    doc = _health(fake_time.clock(), outbox, held=lambda: [row]).status()
    assert doc["outbox"] == {"pending": 1, "oldest_age_s": None, "dropped": 0}
    assert doc["warnings"][0].startswith("status incomplete, cannot read: outbox")


@pytest.mark.broker
def test_status__the_agent_wires_its_held_events_and_mono_ms(
    tmp_path: Path, broker: Broker, device: str, validate: Validate
) -> None:
    cfg = load_config(write_config(tmp_path, broker.port, device=device))
    with Agent(cfg, notifier=Notifier(env={})) as agent:
        agent.start()
        assert agent.health is not None
        assert agent.recorder is not None
        assert agent.health.sources.held == agent.recorder.held, "status must count the recorder's held events"
        doc = validate("status", agent.status_doc())
        assert isinstance(doc["mono_ms"], int)


# ---- mono_ms: re-timing from a status ------------------------------------------------------


def test_status__a_synced_status_re_times_an_unsynced_event(
    outbox: Outbox, fake_time: FakeTime, validate: Validate
) -> None:
    """A Pi boots offline with its clock 3 days behind; a panic; NTP steps the clock; the next document is a status."""
    behind = 3 * 86400
    fake_time._wall_offset -= behind  # the Pi's clock before NTP
    synced = [False]
    clock = Clock(wall=fake_time.wall, mono=fake_time, synced=lambda: synced[0], boot_id="b" * 32, sync_ttl_s=0)
    body = Event.create(clock, EventType.PANIC, "panic", data={"pin": 17, "contact": "normally_open"}).body(
        "main", "gate-1"
    )
    event = validate("event", {"v": 1, "seq": 1, **json.loads(body)})
    true_ts = _t(event["ts"]) + behind
    fake_time.advance(100)
    fake_time._wall_offset += behind  # NTP steps the clock right
    synced[0] = True

    status = validate("status", _health(clock, outbox).status())
    assert status["clock_synced"] is True
    assert status["agent"]["boot_id"] == event["boot_id"]
    retimed = _t(status["ts"]) - (status["mono_ms"] - event["mono_ms"]) / 1000  # docs/contract.md, Retiming
    assert abs(retimed - true_ts) < 0.002, (retimed, true_ts)


# ---- test_mode_until across a clock step -------------------------------------------------------


def test_status__test_mode_until_follows_a_clock_step(outbox: Outbox, validate: Validate) -> None:
    """Test mode set for 60 minutes on a clock 3 days behind; 5 minutes later NTP steps it right."""
    ft = FakeTime(wall=1.8e9 - 3 * 86400)
    synced = [False]
    clock = Clock(wall=ft.wall, mono=ft, synced=lambda: synced[0], boot_id="b", sync_ttl_s=0)
    mode = TestMode(clock)
    mode.set(60)
    assert mode.ends()[0] is None, "no wall-clock end from an unsynchronised clock for after a reboot"
    ft.advance(300)
    ft._wall_offset += 3 * 86400  # NTP steps the wall clock forward
    synced[0] = True

    h = Health(
        site="main",
        device="gate-1",
        clock=clock,
        outbox=outbox,
        sources=StatusSources(link=lambda: LINK, inputs=dict),
        test_mode=mode,
    )
    doc = validate("status", h.status())
    assert mode.active()
    assert _t(doc["test_mode_until"]) - _t(doc["ts"]) == 55 * 60, "test mode has 55 minutes left"
    wall_end, _ = mode.ends()
    assert wall_end == ft.wall() + 55 * 60, "the end kept for after a reboot is on the synchronised clock"


# ---- size ---------------------------------------------------------------------------------------

TS = "2026-11-29T06:01:02.345Z"
NAME = "n" * 61


def _largest(tmp_path: Path, n_inputs: int, n_cameras: int, *, paths: int = 0, photos: bool = False) -> dict[str, Any]:
    """A status with every field at the most it can hold (the figures docs/contract.md states)."""
    ft = FakeTime(t=3.15e8)  # 10 years up: the longest uptime_s and mono_ms
    clock = Clock(wall=ft.wall, mono=ft, synced=lambda: True, boot_id="b" * 32)
    prefix = f"campus/{'a' * 63}/{'b' * 63}/cmd/"
    reason = f"broker refused the subscription to {prefix}+ (Not authorized); check the broker's ACL lets this device read {prefix}#"
    broker = "b" * 35 + ":8883"  # 40 characters
    link = LinkState(True, broker, 1.7e9, 999999, None, 0, 0, 0, 0, "3.1.1", False, False, reason)
    inputs = {f"{NAME}{i:02d}": InputState("x", "panic_button", 17, "active", None, TS, TS) for i in range(n_inputs)}
    cams = {f"{NAME}{i:02d}": {"ok": False, "checked": TS, "detail": "d" * 500} for i in range(n_cameras)}
    stats = LinkStats(ft.wall())
    for i in range(paths):
        stats.link_up(f"{'b' * 33}{i:02d}:8883", ft.wall())
        stats.delivered(f"{'b' * 33}{i:02d}:8883", 0.1, ft.wall() + i)
    mode = TestMode(clock)
    mode.set(240)
    with Outbox(tmp_path / f"o{n_inputs}-{n_cameras}-{paths}.db", site="main", device="gate-1") as outbox:
        h = Health(
            site="a" * 63,
            device="b" * 63,
            clock=clock,
            outbox=outbox,
            sources=StatusSources(
                link=lambda: link,
                inputs=lambda: inputs,
                cameras=lambda: cams,
                outputs=lambda: {"ack_led": {"pattern": "acknowledged"}, "buzzer": {"pattern": "acknowledged"}},
                commands=lambda: {"accepted": 999999, "rejected": 999999},
                warnings=lambda: ["w" * 500] * 5,
                link_stats=(lambda: _widest(stats.snapshot(ft.wall() + 10))) if paths else None,
                photos=(lambda: {"pending": 999999, "bytes": 99999999999, "dropped": 999999, "error": "e" * 160})
                if photos
                else None,
            ),
            test_mode=mode,
            heartbeat_s=3600,
        )
        h._started = 0.0  # the longest uptime
        doc = h.status()
    doc["outbox"].update(pending=999999, oldest_age_s=99999999.999, dropped=999999, disk_low=True)
    doc["system"].update(cpu_temp_c=-10.5, disk_free_mb=9999999, load1=99.99)
    return doc


_WIDEST = {
    "count": 9999999,
    "observed_s": 604800,
    "percent": 99.999,
    "outages": 99999,
    "longest_outage_s": 604799.9,
    "mean_ms": 999999.9,
    "p95_ms": 999999.9,
    "max_ms": 999999.9,
}


def _widest(value: Any) -> Any:
    """``link.stats`` with every figure at its widest (a month of events, a week of outages)."""
    if isinstance(value, dict):
        return {k: _WIDEST.get(k, _widest(v)) for k, v in value.items()}
    return value


def _stated(pattern: str) -> float:
    found = re.search(pattern, " ".join(CONTRACT.read_text(encoding="utf-8").split()))
    assert found, f"docs/contract.md no longer says {pattern!r}"
    return float(found.group(1).replace(",", ""))


def test_status__the_largest_status_stays_within_the_stated_size(tmp_path: Path, validate: Validate) -> None:
    def size(n_inputs: int, n_cameras: int, **kw: Any) -> int:
        return len(encode(validate("status", _largest(tmp_path, n_inputs, n_cameras, **kw))))

    kib = 1024
    assert size(8, 8) < _stated(r"under ([\d.]+) KiB with 8 inputs and 8 cameras") * kib
    assert size(28, 16) < _stated(r"under ([\d.]+) KiB with the most the configuration allows") * kib
    assert size(8, 8, paths=MAX_PATHS, photos=True) < _stated(r"under ([\d.]+) KiB with 8 inputs, 8 cameras, 8") * kib
    assert _stated(r"at most (\d+) paths are kept") == MAX_PATHS

    fixed = size(0, 0)
    assert fixed <= _stated(r"at most ([\d,]+) bytes of fixed fields")
    assert size(2, 0) - size(1, 0) <= _stated(r"plus (\d+) per input")
    assert size(0, 2) - size(0, 1) <= _stated(r"per input and (\d+) per camera")
    one_path = size(0, 0, paths=1) - fixed
    per_path = size(0, 0, paths=2) - size(0, 0, paths=1)
    assert per_path <= _stated(r"add up to \d+ bytes plus (\d+) per broker path")
    assert one_path - per_path <= _stated(r"add up to (\d+) bytes plus")
    assert size(0, 0, photos=True) - fixed <= _stated(r"`photos` \d+ \((\d+) with its `error`\)")
