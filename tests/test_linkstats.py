"""Link statistics with a fake clock: quantiles, availability through outages and restarts, bounded memory."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.linkslots import BUCKETS, bucket_of
from agent.linkstats import MAX_PATHS, LinkStats
from agent.schemas import load as load_schema

T0 = 1_799_971_200.0  # 2027-01-15T00:00:00Z, a whole UTC day
BROKER = "broker-a:8883"
assert T0 % 86400 == 0


def _exact(values: list[float], q: float) -> float:
    ranked = sorted(values)
    return ranked[max(1, math.ceil(q * len(ranked))) - 1]


def _tx(stats: LinkStats, now: float, period: str = "1h", broker: str = BROKER) -> dict[str, Any]:
    figures: dict[str, Any] = stats.snapshot(now)["transmit"][broker][period]
    return figures


latencies = st.lists(st.floats(min_value=0.0, max_value=3 * 86400.0, allow_nan=False), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(values=latencies)
def test_linkstats__p95_within_one_bucket_of_exact(values: list[float]) -> None:
    stats = LinkStats(T0)
    for i, v in enumerate(values):
        stats.delivered(BROKER, v, T0 + i * 0.01)
    doc = _tx(stats, T0 + 5)
    exact = _exact(values, 0.95)
    got = doc["p95_ms"] / 1000
    # read back as the bucket's upper edge (never above the max): same bucket or the next edge
    assert bucket_of(got) - bucket_of(exact) in (0, 1) or math.isclose(got, exact, abs_tol=0.0001)
    assert got >= exact - 0.0001
    assert doc["count"] == len(values)
    assert doc["max_ms"] == round(max(values) * 1000, 1)
    assert doc["mean_ms"] == pytest.approx(sum(values) / len(values) * 1000, abs=0.1)


def test_linkstats__empty_window_reports_nulls_and_periods() -> None:
    stats = LinkStats(T0)
    stats.delivered(BROKER, 0.2, T0)
    later = T0 + 2 * 3600
    doc = stats.snapshot(later)
    assert doc["transmit"][BROKER]["1h"] == {
        "from": "2027-01-15T01:01:00.000Z",
        "count": 0,
        "mean_ms": None,
        "p95_ms": None,
        "max_ms": None,
    }
    assert doc["transmit"][BROKER]["31d"]["count"] == 1
    assert doc["transmit"][BROKER]["31d"]["from"] == "2026-12-16T00:00:00.000Z"


def test_linkstats__windows_expire() -> None:
    stats = LinkStats(T0)
    stats.delivered(BROKER, 0.1, T0)
    stats.delivered(BROKER, 0.3, T0 + 30 * 60)
    assert _tx(stats, T0 + 59 * 60)["count"] == 2
    assert _tx(stats, T0 + 60 * 60)["count"] == 1  # the first minute slot left the hour
    assert _tx(stats, T0 + 90 * 60)["count"] == 0
    assert _tx(stats, T0 + 30 * 86400, "31d")["count"] == 2
    assert BROKER not in stats.snapshot(T0 + 31 * 86400)["transmit"]


def test_linkstats__availability_through_outages() -> None:
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    stats.link_down(T0 + 3600)  # 10 minutes down
    stats.link_down(T0 + 3650)  # a failed reconnect does not start a second outage
    stats.link_up("broker-b:8883", T0 + 3600 + 600)
    stats.link_down(T0 + 7200)  # 30 s down
    stats.link_up(BROKER, T0 + 7230)
    av = stats.snapshot(T0 + 4 * 3600)["availability"]
    day = av["24h"]
    assert day["observed_s"] == 4 * 3600
    assert day["percent"] == round(100 * (4 * 3600 - 630) / (4 * 3600), 3)
    assert day["outages"] == 2
    assert day["longest_outage_s"] == 600.0
    assert day["from"] == "2027-01-15T00:00:00.000Z"  # not before the first connect
    # a day later the outages have left the 24 h window but not the 7 d one
    av = stats.snapshot(T0 + 30 * 3600)["availability"]
    assert av["24h"]["outages"] == 0
    assert av["24h"]["percent"] == 100.0
    assert av["7d"]["outages"] == 2


def test_linkstats__running_outage_counts_until_now() -> None:
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    stats.link_down(T0 + 100)
    av = stats.snapshot(T0 + 200)["availability"]["24h"]
    assert av == {
        "from": "2027-01-15T00:00:00.000Z",
        "observed_s": 200,
        "percent": 50.0,
        "outages": 1,
        "longest_outage_s": 100.0,
    }


def test_linkstats__nothing_counted_before_first_connect() -> None:
    stats = LinkStats(T0)
    stats.link_down(T0 + 10)
    av = stats.snapshot(T0 + 100)
    assert av["since"] is None
    assert av["availability"]["24h"] == {
        "from": None,
        "observed_s": 0,
        "percent": None,
        "outages": 0,
        "longest_outage_s": 0.0,
    }


def test_linkstats__restart_gap_is_one_outage() -> None:
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    stats.delivered(BROKER, 0.05, T0 + 10)
    saved = json.loads(json.dumps(stats.to_state(T0 + 1000)))  # through JSON, as in agent-state.json
    # the agent dies; it starts again 200 s later and connects 5 s after that
    again = LinkStats.from_state(saved, T0 + 1200)
    again.link_up(BROKER, T0 + 1205)
    av = again.snapshot(T0 + 2000)["availability"]["24h"]
    assert av["outages"] == 1
    assert av["longest_outage_s"] == 205.0
    assert av["observed_s"] == 2000
    assert av["percent"] == round(100 * (2000 - 205) / 2000, 3)
    assert _tx(again, T0 + 2000)["count"] == 1


def test_linkstats__restart_during_an_outage_joins_it() -> None:
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    stats.link_down(T0 + 100)
    saved = stats.to_state(T0 + 150)
    again = LinkStats.from_state(saved, T0 + 300)
    again.link_down(T0 + 301)
    again.link_up(BROKER, T0 + 400)
    av = again.snapshot(T0 + 500)["availability"]["24h"]
    assert (av["outages"], av["longest_outage_s"]) == (1, 300.0)


def test_linkstats__state_round_trip_is_identical() -> None:
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    for i in range(500):
        stats.delivered(BROKER if i % 3 else "broker-b:8883", 0.01 * (i % 97), T0 + i * 7)
    stats.link_down(T0 + 4000)
    now = T0 + 4100
    doc = json.loads(json.dumps(stats.to_state(now)))
    again = LinkStats.from_state(doc, now)
    assert again.snapshot(now) == stats.snapshot(now)


@pytest.mark.parametrize(
    "doc",
    [
        {"v": 99},
        {"v": 1},
        [],
        "junk",
        {
            "v": 1,
            "saved": 1,
            "since": None,
            "paths": {"b": {"used": 0, "minutes": [[1, [1, 0, 0, [[999, 1]]]]], "days": []}},
            "hours": [],
        },
    ],
)
def test_linkstats__damaged_state_starts_afresh(doc: object, caplog: pytest.LogCaptureFixture) -> None:
    stats = LinkStats.from_state(doc, T0)
    assert stats.snapshot(T0) == LinkStats(T0).snapshot(T0)
    assert "starting them afresh" in caplog.text


def test_linkstats__bounded_after_a_million_samples() -> None:
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    n = 1_000_000
    span = 40 * 86400  # longer than every window
    for i in range(n):
        now = T0 + i * span / n
        stats.delivered(BROKER, (i % 1009) * 0.37, now)
        if i % 5000 == 0:
            stats.link_down(now)
            stats.link_up(BROKER, now + 1)
    path = stats._paths[BROKER]
    assert len(path.minutes.slots) <= 61
    assert len(path.days.slots) <= 32
    assert len(stats._hours.slots) <= 7 * 24 + 1
    assert all(len(h.buckets) <= BUCKETS for h in path.days.slots.values())
    state = json.dumps(stats.to_state(T0 + span))
    assert len(state) < 200_000


def test_linkstats__paths_are_bounded() -> None:
    stats = LinkStats(T0)
    for i in range(MAX_PATHS + 5):
        stats.delivered(f"b{i}:1883", 0.1, T0 + i)
    assert len(stats.snapshot(T0 + 100)["transmit"]) == MAX_PATHS
    assert "b0:1883" not in stats.snapshot(T0 + 100)["transmit"]


def test_linkstats__odd_latencies_do_not_break_it() -> None:
    stats = LinkStats(T0)
    for v in (-5.0, float("nan"), float("inf"), 1e12):
        stats.delivered(BROKER, v, T0)
    doc = _tx(stats, T0)
    assert doc["count"] == 4
    assert doc["p95_ms"] is not None


def test_linkstats__clock_stepping_back_drops_future_slots() -> None:
    stats = LinkStats(T0)
    stats.delivered(BROKER, 0.1, T0 + 86400 * 3)
    stats.delivered(BROKER, 0.1, T0)  # the clock was wrong before, and is right now
    assert _tx(stats, T0, "31d")["count"] == 1


def test_linkstats__thread_safe_under_concurrent_use() -> None:
    stats = LinkStats(T0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                stats.snapshot(T0 + 10)
                json.dumps(stats.to_state(T0 + 10))
            except BaseException as exc:
                errors.append(exc)
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(20_000):
            stats.delivered(f"b{i % 3}:1883", 0.001 * i, T0 + i * 0.0001)
            if i % 100 == 0:
                stats.link_up("b0:1883", T0 + i * 0.0001)
                stats.link_down(T0 + i * 0.0001)
    finally:
        stop.set()
        t.join(10)
    assert not errors
    assert sum(p["1h"]["count"] for p in stats.snapshot(T0 + 10)["transmit"].values()) == 20_000


def test_linkstats__snapshot_is_valid_in_the_status_schema() -> None:
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    stats.delivered(BROKER, 0.12, T0 + 1)
    stats.link_down(T0 + 50)
    schema = load_schema("status")
    link_stats = schema["$defs"]["link_stats"]
    jsonschema.validate(stats.snapshot(T0 + 60), {**link_stats, "$defs": schema["$defs"]})
    jsonschema.validate(LinkStats(T0).snapshot(T0), {**link_stats, "$defs": schema["$defs"]})


def test_linkstats__status_stays_small() -> None:
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    for i in range(MAX_PATHS):
        stats.delivered(f"broker-{i}.campus.example.org:8883", 0.1, T0 + i)
    stats.link_down(T0 + 100)
    doc = stats.snapshot(T0 + 200)
    assert len(json.dumps(doc)) < 3000
    later = stats.snapshot(T0 + 32 * 86400)
    assert later["transmit"] == {}, "a broker silent for 31 days leaves the status"
    assert len(json.dumps(later)) < 500


def test_linkstats__years_long_clock_jump_is_cheap_and_bounded() -> None:
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    far = T0 + 40 * 365 * 86400
    doc = stats.snapshot(far)["availability"]["7d"]
    assert doc["percent"] == 100.0
    assert 7 * 86400 - 3600 <= doc["observed_s"] <= 7 * 86400  # the current hour has only begun
    assert len(stats._hours.slots) <= 7 * 24 + 1


steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=7200.0, allow_nan=False),
        st.sampled_from(["up-a", "up-b", "down", "restart"]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(script=steps, gap=st.floats(min_value=0.0, max_value=3600.0, allow_nan=False))
def test_linkstats__availability_matches_an_exact_timeline(script: list[tuple[float, str]], gap: float) -> None:
    """Any connects, disconnects and restarts (each restart down for ``gap`` s): figures equal the exact timeline."""
    stats = LinkStats(T0)
    now = T0
    since: float | None = None
    up = False
    up_s = 0.0
    downs: list[float] = []  # closed outages' lengths
    down_from: float | None = None
    for dt, action in script:
        before, now = now, now + dt
        if up:
            up_s += now - before  # not dt: the clock is a float near 1.8e9 and rounds the step
        if action == "restart":
            saved = json.loads(json.dumps(stats.to_state(now)))
            now += gap
            stats = LinkStats.from_state(saved, now)
            if since is not None and down_from is None:
                down_from = now - gap
            up = False
        elif action == "down":
            stats.link_down(now)
            if since is not None and down_from is None:
                down_from = now
            up = False
        else:
            stats.link_up(f"broker-{action[-1]}:1883", now)
            since = now if since is None else since
            if down_from is not None:
                downs.append(now - down_from)
                down_from = None
            up = True
    av = stats.snapshot(now)["availability"]["7d"]
    if since is None:
        assert av["percent"] is None
        return
    observed = now - since
    assert av["observed_s"] == round(observed)
    if observed > 0:
        assert av["percent"] == pytest.approx(100 * up_s / observed, abs=0.002)
    running = [now - down_from] if down_from is not None else []
    assert av["outages"] == len(downs) + len(running)
    assert av["longest_outage_s"] == pytest.approx(max(downs + running, default=0.0), abs=0.1)


def test_linkstats__a_clock_stepped_forward_after_a_power_cut_is_not_counted_as_connected() -> None:
    """A Pi restarted with its clock behind the last save connected, then NTP stepped it: the step counted as up.

    fake-hwclock sets the clock to its last save (here 30 minutes before the
    cut); the agent connects at once and NTP steps the clock over the two days
    the Pi was off.  The contract counts time the agent was not running as an
    outage.
    """
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    saved = json.loads(json.dumps(stats.to_state(T0 + 3 * 86400)))  # the last save, then the power goes
    fake_now = T0 + 3 * 86400 - 1800
    again = LinkStats.from_state(saved, fake_now)
    again.link_up(BROKER, fake_now + 5)
    held = json.loads(json.dumps(again.to_state(fake_now + 30)))  # a restart before NTP keeps the save's time
    assert (held["saved"], held["outage_start"]) == (saved["saved"], saved["saved"])
    true_now = T0 + 5 * 86400 + 60  # two days and a minute after the cut
    av = again.snapshot(true_now)["availability"]["7d"]
    assert av["percent"] == pytest.approx(100 * 3 / (5 + 60 / 86400), abs=0.01)
    assert (av["outages"], av["longest_outage_s"]) == (1, 2 * 86400 + 60)
    later = again.snapshot(true_now + 600)["availability"]["7d"]  # from the step on, connected time counts
    assert later["observed_s"] - av["observed_s"] == 600
    assert later["percent"] > av["percent"]


def test_linkstats__a_restart_with_the_clock_still_behind_the_save_is_down_until_it_passes() -> None:
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    saved = stats.to_state(T0 + 3600)
    again = LinkStats.from_state(saved, T0 + 1800)
    again.link_up(BROKER, T0 + 1800)
    assert again.snapshot(T0 + 3000)["availability"]["24h"]["observed_s"] == 3600  # nothing counted twice
    again.link_down(T0 + 3500)  # the link drops before the clock passes the save: the same outage runs on
    again.link_up(BROKER, T0 + 3800)
    av = again.snapshot(T0 + 4000)["availability"]["24h"]
    assert (av["observed_s"], av["outages"], av["longest_outage_s"]) == (4000, 1, 200.0)
    assert av["percent"] == pytest.approx(100 * 3800 / 4000)


def test_linkstats__a_save_from_a_clock_far_ahead_starts_the_figures_afresh(caplog: pytest.LogCaptureFixture) -> None:
    """A save written while the clock read a year ahead held the link 'down' until that date came."""
    stats = LinkStats(T0)
    stats.link_up(BROKER, T0)
    saved = json.loads(json.dumps(stats.to_state(T0 + 365 * 86400)))
    again = LinkStats.from_state(saved, T0 + 60)
    assert "starting them afresh" in caplog.text
    again.link_up(BROKER, T0 + 60)
    av = again.snapshot(T0 + 660)["availability"]["24h"]
    assert av["percent"] == pytest.approx(100.0)
    assert av["observed_s"] == 600
