"""A retried capture and a store that cannot open: each copy of a photo goes on its own PUBACK, and an
unopenable ``photos.db`` is tried on a backoff, not at every still.

The drain deletes a delivered photo by its (event_id, camera).  When that
delete had to wait (another writer held the file, a full disk), a retried
capture stored meanwhile under the same key was deleted with it, unsent; so
was a retry stored while the first copy was in flight, at the first copy's
PUBACK.  The contract deletes a photo "only on its own successful PUBACK".
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from agent.errors import OutboxError
from agent.photosend import PhotoDrain
from agent.photostore import Photo, PhotoStore
from agent.photostore_file import RETRY_FIRST_S, RETRY_MAX_S
from tests.support.snapcam import make_jpeg

ROOT = "campus/main/gate-1"
KEYS = (("e1", "gate-cam"), ("e1", "door-cam"), ("e2", "gate-cam"))


def copy(event: str, seed: int, camera: str = "gate-cam") -> Photo:
    """One capture of (event, camera); ``seed`` tells its bytes from another capture's."""
    return Photo(event, camera, make_jpeg(3000, seed), taken=1_799_971_200.0 + seed)


class Failures(list[tuple[str, str, str, str]]):
    def __call__(self, *args: str) -> None:
        self.append(args)  # type: ignore[arg-type]


class OtherWriter:
    """Another process's write transaction on ``photos.db``: the drain's delete cannot go now."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=0.1, check_same_thread=False)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.rollback()
        self.conn.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PhotoStore]:
    with PhotoStore(tmp_path / "photos.db") as s:
        yield s


def deliver(drain: PhotoDrain, mid: int) -> bytes | None:
    """Take, send and PUBACK the next photo; its bytes, or None when the drain has none to send."""
    msg = drain.take(events_idle=True)
    if msg is None:
        return None
    drain.sent(mid, msg)
    assert drain.settle(mid)
    return msg.payload


def test_photo_retries__a_retry_stored_while_the_delete_waits_is_still_sent(tmp_path: Path, store: PhotoStore) -> None:
    """PUBACK, the delete deferred (another writer), a retry stored: the deferred delete took the retry."""
    drain = PhotoDrain(store, ROOT, on_failed=Failures())
    store.put(copy("e1", 1))
    msg = drain.take(events_idle=True)
    assert msg is not None
    drain.sent(1, msg)
    other = OtherWriter(tmp_path / "photos.db")
    try:
        assert drain.settle(1)  # the delete cannot go now: kept in the drain's memory
    finally:
        other.release()
    retry = copy("e1", 2)
    store.put(retry)
    assert deliver(drain, 2) == retry.jpeg, "the retry was deleted unsent by the first copy's delete"
    assert store.pending() == []


def test_photo_retries__a_retry_stored_while_the_first_is_in_flight_is_still_sent(store: PhotoStore) -> None:
    """The first copy's PUBACK deleted the retry stored under its key while it travelled."""
    drain = PhotoDrain(store, ROOT, on_failed=Failures())
    store.put(copy("e1", 1))
    msg = drain.take(events_idle=True)
    assert msg is not None
    drain.sent(1, msg)
    retry = copy("e1", 2)
    store.put(retry)
    assert drain.settle(1)
    assert [p.jpeg for p in store.pending()] == [retry.jpeg], "the first copy's PUBACK deleted the retry"
    assert deliver(drain, 2) == retry.jpeg
    assert store.pending() == []


def test_photo_retries__the_sent_copy_is_deleted_on_its_puback(store: PhotoStore) -> None:
    """No retry: the delivered copy is deleted as before, and a drop for room leaves nothing behind."""
    drain = PhotoDrain(store, ROOT, on_failed=Failures())
    first = copy("e1", 1)
    store.put(first)
    assert deliver(drain, 1) == first.jpeg
    assert store.pending() == []
    assert store.stats().pending == 0


class RetryMachine(RuleBasedStateMachine):
    """Captures, retries, sends, PUBACKs, resets and a busy store in any order.

    The property: once the store is free and the drain has sent all it will,
    the newest copy of every key was delivered (a copy replaced before it was
    sent may be lost: a retry replaces it), and nothing is left in the store.
    """

    @initialize()
    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="photo-retries-"))
        self.store = PhotoStore(self.dir / "photos.db")
        self.failures = Failures()
        self.drain = PhotoDrain(self.store, ROOT, on_failed=self.failures)
        self.drain.mqtt5 = True  # a flaky link never drops a photo under MQTT 5
        self.newest: dict[tuple[str, str], bytes] = {}
        self.delivered: set[bytes] = set()
        self.inflight: tuple[int, bytes] | None = None
        self.other: OtherWriter | None = None
        self.seed = 0
        self.mid = 0

    @precondition(lambda self: self.other is None)  # a put would wait out SQLite's busy timeout
    @rule(key=st.sampled_from(KEYS))
    def capture(self, key: tuple[str, str]) -> None:
        self.seed += 1
        photo = copy(key[0], self.seed, key[1])
        self.store.put(photo)
        self.newest[key] = photo.jpeg

    @rule()
    def send(self) -> None:
        msg = self.drain.take(events_idle=True)
        if msg is not None:
            self.mid += 1
            self.drain.sent(self.mid, msg)
            self.inflight = (self.mid, msg.payload)

    @precondition(lambda self: self.inflight is not None)
    @rule()
    def puback(self) -> None:
        assert self.inflight is not None
        mid, payload = self.inflight
        self.inflight = None
        assert self.drain.settle(mid)
        self.delivered.add(payload)

    @precondition(lambda self: self.inflight is not None)
    @rule()
    def connection_lost(self) -> None:
        self.drain.reset()
        self.inflight = None

    @precondition(lambda self: self.other is None)
    @rule()
    def other_writer(self) -> None:
        self.other = OtherWriter(self.dir / "photos.db")

    @precondition(lambda self: self.other is not None)
    @rule()
    def other_done(self) -> None:
        assert self.other is not None
        self.other.release()
        self.other = None

    def teardown(self) -> None:
        try:
            if self.other is not None:
                self.other_done()
            if self.inflight is not None:
                self.puback()
            for _ in range(2 * len(KEYS) + 2):  # bounded: each round delivers one photo or ends
                self.mid += 1
                got = deliver(self.drain, self.mid)
                if got is None:
                    break
                self.delivered.add(got)
            lost = [key for key, jpeg in self.newest.items() if jpeg not in self.delivered]
            assert lost == [], f"the newest copy of {lost} was never sent"
            assert self.store.pending() == []
            assert self.failures == []
        finally:
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)


RetryMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=15, deadline=None)
test_photo_retries__stateful = RetryMachine.TestCase


# ---- an unopenable photos.db: tried on a backoff ---------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(PhotoStore):
    """A store that counts its attempts to open the file (each runs ``quick_check``)."""

    opens = 0

    def _connect(self) -> sqlite3.Connection:
        self.opens += 1
        return super()._connect()


def test_photo_retries__an_unopenable_store_is_tried_on_a_backoff(tmp_path: Path) -> None:
    """Every still tried the open again, ``quick_check`` and all: seconds of disk reads per still on a Pi."""
    path = tmp_path / "photos.db"
    path.mkdir()  # SQLite cannot open a directory: not damage, so it is left where it is
    clock = FakeClock()
    store = CountingStore(path, mono=clock)
    try:
        assert store.opens == 1
        for wait in (RETRY_FIRST_S, 2 * RETRY_FIRST_S, 4 * RETRY_FIRST_S, 8 * RETRY_FIRST_S, 16 * RETRY_FIRST_S):
            opens, start = store.opens, clock.now  # the last attempt failed at start
            for n in range(5):  # an alarm storm within the step
                clock.now = start + n * (wait - 1.0) / 4
                with pytest.raises(OutboxError, match=r"^photos\.db unavailable \(") as raised:
                    store.put(copy("e1", 1))
            assert store.opens == opens, f"the open was tried again within its {wait:g} s step"
            assert str(raised.value).endswith("; next try in 1 s"), raised.value
            assert store.error is not None
            assert "unavailable" in repr(store)
            clock.now = start + wait
            with pytest.raises(OutboxError):
                store.put(copy("e1", 1))
            assert store.opens == opens + 1, f"the open was not tried after {wait:g} s"
        for _ in range(3):  # the step stops growing at its ceiling
            opens, start = store.opens, clock.now
            clock.now = start + RETRY_MAX_S - 1.0
            with pytest.raises(OutboxError):
                store.put(copy("e1", 1))
            assert store.opens == opens
            clock.now = start + RETRY_MAX_S
            with pytest.raises(OutboxError):
                store.put(copy("e1", 1))
            assert store.opens == opens + 1, f"not tried after the {RETRY_MAX_S:g} s ceiling"
        path.rmdir()
        clock.now += RETRY_MAX_S
        assert store.put(copy("e1", 1)) == []
        assert store.error is None
        assert [p.event_id for p in store.pending()] == ["e1"]
    finally:
        store.close()


def test_photo_retries__the_oldest_never_opens_the_file(tmp_path: Path) -> None:
    """The sender's read never pays for an open: the camera workers' stills try it, on the backoff."""
    path = tmp_path / "photos.db"
    path.mkdir()
    clock = FakeClock()
    store = CountingStore(path, mono=clock)
    try:
        clock.now += 10 * RETRY_MAX_S
        assert store.oldest() is None
        assert store.opens == 1
    finally:
        store.close()
