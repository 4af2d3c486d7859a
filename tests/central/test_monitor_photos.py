"""`campus-agent monitor --snapshots DIR`: photos checked, saved safely under DIR, and shown on their alarms."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.central import photofiles
from agent.central.board import summary
from agent.central.display import Alarm, LineKind
from agent.central.fleet import FleetView
from agent.central.monitor import add_monitor_parsers
from agent.central.photos import MAX_PHOTO_BYTES, Outcome, Photo, PhotoDesk, PhotoSaver, check, is_snapshot
from agent.central.session import subscriptions
from agent.events import new_id
from tests.central.test_monitor import T0, MonitorRun, col, enc, event, topic
from tests.support.broker import Broker
from tests.support.mqtt import Central

JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + bytes(range(256)) * 40 + b"\xff\xd9"
EID = "0123456789abcdef0123456789abcdef"


def props(event_id: str, camera: str = "gate-cam", part: str = "1/1") -> Properties:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
    p.ContentType = "image/jpeg"
    p.UserProperty = [("event_id", event_id), ("camera", camera), ("part", part), ("taken", "2026-11-29T06:01:03.000Z")]
    return p


def send(central: Central, topic_: str, payload: bytes, properties: Properties | None = None) -> None:
    info = central.c.publish(topic_, payload, qos=1, properties=properties)
    info.wait_for_publish(5)


def outside_untouched(tmp_path: Path, root: Path) -> list[str]:
    """Every file under tmp_path that is not under root (the photo DIR)."""
    return sorted(str(p) for p in tmp_path.rglob("*") if p.is_file() and root not in p.parents)


# ---- check: what is refused before anything is written ------------------------------------------


@pytest.mark.parametrize(
    ("topic_", "payload", "why"),
    [
        (f"campus/main/../snapshot/{EID}", JPEG, "site or device is not a contract id"),
        (f"campus/../gate/snapshot/{EID}", JPEG, "site or device is not a contract id"),
        ("campus/main/gate/snapshot/..", JPEG, "'..' is not an event id (32 lower-case hex digits)"),
        (f"campus/main/gate/snapshot/{EID.upper()}", JPEG, "is not an event id"),
        (f"campus/main/gate\x1b[2J/snapshot/{EID}", JPEG, "campus/main/gate\\x1b[2J/snapshot/"),
        (f"campus/main/gate/snapshot/{EID}", b"GIF89a....", "payload is not JPEG (no FF D8 start)"),
        (f"campus/main/gate/snapshot/{EID}", b"", "payload is not JPEG"),
        (f"campus/main/gate/snapshot/{EID}", b"\xff\xd8" + bytes(MAX_PHOTO_BYTES), "is over 16777216 bytes"),
    ],
)
def test_check__refuses(topic_: str, payload: bytes, why: str) -> None:
    assert is_snapshot("campus", topic_)
    result = check("campus", topic_, payload, T0)
    assert isinstance(result, str)
    assert why in result
    assert "\x1b" not in result


def test_check__event_id_property_must_be_the_topics() -> None:
    result = check("campus", f"campus/main/gate/snapshot/{EID}", JPEG, T0, user_properties=(("event_id", "f" * 32),))
    assert isinstance(result, str)
    assert "user property event_id 'ffff" in result


def test_check__mqtt5_properties_give_camera_and_part_and_odd_ones_are_dropped() -> None:
    ok = check(
        "campus",
        f"campus/main/gate/snapshot/{EID}",
        JPEG,
        T0,
        user_properties=(("camera", "gate-cam"), ("part", "2/3"), ("taken", "t")),
    )
    assert not isinstance(ok, str)
    assert (ok.camera, ok.part, ok.parts, ok.size) == ("gate-cam", 2, 3, len(JPEG))
    odd = check(
        "campus", f"campus/main/gate/snapshot/{EID}", JPEG, T0, user_properties=(("camera", "../x"), ("part", "3/2"))
    )
    assert not isinstance(odd, str)
    assert (odd.camera, odd.part) == (None, None)


def test_is_snapshot__only_the_four_level_shape() -> None:
    assert not is_snapshot("campus", f"campus/main/gate/snapshot/{EID}/x")
    assert not is_snapshot("campus", f"campus/main/gate/event/{EID}")
    assert not is_snapshot("other", f"campus/main/gate/snapshot/{EID}")


def test_subscriptions__photos_only_when_asked() -> None:
    assert "campus/+/+/snapshot/+" not in subscriptions("campus", None, replies=False)
    assert subscriptions("campus", "main", replies=False, photos=True)[-1] == "campus/main/+/snapshot/+"


# ---- photofiles: the file system side --------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "photos"
    fd = photofiles.open_root(str(path))
    yield path, fd
    os.close(fd)


def test_write_photo__parts_name_the_files_and_a_redelivery_is_a_duplicate(root: tuple[Path, int]) -> None:
    path, fd = root
    assert photofiles.write_photo(fd, "main", "gate", EID, part=1, payload=JPEG) == photofiles.Saved(
        f"{EID}.jpg", False
    )
    assert photofiles.write_photo(fd, "main", "gate", EID, part=2, payload=JPEG + b"2") == photofiles.Saved(
        f"{EID}-2.jpg", False
    )
    assert photofiles.write_photo(fd, "main", "gate", EID, part=1, payload=JPEG) == photofiles.Saved(f"{EID}.jpg", True)
    assert (path / "main/gate" / f"{EID}.jpg").read_bytes() == JPEG
    assert sorted(p.name for p in (path / "main/gate").iterdir()) == [f"{EID}-2.jpg", f"{EID}.jpg"]  # no temp left


def test_write_photo__without_part_takes_the_first_free_name_and_skips_same_bytes(root: tuple[Path, int]) -> None:
    path, fd = root
    names = [
        photofiles.write_photo(fd, "main", "gate", EID, part=None, payload=p)
        for p in (JPEG, JPEG + b"b", JPEG, JPEG + b"c", JPEG + b"b")
    ]
    assert names == [
        photofiles.Saved(f"{EID}.jpg", False),
        photofiles.Saved(f"{EID}-2.jpg", False),
        photofiles.Saved(f"{EID}.jpg", True),
        photofiles.Saved(f"{EID}-3.jpg", False),
        photofiles.Saved(f"{EID}-2.jpg", True),
    ]
    assert (path / "main/gate" / f"{EID}-3.jpg").read_bytes() == JPEG + b"c"


@pytest.mark.parametrize("where", ["site", "device", "file"])
def test_write_photo__a_planted_symlink_is_never_followed(tmp_path: Path, root: tuple[Path, int], where: str) -> None:
    path, fd = root
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"precious")
    if where == "site":
        (path / "main").symlink_to(victim)
    elif where == "device":
        (path / "main").mkdir()
        (path / "main/gate").symlink_to(victim)
    else:
        (path / "main/gate").mkdir(parents=True)
        (path / "main/gate" / f"{EID}.jpg").symlink_to(victim / "keep")
    why = photofiles.write_photo(fd, "main", "gate", EID, part=1, payload=JPEG)
    assert isinstance(why, str)
    assert "symlink" in why
    assert sorted(p.name for p in victim.iterdir()) == ["keep"]
    assert (victim / "keep").read_bytes() == b"precious"


def test_photo_saver__writes_on_its_thread_and_reports_then_closes_idempotently(tmp_path: Path) -> None:
    with PhotoSaver(tmp_path / "p") as saver:
        photo = check("campus", f"campus/main/gate/snapshot/{EID}", JPEG, T0)
        assert not isinstance(photo, str)
        assert saver.submit(photo, JPEG) is None
        saver.close()
        [outcome] = saver.outcomes()
        assert outcome.path == str(tmp_path / "p/main/gate" / f"{EID}.jpg")
        assert "closed" in repr(saver)
        assert saver.submit(photo, JPEG) == "the photo writer is stopped"
    saver.close()


def test_photo_desk__line_names_the_alarm_and_the_board_shows_the_photo() -> None:
    desk, fleet = PhotoDesk(tz=dt.UTC), FleetView(tz=dt.UTC)
    alarm = Alarm("main", "gate-north-1", EID, "panic", T0)
    desk.alarm(alarm)
    photo = check(
        "campus",
        f"campus/main/gate-north-1/snapshot/{EID}",
        JPEG,
        T0 + 1,
        user_properties=(("camera", "gate-cam"), ("part", "1/2")),
    )
    assert not isinstance(photo, str)
    [line] = desk.lines(Outcome(photo, f"/srv/p/main/gate-north-1/{EID}.jpg"), T0 + 1)
    assert line.kind is LineKind.PHOTO
    assert line.text == (
        f"06:01:03.345  {col('gate-north-1')}  PHOTO            of panic id {EID}  camera gate-cam 1/2  "
        f"10 kB  saved /srv/p/main/gate-north-1/{EID}.jpg"
    )
    assert line.record["alarm"] == "panic"
    assert desk.lines(Outcome(photo, "x", duplicate=True), T0) == []
    board = summary(fleet, [alarm], T0 + 2, tz=dt.UTC, photo_of=desk.photo_of)
    assert board.endswith(f"id {EID} not acknowledged  photo /srv/p/main/gate-north-1/{EID}.jpg")


# ---- against a real broker ------------------------------------------------------------------


def start(port: int, snapshots: Path, **opts: Any) -> MonitorRun:
    return MonitorRun(port, snapshots=snapshots, **opts)


@pytest.fixture
def runs() -> Iterator[list[MonitorRun]]:
    started: list[MonitorRun] = []
    yield started
    for r in started:
        r.close()


@pytest.mark.broker
def test_monitor__mqtt5_photo_after_its_panic_is_saved_and_shown(
    broker: Broker, central: Central, device: str, runs: list[MonitorRun], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    run = start(broker.port, photos)
    runs.append(run)
    alarm = event(device)
    central.publish(topic("event/panic", device), enc(alarm))
    send(central, f"campus/main/{device}/snapshot/{alarm['id']}", JPEG, props(alarm["id"]))
    send(central, f"campus/main/{device}/snapshot/{alarm['id']}", JPEG + b"2", props(alarm["id"], "yard-cam", "2/2"))
    out = run.wait_for(f"{alarm['id']}-2.jpg")
    first, second = photos / "main" / device / f"{alarm['id']}.jpg", photos / "main" / device / f"{alarm['id']}-2.jpg"
    assert first.read_bytes() == JPEG
    assert second.read_bytes() == JPEG + b"2"
    assert f"PHOTO            of panic id {alarm['id']}  camera gate-cam 1/1  10 kB  saved {first}" in out
    assert out.index("panic            from panic") < out.index("PHOTO")
    assert "camera yard-cam 2/2" in out
    # Redelivered (at least once): no second line, same files.
    send(central, f"campus/main/{device}/snapshot/{alarm['id']}", JPEG, props(alarm["id"]))
    sentinel = event(device, seq=1043, type_="tamper")
    central.publish(topic("event/tamper", device), enc(sentinel))
    run.wait_for(sentinel["id"])
    assert run.close() == 0
    text = run.out.getvalue()
    assert text.count("PHOTO") == 2
    assert f"id {alarm['id']} not acknowledged  photo {first}" in text
    assert sorted(p.name for p in (photos / "main" / device).iterdir()) == [
        f"{alarm['id']}-2.jpg",
        f"{alarm['id']}.jpg",
    ]


@pytest.mark.broker
def test_monitor__json_has_a_photo_record_and_the_alarm_gets_its_path(
    broker: Broker, central: Central, device: str, runs: list[MonitorRun], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    run = start(broker.port, photos, json=True)
    runs.append(run)
    alarm = event(device)
    central.publish(topic("event/panic", device), enc(alarm))
    send(central, f"campus/main/{device}/snapshot/{alarm['id']}", JPEG, props(alarm["id"]))
    run.wait_for('"kind": "photo"')
    run.close()
    records = [json.loads(ln) for ln in run.out.getvalue().splitlines()]
    path = str(photos / "main" / device / f"{alarm['id']}.jpg")
    [photo] = [r for r in records if r["kind"] == "photo"]
    assert photo | {"arrived": None} == {
        "kind": "photo",
        "arrived": None,
        "site": "main",
        "device": device,
        "event_id": alarm["id"],
        "alarm": "panic",
        "camera": "gate-cam",
        "part": "1/1",
        "taken": "2026-11-29T06:01:03.000Z",
        "bytes": len(JPEG),
        "path": path,
    }
    [board_alarm] = [r for r in records if r["kind"] == "alarm" and r["id"] == alarm["id"]]
    assert board_alarm["photo"] == path


@pytest.mark.broker
def test_monitor__mqtt311_photos_take_numbered_names(
    broker: Broker, device: str, runs: list[MonitorRun], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    run = start(broker.port, photos)
    runs.append(run)
    old = Central(broker.port, topics=("none/#",), v5=False)
    try:
        alarm = event(device)
        old.publish(topic("event/panic", device), enc(alarm))
        for payload in (JPEG, JPEG + b"b", JPEG):  # the third is a redelivery of the first
            old.publish(f"campus/main/{device}/snapshot/{alarm['id']}", payload)
        sentinel = event(device, seq=1043, type_="tamper")
        old.publish(topic("event/tamper", device), enc(sentinel))
        out = run.wait_for(f"{alarm['id']}-2.jpg")
        run.wait_for(sentinel["id"])
    finally:
        old.close()
    assert (
        f"of panic id {alarm['id']}  camera ?  10 kB  saved {photos / 'main' / device / (alarm['id'] + '.jpg')}" in out
    )
    assert (photos / "main" / device / f"{alarm['id']}-2.jpg").read_bytes() == JPEG + b"b"
    assert sorted(p.name for p in (photos / "main" / device).iterdir()) == [
        f"{alarm['id']}-2.jpg",
        f"{alarm['id']}.jpg",
    ]


@pytest.mark.broker
def test_monitor__hostile_photos_write_nothing_outside_and_warn_escaped(
    broker: Broker, central: Central, device: str, runs: list[MonitorRun], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    run = start(broker.port, photos)
    runs.append(run)
    victim = tmp_path / "victim.jpg"
    victim.write_bytes(b"precious")
    good = new_id()
    (photos / "main" / device).mkdir(parents=True)
    (photos / "main" / device / f"{good}.jpg").symlink_to(victim)
    send(central, f"campus/main/../snapshot/{EID}", JPEG)
    send(central, f"campus/main/{device}/snapshot/..", JPEG)
    send(central, f"campus/main/{device}\u202e/snapshot/{EID}", JPEG)  # mosquitto drops a client sending C0/C1
    send(central, f"campus/main/{device}/snapshot/{EID}", b"<html>not a photo</html>")
    send(central, f"campus/main/{device}/snapshot/{good}", JPEG, props(good))
    out = run.wait_for(f"{good}.jpg is a symlink, not a file; not replaced")
    for needle in (
        "campus/main/../snapshot/",
        "site or device is not a contract id",
        "'..' is not an event id",
        f"campus/main/{device}\\u202e/snapshot/",
        "payload is not JPEG (no FF D8 start); not saved",
    ):
        assert needle in out
    assert "\u202e" not in out
    assert victim.read_bytes() == b"precious"
    assert outside_untouched(tmp_path, photos) == [str(victim)]
    assert [p.name for p in (photos / "main" / device).iterdir()] == [f"{good}.jpg"]
    assert list(photos.iterdir()) == [photos / "main"]
    assert list((photos / "main").iterdir()) == [photos / "main" / device]


def test_cli__snapshots_dir_that_cannot_be_made_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    blocker = tmp_path / "file"
    blocker.write_text("x")
    parser = argparse.ArgumentParser(prog="campus-agent")
    add_monitor_parsers(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["monitor", "--broker", "127.0.0.1:1", "--once", "--snapshots", str(blocker / "sub")])
    assert args.func(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"campus-agent monitor: --snapshots {blocker / 'sub'}: Not a directory; give a directory this "
        "user may create and write"
    ]


@pytest.mark.broker
def test_monitor__a_photo_built_as_the_device_builds_it_lands_at_the_contract_path(
    broker: Broker, central: Central, device: str, runs: list[MonitorRun], tmp_path: Path
) -> None:
    from agent.photosend import photo_message
    from agent.photostore import Photo as StoredPhoto

    photos = tmp_path / "photos"
    run = start(broker.port, photos)
    runs.append(run)
    alarm = event(device, type_="tamper")
    central.publish(topic("event/tamper", device), enc(alarm))
    for part in (1, 2):
        msg = photo_message(
            f"campus/main/{device}", StoredPhoto(alarm["id"], f"cam-{part}", JPEG + bytes([part]), T0, part, 2)
        )
        p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
        p.ContentType = msg.content_type
        p.UserProperty = list(msg.user_properties)
        central.c.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, properties=p).wait_for_publish(5)
    out = run.wait_for(f"{alarm['id']}-2.jpg")
    assert f"of tamper id {alarm['id']}  camera cam-1 1/2" in out
    assert (photos / "main" / device / f"{alarm['id']}.jpg").read_bytes() == JPEG + b"\x01"
    assert (photos / "main" / device / f"{alarm['id']}-2.jpg").read_bytes() == JPEG + b"\x02"


def test_session__photos_are_handed_on_after_the_events_of_the_same_batch(tmp_path: Path) -> None:
    import io
    import queue

    from agent.central.link import Incoming
    from agent.central.session import MonitorOptions, _Session

    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    out = io.StringIO()
    alarm = event("gate-north-1")
    with PhotoSaver(tmp_path / "p") as saver:
        session = _Session(
            None,  # type: ignore[arg-type]  # draining the inbox never touches the link
            inbox,
            "campus",
            MonitorOptions(table_every_s=0),
            out,
            wall=lambda: T0,
            saver=saver,
        )
        printed_at_submit: list[str] = []
        submit = saver.submit

        def watching(photo: Photo, payload: bytes) -> str | None:
            printed_at_submit.append(out.getvalue())
            return submit(photo, payload)

        saver.submit = watching  # type: ignore[method-assign]
        inbox.put(Incoming(f"campus/main/gate-north-1/snapshot/{alarm['id']}", JPEG, False, T0))
        inbox.put(Incoming(topic("event/panic"), enc(alarm), False, T0))
        session._drain(0)
        saver.close()
        session._saved()
    [seen] = printed_at_submit
    assert f"id {alarm['id']}" in seen  # the alarm was on screen before the photo went to the writer
    assert "PHOTO            of panic" in out.getvalue()
