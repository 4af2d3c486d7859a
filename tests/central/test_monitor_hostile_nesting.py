"""The monitor against payloads nested hundreds of levels deep, and lines that cannot be printed.

An event whose ``data`` nested ~500 objects around a NaN ended ``monitor
--json``: printing it recursed into a RecursionError, raised outside the
print loop's guard.  The event was already acknowledged to the broker, so it
was lost to the monitor, and every later alarm went unshown.
"""

from __future__ import annotations

import io
import json
import math
import queue
import threading
import time
import types
from typing import Any

import pytest

from agent.central.display import MAX_DEPTH, Alarm, Line, LineKind, decode, json_line
from agent.central.link import Incoming
from agent.central.session import MonitorOptions, _Session
from tests.central.test_monitor import MonitorRun, enc, event, topic
from tests.support.broker import Broker
from tests.support.mqtt import Central
from tests.support.waiting import eventually

T = 1.8e9
DEVICE = "gate-north-1"


def _nested(depth: int, core: str = "1", *, opener: str = '{"a":', closer: str = "}") -> str:
    """JSON text of ``depth`` containers, one inside the other, around ``core``."""
    return opener * depth + core + closer * depth


def _event_with_data(data: str) -> bytes:
    doc = event(DEVICE)
    text = json.dumps(doc).replace('{"pin": 17, "contact": "normally_open"}', data)
    assert text != json.dumps(doc)
    return text.encode()


def _session(*, as_json: bool) -> tuple[_Session, io.StringIO]:
    out = io.StringIO()
    return _Session(None, None, "campus", MonitorOptions(json=as_json), out, wall=lambda: T), out  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("opener", "closer"),
    [('{"a":', "}"), ("[", "]"), ('[{"a":', "}]")],
    ids=["objects", "arrays", "mixed"],
)
def test_decode__nesting_up_to_the_limit_is_read_deeper_is_refused(opener: str, closer: str) -> None:
    per = opener.count("{") + opener.count("[")
    fits = (MAX_DEPTH - 1) // per  # the top object is level 1
    assert isinstance(decode(f'{{"d":{_nested(fits, opener=opener, closer=closer)}}}'.encode()), dict)
    deep = decode(f'{{"d":{_nested(fits + 1, opener=opener, closer=closer)}}}'.encode())
    assert deep == f"payload nests deeper than {MAX_DEPTH} levels (no contract document does)"


@pytest.mark.parametrize("depth", [40, 500, 990])
def test_decode__hostile_depth_is_a_reason_not_an_exception(depth: int) -> None:
    assert isinstance(decode(f'{{"d":{_nested(depth, "NaN")}}}'.encode()), str)


def test_json_line__non_finite_number_hundreds_of_levels_deep_is_null() -> None:
    record: dict[str, Any] = {"kind": "event", "data": json.loads(_nested(500, "NaN"))}
    assert json_line(record) == '{"kind": "event", "data": ' + _nested(500, "null", opener='{"a": ') + "}"
    inner = record["data"]
    for _ in range(500):
        inner = inner["a"]
    assert math.isnan(inner)  # the record itself is left as it was


@pytest.mark.parametrize("as_json", [True, False])
def test_session__deep_event_is_one_warning_and_the_next_alarm_is_shown(as_json: bool) -> None:
    session, out = _session(as_json=as_json)
    where = topic("event/panic", DEVICE)
    session._incoming(Incoming(where, _event_with_data(_nested(500, "NaN")), False, T))  # must not raise
    later = event(DEVICE, seq=1043)
    session._incoming(Incoming(where, enc(later), False, T + 1))
    first, second = out.getvalue().splitlines()
    assert where in first
    assert f"nests deeper than {MAX_DEPTH} levels" in first
    assert later["id"] in second
    assert session.desk.next_unacked() == Alarm("main", DEVICE, later["id"], "panic", T + 1)


def test_session__a_line_that_cannot_be_printed_is_a_warning_naming_device_and_topic() -> None:
    """Whatever the cause (here a record no JSON encoder takes), one line never ends the watch."""
    session, out = _session(as_json=True)
    alarm = Alarm("main", DEVICE, "a" * 32, "panic", T)
    bad = Line(LineKind.EVENT, "x", {"kind": "event", "site": "main", "device": DEVICE, "data": {1j}}, alarm)
    good = Line(LineKind.EVENT, "y", {"kind": "event", "site": "main", "device": DEVICE, "id": "b" * 32})
    session.fleet.feed = lambda *_a, **_k: [bad, good]  # type: ignore[method-assign]
    where = topic("event/panic", DEVICE)
    session._incoming(Incoming(where, b"{}", False, T))  # must not raise
    warning, shown = (json.loads(ln) for ln in out.getvalue().splitlines())
    assert warning["kind"] == "warning"
    assert warning["text"].startswith(f"main/{DEVICE}: event line on {where} not printed (TypeError: ")
    assert shown["id"] == "b" * 32  # the rest of the batch is printed
    assert session.desk.next_unacked() == alarm  # offered all the same: the board lists it


@pytest.mark.broker
def test_monitor__deep_nan_event_does_not_end_the_json_monitor(broker: Broker, central: Central, device: str) -> None:
    run = MonitorRun(broker.port, json=True)
    try:
        hostile = event(device)
        raw = json.dumps(hostile).replace(json.dumps(hostile["data"]), _nested(500, "NaN"))
        central.publish(topic("event/panic", device), raw)
        later = event(device, seq=1043)
        central.publish(topic("event/panic", device), enc(later))
        out = run.wait_for(later["id"])  # raises at once if the monitor ended
        warning = next(json.loads(ln) for ln in out.splitlines() if "nests deeper" in ln)
        assert warning["kind"] == "warning"
        assert topic("event/panic", device) in warning["text"]
        assert run.thread.is_alive()
    finally:
        run.close()


def test_session__a_board_that_raises_is_a_warning_and_the_watch_goes_on() -> None:
    """Only KeyboardInterrupt was caught around the loop: one failing board (or tick, or photo) ended the monitor."""
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    link = types.SimpleNamespace(listening_since=None)
    out = io.StringIO()
    session = _Session(link, inbox, "campus", MonitorOptions(table_every_s=0.05), out, wall=time.time)  # type: ignore[arg-type]
    boards: list[float] = []

    def board(now: float, *, full: bool) -> None:
        boards.append(now)
        if len(boards) == 1:
            raise ValueError("a board that cannot be drawn")

    session._board = board  # type: ignore[method-assign]
    stop = threading.Event()
    watch = threading.Thread(target=session.run, args=(stop, queue.SimpleQueue()), daemon=True)
    watch.start()
    try:
        eventually(lambda: len(boards) >= 1, what="the first board")
        later = event(DEVICE, seq=7)
        inbox.put(Incoming(topic("event/panic", DEVICE), enc(later), False, time.time()))
        eventually(lambda: later["id"] in out.getvalue(), what="the next event printed")
        assert watch.is_alive()
        assert "the monitor's loop failed (ValueError: a board that cannot be drawn); carrying on" in out.getvalue()
        eventually(lambda: len(boards) >= 3, what="boards drawn again")
    finally:
        stop.set()
        watch.join(5.0)
    assert not watch.is_alive()
