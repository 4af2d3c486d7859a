"""The fleet view at thousands of devices, on a fake clock: exact overdue detection, work counted per message."""

from __future__ import annotations

import datetime as dt
import json
import queue
import random
import tracemalloc
from typing import Any, NoReturn

import pytest

from agent.central import board
from agent.central.board import DeviceState
from agent.central.deadlines import Deadlines
from agent.central.display import Alarm
from agent.central.fleet import FleetView
from agent.central.link import Incoming
from agent.central.session import MonitorOptions, _Session
from agent.events import iso_ms, new_id
from agent.linkstats import LinkStats
from tests.central.test_monitor_linkstats import status as status_doc

T0 = dt.datetime(2026, 11, 29, 6, 0, 0, tzinfo=dt.UTC).timestamp()


def status(site: str, device: str, ts: float, stats: dict[str, Any] | None = None) -> bytes:
    return json.dumps(status_doc(device, stats, ts=ts, site=site)).encode()


def panic(site: str, device: str, seq: int, ts: float) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "id": new_id(),
            "seq": seq,
            "site": site,
            "device": device,
            "type": "panic",
            "source": "panic",
            "test": False,
            "ts": iso_ms(ts),
            "clock_synced": True,
            "boot_id": "b" * 32,
            "mono_ms": 1,
            "data": {},
        }
    ).encode()


def name(i: int) -> tuple[str, str]:
    return f"site-{i % 7}", f"gate-{i:05d}"


def topic(i: int, kind: str = "status") -> str:
    site, device = name(i)
    return f"campus/{site}/{device}/{kind}"


class NoScan(dict[str, Any]):
    """A device table that fails the test if anything walks it."""

    def __iter__(self) -> NoReturn:
        raise AssertionError("the device table was scanned")

    def values(self) -> NoReturn:
        raise AssertionError("the device table was scanned")

    def items(self) -> NoReturn:
        raise AssertionError("the device table was scanned")


def test_deadlines__pop_only_what_passed_and_skip_replaced_entries() -> None:
    d = Deadlines()
    d.set("a", 10)
    d.set("b", 5)
    d.set("a", 20)  # replaces 10: the old entry stays in the heap, dead
    assert d.pop_passed(15) == ["b"]
    assert d.pop_passed(19.9) == []
    d.cancel("a")
    assert d.pop_passed(100) == []
    assert len(d) == 0


def test_deadlines__stale_entries_are_compacted_so_the_heap_stays_bounded() -> None:
    d = Deadlines()
    for t in range(100_000):
        d.set(f"k{t % 1000}", float(t))
    assert len(d._heap) <= 3 * 1000 + 1024
    assert d.ops < 3 * 100_000  # amortised: pushes plus rebuilds, O(1) per set


def test_fleet__overdue_detection_is_exact_for_5000_devices_on_a_fake_clock() -> None:
    n, rng = 5000, random.Random(42)
    fleet = FleetView(tz=dt.UTC)
    heard: dict[str, float] = {}
    for i in range(n):  # first statuses spread over a minute
        at = T0 + rng.uniform(0, 60)
        site, device = name(i)
        fleet.feed(topic(i), status(site, device, at), at)
        heard[f"{site}/{device}"] = at
    flagged: dict[str, float] = {}
    silent = set(rng.sample(sorted(heard), 300))  # these stop sending heartbeats
    now = T0 + 60
    while now < T0 + 400:
        now += 1.0
        for key in sorted(heard):
            if key not in silent and now - heard[key] >= 30:  # every other device keeps its 30 s heartbeat
                site, device = key.split("/")
                heard[key] += 30
                fleet.feed(f"campus/{site}/{device}/status", status(site, device, heard[key]), heard[key])
        for line in fleet.tick(now):
            key = f"{line.record['site']}/{line.record['device']}"
            assert key not in flagged, f"{key} flagged twice"
            flagged[key] = now
        expected = {k for k in silent if now > heard[k] + 90}
        assert set(flagged) == expected  # no device missed, none flagged early, at every tick
    assert set(flagged) == silent
    assert fleet.counts()[DeviceState.OVERDUE] == 300
    assert fleet.counts()[DeviceState.ONLINE] == n - 300


@pytest.mark.parametrize("n", [1000, 10_000])
def test_fleet__work_per_status_does_not_grow_with_the_fleet(n: int) -> None:
    fleet = FleetView(tz=dt.UTC)
    for i in range(n):
        site, device = name(i)
        fleet.feed(topic(i), status(site, device, T0), T0)
    fleet._devices = NoScan(fleet._devices)  # from here on, any walk over the fleet fails
    before = fleet.work
    for k in range(2000):  # heartbeats, an offline will, events and ticks, as they come at a centre
        i = (k * 7919) % n
        site, device = name(i)
        at = T0 + 30 + k * 0.01
        fleet.feed(topic(i), status(site, device, at), at)
        fleet.feed(topic(i, "event/panic"), panic(site, device, k + 1, at), at)
        if k % 100 == 0:
            fleet.tick(at)
    per_message = (fleet.work - before) / 4000
    assert per_message <= 2, per_message  # one heap push per status, pops and compaction amortised


def link_stats(down_s: float) -> dict[str, Any]:
    """The agent's own ``link.stats`` after 3 h connected, then ``down_s`` seconds down, with 20 events."""
    s = LinkStats(T0)
    s.link_up("broker-a:8883", T0)
    for k in range(20):
        s.delivered("broker-a:8883", 0.02 + k * 0.005, T0 + 3 * 3600 - 600 + k)
    s.link_down(T0 + 3 * 3600)
    s.link_up("broker-a:8883", T0 + 3 * 3600 + down_s)
    return s.snapshot(T0 + 3 * 3600 + down_s)


def test_fleet__link_figures_and_the_95_percent_flag_cost_no_scan_at_10000_devices() -> None:
    n, rng = 10_000, random.Random(13)
    good, bad = link_stats(1.0), link_stats(1800.0)  # 99.99 % and 85.7 % over 7 days
    fleet = FleetView(tz=dt.UTC)
    low: set[int] = set()
    for i in range(n):
        site, device = name(i)
        fleet.feed(topic(i), status(site, device, T0, good), T0)
    plain = fleet._devices
    fleet._devices = NoScan(plain)  # from here on, any walk over the fleet fails
    before = fleet.work
    for k in range(3000):  # devices drop under 95 % and come back, in any order
        i = rng.randrange(n)
        site, device = name(i)
        flaky = rng.random() < 0.5
        (low.add if flaky else low.discard)(i)
        fleet.feed(topic(i), status(site, device, T0 + 30 + k * 0.01, bad if flaky else good), T0 + 30 + k * 0.01)
        assert fleet.low_availability == len(low)
    assert (fleet.work - before) / 3000 <= 2
    assert fleet.attention(T0 + 60, 40)[1] == len(low)  # the attention set is kept, not searched
    fleet._devices = plain
    assert {r.key for r in fleet.rows(T0 + 60) if r.link.low} == {"/".join(name(i)) for i in low}


def test_fleet__a_tick_with_nothing_due_does_no_work_at_20000_devices() -> None:
    fleet = FleetView(tz=dt.UTC)
    for i in range(20_000):
        site, device = name(i)
        fleet.feed(topic(i), status(site, device, T0), T0)
    fleet._devices = NoScan(fleet._devices)
    before = fleet.work
    for s in range(60):
        assert fleet.tick(T0 + s) == []
    assert fleet.work == before


def test_fleet__counts_kept_as_states_change_match_a_recount() -> None:
    fleet, rng = FleetView(tz=dt.UTC), random.Random(3)
    for k in range(3000):
        i = rng.randrange(500)
        site, device = name(i)
        at = T0 + k
        if rng.random() < 0.1:
            doc = {"v": 1, "site": site, "device": device, "state": "offline", "reason": "lost", "ts": iso_ms(at)}
            fleet.feed(topic(i), json.dumps(doc).encode(), at)
        elif rng.random() < 0.2:
            fleet.feed(topic(i, "event/panic"), panic(site, device, k + 1, at), at)
        else:
            fleet.feed(topic(i), status(site, device, at), at)
        fleet.tick(at)
    recount = dict.fromkeys(DeviceState, 0)
    for row in fleet.rows(T0 + 3000):
        recount[row.state] += 1
    assert fleet.counts() == recount


def test_board__at_20000_devices_shows_a_header_the_devices_needing_attention_and_every_alarm() -> None:
    fleet = FleetView(tz=dt.UTC)
    for i in range(20_000):
        site, device = name(i)
        at = T0 if i % 200 else T0 - 200  # 100 devices fell silent before the rest
        fleet.feed(topic(i), status(site, device, at), at)
    fleet.tick(T0 + 1)
    alarms = [Alarm("site-1", "gate-00001", f"{k:032x}", "panic", T0) for k in range(3)]
    text = board.summary(fleet, alarms, T0 + 1, limit=40, tz=dt.UTC).splitlines()
    assert text[0].startswith(
        "06:00:01.000  20000 devices: 19900 online, 100 OVERDUE, 0 offline, 0 unknown; "
        "low availability 0; 3 unacknowledged alarms"
    )
    assert len(text) == 1 + 1 + 40 + 1 + 3  # header, column titles, 40 devices, "... and 60 more", alarms
    assert all("OVERDUE" in line for line in text[2:42])
    assert text[42].startswith("... and 60 more need attention")
    assert all(line.startswith("ALARM  site-1/gate-00001") for line in text[43:])
    full = board.table(fleet, 3, T0 + 1).splitlines()
    assert len(full) == 2 + 20_000
    assert "OVERDUE" in full[101]
    assert "online" in full[102]  # problem first


@pytest.mark.parametrize("stats", [None, link_stats(1.0)], ids=["plain", "link-stats"])
def test_fleet__memory_per_device_stays_under_the_documented_bound(stats: dict[str, Any] | None) -> None:
    fleet = FleetView(tz=dt.UTC)
    payloads = [(topic(i), status(*name(i), T0, stats)) for i in range(5000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for t, p in payloads:
            fleet.feed(t, p, T0, retained=True)
        per_device = (tracemalloc.get_traced_memory()[0] - before) / 5000
    finally:
        tracemalloc.stop()
    assert per_device < 1500, per_device  # docs/central.md: about 0.6 KB per device


class StubLink:
    connected = True

    def publish(self, topic: str, payload: bytes) -> None:
        raise AssertionError("nothing is published here")


class Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines += [ln for ln in text.split("\n") if ln]

    def flush(self) -> None:
        pass


def test_session__a_panic_queued_behind_thousands_of_statuses_is_printed_first() -> None:
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for i in range(3000):
        site, device = name(i)
        inbox.put(Incoming(topic(i), status(site, device, T0), False, T0))  # each prints "first status seen"
    doc = panic("site-1", "gate-00001", 1, T0)
    inbox.put(Incoming("campus/site-1/gate-00001/event/panic", doc, False, T0))
    out = Out()
    session = _Session(StubLink(), inbox, "campus", MonitorOptions(table_every_s=0), out, wall=lambda: T0)  # type: ignore[arg-type]
    session._drain(0.0)
    assert json.loads(doc)["id"] in out.lines[0]
    assert len(out.lines) == 3001
