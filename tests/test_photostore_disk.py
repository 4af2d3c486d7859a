"""The photo store on a small filesystem shared with the outbox (a tmpfs, as tests/faults/test_disk_full.py mounts).

Photos must never cost an alarm: a full disk at start leaves ``photos.db``
where it is and the agent runs without it, and photos never use the free
space the outbox keeps to be able to delete on a full disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import OutboxError
from agent.events import Clock, Event, EventType
from agent.outbox import HEADROOM_BYTES, Outbox
from agent.photostore import Photo, PhotoStore
from agent.photostore_file import RETRY_FIRST_S
from tests.support.agentproc import AgentFactory
from tests.support.broker import Broker
from tests.support.mqtt import Central
from tests.support.snapcam import SnapCamera, make_jpeg
from tests.support.tmpfs import free_bytes, small_tmpfs
from tests.support.waiting import eventually

KIB = 1024
MIB = 1024 * KIB
CLOCK = Clock(synced=lambda: True, boot_id="b")


@pytest.fixture
def small_fs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs of 16 MiB (or ``@pytest.mark.parametrize("fs_mib", ...)``), always unmounted."""
    size = getattr(request, "param", 16)
    with small_tmpfs(tmp_path, size) as d:
        yield d


def fill(d: Path, leave: int = 0) -> Path:
    """Grow ``d/filler`` until about ``leave`` bytes are free (0: every block, the last ones too)."""
    filler = d / "filler"
    fd = os.open(filler, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, os.fstat(fd).st_size, max(1, free_bytes(d) - leave))
    finally:
        os.close(fd)
    return filler


def test_photostore__full_disk_at_open_is_unavailable_not_damaged(small_fs: Path) -> None:
    """Any error at open was taken for damage: a healthy photos.db on a full disk was moved aside.

    The agent then failed to start (the new file could not be created either).
    Now the file stays where it is, the store runs without it, every still is
    refused (reported ``store_error``) and the file is used again once there is room.
    """
    with PhotoStore(small_fs / "photos.db", max_mb=1) as s:
        s.put(Photo("a" * 32, "cam", make_jpeg(50_000), 1.0))
    filler = fill(small_fs)
    now = [0.0]
    store = PhotoStore(small_fs / "photos.db", max_mb=1, mono=lambda: now[0])
    try:
        assert sorted(p.name for p in small_fs.iterdir() if "damaged" in p.name) == []
        assert store.error is not None
        assert store.error.startswith("photos.db unavailable ("), store.error
        assert store.oldest() is None
        with pytest.raises(OutboxError, match=r"^photos\.db unavailable \("):
            store.put(Photo("b" * 32, "cam", make_jpeg(10_000), 2.0))
        filler.unlink()
        now[0] += RETRY_FIRST_S  # the first still after the backoff tries the file again
        assert store.put(Photo("b" * 32, "cam", make_jpeg(10_000), 2.0)) == []
        assert "unavailable" not in repr(store)
        assert [p.event_id for p in store.pending()] == ["a" * 32, "b" * 32]
    finally:
        store.close()


@pytest.mark.parametrize("small_fs", [24], indirect=True)
def test_photostore__leaves_the_outbox_its_headroom(small_fs: Path) -> None:
    """Photos filled the filesystem the outbox shares (50 MiB cap, 24 MiB disk): the outbox could not ack."""
    with Outbox(small_fs / "outbox.db", site="main", device="gate-1", max_mb=4, intake=False) as ob:
        seqs = [
            ob.put(Event.create(CLOCK, EventType.CAMERA_FAULT, "cam", data={"detail": "x" * 200})) for _ in range(50)
        ]
        seqs.append(ob.put(Event.create(CLOCK, EventType.PANIC, "panic")))
        with PhotoStore(small_fs / "photos.db", max_mb=50) as store:
            dropped = []
            for i in range(60):
                dropped += store.put(Photo(f"{i:032x}", "gate-cam", make_jpeg(400 * KIB - 64, i), time.time()))
            assert dropped, "the oldest photos make room once the outbox's headroom is reached"
            assert store.stats().pending == 60 - len(dropped)
            assert free_bytes(small_fs) >= HEADROOM_BYTES
            assert ob.ack(seqs) == len(seqs)


def test_photostore__refuses_a_photo_when_the_disk_has_only_the_outboxs_headroom(small_fs: Path) -> None:
    """With nothing of its own to drop, a photo that would eat into the headroom is refused (``store_error``)."""
    with PhotoStore(small_fs / "photos.db", max_mb=50) as store:
        fill(small_fs, leave=HEADROOM_BYTES + 100 * KIB)
        with pytest.raises(OutboxError, match="keeps 4 MiB free for the outbox"):
            store.put(Photo("a" * 32, "cam", make_jpeg(400 * KIB), 1.0))
        assert store.stats().pending == 0


@pytest.mark.broker
def test_photos__agent_starts_on_a_full_disk_and_records_the_alarm(
    small_fs: Path, broker: Broker, device: str, agent_proc: AgentFactory
) -> None:
    """With photos configured the agent exited 1 on a nearly full disk: photos.db was 'damaged', then unopenable.

    The outbox is made to run on a full disk; the photos must not stop it.
    """
    cam = SnapCamera(size=20_000).start()
    central = Central(broker.port, topics=(f"campus/+/{device}/#",))
    try:
        agent = agent_proc(
            broker.port,
            device=device,
            inputs=[{"name": "panic", "kind": "panic_button", "pin": 17, "debounce_ms": 0, "snapshot": ["gate-cam"]}],
            cameras=[{"name": "gate-cam", "kind": "http_snapshot", "url": cam.url, "probe_interval_s": 3600}],
            outbox={"path": str(small_fs / "outbox.db"), "max_mb": 2},
        )
        agent.stop()
        fill(small_fs, leave=48 * KIB)
        agent.start()  # photos.db may open or not: either way no photo fits beside the outbox's headroom
        agent.click()
        alarm = central.wait_events(1, "panic")[0]
        failed = eventually(
            lambda: [e for e in central.events("snapshot_failed") if e["data"]["event_id"] == alarm["id"]],
            20.0,
            "the alarm's snapshot_failed",
        )[0]
        assert failed["data"]["reason"] == "store_error", failed
        assert sorted(p.name for p in small_fs.iterdir() if "damaged" in p.name) == []
    finally:
        central.close()
        cam.stop()
