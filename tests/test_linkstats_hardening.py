"""Link statistics at their edges: waits past the histogram's last bucket, and a damaged but readable file."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from agent.central.linkfigures import MAX_MS, LinkFigures, read_link_stats
from agent.linkslots import MAX_LATENCY_S
from agent.linkstats import LinkStats
from agent.transmission import Transmission
from tests.support.contract import Validate

T0 = 1_799_971_200.0  # a UTC midnight
BROKER = "b:1"
DAY = 86400.0


def _status(stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "v": 1,
        "site": "main",
        "device": "gate-1",
        "state": "online",
        "ts": "2027-01-15T00:00:20.000Z",
        "clock_synced": True,
        "agent": {"version": "0", "boot_id": "b", "uptime_s": 1},
        "link": {"connected_since": None, "reconnects": 0, "stats": stats},
        "outbox": {"pending": 0, "oldest_age_s": None, "dropped": 0},
        "inputs": {},
        "cameras": {},
        "system": {"cpu_temp_c": None, "disk_free_mb": None, "load1": None},
        "test_mode_until": None,
    }


def _waited(*waits: float) -> dict[str, Any]:
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    for i, wait in enumerate(waits):
        stats.delivered(BROKER, wait, T0 + i)
    return stats.snapshot(T0 + 30)


@pytest.mark.parametrize("days", [36, 42, 60, 400])
def test_linkstats__p95_of_waits_past_the_last_bucket_never_reads_low(days: int) -> None:
    """Events that waited out a two-month outage read 41.8 days: the last bucket's edge, not their wait."""
    fig = _waited(*[days * DAY] * 20)["transmit"][BROKER]["1h"]
    assert fig["p95_ms"] == fig["max_ms"] == days * DAY * 1000


def test_linkstats__a_wait_past_any_real_one_counts_as_the_most_an_agent_sends() -> None:
    fig = _waited(1e20, math.inf)["transmit"][BROKER]["1h"]
    assert fig["max_ms"] == fig["p95_ms"] == MAX_LATENCY_S * 1000 == MAX_MS


@pytest.mark.parametrize("waits", [(60 * DAY,) * 20, (MAX_LATENCY_S,)])
def test_read_link_stats__the_centre_takes_any_p95_an_agent_sends(waits: tuple[float, ...]) -> None:
    got = read_link_stats(_status(_waited(*waits)))
    assert isinstance(got, LinkFigures), got
    assert got.p95_ms == waits[0] * 1000


def _doc(hours: list[Any], slot: list[Any] | None = None, **over: Any) -> dict[str, Any]:
    good = [2, 0.3, 0.2, [[40, 2]]]
    slots = [[int(T0 // 60) - 1, good]] + ([[int(T0 // 60), slot]] if slot is not None else [])
    days = [[int(T0 // DAY), good]] + ([[int(T0 // DAY) - 1, slot]] if slot is not None else [])
    doc = {
        "v": 1,
        "saved": T0,
        "since": T0 - DAY,
        "outage_start": None,
        "hours": [[int(T0 // 3600) - 1, 3000.0, 600.0, 1, 60.0], *hours],
        "paths": {BROKER: {"used": T0, "minutes": slots, "days": days}},
    }
    back: dict[str, Any] = json.loads(json.dumps({**doc, **over}))  # as read back: NaN and Infinity too
    return back


HOUR = int(T0 // 3600)
DAMAGED = {
    "negative seconds": _doc([[HOUR, -3000.0, 100.0, 0, 0.0]]),
    "NaN seconds": _doc([[HOUR, math.nan, 100.0, 0, 0.0]]),
    "an hour of more than 3600 s": _doc([[HOUR, 3600.0, 100.0, 0, 0.0]]),
    "an infinite longest outage": _doc([[HOUR, 0.0, 100.0, 1, math.inf]]),
    "an infinite max": _doc([], [1, 0.5, math.inf, [[10, 1]]]),
    "a negative mean and max": _doc([], [1, -0.5, -2.0, [[0, 1]]]),
    "a NaN sum": _doc([], [1, math.nan, 2.0, [[0, 1]]]),
    "a sum over count x max": _doc([], [1, 1e308, 2.0, [[0, 1]]]),
    "a NaN outage start": _doc([], outage_start=math.nan),
}


@pytest.mark.parametrize("doc", DAMAGED.values(), ids=DAMAGED.keys())
def test_linkstats__a_damaged_value_loses_its_slot_and_keeps_the_rest(
    doc: dict[str, Any], validate: Validate, caplog: pytest.LogCaptureFixture
) -> None:
    stats = LinkStats.from_state(doc, T0 + 10, source="/data/link-stats.json")
    assert len(caplog.records) == 1
    assert "link statistics in /data/link-stats.json have " in caplog.text
    snap = stats.snapshot(T0 + 20)
    status = _status(snap)
    json.dumps(status, allow_nan=False)
    validate("status", status)
    fig = snap["transmit"][BROKER]
    assert fig["1h"]["count"] == fig["31d"]["count"] == 2, "the good slots are kept"
    assert fig["1h"]["max_ms"] == 200.0
    week = snap["availability"]["7d"]
    assert week["outages"] >= 1, "the good hour is kept"
    assert week["observed_s"] >= 3600


def test_linkstats__a_damaged_since_drops_availability_and_keeps_transmission(validate: Validate) -> None:
    stats = LinkStats.from_state(_doc([], since=math.inf), T0 + 10)
    snap = stats.snapshot(T0 + 20)
    validate("status", _status(snap))
    assert snap["since"] is None
    assert snap["availability"]["7d"]["observed_s"] == 0
    assert snap["transmit"][BROKER]["31d"]["count"] == 2


def test_linkstats__the_snapshot_never_sends_a_number_json_cannot_hold() -> None:
    """Whatever gets into the slots (no load lets it now), the status stays strict JSON and valid."""
    stats = LinkStats.from_state(_doc([]), T0 + 10)
    hist = next(iter(stats._paths[BROKER].minutes.slots.values()))
    hist.total, hist.top = math.inf, math.inf
    hour = next(iter(stats._hours.slots.values()))
    hour.up_s, hour.longest_s = math.nan, math.inf
    json.dumps(stats.snapshot(T0 + 20), allow_nan=False)


def test_transmission__a_damaged_file_is_named_once_and_the_status_is_strict_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "link-stats.json"
    path.write_text(json.dumps(_doc([[HOUR, math.nan, 100.0, 0, 0.0]], [1, -0.5, -2.0, [[0, 1]]])), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        t = Transmission(path, wall=lambda: T0 + 10, mono=lambda: 0.0, save_every_s=30)
    assert [r.getMessage() for r in caplog.records] == [
        f"link statistics in {path} have 3 damaged parts "
        "(first: paths.b:1.minutes slot 29999520: transmission times sum -0.5, max -2.0); "
        "those are dropped, the rest kept"
    ]
    json.dumps(t.snapshot(), allow_nan=False)
