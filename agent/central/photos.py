"""The monitor's alarm photos (``--snapshots DIR``): check each one, save it off the print loop, show it on its alarm.

Decisions:

- **Never in the way of an alarm.**  The print loop only checks a photo (ids,
  size, JPEG start; microseconds) and hands it to :class:`PhotoSaver`, whose
  own thread writes it (:mod:`agent.central.photofiles`); the loop takes the
  outcomes each turn, after the events.  A photo is held in memory only from
  its arrival until its file is written; more than :data:`MAX_BACKLOG_BYTES`
  waiting for a slow disk are refused with a warning rather than kept.
- **Refused, with a warning naming the topic** (escaped): a topic whose site
  or device is not a contract id or whose last level is not an event id (32
  lower-case hex digits), a payload that is not JPEG (no ``FF D8`` start) or
  is over :data:`MAX_PHOTO_BYTES`, a user property ``event_id`` that is not
  the topic's, and anything :func:`~agent.central.photofiles.write_photo`
  will not do (a symlink in the way).
- **Shown on its alarm.**  :class:`PhotoDesk` remembers the last
  :data:`RECENT_ALARMS` alarms, so a photo line names its alarm's type; the
  board's alarm list shows the first photo saved for each alarm.  A photo
  is its alarm's only when its site and device are the alarm's too.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from agent.central.display import Alarm, Line, LineKind, clock_text, device_key, escape, valid_id, warning_line
from agent.central.photofiles import Saved, open_root, write_photo
from agent.closing import Closing
from agent.events import is_event_id, iso_ms

MAX_PHOTO_BYTES = 16 * 1024 * 1024
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
RECENT_ALARMS = 10_000
MAX_DEVICES_PER_ID = 8
CONTENT_TYPE = "image/jpeg"
_PART = re.compile(r"([1-9][0-9]?)/([1-9][0-9]?)")
_STOP_WAIT_S = 10.0


@dataclass(frozen=True)
class Photo:
    """A photo that passed the checks; ``camera``/``part`` are ``None`` without MQTT 5 properties."""

    site: str
    device: str
    event_id: str
    camera: str | None
    part: int | None
    parts: int | None
    taken: str | None
    size: int
    arrival: float


@dataclass(frozen=True)
class Outcome:
    """What became of one photo: ``path`` (under DIR) when saved, else ``why`` it was not."""

    photo: Photo
    path: str | None
    duplicate: bool = False
    why: str | None = None


def subscription(prefix: str, site: str | None) -> str:
    """The snapshot topic filter, for one site or (``None``) the whole fleet."""
    return f"{prefix}/{site or '+'}/+/snapshot/+"


def is_snapshot(prefix: str, topic: str) -> bool:
    """True for a topic of the shape ``{prefix}/+/+/snapshot/+`` (its levels not yet checked)."""
    levels = topic[len(prefix) + 1 :].split("/") if topic.startswith(f"{prefix}/") else []
    return len(levels) == 4 and levels[2] == "snapshot"


def check(
    prefix: str,
    topic: str,
    payload: bytes,
    arrival: float,
    *,
    content_type: str | None = None,
    user_properties: tuple[tuple[str, str], ...] = (),
) -> Photo | str:
    """The :class:`Photo` on ``topic``, or why it is refused (already escaped, names the topic)."""
    where = escape(topic)
    site, device, _snapshot, event_id = topic[len(prefix) + 1 :].split("/")
    if not (valid_id(site) and valid_id(device)):
        return f"{where}: site or device is not a contract id (lower-case letters, digits, '-'); photo not saved"
    if not is_event_id(event_id):
        return f"{where}: '{escape(event_id[:40])}' is not an event id (32 lower-case hex digits); photo not saved"
    if len(payload) > MAX_PHOTO_BYTES:
        return f"{where}: photo of {len(payload)} bytes is over {MAX_PHOTO_BYTES} bytes; not saved"
    if payload[:2] != b"\xff\xd8":
        kind = f" (content type '{escape(content_type[:40])}')" if content_type else ""
        return f"{where}: payload is not JPEG (no FF D8 start){kind}; not saved"
    props = dict(user_properties)
    if props.get("event_id", event_id) != event_id:
        return f"{where}: user property event_id '{escape(props['event_id'][:40])}' is not the topic's; photo not saved"
    camera = props.get("camera")
    m = _PART.fullmatch(props.get("part", ""))
    part, parts = (int(m[1]), int(m[2])) if m and int(m[1]) <= int(m[2]) else (None, None)
    taken = props.get("taken")
    return Photo(
        site,
        device,
        event_id,
        camera if camera is not None and valid_id(camera) else None,
        part,
        parts,
        escape(taken[:40]) if taken else None,
        len(payload),
        arrival,
    )


class PhotoSaver(Closing):
    """Writes photos under ``root`` on its own thread, one at a time; use as a context manager.

    Args:
        root: DIR of ``--snapshots DIR``; created if missing.

    Raises:
        OSError: ``root`` cannot be created, opened or written.

    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_fd: int | None = open_root(str(root))
        self._todo: queue.SimpleQueue[tuple[Photo, bytes] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._backlog = 0
        self.saved = self.refused = self.duplicates = 0
        self._thread: threading.Thread | None = threading.Thread(target=self._run, name="monitor-photos", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._thread is None

    def _repr_id(self) -> str:
        return str(self.root)

    def _repr_state(self) -> str:
        return f"saved={self.saved} duplicates={self.duplicates} refused={self.refused} waiting_bytes={self._backlog}"

    def submit(self, photo: Photo, payload: bytes) -> str | None:
        """Queue ``photo`` for writing; why not, when the disk is too far behind or the saver is closed."""
        if self._thread is None:
            return "the photo writer is stopped"
        with self._lock:
            if self._backlog + len(payload) > MAX_BACKLOG_BYTES:
                return (
                    f"{self._backlog} bytes of photos still waiting for the disk under {self.root}; "
                    f"photo for {photo.event_id} not saved"
                )
            self._backlog += len(payload)
        self._todo.put((photo, payload))
        return None

    def outcomes(self) -> list[Outcome]:
        """Photos written (or refused by the file system) since the last call."""
        out: list[Outcome] = []
        while not self._done.empty():
            out.append(self._done.get_nowait())
        return out

    def close(self) -> None:
        """Write what is queued (for up to 10 s), then stop; safe to call more than once."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._todo.put(None)
            thread.join(_STOP_WAIT_S)
        fd, self._root_fd = self._root_fd, None
        if fd is not None and (thread is None or not thread.is_alive()):
            os.close(fd)

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            photo, payload = item
            try:
                outcome = self._save(photo, payload)
            except Exception as exc:  # the writer must outlive one bad photo; the loop shows why
                outcome = Outcome(photo, None, why=f"unexpected {type(exc).__name__}: {exc}")
            try:
                self._done.put(outcome)
            finally:
                with self._lock:
                    self._backlog -= len(payload)
                del item, payload  # held no longer than its write

    def _save(self, photo: Photo, payload: bytes) -> Outcome:
        fd = self._root_fd
        if fd is None:
            return Outcome(photo, None, why="the photo writer is stopped")
        result = write_photo(fd, photo.site, photo.device, photo.event_id, part=photo.part, payload=payload)
        if isinstance(result, str):
            self.refused += 1
            return Outcome(photo, None, why=result)
        path = str(self.root / photo.site / photo.device / result.name)
        if isinstance(result, Saved) and result.duplicate:
            self.duplicates += 1
        else:
            self.saved += 1
        return Outcome(photo, path, duplicate=result.duplicate)


class PhotoDesk:
    """Which alarms this monitor has seen, which photos each has, and the lines to print about photos.

    A photo belongs to an alarm only when its site, device and event id all
    match: an id is the sending device's, and another device may send the
    same one (by mistake or to plant its photo on a neighbour's alarm).
    Not thread-safe: the print loop uses it.

    Args:
        tz: time zone of the printed clock times; ``None`` is the local one.

    """

    def __init__(self, *, tz: dt.tzinfo | None = None) -> None:
        self._tz = tz
        self._alarms: OrderedDict[str, dict[tuple[str, str], Alarm]] = OrderedDict()  # event id -> by device
        self._paths: OrderedDict[tuple[str, str, str], list[str]] = OrderedDict()  # (site, device, event id)

    def __repr__(self) -> str:
        return f"<PhotoDesk {len(self._alarms)} alarm ids remembered, {len(self._paths)} with photos>"

    def alarm(self, alarm: Alarm) -> None:
        """An alarm was printed: a photo from its device for it names it."""
        by_device = self._alarms.setdefault(alarm.event_id, {})
        if len(by_device) < MAX_DEVICES_PER_ID or (alarm.site, alarm.device) in by_device:
            by_device[alarm.site, alarm.device] = alarm
        self._alarms.move_to_end(alarm.event_id)
        if len(self._alarms) > RECENT_ALARMS:
            self._alarms.popitem(last=False)

    def photo_for(self, alarm: Alarm) -> str | None:
        """The first photo saved for ``alarm`` by its own device, or ``None``."""
        paths = self._paths.get((alarm.site, alarm.device, alarm.event_id))
        return paths[0] if paths else None

    def photo_of(self, event_id: str) -> str | None:
        """The first photo saved for the alarm ``event_id`` by its own device, or ``None``.

        Another device's photo for the same id is never named; nor is any when
        alarms of several devices carry the id (which one is meant is unknown):
        :meth:`photo_for`, given the alarm, needs no such care.
        """
        by_device = self._alarms.get(event_id)
        if by_device is None or len(by_device) != 1:
            return None
        [alarm] = by_device.values()
        return self.photo_for(alarm)

    def refused(self, at: float, why: str) -> Line:
        return warning_line(at, why, self._tz)

    def lines(self, outcome: Outcome, at: float) -> list[Line]:
        """The PHOTO line for a saved photo, a warning for a refused one, nothing for a duplicate."""
        p = outcome.photo
        where = f"{p.site}/{p.device}"
        if outcome.path is None:
            return [
                warning_line(
                    at, f"photo for {where} event {p.event_id} not saved: {escape(outcome.why or '?')}", self._tz
                )
            ]
        if outcome.duplicate:
            return []
        key = (p.site, p.device, p.event_id)
        paths = self._paths.setdefault(key, [])
        if outcome.path not in paths:
            paths.append(outcome.path)
        self._paths.move_to_end(key)
        if len(self._paths) > RECENT_ALARMS:
            self._paths.popitem(last=False)
        alarm = self._alarms.get(p.event_id, {}).get((p.site, p.device))
        of = f"of {alarm.type}" if alarm is not None else "of an event not seen here,"
        camera = f"camera {p.camera or '?'}" + (f" {p.part}/{p.parts}" if p.part is not None else "")
        text = (
            f"{clock_text(at, self._tz)}  {device_key(p.site, p.device)}  {'PHOTO':<15}  {of} id {p.event_id}  "
            f"{camera}  {_size(p.size)}  saved {escape(outcome.path)}"
        )
        record = {
            "kind": "photo",
            "arrived": iso_ms(p.arrival),
            "site": p.site,
            "device": p.device,
            "event_id": p.event_id,
            "alarm": alarm.type if alarm is not None else None,
            "camera": p.camera,
            "part": f"{p.part}/{p.parts}" if p.part is not None else None,
            "taken": p.taken,
            "bytes": p.size,
            "path": outcome.path,
        }
        return [Line(LineKind.PHOTO, text, record)]


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.0f} kB" if n < 1024 * 1024 else f"{n / 1048576:.1f} MB"
