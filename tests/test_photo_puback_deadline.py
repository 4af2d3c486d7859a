"""A photo whose PUBACK never comes holds neither later photos nor an alarm.

Found by a hunt: one photo is in flight at a time, and the no-PUBACK check
looked only at events, so a broker that lost one photo's PUBACK (pings still
answered) held every later photo back for as long as the link lived.  Under a
broker's Receive Maximum 1 the photo also held paho's only slot, and each new
alarm queued behind it.  Now the photo in flight has a PUBACK deadline (the
session ends and the photo goes again) once something sent after it is acked,
or after a backstop of several deadlines (a slow link may still be carrying
it: tests/test_uplink_slow_link.py), and no photo is sent where it would take
the slot an alarm may need.

The deadline is ``max(STABLE_S, keepalive)``; the tests shorten both to 1 s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.events import Event, EventType
from agent.outbox import Outbox
from agent.photosend import PhotoDrain, photo_message
from agent.photostore import Photo, PhotoStore
from agent.uplink import Uplink
from tests.support.clocks import synced_clock
from tests.support.fake5 import Conn, Fake5, Publish, prop_u16
from tests.support.uplinkrig import mqtt_cfg
from tests.support.waiting import eventually
from tests.test_photosend import Failures, photo

CLOCK = synced_clock()
NAME = "photo-np"
ROOT = f"campus/main/{NAME}"


@pytest.fixture(autouse=True)
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.failover.STABLE_S", 1.0)


@contextlib.contextmanager
def link(tmp_path: Path, broker: Fake5, *events: str) -> Iterator[tuple[Uplink, Outbox, list[str]]]:
    """A running uplink with photos for ``events`` stored; yields it, its outbox and the delivered event ids."""
    delivered: list[str] = []
    with PhotoStore(tmp_path / "photos.db") as store, Outbox(tmp_path / "ob.db", site="main", device=NAME) as ob:
        for e in events:
            store.put(photo(e))
        up = Uplink(
            mqtt_cfg(broker.port, client_id=f"main/{NAME}", keepalive_s=1),
            topic_root=ROOT,
            outbox=ob,
            status=lambda: {"v": 1, "state": "online"},
            offline=lambda r: {"v": 1, "state": "offline", "reason": r},
            photos=PhotoDrain(store, ROOT, on_failed=Failures()),
            on_delivered=lambda row: delivered.append(row.id),
        )
        up.start()
        try:
            yield up, ob, delivered
        finally:
            up.close()
            broker.close()


def photos(broker: Fake5) -> list[str]:
    return [t.rsplit("/", 1)[1] for _n, t, _p in broker.published if "/snapshot/" in t]


def lose_first_photo(lost: list[int]) -> Publish:
    def on_publish(c: Conn, pid: int, topic: str, _payload: bytes) -> None:
        if "/snapshot/" in topic and not lost:
            lost.append(pid)  # the broker lost this PUBLISH or its PUBACK; pings are still answered
            return
        c.puback(pid)

    return on_publish


def test_uplink__a_photo_lost_before_a_later_puback_does_not_hold_later_photos(tmp_path: Path) -> None:
    """Brokers ack in order: an event sent after the photo and acked proves the photo lost."""
    lost: list[int] = []
    broker = Fake5(on_publish=lose_first_photo(lost))
    with link(tmp_path, broker, "e1", "e2") as (up, ob, delivered):
        eventually(lambda: lost, 3.0, "the first photo")
        row = ob.put_row(Event.create(CLOCK, EventType.INPUT_FAULT, "door"))
        up.offer([row])
        eventually(lambda: row.id in delivered, 2.0, "the event behind the photo")
        eventually(
            lambda: "e2" in photos(broker),
            4.0,
            lambda: f"the second photo never went; photos={photos(broker)} conns={len(broker.conns)}",
        )
        assert photos(broker)[:2] == ["e1", "e1"], "the lost one went again on the next connection"


def test_uplink__a_lone_lost_photo_is_sent_again_after_the_backstop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing acked after it: a slow link or a lost photo; only the backstop (here 2 deadlines) ends the session."""
    monkeypatch.setattr("agent.overdue._BACKSTOP", 2)
    broker = Fake5(on_publish=lose_first_photo([]))
    with link(tmp_path, broker, "e1", "e2"):
        eventually(lambda: photos(broker), 3.0, "the first photo")
        t0 = time.monotonic()
        eventually(
            lambda: "e2" in photos(broker),
            5.0,
            lambda: f"the second photo never went; photos={photos(broker)} conns={len(broker.conns)}",
        )
        assert time.monotonic() - t0 > 1.5, "not at the first deadline: a slow link may still be carrying it"
        assert photos(broker)[:2] == ["e1", "e1"]


def test_uplink__no_photo_takes_the_only_slot_of_a_receive_maximum_of_one(tmp_path: Path) -> None:
    def no_photo_acks(c: Conn, pid: int, topic: str, _payload: bytes) -> None:
        if "/snapshot/" not in topic:
            c.puback(pid)

    on_publish: Publish = no_photo_acks
    broker = Fake5(connack_props=prop_u16(0x21, 1), on_publish=on_publish)
    with link(tmp_path, broker, "e1") as (up, ob, delivered):
        eventually(
            lambda: any(t.endswith("/status") for _n, t, _p in broker.published),
            3.0,
            "the birth status (behind a photo in the only slot?)",
        )
        alarm = ob.put_row(Event.create(CLOCK, EventType.PANIC, "panic"))
        t0 = time.monotonic()
        up.offer([alarm])
        eventually(lambda: alarm.id in delivered, 3.0, lambda: f"the alarm waited; photos={photos(broker)}")
        assert time.monotonic() - t0 < 0.9, "at once, not after the no-PUBACK reconnect"
        assert photos(broker) == [], "the photo would take the slot an alarm needs"


def test_photo_drain__a_big_photo_has_time_for_its_bytes_on_a_slow_link(tmp_path: Path) -> None:
    """The deadline must not end a connection that is still carrying the photo (400 kB at 64 kbit/s: 50 s)."""
    with PhotoStore(tmp_path / "photos.db") as store:
        drain = PhotoDrain(store, ROOT, on_failed=Failures())
        big = photo_message(ROOT, Photo("e1", "cam", b"j" * 400_000, taken=0.0))
        drain.sent(1, big, at=100.0)
        timed = drain.in_flight()
        assert timed is not None
        sent, allowance, what = timed
        assert 100.0 + 55.0 - sent - allowance == pytest.approx(5.0), "counted from when its bytes could have gone"
        assert what == f"photo {ROOT}/snapshot/e1"
        assert drain.settle(1)
        assert drain.in_flight() is None
