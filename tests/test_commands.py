"""Inbound commands: parsing (the error text is API), the handler, flood control, fuzzing.

No broker needed: the handler is driven directly with fake callbacks and a fake clock.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from agent import schemas
from agent.commands import MAX_DEPTH, MAX_ID, MAX_PAYLOAD, NAMES, Command, CommandHandler, parse_command
from agent.errors import CommandError
from tests.support.clocks import FakeTime

EID = "6f1c0d3e8a7b4c1f9e2d5a4b3c2d1e0f"
REPLY = Draft202012Validator(schemas.load("reply"))
TS_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def cmd(**fields: Any) -> bytes:
    """A command payload: ``v`` 1 and id ``c-1`` unless overridden; ``_drop`` removes keys."""
    doc = {"v": 1, "id": "c-1", **fields}
    for key in fields.get("_drop", ()):
        doc.pop(key)
    doc.pop("_drop", None)
    return json.dumps(doc).encode()


def nested(levels: int) -> Any:
    """A value nesting ``levels`` containers deep (0: a plain number)."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def pad_to(size: int, **fields: Any) -> bytes:
    base = cmd(pad="", **fields)
    return cmd(pad="x" * (size - len(base)), **fields)


# ---- parse_command: the table of what is accepted ---------------------------------------

VALID = [
    ("ping", "ping", cmd(), Command("ping", "c-1")),
    ("ack", "ack", cmd(event_id=EID), Command("ack", "c-1", event_id=EID)),
    ("test_mode_on", "test_mode", cmd(minutes=15), Command("test_mode", "c-1", minutes=15)),
    ("test_mode_off", "test_mode", cmd(minutes=0), Command("test_mode", "c-1", minutes=0)),
    ("test_mode_max", "test_mode", cmd(minutes=240), Command("test_mode", "c-1", minutes=240)),
    ("ts_kept", "ping", cmd(ts="2026-11-29T06:01:02.345Z"), Command("ping", "c-1", ts="2026-11-29T06:01:02.345Z")),
    ("extra_fields_ignored", "ping", cmd(minutes=999, event_id=5, note={"a": [1, None]}), Command("ping", "c-1")),
    ("other_commands_fields_ignored", "ack", cmd(event_id=EID, minutes="x"), Command("ack", "c-1", event_id=EID)),
    ("id_longest", "ping", cmd(id="i" * MAX_ID), Command("ping", "i" * MAX_ID)),
    ("id_unicode", "ping", cmd(id="c-ü-😀"), Command("ping", "c-ü-😀")),
    ("nesting_at_limit", "ping", cmd(x=nested(MAX_DEPTH - 1)), Command("ping", "c-1")),
    ("size_at_limit", "ping", pad_to(MAX_PAYLOAD), Command("ping", "c-1")),
    ("pretty_printed", "ping", b'{\n  "v": 1,\n  "id": "c-1"\n}\n', Command("ping", "c-1")),
]


@pytest.mark.parametrize(("name", "payload", "expected"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_parse_command__valid(name: str, payload: bytes, expected: Command) -> None:
    assert parse_command(name, payload) == expected


# ---- parse_command: the table of refusals (case, name, payload, reason, cmd_id) -----------

BIG = cmd(pad="x" * 5000)
HUGE = b'{"v":1,"id":"c-1","pad":"' + b"x" * 70_000 + b'"}'
INVALID = [
    ("too_large", "ping", BIG, f"payload is {len(BIG)} bytes; the limit is 4096", "c-1"),
    ("one_byte_too_large", "ping", pad_to(MAX_PAYLOAD + 1), "payload is 4097 bytes; the limit is 4096", "c-1"),
    ("too_large_no_id_read", "ping", HUGE, f"payload is {len(HUGE)} bytes; the limit is 4096", None),
    ("too_large_not_json", "ping", b"x" * 5000, "payload is 5000 bytes; the limit is 4096", None),
    ("empty", "ping", b"", "payload is empty; a command is a JSON object", None),
    ("not_utf8", "ping", b'{"v":1,"id":"c-1","x":"\xff"}', "payload is not UTF-8", "c-1"),
    ("not_utf8_in_id", "ping", b'{"v":1,"id":"c-\xff"}', "payload is not UTF-8", None),
    ("not_utf8_at_all", "ping", b"\xff\xfe\x00", "payload is not UTF-8", None),
    (
        "not_json",
        "ping",
        b"{v: 1}",
        "payload is not JSON: Expecting property name enclosed in double quotes at character 1",
        None,
    ),
    (
        "truncated_json",
        "ping",
        b'{"v":1,"id":"c-1"',
        "payload is not JSON: Expecting ',' delimiter at character 17",
        None,
    ),
    ("array", "ping", b"[1, 2]", r"payload is not a JSON object \(it is an array\)", None),
    ("string", "ping", b'"ping"', r"payload is not a JSON object \(it is a string\)", None),
    ("number", "ping", b"1", r"payload is not a JSON object \(it is a number\)", None),
    ("null", "ping", b"null", r"payload is not a JSON object \(it is null\)", None),
    ("deep_array", "ping", b"[" * 4000, "nesting too deep; at most 8 levels are allowed", None),
    ("deep_object", "ping", b'{"a":' * 680 + b"1" + b"}" * 680, "nesting too deep", None),
    ("deep_inside_command", "ping", b'{"v":1,"id":"c-1","x":' + b"[" * 2000, "nesting too deep", None),
    ("too_deep_with_id", "ping", cmd(x=nested(MAX_DEPTH)), "nesting too deep; at most 8 levels are allowed", "c-1"),
    ("id_missing", "ping", cmd(_drop=["id"]), "field 'id' is missing; every command needs one", None),
    ("id_null", "ping", cmd(id=None), "field 'id' is missing", None),
    ("id_number", "ping", cmd(id=5), "field 'id' must be a string of 1-128 characters, got 5$", None),
    ("id_empty", "ping", cmd(id=""), "field 'id' must be a string of 1-128 characters, got \"\"", None),
    ("id_too_long", "ping", cmd(id="i" * 129), "field 'id' must be a string of 1-128 characters, got \"iii", "i" * 129),
    ("id_lone_surrogate", "ping", b'{"v":1,"id":"c-\\ud800"}', "field 'id' must be valid Unicode text", None),
    ("v_missing", "ping", cmd(_drop=["v"]), "field 'v' is missing; this agent speaks v=1", "c-1"),
    ("v2", "ping", cmd(v=2), "unsupported version v=2; this agent speaks v=1", "c-1"),
    ("v_true", "ping", cmd(v=True), "unsupported version v=true; this agent speaks v=1", "c-1"),
    ("v_string", "ping", cmd(v="1"), 'unsupported version v="1"', "c-1"),
    ("v_float", "ping", cmd(v=1.0), "unsupported version v=1.0", "c-1"),
    ("unknown_name", "reboot", cmd(), "unknown command 'reboot'; known: ack, ping, test_mode$", "c-1"),
    ("empty_name", "", cmd(), "unknown command ''; known: ack, ping, test_mode", "c-1"),
    ("long_name_cut", "x" * 100, cmd(), r"unknown command 'x{37}\.\.\.'", "c-1"),
    ("name_case", "PING", cmd(), "unknown command 'PING'", "c-1"),
    ("ts_number", "ping", cmd(ts=5), "field 'ts' must be a string, got 5$", "c-1"),
    ("event_id_missing", "ack", cmd(), "field 'event_id' is missing; ack needs the 32-hex id of the event", "c-1"),
    ("event_id_null", "ack", cmd(event_id=None), "field 'event_id' is missing", "c-1"),
    (
        "event_id_upper",
        "ack",
        cmd(event_id=EID.upper()),
        "field 'event_id' must be 32 lowercase hex digits, got \"6F1C",
        "c-1",
    ),
    ("event_id_short", "ack", cmd(event_id=EID[:31]), "field 'event_id' must be 32 lowercase hex digits", "c-1"),
    (
        "event_id_newline",
        "ack",
        cmd(event_id=EID + "\n"),
        r'must be 32 lowercase hex digits, got "6f1c0d3e8a7b4c1f9e2d5a4b3c2d1e0f\\n"',
        "c-1",
    ),
    ("event_id_number", "ack", cmd(event_id=123), "field 'event_id' must be 32 lowercase hex digits, got 123$", "c-1"),
    (
        "minutes_missing",
        "test_mode",
        cmd(),
        r"field 'minutes' is missing; test_mode needs minutes 0-240 \(0 ends it\)",
        "c-1",
    ),
    ("minutes_too_big", "test_mode", cmd(minutes=999), "field 'minutes' must be an integer 0-240, got 999$", "c-1"),
    ("minutes_negative", "test_mode", cmd(minutes=-1), "field 'minutes' must be an integer 0-240, got -1$", "c-1"),
    ("minutes_bool", "test_mode", cmd(minutes=True), "field 'minutes' must be an integer 0-240, got true$", "c-1"),
    ("minutes_float", "test_mode", cmd(minutes=5.0), "field 'minutes' must be an integer 0-240, got 5.0$", "c-1"),
    ("minutes_fraction", "test_mode", cmd(minutes=5.5), "got 5.5$", "c-1"),
    ("minutes_string", "test_mode", cmd(minutes="5"), 'got "5"$', "c-1"),
    ("minutes_infinite", "test_mode", b'{"v":1,"id":"c-1","minutes":1e400}', "got Infinity$", "c-1"),
    ("minutes_nan", "test_mode", b'{"v":1,"id":"c-1","minutes":NaN}', "got NaN$", "c-1"),
    ("minutes_huge", "test_mode", cmd(minutes=10**50), r"got 1000000000000000000000000000000000000\.\.\.$", "c-1"),
]


@pytest.mark.parametrize(("name", "payload", "reason", "cmd_id"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_parse_command__invalid(name: str, payload: bytes, reason: str, cmd_id: str | None) -> None:
    with pytest.raises(CommandError, match=reason) as info:
        parse_command(name, payload)
    assert info.value.cmd_id == cmd_id
    assert info.value.reason == str(info.value)
    assert "\n" not in info.value.reason


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"name": "ping", "id": "c-1", "minutes": 5}, "field 'minutes' does not belong to ping"),
        ({"name": "ack", "id": "c-1", "event_id": EID, "minutes": 5}, "field 'minutes' does not belong to ack"),
        ({"name": "test_mode", "id": "c-1"}, "field 'minutes' is missing"),
        ({"name": "test_mode", "id": "c-1", "minutes": 241}, "must be an integer 0-240, got 241"),
        ({"name": "reboot", "id": "c-1"}, "unknown command 'reboot'"),
        ({"name": "ping", "id": ""}, "field 'id' must be a string"),
    ],
)
def test_command__validated_on_construction(kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(CommandError, match=reason):
        Command(**kwargs)


def test_command__is_frozen() -> None:
    c = Command("ping", "c-1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.id = "other"  # type: ignore[misc]


# ---- the handler ------------------------------------------------------------------------------


class Fakes:
    """The daemon's side: records every callback; each reply is checked against reply.json."""

    def __init__(self) -> None:
        self.known = {EID}
        self.acks: list[str] = []
        self.pings = 0
        self.test_modes: list[int] = []
        self.until: str | None = "2026-11-29T07:00:00.000Z"
        self.replies: list[dict[str, Any]] = []
        self.fail: BaseException | None = None

    def on_ack(self, event_id: str) -> bool:
        self.acks.append(event_id)
        return event_id in self.known

    def on_ping(self) -> None:
        if self.fail is not None:
            raise self.fail
        self.pings += 1

    def on_test_mode(self, minutes: int) -> str | None:
        if self.fail is not None:
            raise self.fail
        self.test_modes.append(minutes)
        return self.until if minutes else None

    def reply(self, doc: dict[str, Any]) -> None:
        errors = [e.message for e in REPLY.iter_errors(doc)]
        assert not errors, f"reply breaks the contract: {errors}\n{doc}"
        json.dumps(doc, ensure_ascii=False).encode()  # what the uplink does with it
        self.replies.append(doc)


def make(rate_per_min: int = 6000, *, synced: bool = True) -> tuple[CommandHandler, Fakes, FakeTime]:
    f, clock = Fakes(), FakeTime(1000.0, wall=1_795_000_000.123)
    h = CommandHandler(
        on_ack=f.on_ack,
        on_ping=f.on_ping,
        on_test_mode=f.on_test_mode,
        reply=f.reply,
        rate_per_min=rate_per_min,
        wall=clock.wall,
        mono=clock,
        synced=lambda: synced,
    )
    return h, f, clock


def send(h: CommandHandler, clock: FakeTime, name: str, payload: bytes) -> None:
    """Handle one command a second later (well inside any rate limit in these tests)."""
    clock.advance(1.0)
    h.handle(name, payload)


def test_handler__ping_is_answered_ok() -> None:
    h, f, clock = make()
    send(h, clock, "ping", cmd())
    assert f.pings == 1
    assert f.replies == [{"v": 1, "cmd_id": "c-1", "ok": True, "error": None, "ts": "2026-11-18T11:06:41.123Z"}]
    assert h.counters() == {"accepted": 1, "rejected": 0}


def test_handler__ack_of_known_event() -> None:
    h, f, clock = make()
    send(h, clock, "ack", cmd(event_id=EID))
    assert f.acks == [EID]
    assert f.replies[0]["ok"] is True
    assert h.counters() == {"accepted": 1, "rejected": 0}


def test_handler__ack_of_unknown_event_is_refused() -> None:
    h, f, clock = make()
    other = "0" * 32
    send(h, clock, "ack", cmd(event_id=other))
    assert f.replies[0]["ok"] is False
    assert f.replies[0]["error"] == f"unknown event {other}; this agent has no record of it"
    assert h.counters() == {"accepted": 0, "rejected": 1}


def test_handler__test_mode_passes_minutes_and_reports_the_end() -> None:
    h, f, clock = make()
    send(h, clock, "test_mode", cmd(minutes=30))
    send(h, clock, "test_mode", cmd(id="c-2", minutes=0))
    assert f.test_modes == [30, 0]
    assert [(r["cmd_id"], r["ok"], r["test_mode_until"]) for r in f.replies] == [
        ("c-1", True, "2026-11-29T07:00:00.000Z"),
        ("c-2", True, None),
    ]


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("reboot", cmd()),
        ("test_mode", cmd(minutes=999)),
        ("ping", cmd(v=2)),
        ("ping", BIG),
        ("ping", cmd(x=nested(20))),
        ("ack", cmd(event_id="nope")),
    ],
)
def test_handler__refusal_with_id_is_answered_with_the_parse_reason(name: str, payload: bytes) -> None:
    h, f, clock = make()
    with pytest.raises(CommandError) as info:
        parse_command(name, payload)
    send(h, clock, name, payload)
    assert [(r["cmd_id"], r["ok"], r["error"]) for r in f.replies] == [("c-1", False, info.value.reason)]
    assert re.fullmatch(TS_RE, f.replies[0]["ts"])
    assert h.counters() == {"accepted": 0, "rejected": 1}
    assert (f.pings, f.acks, f.test_modes) == (0, [], [])


@pytest.mark.parametrize("payload", [b"", b"\xff", b"[" * 4000, b"[]", cmd(id=7), cmd(_drop=["id"]), HUGE])
def test_handler__refusal_without_id_is_counted_not_answered(payload: bytes) -> None:
    h, f, clock = make()
    send(h, clock, "ping", payload)
    assert f.replies == []
    assert h.counters() == {"accepted": 0, "rejected": 1}


def test_handler__callback_failure_is_answered_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    h, f, clock = make()
    f.fail = RuntimeError("heartbeat thread gone")
    with caplog.at_level(logging.WARNING, logger="agent.commands"):
        send(h, clock, "ping", cmd())
    assert f.replies[0]["error"] == "the agent could not carry out ping (RuntimeError)"
    assert h.counters() == {"accepted": 0, "rejected": 1}
    [rec] = caplog.records
    assert rec.exc_info is not None
    assert "ignored command 'ping' id 'c-1'" in rec.getMessage()


def test_handler__callback_may_refuse_with_its_own_reason() -> None:
    h, f, clock = make()
    f.fail = CommandError("test mode is held by the local control socket")
    send(h, clock, "test_mode", cmd(minutes=5))
    assert f.replies[0]["error"] == "test mode is held by the local control socket"
    assert h.counters() == {"accepted": 0, "rejected": 1}


def test_handler__reply_failure_does_not_escape(caplog: pytest.LogCaptureFixture) -> None:
    h, f, clock = make()

    def broken(_doc: dict[str, Any]) -> None:
        raise OSError("queue gone")

    h._reply = broken
    with caplog.at_level(logging.WARNING, logger="agent.commands"):
        send(h, clock, "ping", cmd(id="c-1"))
        send(h, clock, "ping", cmd(id="c-2"))
    assert f.pings == 2
    assert h.counters() == {"accepted": 2, "rejected": 0}
    assert len([r for r in caplog.records if "could not queue the reply" in r.getMessage()]) == 1


def test_handler__logs_each_kind_of_refusal_once(caplog: pytest.LogCaptureFixture) -> None:
    h, _f, clock = make()
    with caplog.at_level(logging.INFO, logger="agent.commands"):
        for i in range(50):
            send(h, clock, f"reboot{i}", cmd())
        for _ in range(5):
            send(h, clock, "ping", b"not json")
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2, msgs
    assert msgs[0].startswith(
        "ignored command 'reboot0' id 'c-1': unknown command 'reboot0'; known: ack, ping, test_mode "
        "(answered ok:false); more like it are only counted (status commands.rejected)"
    )
    assert msgs[1].startswith(
        "ignored command 'ping': payload is not JSON: Expecting value at character 0 (not answered)"
    )
    assert h.counters() == {"accepted": 0, "rejected": 55}
    caplog.clear()
    clock.advance(300)
    with caplog.at_level(logging.INFO, logger="agent.commands"):
        send(h, clock, "reboot", cmd())
    [rec] = caplog.records
    assert "; 49 more since the last report;" in rec.getMessage()


def test_handler__rate_limit_allows_a_burst_then_rate_per_min(caplog: pytest.LogCaptureFixture) -> None:
    h, f, clock = make(rate_per_min=60)
    with caplog.at_level(logging.WARNING, logger="agent.commands"):
        for i in range(30):
            h.handle("ping", cmd(id=f"c-{i}"))
    assert f.pings == 10
    assert h.counters() == {"accepted": 10, "rejected": 20}
    limited = [r for r in f.replies if not r["ok"]]
    assert [r["cmd_id"] for r in limited] == ["c-10", "c-11", "c-12"]  # a tiny reply budget, then silence
    assert limited[0]["error"] == "rate limited: more than 60 commands a minute"
    assert len(caplog.records) == 1
    assert "rate limited" in caplog.records[0].getMessage()

    clock.advance(1.0)  # 60 a minute: one more a second
    h.handle("ping", cmd(id="c-a"))
    h.handle("ping", cmd(id="c-b"))
    assert f.pings == 11
    assert h.counters() == {"accepted": 11, "rejected": 21}

    clock.advance(3600)  # an idle hour saves no more than the burst
    for i in range(15):
        h.handle("ping", cmd(id=f"d-{i}"))
    assert f.pings == 21


def test_handler__garbage_flood_is_limited_too() -> None:
    h, f, _clock = make(rate_per_min=60)
    for _ in range(1000):
        h.handle("reboot", cmd())
    assert h.counters() == {"accepted": 0, "rejected": 1000}
    assert len(f.replies) == 10 + 3


def test_handler__flood_never_becomes_a_reply_flood() -> None:
    h, f, clock = make(rate_per_min=60)
    for i in range(10_000):  # 10 000 pings over one minute
        clock.advance(0.006)
        h.handle("ping", cmd(id=f"c-{i}"))
    c = h.counters()
    assert c["accepted"] + c["rejected"] == 10_000
    assert 60 <= c["accepted"] <= 10 + 60
    assert len(f.replies) <= c["accepted"] + 3 + 3


def test_handler__stays_fast_on_hostile_payloads() -> None:
    h, _f, clock = make(rate_per_min=6000)
    hostile = [
        BIG,
        HUGE,
        b"[" * 4000,
        b'{"a":' * 680 + b"1" + b"}" * 680,
        cmd(x=nested(MAX_DEPTH)),
        pad_to(MAX_PAYLOAD),
        b"\xff" * MAX_PAYLOAD,
        b"[" * 60_000,
        json.dumps({"v": 1, "id": "c", "a": list(range(800))}).encode(),
    ]
    start = time.perf_counter()
    for _ in range(100):
        for p in hostile:
            clock.advance(1.0)
            h.handle("ping", p)
    per_call = (time.perf_counter() - start) / (100 * len(hostile))
    assert per_call < 0.005, f"{per_call * 1000:.2f} ms per command"


def test_handler__rate_per_min_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate_per_min must be at least 1, got 0"):
        CommandHandler(
            on_ack=lambda _e: True,
            on_ping=lambda: None,
            on_test_mode=lambda _m: None,
            reply=lambda _d: None,
            rate_per_min=0,
        )


def test_handler__repr_shows_counters() -> None:
    h, _f, clock = make(rate_per_min=60)
    send(h, clock, "ping", cmd())
    assert repr(h) == "<CommandHandler accepted=1 rejected=0 limit=60/min>"


# ---- fuzzing: nothing but Command or CommandError, and the handler never raises ----------------

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50)
json_val = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5), max_leaves=30
)
hex32 = st.text("0123456789abcdef", min_size=32, max_size=32)
envelope = {"v": st.just(1), "id": st.text(min_size=1, max_size=MAX_ID)}
extras = {"ts": st.text(max_size=30), "note": st.lists(json_leaf, max_size=5)}
valid_cmds = st.one_of(
    st.tuples(st.just("ping"), st.fixed_dictionaries(envelope, optional=extras)),
    st.tuples(st.just("ack"), st.fixed_dictionaries({**envelope, "event_id": hex32}, optional=extras)),
    st.tuples(
        st.just("test_mode"), st.fixed_dictionaries({**envelope, "minutes": st.integers(0, 240)}, optional=extras)
    ),
)
mutated = st.tuples(valid_cmds, st.sampled_from(["v", "id", "ts", "event_id", "minutes"]), json_val).map(
    lambda t: {**t[0][1], t[1]: t[2]}
)  # near-misses
payloads = st.one_of(
    st.binary(max_size=8192),  # raw bytes, invalid UTF-8
    st.text().map(str.encode),  # UTF-8, mostly not JSON
    json_val.map(lambda v: json.dumps(v).encode()),  # JSON of the wrong shape
    (valid_cmds.map(lambda t: t[1]) | mutated).map(lambda d: json.dumps(d).encode()),
    st.integers(1, 100_000).map(lambda n: b"[" * n),  # deep nesting / huge
)
names = st.sampled_from(sorted(NAMES)) | st.text(max_size=20)  # the cmd/{name} topic level
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(names, payloads)
def test_parse_command__returns_a_command_or_raises_command_error(name: str, payload: bytes) -> None:
    parsed: Command | None = None
    error: CommandError | None = None
    try:
        parsed = parse_command(name, payload)
    except CommandError as exc:
        error = exc
    if error is not None:
        assert error.cmd_id is None or isinstance(error.cmd_id, str)
        expected = {"v": 1, "cmd_id": error.cmd_id, "ok": False, "error": error.reason}
    else:
        assert isinstance(parsed, Command)
        expected = {"v": 1, "cmd_id": parsed.id, "ok": True, "error": None}
    h, f, _clock = make(synced=False)  # random ts values: judged only by the guard's own tests
    h.handle(name, payload)  # raising here fails the test: the handler must never raise
    assert sum(h.counters().values()) == 1
    if expected["cmd_id"] is None:
        assert f.replies == []
    elif parsed is None or parsed.name != "ack" or parsed.event_id in f.known:
        assert [{k: r[k] for k in expected} for r in f.replies] == [expected]


@settings(max_examples=100, deadline=None, database=None)
@given(valid_cmds)
def test_parse_command__accepts_every_valid_command(case: tuple[str, dict[str, Any]]) -> None:
    name, doc = case
    c = parse_command(name, json.dumps(doc).encode())
    assert (c.name, c.id, c.event_id, c.minutes, c.ts) == (
        name,
        doc["id"],
        doc.get("event_id"),
        doc.get("minutes"),
        doc.get("ts"),
    )
