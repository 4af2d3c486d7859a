"""The monitor's p95 and 7-day availability columns (issue 13), from statuses built with the agent's own LinkStats."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.central import board
from agent.central.board import DeviceState
from agent.central.display import Line, LineKind, json_line
from agent.central.fleet import FleetView
from agent.central.linkfigures import MAX_MS, UNKNOWN, LinkFigures, avail_text, p95_text, read_link_stats
from agent.events import iso_ms
from agent.linkstats import LinkStats
from tests.central.procout import read_until
from tests.central.test_monitor import Validate
from tests.support.agentproc import unique_id
from tests.support.broker import Broker
from tests.support.mqtt import Central

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 11, 29, 6, 0, 0, tzinfo=dt.UTC).timestamp()
A, B = "broker-a.campus.lan:8883", "broker-b.campus.lan:8883"
H = 3600.0


def status(device: str, stats: dict[str, Any] | None, *, ts: float, site: str = "main") -> dict[str, Any]:
    link: dict[str, Any] = {"connected_since": iso_ms(ts), "reconnects": 0}
    if stats is not None:
        link["stats"] = stats
    return {
        "v": 1,
        "site": site,
        "device": device,
        "state": "online",
        "ts": iso_ms(ts),
        "clock_synced": True,
        "agent": {"version": "0.1.0", "boot_id": "b" * 32, "uptime_s": 5},
        "link": link,
        "outbox": {"pending": 0, "oldest_age_s": None, "dropped": 0},
        "inputs": {},
        "cameras": {},
        "system": {"cpu_temp_c": None, "disk_free_mb": None, "load1": None},
        "test_mode_until": None,
    }


def healthy(now: float) -> dict[str, Any]:
    """Connected for 3 h without a break; events through A in the last hour."""
    s = LinkStats(T0)
    s.link_up(A, T0)
    for k, latency in enumerate((0.030, 0.040, 0.050, 0.070)):
        s.delivered(A, latency, now - 600 + k)
    return s.snapshot(now)


def flaky(now: float) -> dict[str, Any]:
    """Up 3 h, then down 20 min: 90 % of 3 h 20 min observed; events through A and (slower) B."""
    s = LinkStats(T0)
    s.link_up(A, T0)
    s.delivered(A, 0.040, T0 + 60)
    s.link_down(T0 + 3 * H)
    s.link_up(B, T0 + 3 * H + 1200)
    s.delivered(B, 0.900, now - 5)
    return s.snapshot(now)


def feed(
    fleet: FleetView,
    device: str,
    stats: dict[str, Any] | None,
    at: float,
    *,
    retained: bool = False,
    validate: Validate | None = None,
) -> list[Line]:
    doc = status(device, stats, ts=at)
    if validate is not None:
        validate("status", doc)
    return fleet.feed(f"campus/main/{device}/status", json.dumps(doc).encode(), at, retained=retained)


@pytest.fixture
def fleet() -> FleetView:
    return FleetView(tz=dt.UTC)


# ---- the figures, from the agent's own LinkStats ----------------------------------------


def test_figures__p95_is_the_last_hours_worst_path_and_availability_the_7_day_percent(
    fleet: FleetView, validate: Validate
) -> None:
    now = T0 + 3 * H + 1200
    stats = flaky(now)
    feed(fleet, "gate-1", stats, now, validate=validate)
    [row] = fleet.rows(now)
    assert row.link.p95_period == "1h"
    assert row.link.p95_ms == stats["transmit"][B]["1h"]["p95_ms"] == 900.0  # B is the worse path
    assert stats["transmit"][A]["1h"]["count"] == 0  # A's event is 3 h old: not in the hour
    assert row.link.avail_7d == stats["availability"]["7d"]["percent"] == 90.0
    assert row.link.observed_7d_s == 3 * H + 1200


def test_figures__worst_of_two_paths_in_the_hour() -> None:
    now = T0 + 2 * H
    s = LinkStats(T0)
    s.link_up(A, T0)
    for k in range(20):
        s.delivered(A, 0.020 + k * 0.001, now - 100 + k)
        s.delivered(B, 0.200 + k * 0.010, now - 100 + k)
    got = read_link_stats(status("g", s.snapshot(now), ts=now))
    assert isinstance(got, LinkFigures)
    assert got.p95_period == "1h"
    assert got.p95_ms == s.snapshot(now)["transmit"][B]["1h"]["p95_ms"]
    assert got.p95_ms is not None
    assert 380 <= got.p95_ms <= 390  # B's p95 (exact 0.38 s), within one bucket and never above its maximum


def test_figures__fall_back_to_31_days_when_the_hour_has_no_event(fleet: FleetView, validate: Validate) -> None:
    now = T0 + 5 * H
    s = LinkStats(T0)
    s.link_up(A, T0)
    s.delivered(A, 0.080, T0 + 60)  # 5 h ago
    feed(fleet, "gate-1", s.snapshot(now), now, validate=validate)
    [row] = fleet.rows(now)
    assert (row.link.p95_ms, row.link.p95_period) == (80.0, "31d")
    assert p95_text(row.link) == "80 ms 31d"  # the board names the period it fell back to
    assert "80 ms 31d" in board.table(fleet, 0, now)


def test_figures__no_event_ever_and_no_link_stats_show_a_dash(fleet: FleetView, validate: Validate) -> None:
    s = LinkStats(T0)
    s.link_up(A, T0)
    feed(fleet, "gate-1", s.snapshot(T0 + H), T0 + H, validate=validate)
    feed(fleet, "gate-2", None, T0 + H, validate=validate)  # an agent from before issue 13
    rows = {r.device: r for r in fleet.rows(T0 + H)}
    assert rows["gate-1"].link == LinkFigures(None, None, 100.0, H)
    assert rows["gate-2"].link is UNKNOWN
    text = board.table(fleet, 0, T0 + H)
    assert "main/gate-1             online    0 s ago           0       -             100.0 %   -" in text
    assert "main/gate-2             online    0 s ago           0       -             -         -" in text


@pytest.mark.parametrize(
    ("percent", "shown"),
    [(100.0, "100.0 %"), (99.999, "99.9 %"), (94.99, "94.9 %"), (93.2, "93.2 %"), (0.0, "0.0 %"), (None, "-")],
)
def test_avail_text__rounds_down_so_nothing_under_95_reads_95(percent: float | None, shown: str) -> None:
    assert avail_text(percent) == shown


# ---- the 95 % flag --------------------------------------------------------------------------


def test_flag__under_95_percent_over_7_days_needs_attention_and_is_counted(
    fleet: FleetView, validate: Validate
) -> None:
    now = T0 + 3 * H + 1200
    feed(fleet, "gate-ok", healthy(now), now, validate=validate)
    lines = feed(fleet, "gate-bad", flaky(now), now, validate=validate)
    kinds = [ln.kind for ln in lines]
    assert kinds == [LineKind.STATE, LineKind.AVAILABILITY]  # "online (first status seen)", then the flag
    assert lines[1].text == (
        "09:20:00.000  main/gate-bad         LOW AVAIL        availability 90.0 % over 7 d (under 95 %)"
    )
    assert lines[1].record["low"] is True
    assert fleet.low_availability == 1
    text = board.summary(fleet, [], now, tz=dt.UTC).splitlines()
    assert "unknown; low availability 1; 0 unacknowledged alarms" in text[0]
    assert text[1].split() == [
        "DEVICE",
        "STATE",
        "LAST",
        "HEARTBEAT",
        "OUTBOX",
        "P95",
        "AVAIL",
        "7D",
        "LAST",
        "EVENT",
        "PROBLEM",
    ]
    assert text[2] == (
        "main/gate-bad           online    0 s ago           0       900 ms        90.0 %    "
        "-                       availability 90.0 % over 7 d"
    )
    assert len(text) == 3  # the healthy device is not listed
    [summary, device] = board.summary_lines(fleet, [], now, full=False)
    assert summary.record["low_availability"] == 1
    assert summary.record["listed"] == 1
    assert device.record["p95_ms"] == 900.0
    assert device.record["p95_period"] == "1h"
    assert device.record["avail_7d_percent"] == 90.0
    assert device.record["avail_7d_observed_s"] == 12000
    assert device.record["low_availability"] is True
    assert device.record["problem"] == "availability 90.0 % over 7 d"
    json.loads(json_line(device.record))


def test_flag__needs_an_hour_observed(fleet: FleetView) -> None:
    s = LinkStats(T0)
    s.link_up(A, T0)
    s.link_down(T0 + 600)
    s.link_up(A, T0 + 1200)  # 50 % of 20 min: too little to judge
    lines = feed(fleet, "gate-1", s.snapshot(T0 + 1200), T0 + 1200)
    assert [ln.kind for ln in lines] == [LineKind.STATE]  # online, and no flag
    assert fleet.low_availability == 0
    assert fleet.attention(T0 + 1200, 40) == ([], 0)
    assert "50.0 %" in board.table(fleet, 0, T0 + 1200)


def test_flag__clears_when_availability_recovers_or_is_no_longer_known_and_survives_an_offline_will(
    fleet: FleetView,
) -> None:
    now = T0 + 3 * H + 1200
    feed(fleet, "gate-1", flaky(now), now)
    will = {"v": 1, "site": "main", "device": "gate-1", "state": "offline", "reason": "lost", "ts": iso_ms(now)}
    fleet.feed("campus/main/gate-1/status", json.dumps(will).encode(), now + 1)
    assert fleet.low_availability == 1  # a will carries no figures: the last ones stand
    [row] = fleet.rows(now + 1)
    assert row.state is DeviceState.OFFLINE
    assert row.link.low
    better = {
        **flaky(now),
        "availability": {
            "24h": None,
            "7d": {"from": iso_ms(T0), "observed_s": 20000, "percent": 95.0, "outages": 1, "longest_outage_s": 1000.0},
        },
    }
    lines = feed(fleet, "gate-1", better, now + 2)
    assert [ln.kind for ln in lines] == [LineKind.STATE, LineKind.AVAILABILITY]
    assert "avail ok         availability 95.0 % over 7 d (95 % or more again)" in lines[1].text
    assert fleet.low_availability == 0
    assert fleet.attention(now + 2, 40) == ([], 0)
    feed(fleet, "gate-1", flaky(now), now + 3)
    lines = feed(fleet, "gate-1", None, now + 4)  # downgraded to an agent without link.stats
    assert "avail ?" in lines[0].text
    assert fleet.low_availability == 0
    assert fleet.attention(now + 4, 40) == ([], 0)


def test_flag__retained_statuses_count_quietly(fleet: FleetView) -> None:
    now = T0 + 3 * H + 1200
    assert feed(fleet, "gate-1", flaky(now), now, retained=True) == []
    assert fleet.low_availability == 1
    rows, total = fleet.attention(now, 40)
    assert total == 1
    assert rows[0].link.problem() == "availability 90.0 % over 7 d"


def test_flag__an_overdue_device_with_low_availability_is_listed_once_overdue_first(fleet: FleetView) -> None:
    now = T0 + 3 * H + 1200
    feed(fleet, "gate-1", flaky(now), now)
    feed(fleet, "gate-2", flaky(now), now + 200)
    fleet.tick(now + 150)
    rows, total = fleet.attention(now + 150, 40)
    assert total == 2
    assert [(r.device, r.state) for r in rows] == [("gate-1", DeviceState.OVERDUE), ("gate-2", DeviceState.ONLINE)]


# ---- what a device sends is checked before use -----------------------------------------


def _stats(**over: Any) -> dict[str, Any]:
    doc = flaky(T0 + 3 * H + 1200)
    for path, value in over.items():
        node = doc
        *head, last = path.split("__")
        for k in head:
            node = node[{"A": A, "B": B}.get(k, k)]
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("stats", "why"),
    [
        (["not", "an", "object"], "link.stats is not an object"),
        (
            _stats(availability__7d__percent=101),
            r"link.stats.availability.7d.percent = 101 is out of range \(0 to 100\)",
        ),
        (_stats(availability__7d__percent=-0.5), r"percent = -0.5 is out of range"),
        (_stats(availability__7d__percent="99"), "link.stats.availability.7d.percent is not a number"),
        (_stats(availability__7d__percent=True), "percent is not a number"),
        (_stats(availability__7d__observed_s=10**9), r"observed_s = 1000000000 is out of range"),
        (_stats(availability__7d=[1]), "link.stats.availability.7d is not an object"),
        (_stats(availability=7), "link.stats.availability is not an object"),
        (_stats(transmit__B__1h__p95_ms=-1), rf"link.stats.transmit.{B}.1h.p95_ms = -1 is out of range"),
        (_stats(transmit__B__1h__p95_ms=1e300), r"p95_ms = 1e\+300 is out of range"),
        (_stats(transmit__B__1h__count=1.5), "count is not an integer"),
        (_stats(transmit__B__1h__count=-3), "count = -3 is out of range"),
        (_stats(transmit__B__1h=None), rf"link.stats.transmit.{B}.1h is not an object"),
        (
            _stats(transmit={f"b{k}:1883": {} for k in range(17)}),
            r"link.stats.transmit has 17 broker paths \(at most 16\)",
        ),
        (_stats(transmit={"\x1b[2Jb:1883": {"1h": 1}}), r"link.stats.transmit.\\x1b\[2Jb:1883.1h is not an object"),
    ],
)
def test_read_link_stats__invalid(stats: Any, why: str) -> None:
    got = read_link_stats(status("g", stats, ts=T0))
    assert isinstance(got, str)
    assert re.search(why, got), got


def test_read_link_stats__nan_from_a_raw_payload_is_refused_once_per_device(fleet: FleetView) -> None:
    doc = status("gate-1", flaky(T0 + 3 * H + 1200), ts=T0)
    raw = json.dumps(doc).replace('"percent": 90.0', '"percent": NaN').encode()  # json.loads takes NaN
    [warn] = [ln for ln in fleet.feed("campus/main/gate-1/status", raw, T0) if ln.kind is LineKind.WARNING]
    assert "campus/main/gate-1/status: link.stats.availability.7d.percent = nan is out of range" in warn.text
    assert "figures shown as '-'" in warn.text
    assert [ln for ln in fleet.feed("campus/main/gate-1/status", raw, T0 + 30) if ln.kind is LineKind.WARNING] == []
    assert fleet.rows(T0 + 30)[0].link is UNKNOWN
    assert fleet.low_availability == 0
    feed(fleet, "gate-1", healthy(T0 + 3 * H), T0 + 60)
    assert fleet.feed("campus/main/gate-1/status", raw, T0 + 90)[0].kind is LineKind.WARNING  # bad again: said again


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)
_period = st.fixed_dictionaries(
    {}, optional={"count": _json | st.integers(-2, 10), "p95_ms": _json | st.floats(-1, 1e11)}
)
_week = st.fixed_dictionaries(
    {}, optional={"percent": _json | st.floats(-1, 101), "observed_s": _json | st.integers(-1, 10**6)}
)
_stats_docs = _json | st.fixed_dictionaries(
    {},
    optional={
        "transmit": _json
        | st.dictionaries(
            st.text(max_size=8),
            _json | st.fixed_dictionaries({}, optional={"1h": _json | _period, "31d": _json | _period}),
            max_size=4,
        ),
        "availability": _json | st.fixed_dictionaries({}, optional={"7d": _json | _week, "24h": _json}),
    },
)


@settings(max_examples=300, deadline=None)
@given(_stats_docs)
def test_read_link_stats__any_document_gives_figures_in_range_or_a_reason(stats: Any) -> None:
    got = read_link_stats({"link": {"stats": stats}})
    if isinstance(got, str):
        assert got.startswith("link.stats")
        return
    if got.p95_ms is not None:
        assert math.isfinite(got.p95_ms)
        assert 0 <= got.p95_ms <= MAX_MS
        assert got.p95_period in ("1h", "31d")
    if got.avail_7d is not None:
        assert 0 <= got.avail_7d <= 100
        assert got.observed_7d_s is not None
        assert 0 <= got.observed_7d_s <= 169 * 3600
    p95_text(got)
    avail_text(got.avail_7d)


# ---- black box: campus-agent monitor as a process, against the session's mosquitto -----------


@pytest.mark.broker
def test_monitor_process__shows_the_columns_and_flags_low_availability(broker: Broker) -> None:
    site = unique_id("site")
    ok, bad = unique_id("gate"), unique_id("gate")
    now = time.time()  # statuses of now (not overdue); their statistics come from the fake clock, as the board
    c = Central(broker.port, topics=("none/#",))  # shows them without comparing periods to its own clock
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = None
    try:
        for device, stats in ((ok, healthy(T0 + 3 * H)), (bad, flaky(T0 + 3 * H + 1200))):
            doc = status(device, stats, ts=now, site=site)
            c.publish(f"campus/{site}/{device}/status", json.dumps(doc).encode(), retain=True)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "monitor",
                "--broker",
                f"127.0.0.1:{broker.port}",
                "--site",
                site,
                "--table",
                "--table-every",
                "0.5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        # a board with both devices: its header, the column titles and two rows
        board_text = _read_board(
            proc,
            rb"2 devices: 2 online, 0 OVERDUE, 0 offline, 0 unknown; low availability 1;"
            rb"[^\n]*\n(?:[^\n]*\n){3}",
            30,
        )
    finally:
        for device in (ok, bad):
            c.publish(f"campus/{site}/{device}/status", b"", retain=True)
        c.close()
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    titles, *rows = board_text.splitlines()[1:4]
    assert titles.split()[4:] == ["OUTBOX", "P95", "AVAIL", "7D", "LAST", "EVENT", "PROBLEM"]
    bad_row = next(ln for ln in rows if ln.startswith(f"{site}/{bad}"))
    ok_row = next(ln for ln in rows if ln.startswith(f"{site}/{ok}"))
    assert bad_row.split()[-12:] == ["0", "900", "ms", "90.0", "%", "-", "availability", "90.0", "%", "over", "7", "d"]
    assert ok_row.split()[-6:] == ["0", "70", "ms", "100.0", "%", "-"]


def _read_board(proc: subprocess.Popen[bytes], pattern: bytes, timeout: float) -> str:
    """Read the monitor's stdout until ``pattern`` matches; return the match (failing with what was read)."""
    m, _ = read_until(proc, lambda buf: re.search(pattern, buf), timeout, f"a board matching {pattern!r}")
    return m.group(0).decode()
