"""Per-broker dialect learning (MQTT version, retain) and the command route's retry rule: pure logic."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config.model import BrokerAddress
from agent.dialects import RECHECK, Dialects
from agent.linkstate import RETRY_MIN_S, CommandRoute
from agent.session import ConnectFailure, Dialect

A, B = BrokerAddress("a", 1883), BrokerAddress("b", 1883)
V5, V5_NR = Dialect("5", retain=True), Dialect("5", retain=False)
V3, V3_NR = Dialect("3.1.1", retain=True), Dialect("3.1.1", retain=False)
CLOSED = ConnectFailure("closed", "closed by the broker before CONNACK")
NO_V5 = ConnectFailure("refused", "CONNACK refused: Unsupported protocol version", 0x84)
NO_RETAIN = ConnectFailure("refused", "CONNACK refused: Retain not supported", 0x9A)
NOT_AUTH = ConnectFailure("refused", "CONNACK refused: Not authorized", 0x87)
TIMEOUT = ConnectFailure("timeout", "no CONNACK within 3 s")


@pytest.mark.parametrize(
    ("configured", "tried", "failure", "expected"),
    [
        ("auto", V5, CLOSED, V5),  # the round's first close: once more as it was (a healing link resets too)
        ("auto", V5, NO_V5, V3),
        ("auto", V5, NO_RETAIN, V5_NR),
        ("auto", V5, NOT_AUTH, None),
        ("auto", V5, TIMEOUT, None),  # a silent broker is a failed attempt: fail over, do not guess a dialect
        ("5", V5, CLOSED, None),
        ("5", V5, NO_V5, None),
        ("5", V5, NO_RETAIN, V5_NR),
        ("3.1.1", V3, CLOSED, V3),  # the same; a second close: see the test below
        ("3.1.1", V3_NR, CLOSED, None),
        ("auto", V3, NOT_AUTH, None),
    ],
)
def test_dialects_fallback__table(
    configured: str, tried: Dialect, failure: ConnectFailure, expected: Dialect | None
) -> None:
    assert Dialects(configured).fallback(A, tried, failure) == expected


def test_dialects__an_explicit_answer_is_remembered_per_broker_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = Dialects("auto")
    with caplog.at_level(logging.WARNING, logger="agent.dialects"):
        assert d.fallback(A, d.first(A), NO_V5) == V3
        d.answered(A, V3, retain_available=True)
        assert d.first(A) == V3
        assert d.first(B) == V5, "learnt per broker"
    assert len(caplog.records) == 1
    assert "does not speak MQTT 5" in caplog.text
    assert "refusal visibility" in caplog.text


def test_dialects__a_closed_socket_is_remembered_only_once_3_1_1_gets_a_connack() -> None:
    d = Dialects("auto")
    assert d.fallback(A, d.first(A), CLOSED) == V5
    assert d.fallback(A, V5, CLOSED) == V3
    assert d.first(A) == V5, "a broker that closes and then says nothing to 3.1.1 either gets MQTT 5 again"
    assert d.fallback(A, d.first(A), CLOSED) == V5, "a new round: its first close is tried again"
    assert d.fallback(A, V5, CLOSED) == V3
    assert d.answered(A, V3, retain_available=True) is False, "the closes may have been the link"
    assert d.fallback(A, V3, RECHECK) == V5, "MQTT 5 once more with the link known up"
    assert d.fallback(A, V5, CLOSED) == V3, "closed again: RabbitMQ 3.10 means it"
    assert d.answered(A, V3, retain_available=True) is True
    assert d.first(A) == V3


def test_dialects__one_close_answered_by_the_same_dialect_teaches_nothing() -> None:
    """A healing link resets the attempt that waited through the outage (tests/faults/test_blackhole_will.py)."""
    d = Dialects("auto")
    assert d.fallback(A, d.first(A), CLOSED) == V5
    d.answered(A, V5, retain_available=True)
    assert d.first(A) == V5
    assert d.fallback(A, d.first(A), CLOSED) == V5, "every round forgives one close"


def test_dialects__a_retained_will_closed_twice_goes_without_retain() -> None:
    d = Dialects("3.1.1")
    assert d.fallback(A, d.first(A), CLOSED) == V3
    assert d.fallback(A, V3, CLOSED) == V3_NR, "mosquitto under 3.1.1 closes at a retained will when retain is off"
    assert d.fallback(A, V3_NR, CLOSED) is None
    assert d.answered(A, V3_NR, retain_available=True) is False, "the closes may have been the link"
    assert d.fallback(A, V3_NR, RECHECK) == V3, "the retained will once more with the link known up"
    assert d.fallback(A, V3, CLOSED) == V3_NR
    assert d.answered(A, V3_NR, retain_available=True) is True
    assert d.first(A) == V3_NR


def test_dialects__after_an_mqtt5_silence_a_3_1_1_answer_is_checked_with_mqtt5_at_once() -> None:
    """A blackholed link times out MQTT 5 and may come back during the 3.1.1 attempt."""
    d = Dialects("auto")
    for outage in range(3):
        assert d.fallback(A, d.first(A), TIMEOUT) is None
        assert d.first(A) == V3
        assert d.answered(A, V3, retain_available=True) is False, "the 3.1.1 session is not used"
        assert d.fallback(A, V3, RECHECK) == V5, "MQTT 5 once more, now the link is known up"
        assert d.answered(A, V5, retain_available=True) is True
        assert d.first(A) == V5, f"outage {outage + 1}: MQTT 5 kept"


def test_dialects__a_broker_silent_to_mqtt5_while_the_link_is_up_is_remembered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = Dialects("auto")
    with caplog.at_level(logging.WARNING, logger="agent.dialects"):
        assert d.fallback(A, d.first(A), TIMEOUT) is None
        assert d.first(A) == V3
        assert d.answered(A, V3, retain_available=True) is False
        assert d.fallback(A, V3, RECHECK) == V5
        assert d.fallback(A, V5, TIMEOUT) == V3, "silent again right after a 3.1.1 CONNACK: 3.1.1 at once"
        assert d.answered(A, V3, retain_available=True) is True
    assert d.first(A) == V3
    assert d.first(B) == V5, "learnt per broker"
    assert caplog.text.count("does not speak MQTT 5") == 1
    assert "again just after a CONNACK to the fallback" in caplog.text


def test_dialects__a_round_after_an_mqtt5_silence_teaches_nothing_about_retain() -> None:
    d = Dialects("auto")
    assert d.fallback(A, d.first(A), TIMEOUT) is None
    assert d.fallback(A, d.first(A), CLOSED) == V3
    assert d.fallback(A, V3, CLOSED) == V3_NR
    assert d.answered(A, V3_NR, retain_available=True) is False, "the closes may have been the link healing"
    assert d.fallback(A, V3_NR, RECHECK) == V5
    assert d.answered(A, V5, retain_available=True) is True
    assert d.first(A) == V5, "neither MQTT 5 nor retain lost"


def test_dialects__retain_learnt_from_connack_property_or_disconnect(caplog: pytest.LogCaptureFixture) -> None:
    d = Dialects("auto")
    with caplog.at_level(logging.WARNING, logger="agent.dialects"):
        d.answered(A, V5, retain_available=False)
        d.retain_refused(B, V5)
        d.retain_refused(B, V5_NR)  # already known: no second warning
    assert d.first(A) == V5_NR
    assert d.first(B) == V5_NR
    assert caplog.text.count("does not support retained messages") == 2
    assert "password" not in caplog.text
    assert "username" not in caplog.text


def test_command_route__refusal_retries_after_backoff_kill_waits_for_an_empty_backlog() -> None:
    r = CommandRoute("campus/s/d/cmd/")
    assert not r.available
    assert r.due(0.0, lambda: False)
    assert r.failed("refused", 100.0, killed_session=False)
    assert not r.due(100.0 + RETRY_MIN_S - 1, lambda: True)
    assert r.due(100.0 + RETRY_MIN_S, lambda: False), "a refusal does not wait for the backlog"
    assert r.granted()
    assert not r.granted(), "no change, no new status"
    r.failed("killed", 200.0, killed_session=True)
    assert not r.due(200.0 + RETRY_MIN_S, lambda: False), "a retry that may kill the session waits for the backlog"
    assert r.due(200.0 + RETRY_MIN_S, lambda: True)
    assert repr(r) == "<CommandRoute unavailable: killed>"


@given(st.lists(st.lists(st.sampled_from(["timeout", "reset"]), max_size=6), max_size=12))
def test_dialects__a_broker_speaking_5_with_retain_never_loses_either_to_outages(rounds: list[list[str]]) -> None:
    """Rounds of attempts as Uplink._attempt drives them, each failing in any mix of ways until the link heals.

    An outage silences attempts or resets them as it heals; once the link answers it stays up
    for the rest of the round (a link that drops again within the seconds of a round can still
    mislead: docs/architecture.md).  A broker that speaks MQTT 5 and keeps retain then loses
    neither, and no round loops.
    """
    d = Dialects("auto")
    served = None
    for link in [*rounds, [], []]:  # two rounds on a steady link at the end
        dialect, steps, served = d.first(A), iter(link), None
        for _ in range(10):
            state = next(steps, "up")
            if state == "up":
                if d.answered(A, dialect, retain_available=True):
                    served = dialect
                    break
                failure = RECHECK
            else:
                failure = TIMEOUT if state == "timeout" else CLOSED
            nxt = d.fallback(A, dialect, failure)
            if nxt is None:
                break
            dialect = nxt
        else:
            raise AssertionError(f"a round of attempts did not end: {link}")
    assert served == V5, f"on a steady link the session is {served}: {d}"
