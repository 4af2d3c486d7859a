"""The photo store: oldest-first order, its own size cap, acks, damage, and a SIGKILL mid-stream."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from agent.errors import OutboxError
from agent.photostore import Photo, PhotoStore
from tests.support.snapcam import make_jpeg
from tests.support.waiting import eventually

KB = 1024


def photo(event: str, size: int = 10 * KB, camera: str = "gate-cam", seed: int = 0) -> Photo:
    return Photo(event, camera, make_jpeg(size, seed), taken=1_800_000_000.0 + seed)


def test_photostore__pending_is_oldest_first_and_ack_removes(tmp_path: Path) -> None:
    with PhotoStore(tmp_path / "photos.db", max_mb=1) as store:
        for i in range(5):
            store.put(photo(f"e{i}", seed=i))
        store.put(photo("e1", camera="door-cam", seed=9))
        assert [(p.event_id, p.camera) for p in store.pending(10)] == [
            ("e0", "gate-cam"),
            ("e1", "gate-cam"),
            ("e2", "gate-cam"),
            ("e3", "gate-cam"),
            ("e4", "gate-cam"),
            ("e1", "door-cam"),
        ]
        assert store.pending(2)[0].jpeg == make_jpeg(10 * KB, 0)
        assert store.ack("e1", "gate-cam") == 1
        assert store.ack("e1", "gate-cam") == 0  # a duplicate PUBACK after a reconnect
        assert store.ack("e0") == 1
        assert [(p.event_id, p.camera) for p in store.pending()] == [
            ("e2", "gate-cam"),
            ("e3", "gate-cam"),
            ("e4", "gate-cam"),
            ("e1", "door-cam"),
        ]
        assert store.stats().pending == 4
        assert store.stats().bytes == 4 * 10 * KB


def test_photostore__survives_reopen_with_parts_and_times(tmp_path: Path) -> None:
    with PhotoStore(tmp_path / "photos.db") as store:
        store.put(Photo("e1", "gate-cam", make_jpeg(3000), taken=1_800_000_000.25, part=2, parts=3))
    with PhotoStore(tmp_path / "photos.db") as store:
        [p] = store.pending()
        assert (p.part, p.parts, p.taken, p.jpeg) == (2, 3, 1_800_000_000.25, make_jpeg(3000))
        assert "bytes" in repr(p)
        assert make_jpeg(3000)[:10].hex() not in repr(p)


def test_photostore__cap_drops_oldest_photos_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "photos.db"
    with PhotoStore(path, max_mb=1) as store:  # room for 5 photos of 200 kB
        dropped = [store.put(photo(f"e{i}", size=200 * KB, seed=i)) for i in range(8)]
        assert dropped == [[]] * 5 + [[("e0", "gate-cam")], [("e1", "gate-cam")], [("e2", "gate-cam")]]
        assert [p.event_id for p in store.pending(10)] == ["e3", "e4", "e5", "e6", "e7"]
        assert store.stats().dropped == 3
        assert store.stats().bytes <= store.cap_bytes
    with PhotoStore(path, max_mb=1) as store:
        assert store.stats().dropped == 3, "the count survives a restart"
    assert path.stat().st_size < 2 * (1 << 20), "dropped photos give their disk space back"


def test_photostore__never_touches_the_outbox(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.db"
    outbox.write_bytes(b"alarms live here")
    with PhotoStore(tmp_path / "photos.db", max_mb=1) as store:
        for i in range(20):
            store.put(photo(f"e{i}", size=300 * KB, seed=i))
    assert outbox.read_bytes() == b"alarms live here"


def test_photostore__refuses_a_photo_larger_than_the_whole_cap(tmp_path: Path) -> None:
    with PhotoStore(tmp_path / "photos.db", max_mb=1) as store:
        store.put(photo("e0"))
        with pytest.raises(OutboxError, match=r"photo of 1048577 bytes is larger than the photo store's cap"):
            store.put(photo("e1", size=(1 << 20) + 1))
        assert [p.event_id for p in store.pending()] == ["e0"]


def test_photostore__same_event_and_camera_replaces(tmp_path: Path) -> None:
    with PhotoStore(tmp_path / "photos.db") as store:
        store.put(photo("e0", seed=1))
        store.put(photo("e0", seed=2))
        [p] = store.pending()
        assert p.jpeg == make_jpeg(10 * KB, 2)


def test_photostore__damaged_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "photos.db"
    path.write_bytes(b"this is not a database" * 100)
    with PhotoStore(path, wall=lambda: 1234.0) as store:
        assert store.pending() == []
        store.put(photo("e0"))
    assert (tmp_path / "photos.db.damaged-1234").read_bytes().startswith(b"this is not")
    assert "moved aside" in caplog.text


def test_photostore__close_is_idempotent_and_repr_says_so(tmp_path: Path) -> None:
    store = PhotoStore(tmp_path / "photos.db")
    assert "pending=0" in repr(store)
    store.close()
    store.close()
    assert repr(store).endswith("closed>")
    with pytest.raises(OutboxError, match="is closed"):
        store.pending()


_CHILD = textwrap.dedent("""
    import sys
    from agent.photostore import Photo, PhotoStore
    from tests.support.snapcam import make_jpeg
    store = PhotoStore(sys.argv[1], max_mb=2)
    i = 0
    while True:
        store.put(Photo(f"e{i}", "gate-cam", make_jpeg(20_000 + i, i), taken=float(i)))
        print("put", i, flush=True)
        if i % 3 == 0:
            store.ack(f"e{i}")
            print("acked", i, flush=True)
        i += 1
""")


def test_photostore__sigkill_between_write_and_ack_leaves_a_readable_store(tmp_path: Path) -> None:
    path = tmp_path / "photos.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    put: set[int] = set()
    acked: set[int] = set()
    try:
        stdout = child.stdout
        assert stdout is not None

        def forty_put() -> bool:
            line = stdout.readline()  # blocks until the child writes: no pacing needed
            assert line, f"the child stopped writing after {len(put)} photos"
            word, n = line.split()
            (put if word == "put" else acked).add(int(n))
            return len(put) >= 40

        eventually(forty_put, 60.0, "the child to put 40 photos", interval=0)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with PhotoStore(path, max_mb=2) as store:
        pending = {p.event_id: p for p in store.pending(10_000)}
    for i in put - acked:
        if i % 3 == 0 and i == max(put):
            continue  # killed between its put and its ack: either outcome is right
        assert f"e{i}" in pending, f"photo e{i} was committed but is gone"
        assert pending[f"e{i}"].jpeg == make_jpeg(20_000 + i, i)
    assert not {f"e{i}" for i in acked} & set(pending), "an acknowledged photo came back"


class StoreMachine(RuleBasedStateMachine):
    """Puts and acks in any order: photos stay under the cap, oldest first, and only the oldest are dropped."""

    @initialize(target=None)
    def open_store(self) -> None:
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.store = PhotoStore(Path(self.dir.name) / "photos.db", max_mb=1)
        self.model: list[tuple[str, int]] = []  # (event_id, size) oldest first
        self.n = 0

    @rule(size=st.integers(min_value=1, max_value=400 * KB))
    def put(self, size: int) -> None:
        eid = f"e{self.n}"
        self.n += 1
        self.store.put(Photo(eid, "cam", b"\xff\xd8" + bytes(max(0, size - 2)), taken=float(self.n)))
        self.model.append((eid, size))
        while sum(s for _, s in self.model) > self.store.cap_bytes:
            self.model.pop(0)

    @rule(pick=st.integers(min_value=0, max_value=50))
    def ack(self, pick: int) -> None:
        if not self.model:
            assert self.store.ack("nothing") == 0
            return
        eid, _ = self.model.pop(pick % len(self.model))
        assert self.store.ack(eid) == 1

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = PhotoStore(Path(self.dir.name) / "photos.db", max_mb=1)

    @invariant()
    def matches_model(self) -> None:
        if hasattr(self, "store"):
            assert [p.event_id for p in self.store.pending(1000)] == [e for e, _ in self.model]
            assert self.store.stats().bytes == sum(max(2, s) for _, s in self.model)

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            self.dir.cleanup()


StoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
test_photostore__stateful = StoreMachine.TestCase


def test_photostore__stats_fit_the_status_schema(tmp_path: Path) -> None:
    import dataclasses

    import jsonschema

    from agent.schemas import load

    schema = load("status")
    with PhotoStore(tmp_path / "photos.db", max_mb=1) as store:
        for i in range(7):
            store.put(photo(f"e{i}", size=200 * KB, seed=i))
        stats = dataclasses.asdict(store.stats())
    doc = {k: stats[k] for k in ("pending", "bytes", "dropped")}
    assert doc == {"pending": 5, "bytes": 5 * 200 * KB, "dropped": 2}
    jsonschema.validate(doc, {**schema["$defs"]["photos"], "$defs": schema["$defs"]})


def test_photostore__a_second_damaged_file_in_the_same_second_does_not_replace_the_first(tmp_path: Path) -> None:
    """A Pi has no battery clock: after a power cut the same second comes again, and the rename replaced
    the file moved aside before it."""
    path = tmp_path / "photos.db"
    for text in (b"first damaged file", b"second damaged file"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.write_bytes(text * 100)
        PhotoStore(path, wall=lambda: 1234.0).close()
    kept = sorted(
        p.read_bytes()[:6] for p in tmp_path.glob("photos.db.damaged-*") if not p.name.endswith(("-wal", "-shm"))
    )
    assert kept == [b"first ", b"second"]
