"""The documents waiting for the sender: only the newest status, replies bounded and in order."""

from __future__ import annotations

import json

from agent.outgoing import MAX_REPLIES, Outgoing


def test_outgoing__only_the_newest_status_is_taken_once() -> None:
    out = Outgoing()
    out.status({"n": 1})
    out.status({"n": 2})
    assert out.take() == ({"n": 2}, [])
    assert out.take() == (None, [])


def test_outgoing__replies_keep_their_order_and_the_newest_when_flooded() -> None:
    out = Outgoing()
    for i in range(MAX_REPLIES + 5):
        out.reply("t/reply", {"i": i})
    status, replies = out.take()
    assert status is None
    assert [json.loads(p)["i"] for _t, p in replies] == list(range(5, MAX_REPLIES + 5))


def test_outgoing__a_new_session_drops_a_stale_status_but_not_the_replies() -> None:
    out = Outgoing()
    out.status({"old": True})
    out.reply("t/reply", {"id": "x"})
    out.drop_status()
    assert out.take() == (None, [("t/reply", b'{"id":"x"}')])
