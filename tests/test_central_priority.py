"""The monitor takes alarms first, whatever is queued ahead of them, and tells events by topic level.

A hunt found that the print loop collected at most 5,000 messages a turn and
sorted events first only within them: a panic behind 20,000 retained
statuses (docs/central.md promises it is printed first) waited four turns.
And ``"/event/" in topic`` took the photos of a site named ``event`` for
events, which the fleet view then dropped without a word.
"""

from __future__ import annotations

import io
import json
import queue
import time
from pathlib import Path
from typing import Any

import pytest

from agent.central.inbox import Backlog, Incoming, LinkNote, level
from agent.central.photos import PhotoSaver
from agent.central.session import _BATCH, MonitorOptions, _Session
from tests.central.test_fleet_scale import T0, name, panic, status, topic
from tests.support.waiting import eventually

EID = "0123456789abcdef0123456789abcdef"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + bytes(range(256)) * 4 + b"\xff\xd9"


class _Link:
    listening_since = None
    down_since = None

    def publish(self, topic: str, payload: bytes) -> None:
        raise AssertionError("nothing is published here")


class _Out:
    """Notes how many devices the fleet knew when a given text was first written."""

    def __init__(self, watch: str) -> None:
        self.watch, self.known, self.text = watch, -1, io.StringIO()
        self.session: _Session | None = None

    def write(self, text: str) -> None:
        if self.watch in text and self.known < 0 and self.session is not None:
            self.known = len(self.session.fleet)
        self.text.write(text)

    def flush(self) -> None:
        pass


def _session(inbox: queue.SimpleQueue[Any], out: Any, saver: PhotoSaver | None = None) -> _Session:
    return _Session(_Link(), inbox, "campus", MonitorOptions(table_every_s=0), out, wall=lambda: T0, saver=saver)  # type: ignore[arg-type]


@pytest.mark.parametrize("burst", [1, 100], ids=["one-by-one", "in-bursts"])
def test_drain__a_panic_behind_20000_retained_statuses_is_printed_first(burst: int) -> None:
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    items = [Incoming(topic(i), status(*name(i), T0), True, T0) for i in range(20_000)]
    for k in range(0, len(items), burst):  # the link hands over what one read brought as one tuple
        inbox.put(tuple(items[k : k + burst]) if burst > 1 else items[k])
    doc = panic("site-1", "gate-00001", 1, T0)
    inbox.put(Incoming("campus/site-1/gate-00001/event/panic", doc, False, T0))
    out = _Out(json.loads(doc)["id"])
    session = out.session = _session(inbox, out)
    session._drain(0.0)
    assert out.known == 1, f"the panic was printed after {out.known - 1} statuses"  # 1: the panic's own device
    assert len(session.fleet) <= _BATCH + 1, "one turn handled more than a batch: keys and ticks wait"
    for _ in range(20_000 // _BATCH + 1):
        session._drain(0.0)
    assert len(session.fleet) == 20_000
    assert not session.backlog


def test_backlog__events_out_first_the_rest_in_order_each_with_the_time_it_was_taken() -> None:
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    note = LinkNote(up=True, text="reconnected")
    inbox.put(Incoming("campus/main/a/status", b"1", True, T0))
    inbox.put((note, Incoming("campus/main/b/event/panic", b"2", False, T0)))
    inbox.put(Incoming("campus/main/c/reply", b"3", False, T0))
    backlog = Backlog(inbox, "campus")
    at, events = backlog.take(0.0, lambda: 5.0)
    assert (at, [e.payload for e in events]) == (5.0, [b"2"])
    assert len(backlog) == 3
    first = list(backlog.handed(2))
    assert [t for t, _ in first] == [5.0, 5.0]
    assert first[1][1] is note
    assert [getattr(i, "payload", None) for _, i in backlog.handed(10)] == [b"3"]
    assert not backlog
    assert backlog.take(0.0, lambda: 6.0) == (0.0, [])


@pytest.mark.parametrize(
    ("topic", "want"),
    [
        ("campus/main/gate-1/event/panic", "event"),
        ("campus/event/gate-1/snapshot/x", "snapshot"),
        ("campus/main/event/status", "status"),
        ("campus/event/event/reply", "reply"),
        ("campus/main/gate-1", ""),
        ("other/main/gate-1/event/panic", ""),
    ],
)
def test_level__is_the_level_after_prefix_site_device(topic: str, want: str) -> None:
    assert level("campus/", topic) == want


def test_drain__photos_of_a_site_or_device_named_event_are_saved(tmp_path: Path) -> None:
    """``event`` is a contract id like any other: its photos are not taken for events and dropped."""
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    out = io.StringIO()
    places = ("main/gate-1", "event/gate-1", "main/event")
    with PhotoSaver(tmp_path / "photos") as saver:
        session = _session(inbox, out, saver)
        for place in places:
            inbox.put(Incoming(f"campus/{place}/snapshot/{EID}", JPEG, False, time.time()))
        session._drain(0.0)

        def printed() -> bool:
            session._saved()
            return out.getvalue().count("PHOTO") == len(places)

        eventually(printed, 5.0, what=lambda: f"a PHOTO line for each of {places}: {out.getvalue()}")
    for place in places:
        assert (tmp_path / "photos" / place / f"{EID}.jpg").exists(), out.getvalue()


def test_drain__a_device_named_event_is_still_a_device() -> None:
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    inbox.put(Incoming("campus/main/event/status", status("main", "event", T0), False, T0))
    session = _session(inbox, io.StringIO())
    session._drain(0.0)
    assert [r.key for r in session.fleet.rows(T0)] == ["main/event"]
