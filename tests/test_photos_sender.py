"""The sender and the photo store: the sender never waits on the store, never fails for it, and alarms go first.

Unit tests of :class:`~agent.photosend.PhotoDrain` and :class:`~agent.pubacks.PubAcks`
with a real SQLite store, then the uplink against a real mosquitto on 127.0.0.1.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from agent.errors import OutboxError
from agent.events import Clock, Event, EventType
from agent.outbox import Outbox
from agent.photosend import STRIKES, PhotoDrain
from agent.photostore import Photo, PhotoStore
from agent.pubacks import PubAcks
from agent.sendwindow import SendWindow
from agent.sidelane import SideLane
from agent.uplink import Uplink
from tests.support.broker import Broker
from tests.support.mqtt import Central
from tests.support.snapcam import make_jpeg
from tests.support.tmpfs import small_tmpfs
from tests.support.uplinkrig import mqtt_cfg
from tests.support.waiting import eventually, never
from tests.test_photosend import ROOT, Failures, photo

CLOCK = Clock(synced=lambda: True, boot_id="b")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PhotoStore]:
    with PhotoStore(tmp_path / "photos.db") as s:
        yield s


class WriterHolding:
    """Another process's write transaction on ``photos.db`` (a technician's sqlite3 shell, a backup tool)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=0.1, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.rollback()
        self.conn.close()


def slow_put(store: PhotoStore, event: str) -> threading.Thread:
    """A camera worker's put, stuck in SQLite's busy wait (10 s) while it holds the store."""
    t = threading.Thread(target=lambda: store.put(photo(event)), name="slow-put", daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("mqtt5", [False, True])
def test_photo_drain__mqtt5_link_flaps_never_drop_a_photo(store: PhotoStore, mqtt5: bool) -> None:
    """ "3 connections ended with it in flight: dropped" applied under MQTT 5 too, where the broker says its limit.

    ``mqtt5`` False: the limit announced in the CONNACK (only MQTT 5 has one);
    True: the uplink says MQTT 5 and the broker announced no limit.
    """
    failures = Failures()
    drain = PhotoDrain(store, ROOT, on_failed=failures)
    store.put(photo("e1"))
    for n in range(1, STRIKES + 2):
        drain.mqtt5, drain.limit = mqtt5, (None if mqtt5 else 1 << 20)
        msg = drain.take(events_idle=True)
        assert msg is not None, f"connection {n}"
        drain.sent(n, msg)
        drain.reset()  # a flaky link: the connection drops while the photo travels
    assert failures == []
    assert [p.event_id for p in store.pending()] == ["e1"]


def test_photo_drain__never_waits_for_a_slow_commit(tmp_path: Path, store: PhotoStore) -> None:
    """The sender's take and ack waited on the store's lock, held across a camera worker's whole commit.

    The sender holds the events' round meanwhile, so an alarm waited up to the
    store's 10 s busy timeout.  Now the photo waits instead: a PUBACK the store
    cannot record now is kept in memory, and that photo is not sent twice.
    """
    drain = PhotoDrain(store, ROOT, on_failed=Failures())
    store.put(photo("e1"))
    msg = drain.take(events_idle=True)
    assert msg is not None
    drain.sent(1, msg)
    other = WriterHolding(tmp_path / "photos.db")
    worker = slow_put(store, "e2")
    try:
        eventually(store._lock.locked, 5.0, "the camera worker holding the store")
        t0 = time.monotonic()
        assert drain.settle(1)
        assert drain.take(events_idle=True) is None
        took = time.monotonic() - t0
        assert worker.is_alive(), "the commit still waits"
        assert took < 5.0, f"the sender waited {took:.1f} s on the photo store"
    finally:
        other.release()
        worker.join(15.0)
    msg = drain.take(events_idle=True)  # the remembered ack goes to the store first
    assert msg is not None
    assert msg.topic.endswith("/e2")
    assert [p.event_id for p in store.pending()] == ["e2"]


def test_photo_drain__store_errors_stay_in_the_drain(store: PhotoStore, caplog: pytest.LogCaptureFixture) -> None:
    """A store that cannot record a PUBACK raised out of the sender's round: the session was torn down."""
    drain = PhotoDrain(store, ROOT, on_failed=Failures())
    store.put(photo("e1"))
    msg = drain.take(events_idle=True)
    assert msg is not None
    drain.sent(1, msg)
    store.close()  # the store refuses everything from now on
    assert drain.settle(1)
    assert drain.take(events_idle=True) is None
    drain.sent(2, msg)
    drain.reset()
    errors = [r for r in caplog.records if r.name == "agent.photosend"]
    assert len(errors) == 1, "logged once"
    assert "kept in memory" in errors[0].getMessage()


class _RaisingSide:
    """A side lane whose settle fails for mid 1 (a photo store that raised, a held event's callback)."""

    def settle(self, mid: int, refusal: str | None) -> bool:
        if mid == 1:
            raise OutboxError("photo store: database or disk is full")
        return False


def test_pubacks__a_failing_side_settle_costs_no_event_its_ack(tmp_path: Path) -> None:
    """One PUBACK whose side settle raised ended the pass: the event PUBACKs already taken were never acked."""
    with Outbox(tmp_path / "ob.db", site="main", device="gate-1") as ob:
        seq = ob.put(Event.create(CLOCK, EventType.PANIC, "panic"))
        window = SendWindow(ob, max_inflight=4, rate_per_s=50.0)
        [row] = window.take(0.0)
        window.sent(2, row)
        delivered: list[int] = []
        acks = PubAcks(window, cast("SideLane", _RaisingSide()), ob, ROOT, lambda r: delivered.append(r.seq))
        acks.put(1, None)
        acks.put(2, None)
        acks.settle(0.0)
        assert delivered == [seq]
        assert ob.stats().pending == 0


# ---- the uplink against mosquitto ----------------------------------------------------------------


def start_uplink(broker: Broker, name: str, ob: Outbox, drain: PhotoDrain, **cfg: float) -> Uplink:
    up = Uplink(
        mqtt_cfg(broker.port, client_id=f"main/{name}", **cfg),
        topic_root=f"campus/main/{name}",
        outbox=ob,
        status=lambda: {"v": 1, "state": "online"},
        offline=lambda r: {"v": 1, "state": "offline", "reason": r},
        photos=drain,
    )
    up.start()
    return up


def alarm_reaches(central: Central, ob: Outbox, up: Uplink, timeout: float) -> None:
    ob.put(Event.create(CLOCK, EventType.PANIC, "panic"))
    up.offer([])  # as the recorder does after its commit
    up.wake()
    eventually(lambda: any(m.topic.endswith("/event/panic") for m in central.all), timeout, "the alarm")


@pytest.mark.broker
def test_uplink__alarm_goes_while_a_photo_commit_holds_the_store(tmp_path: Path, broker: Broker) -> None:
    """A camera worker's put waiting on SQLite held the store; the sender's round waited on it, and the alarm too."""
    name = "gate-1-lock"
    with PhotoStore(tmp_path / "photos.db") as store, Outbox(tmp_path / "ob.db", site="main", device=name) as ob:
        drain = PhotoDrain(store, f"campus/main/{name}", on_failed=Failures())
        central = Central(broker.port, topics=(f"campus/main/{name}/#",))
        up = start_uplink(broker, name, ob, drain)
        other = worker = None
        try:
            eventually(lambda: up.state().connected, 10.0, "connected")
            other = WriterHolding(tmp_path / "photos.db")
            worker = slow_put(store, "c" * 32)
            eventually(store._lock.locked, 5.0, "the camera worker holding the store")
            up.wake()  # a round asks the drain for a photo
            alarm_reaches(central, ob, up, 8.0)  # the put gives up after 10 s
            assert worker.is_alive(), "the alarm went while the commit still waited"
        finally:
            if other is not None:
                other.release()
            if worker is not None:
                worker.join(15.0)
            up.stop()
            central.close()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs for photos.db alone, always unmounted."""
    with small_tmpfs(tmp_path, 8) as d:
        yield d


@pytest.mark.broker
def test_uplink__photo_puback_on_a_full_disk_costs_no_link(tmp_path: Path, small_fs: Path, broker: Broker) -> None:
    """On a full disk the photo's ack raised out of the sender's round: the link was dropped and alarms waited."""
    name = "gate-1-fulldisk"
    store = PhotoStore(small_fs / "photos.db", max_mb=5)
    store.put(Photo("e" * 32, "gate-cam", make_jpeg(200_000, 1), taken=time.time()))
    st = os.statvfs(small_fs)
    fd = os.open(small_fs / "filler", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
    finally:
        os.close(fd)
    drain = PhotoDrain(store, f"campus/main/{name}", on_failed=Failures())
    with store, Outbox(tmp_path / "ob.db", site="main", device=name) as ob:  # the outbox on a healthy disk
        central = Central(broker.port, topics=(f"campus/main/{name}/#",))
        up = start_uplink(broker, name, ob, drain, reconnect_min_s=1.0, reconnect_max_s=60.0)
        try:
            central.wait_for(lambda m: "/snapshot/" in m.topic, timeout=10)
            eventually(lambda: drain.sent_count == 1 and not drain.busy, 10.0, "the photo's PUBACK settled")
            never(lambda: up.state().reconnects > 0, 3.0, "a reconnect")
            assert sum("/snapshot/" in m.topic for m in central.all) == 1, "a delivered photo is not sent again"
            alarm_reaches(central, ob, up, 5.0)
            assert up.state().reconnects == 0
        finally:
            up.stop()
            central.close()
