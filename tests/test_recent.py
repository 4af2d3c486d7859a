"""The recent-events list: newest first, bounded, flags only turn on, readers hold a snapshot."""

from __future__ import annotations

from agent.recent import RECENT, RecentEvent, RecentEvents


def _ev(i: int) -> RecentEvent:
    return RecentEvent(f"id{i}", i, "panic", "panic", "2026-01-01T00:00:00.000Z", test=False, on_disk=i % 2 == 0)


def test_recent__newest_first_and_bounded() -> None:
    rec = RecentEvents()
    rec.add([_ev(1), _ev(2)])
    rec.add(_ev(i) for i in range(3, RECENT + 10))
    seqs = [d["seq"] for d in rec.as_dicts()]
    assert seqs == list(range(RECENT + 9, 9, -1))
    assert len(rec) == RECENT
    assert not rec.knows("id1")
    assert rec.knows(f"id{RECENT + 9}")


def test_recent__marks_turn_flags_on_and_never_off_and_a_snapshot_does_not_change() -> None:
    rec = RecentEvents()
    rec.add([_ev(1), _ev(2)])
    before = rec.as_dicts()
    rec.mark("id1", on_disk=True)
    rec.mark("id1", delivered=True)
    rec.mark("gone", delivered=True)
    after = {d["id"]: d for d in rec.as_dicts()}
    assert (after["id1"]["on_disk"], after["id1"]["delivered"]) == (True, True)
    assert (after["id2"]["on_disk"], after["id2"]["delivered"]) == (True, False)
    assert {d["id"]: d["delivered"] for d in before} == {"id1": False, "id2": False}
