"""Event documents of the wire contract, their ids, and the clock they are stamped with.

An event is stamped at the moment its input changed (``Stamp``), not when it is
sent.  A Pi has no real-time clock, so every stamp carries whether the system
clock was NTP-synchronised, plus ``boot_id`` and ``mono_ms`` with which the
central side can re-time events taken before the clock was set.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

CONTRACT_VERSION = 1


class EventType(StrEnum):
    PANIC = "panic"
    TAMPER = "tamper"
    INPUT_FAULT = "input_fault"
    INPUT_RESTORED = "input_restored"
    CAMERA_FAULT = "camera_fault"
    CAMERA_RESTORED = "camera_restored"
    AGENT_STARTED = "agent_started"
    SNAPSHOT_FAILED = "snapshot_failed"

    @property
    def is_alarm(self) -> bool:
        """Alarms are fsynced on put and never evicted from the outbox."""
        return self in (EventType.PANIC, EventType.TAMPER)


def iso_ms(wall: float) -> str:
    """UTC with milliseconds and a ``Z``, as the contract writes every ``ts``.

    The same text as ``datetime.fromtimestamp(wall, UTC)`` truncated to
    milliseconds (microseconds rounded half-even first, tests/test_events_text.py),
    without building a datetime: it runs on the button's path.
    """
    frac, whole = math.modf(wall)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole, us = whole + 1, us - 1_000_000
    elif us < 0:
        whole, us = whole - 1, us + 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole)) + f"{us // 1000:03d}Z"


def new_id() -> str:
    """A random 128-bit id in hex: what the central side de-duplicates on (cheaper than a UUID object)."""
    return os.urandom(16).hex()


_EVENT_ID = re.compile(r"[0-9a-f]{32}")


def is_event_id(value: object) -> bool:
    """True for an event ``id`` as :func:`new_id` writes it: 32 lower-case hex digits."""
    return isinstance(value, str) and _EVENT_ID.fullmatch(value) is not None


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; trailing padding leaves room for newer kernels.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 32),
    ]


_TIME_ERROR = 5
_STA_UNSYNC = 0x0040


@functools.cache
def _libc() -> ctypes.CDLL:
    # The process's own symbols include libc; ctypes.util.find_library would fork ldconfig every call.
    return ctypes.CDLL(None, use_errno=True)


TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


def kernel_clock_synced(adjtimex: Any = None, flag: Path = TIMESYNCD_FLAG) -> bool:
    """Ask the kernel (``adjtimex``) whether NTP has disciplined the clock.

    chrony, ntpd and systemd-timesyncd all clear the kernel's unsynchronised
    flag once they have a fix; a Pi that booted without network keeps it set.
    Under the shipped unit ``ProtectClock=yes`` refuses even this read-only
    call with EPERM (systemd issue 26413), so then the answer comes from
    systemd-timesyncd's ``flag`` file, which it creates once it has synchronised
    the clock (docs/architecture.md).  Any other failure to ask counts as "not
    synchronised": we never claim a good clock we have not seen.

    Args:
        adjtimex: the libc function, for tests; the real one by default.
        flag: systemd-timesyncd's "synchronised" file.

    """
    tx = _Timex()
    try:
        call = adjtimex if adjtimex is not None else _libc().adjtimex
        state = call(ctypes.byref(tx))
    except (OSError, AttributeError):
        return False
    if state == -1:
        return ctypes.get_errno() == errno.EPERM and flag.exists()
    return bool(state != _TIME_ERROR and not tx.status & _STA_UNSYNC)


def read_boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """The kernel's id of this boot; ``mono_ms`` values compare only within one."""
    try:
        return path.read_text(encoding="ascii").strip().replace("-", "")
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class Stamp:
    """When something happened: wall clock, monotonic clock, and sync state."""

    wall: float
    mono: float
    synced: bool


class Clock:
    """Wall and monotonic time, sync state and boot id, behind one seam.

    Tests pass their own ``wall``/``mono``/``synced`` functions; timers in the
    agent use ``mono`` only, so a wall-clock jump never stalls or races them.
    The kernel is asked about sync at most every ``sync_ttl_s`` seconds because
    the answer changes rarely and stamping happens on the button's path.
    """

    def __init__(
        self,
        *,
        wall: Any = time.time,
        mono: Any = time.monotonic,
        synced: Any = kernel_clock_synced,
        boot_id: str | None = None,
        sync_ttl_s: float = 10.0,
    ) -> None:
        self.wall = wall
        self.mono = mono
        self._synced_fn = synced
        self.boot_id = boot_id if boot_id is not None else read_boot_id()
        self._ttl = sync_ttl_s
        self._synced: bool | None = None
        self._checked = 0.0

    def synced(self) -> bool:
        now = self.mono()
        if self._synced is None or now - self._checked >= self._ttl:
            self._synced = bool(self._synced_fn())
            self._checked = now
        return self._synced

    def stamp(self) -> Stamp:
        return Stamp(wall=self.wall(), mono=self.mono(), synced=self.synced())

    def __repr__(self) -> str:
        return f"Clock(boot_id={self.boot_id[:8]}..., synced={self._synced})"


@dataclass(frozen=True)
class Event:
    """One event document, minus ``seq`` which the outbox assigns on put."""

    type: EventType
    source: str
    id: str
    ts: str
    clock_synced: bool
    boot_id: str
    mono_ms: int
    test: bool = False
    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        clock: Clock,
        type: EventType,  # noqa: A002 - the contract's own name
        source: str,
        *,
        at: Stamp | None = None,
        test: bool = False,
        data: Mapping[str, Any] | None = None,
    ) -> Event:
        s = at if at is not None else clock.stamp()
        return cls(
            type=type,
            source=source,
            id=new_id(),
            ts=iso_ms(s.wall),
            clock_synced=s.synced,
            boot_id=clock.boot_id,
            mono_ms=int(s.mono * 1000),
            test=test,
            data=dict(data or {}),
        )

    def body(self, site: str, device: str) -> str:
        """The document as JSON, without ``v`` and ``seq`` (see :func:`with_seq`).

        Built from cached parts around the id, ``ts`` and ``mono_ms``: the
        rest repeats from press to press, and this runs on the button's path.
        The text is exactly :meth:`plain_body`'s (tests/test_events_text.py).
        """
        if type(self.mono_ms) is not int:  # json writes a bool or a float its own way
            return self.plain_body(site, device)
        try:
            key = (site, device, self.type, self.source, self.test, self.clock_synced, self.boot_id)
            items = tuple((k, v, type(v)) for k, v in self.data.items())
            parts = _body_parts(key, tuple(type(v) for v in key), items)
        except TypeError:  # a value that cannot be a key (a nested dict, a list): the plain way
            return self.plain_body(site, device)
        return f"{parts[0]}{_json_str(self.id)}{parts[1]}{_json_str(self.ts)}{parts[2]}{self.mono_ms}{parts[3]}"

    def plain_body(self, site: str, device: str) -> str:
        """:meth:`body` by ``json.dumps`` of the whole document."""
        return _dumps(
            {
                "id": self.id,
                "site": site,
                "device": device,
                "type": self.type.value,
                "source": self.source,
                "test": self.test,
                "ts": self.ts,
                "clock_synced": self.clock_synced,
                "boot_id": self.boot_id,
                "mono_ms": self.mono_ms,
                "data": dict(self.data),
            }
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_json_str = json.encoder.encode_basestring  # a str as JSON, quotes included


@functools.lru_cache(maxsize=128)
def _body_parts(
    key: tuple[Any, ...], _types: tuple[type, ...], items: tuple[tuple[Any, Any, type], ...]
) -> tuple[str, str, str, str]:
    """The text around id, ts and mono_ms (types are part of the key: True and 1 are equal keys)."""
    site, device, type_, source, test, synced, boot_id = key
    head = '{"id":'
    mid = f',"site":{_dumps(site)},"device":{_dumps(device)},"type":{_dumps(EventType(type_).value)},'
    mid += f'"source":{_dumps(source)},"test":{_dumps(test)},"ts":'
    tail = f',"clock_synced":{_dumps(synced)},"boot_id":{_dumps(boot_id)},"mono_ms":'
    end = f',"data":{_dumps({k: v for k, v, _t in items})}' + "}"
    return head, mid, tail, end


def with_seq(body: str, seq: int) -> bytes:
    """The wire payload: ``v`` and ``seq`` spliced in front of a stored body.

    ``seq`` is only known inside the outbox's insert transaction, so the body
    is stored without it and the two are joined on the way out; cheaper than a
    JSON round trip per event during a drain.
    """
    return f'{{"v":{CONTRACT_VERSION},"seq":{seq},{body[1:]}'.encode()
