"""The monitor's de-duplication and photos are per device: one device cannot hide or dress up another's alarm."""

from __future__ import annotations

import datetime as dt

from agent.central.acks import AckDesk
from agent.central.board import summary
from agent.central.display import Alarm
from agent.central.fleet import FleetView
from agent.central.fleetevents import PER_DEVICE_IDS, RecentIds
from agent.central.photos import Outcome, Photo, PhotoDesk
from tests.central.test_monitor import T0, enc, event, topic

EID = "0123456789abcdef0123456789abcdef"


def alarms_in(lines: list) -> list[Alarm]:  # type: ignore[type-arg]
    return [ln.alarm for ln in lines if ln.alarm is not None]


# ---- de-duplication ------------------------------------------------------------------


def test_fleet__a_neighbours_backlog_does_not_make_a_redelivered_panic_new() -> None:
    fleet = FleetView(dedup_ids=1_000, tz=dt.UTC)
    panic = enc(event("gate-a", seq=7))
    assert alarms_in(fleet.feed(topic("event/panic", "gate-a"), panic, T0))
    for i in range(1_001):  # gate-b drains a day of camera faults after an outage
        doc = event("gate-b", seq=100 + i, type_="camera_fault")
        fleet.feed(topic("event/camera_fault", "gate-b"), enc(doc), T0 + 3)
    again = fleet.feed(topic("event/panic", "gate-a"), panic, T0 + 40)  # gate-a's PUBACK was lost: sent again
    assert again == [], [ln.text for ln in again]
    assert fleet.duplicates == 1


def test_fleet__an_id_is_its_own_devices() -> None:
    fleet = FleetView(tz=dt.UTC)
    fault = enc(event("gate-b", type_="input_fault", id_=EID))
    fleet.feed(topic("event/input_fault", "gate-b"), fault, T0)
    lines = fleet.feed(topic("event/panic", "gate-a"), enc(event("gate-a", id_=EID)), T0 + 1)
    assert [a.device for a in alarms_in(lines)] == ["gate-a"], "gate-b's id hid gate-a's panic"
    assert fleet.feed(topic("event/input_fault", "gate-b"), fault, T0 + 2) == []  # gate-b's own copy still is one
    assert (fleet.events, fleet.duplicates) == (2, 1)


def test_recent_ids__each_device_keeps_its_last_ids() -> None:
    ids = RecentIds(total=100, per_device=3)
    assert not ids.seen(("main", "a"), "a1")
    for n in range(5):
        assert not ids.seen(("main", "b"), f"b{n}")
    assert ids.seen(("main", "a"), "a1")
    assert ids.seen(("main", "b"), "b4")
    assert not ids.seen(("main", "b"), "b0")  # b's oldest fell out of b's own three
    assert ids.count == 4


def test_recent_ids__over_the_total_the_device_holding_most_gives_way() -> None:
    ids = RecentIds(total=6, per_device=PER_DEVICE_IDS)
    for dev in ("a", "b"):
        assert not ids.seen(("main", dev), f"{dev}-alarm")
    for n in range(50):
        ids.seen(("main", "c"), f"c{n}")
    assert ids.count == 6
    assert ids.seen(("main", "a"), "a-alarm")
    assert ids.seen(("main", "b"), "b-alarm")
    assert ids.seen(("main", "c"), "c49")
    assert not ids.seen(("main", "c"), "c40")


def test_recent_ids__memory_stays_bounded_over_a_large_fleet() -> None:
    ids = RecentIds(total=1_000)
    for n in range(10_000):
        for k in range(2):
            ids.seen(("main", f"gate-{n}"), f"{n}-{k}")
    assert ids.count == 1_000
    assert len(ids._ids) <= 1_000  # a device whose ids all went is forgotten too
    assert ids.seen(("main", "gate-9999"), "9999-1")


# ---- photos ----------------------------------------------------------------------------


def saved(desk: PhotoDesk, device: str, path: str) -> str:
    photo = Photo("main", device, EID, "cam", 1, 1, None, 100, T0)
    [line] = desk.lines(Outcome(photo, path), T0 + 1)
    return line.text


def test_photo_desk__another_devices_photo_is_not_shown_on_an_alarm() -> None:
    desk = PhotoDesk(tz=dt.UTC)
    alarm = Alarm("main", "gate-a", EID, "panic", T0)
    desk.alarm(alarm)
    text = saved(desk, "gate-b", "/p/main/gate-b/x.jpg")
    assert "of an event not seen here," in text, text
    assert desk.photo_of(EID) is None
    assert desk.photo_for(alarm) is None
    board = summary(FleetView(tz=dt.UTC), [alarm], T0 + 2, photo_of=desk.photo_of)
    assert "gate-b" not in board.splitlines()[-1], board


def test_photo_desk__an_alarms_own_photo_is_shown() -> None:
    desk = PhotoDesk(tz=dt.UTC)
    alarm = Alarm("main", "gate-a", EID, "panic", T0)
    desk.alarm(alarm)
    assert "of panic id" in saved(desk, "gate-a", "/p/main/gate-a/x.jpg")
    assert desk.photo_of(EID) == desk.photo_for(alarm) == "/p/main/gate-a/x.jpg"
    board = summary(FleetView(tz=dt.UTC), [alarm], T0 + 2, photo_of=desk.photo_of)
    assert board.splitlines()[-1].endswith("photo /p/main/gate-a/x.jpg"), board


def test_photo_desk__an_id_two_devices_alarms_carry_names_no_photo_by_id_alone() -> None:
    desk = PhotoDesk(tz=dt.UTC)
    a, b = Alarm("main", "gate-a", EID, "panic", T0), Alarm("main", "gate-b", EID, "tamper", T0)
    desk.alarm(a)
    desk.alarm(b)
    assert "of tamper id" in saved(desk, "gate-b", "/p/main/gate-b/x.jpg")
    assert desk.photo_of(EID) is None  # which alarm the board line means is not known from the id
    assert desk.photo_for(a) is None
    assert desk.photo_for(b) == "/p/main/gate-b/x.jpg"


def test_ack_desk__two_devices_alarms_sharing_an_id_both_wait_for_an_ack() -> None:
    """An id is its device's: gate-b's alarm with gate-a's id must not take gate-a's off the list."""
    desk = AckDesk("campus", tz=dt.UTC)
    a, b = Alarm("main", "gate-a", EID, "panic", T0), Alarm("main", "gate-b", EID, "panic", T0 + 1)
    desk.offer(a)
    desk.offer(b)
    assert desk.unacked() == [b, a]
