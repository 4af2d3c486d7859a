"""What a valid command must still pass: its name's budget, freshness (retain, ts) and a new id.

Driven through :class:`CommandHandler` with fake callbacks and a fake clock, as in
test_commands.py; the black-box retained-command test is in tests/security/.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from agent.cmdguard import MAX_AGE_S, MAX_AHEAD_S, REPLAY_IDS, REPLAY_WINDOW_S, Budgets, ReplayWindow, staleness
from agent.commands import MAX_MINUTES
from agent.events import iso_ms
from tests.test_commands import EID, cmd, make


def iso(wall: float) -> str:
    return iso_ms(wall)


def test_max_minutes__exported() -> None:
    assert MAX_MINUTES == 240


# ---- retained and stale ---------------------------------------------------------------------------


def test_handler__retained_command_is_refused_and_never_applied() -> None:
    h, f, clock = make()
    clock.advance(1)
    h.handle("test_mode", cmd(id="t-1", minutes=240, ts=iso(clock.wall())), retained=True)
    assert f.test_modes == []
    assert f.replies[-1]["ok"] is False
    assert f.replies[-1]["error"].startswith("retained commands are never obeyed")
    assert h.counters() == {"accepted": 0, "rejected": 1}


def test_handler__retained_is_refused_even_with_an_unsynchronised_clock() -> None:
    h, f, _clock = make(synced=False)
    h.handle("test_mode", cmd(id="t-1", minutes=240), retained=True)
    assert f.test_modes == []


@pytest.mark.parametrize(
    ("offset", "ok", "reason"),
    [
        (-MAX_AGE_S - 5, False, r"stale command: sent 30\d s ago; commands older than 300 s are refused"),
        (-MAX_AGE_S + 5, True, None),
        (0, True, None),
        (MAX_AHEAD_S - 5, True, None),
        (MAX_AHEAD_S + 5, False, r"command dated 6\d s in the future"),
    ],
)
def test_handler__ts_bound_when_synced(offset: float, ok: bool, reason: str | None) -> None:
    h, f, clock = make()
    clock.advance(1)
    h.handle("test_mode", cmd(id="t-1", minutes=10, ts=iso(clock.wall() + offset)))
    assert f.replies[-1]["ok"] is ok
    assert f.test_modes == ([10] if ok else [])
    if reason is not None:
        assert re.match(reason, f.replies[-1]["error"]), f.replies[-1]["error"]


def test_handler__ts_not_judged_while_the_clock_is_unsynchronised() -> None:
    h, f, clock = make(synced=False)
    h.handle("test_mode", cmd(id="t-1", minutes=10, ts=iso(clock.wall() - 86400)))
    assert f.test_modes == [10]


@pytest.mark.parametrize("ts", ["yesterday", "2026-11-29T06:01:05", ""])
def test_handler__unreadable_or_zoneless_ts_refused_when_synced(ts: str) -> None:
    h, f, _clock = make()
    h.handle("ping", cmd(id="p-1", ts=ts))
    assert f.pings == 0
    assert "must be an ISO 8601 time with a zone" in f.replies[-1]["error"]


def test_staleness__offsets_with_a_zone_are_understood() -> None:
    wall = dt.datetime(2026, 11, 29, 6, 0, tzinfo=dt.UTC).timestamp()
    assert staleness("2026-11-29T07:00:00+01:00", wall, retained=False, synced=True) is None


# ---- repeated ids -----------------------------------------------------------------------------------


def test_handler__replayed_ack_is_refused() -> None:
    h, f, clock = make()
    ack = cmd(id="a-1", event_id=EID)
    h.handle("ack", ack)
    clock.advance(30)
    h.handle("ack", ack)  # byte-identical copy
    assert f.acks == [EID]
    assert [r["ok"] for r in f.replies] == [True, False]
    assert (
        f.replies[1]["error"] == "repeated command id: 'a-1' was already handled 30 s ago; every command needs a new id"
    )


def test_handler__repeated_id_across_names_is_refused() -> None:
    h, f, _clock = make()
    h.handle("ping", cmd(id="x"))
    h.handle("test_mode", cmd(id="x", minutes=5))
    assert f.test_modes == []


def test_replay_window__forgets_after_the_window() -> None:
    w = ReplayWindow()
    assert w.check_and_add("a", 0.0) is None
    assert w.check_and_add("a", REPLAY_WINDOW_S - 1) is not None
    assert w.check_and_add("a", REPLAY_WINDOW_S + 1) is None


def test_replay_window__keeps_at_most_the_last_ids() -> None:
    w = ReplayWindow()
    for i in range(REPLAY_IDS + 500):
        assert w.check_and_add(f"id-{i}", float(i) / 1000) is None
    assert len(w) == REPLAY_IDS
    assert w.check_and_add(f"id-{REPLAY_IDS + 499}", 1.0) is not None  # recent: still known
    assert w.check_and_add("id-0", 1.0) is None  # pushed out by 1,000 newer ids


# ---- budgets per name ---------------------------------------------------------------------------------


def test_handler__ping_flood_does_not_lock_out_an_ack() -> None:
    h, f, _clock = make(rate_per_min=60)
    for i in range(5000):
        h.handle("ping", cmd(id=f"p-{i}"))
    h.handle("ack", cmd(id="genuine", event_id=EID))
    assert f.acks == [EID]
    assert {"v": 1, "cmd_id": "genuine", "ok": True, "error": None} in [
        {k: r[k] for k in ("v", "cmd_id", "ok", "error")} for r in f.replies
    ]


def test_handler__garbage_on_unknown_names_does_not_lock_out_test_mode() -> None:
    h, f, _clock = make(rate_per_min=60)
    for i in range(5000):
        h.handle(f"junk{i % 7}", b"x" * 100)
    h.handle("test_mode", cmd(id="genuine", minutes=0))
    assert f.test_modes == [0]


def test_handler__an_ack_flood_still_answers_refusals_within_limits() -> None:
    h, f, _clock = make(rate_per_min=60)
    for i in range(1000):
        h.handle("ack", cmd(id=f"a-{i}", event_id=EID))
    limited = [r for r in f.replies if r["error"] and r["error"].startswith("rate limited")]
    assert len(limited) == 3
    assert len(f.replies) == 10 + 3


def test_budgets__unknown_names_share_one_budget() -> None:
    b = Budgets(frozenset({"ping"}), 60, 0.0)
    allowed = [b.admit(f"n{i}", 0.0)[0] for i in range(20)]
    assert allowed.count(True) == 10
    assert b.admit("ping", 0.0) == (True, False)
