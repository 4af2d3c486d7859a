"""A connection attempt's verdict on its own (agent/connack.py), without paho or a broker."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from agent.connack import ConnackWait, ConnectFailure, Dialect, positive, refusal_words


class _Attempt(ConnackWait):
    """What paho's thread leaves on a session before it sets ``connack``."""

    def __init__(self, *, code: int | None = None, lost: str | None = None, alert: str | None = None) -> None:
        self.dialect = Dialect("5", retain=True)
        self.client = SimpleNamespace(tls_alert=alert)  # type: ignore[assignment]
        self.connack = threading.Event()
        self.code, self.code_words = code, "Some words"
        self.retain_available = True
        self.lost = threading.Event()
        self.lost_reason = lost
        if lost is not None:
            self.lost.set()
        if code is not None or lost is not None:
            self.connack.set()


@pytest.mark.parametrize(
    ("attempt", "kind", "words"),
    [
        (_Attempt(code=0), None, None),
        (_Attempt(code=0x87), "refused", "CONNACK refused: Some words; check mqtt.username"),
        (_Attempt(code=0x84), "refused", "CONNACK refused: Some words; the broker does not speak this MQTT version"),
        (_Attempt(code=0, lost="Unspecified error"), "lost", "connection lost right after CONNACK (Unspecified error)"),
        (_Attempt(lost="Unspecified error"), "closed", "closed by the broker before CONNACK (MQTT 5: Unspecified"),
        (
            _Attempt(lost="x", alert="TLSV13_ALERT_CERTIFICATE_REQUIRED"),
            "connect",
            "the broker ended TLS before CONNACK",
        ),
        (_Attempt(), "timeout", "no CONNACK within 0.05 s"),
    ],
)
def test_verdict__each_ending_in_words(attempt: _Attempt, kind: str | None, words: str | None) -> None:
    got = attempt.verdict(0.05)
    assert (got.kind if got else None) == kind
    assert got is None or words is None or got.words.startswith(words), got


def test_verdict__a_stop_ends_the_wait_within_its_check() -> None:
    stop = threading.Event()
    stop.set()
    began = time.monotonic()
    assert _Attempt().verdict(60.0, stop) == ConnectFailure("stopped", "stopping before the CONNACK came")
    assert time.monotonic() - began < 1.0


@pytest.mark.parametrize(
    ("retain", "available", "expected"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_can_retain__needs_the_dialect_and_the_connack(retain: bool, available: bool, expected: bool) -> None:
    a = _Attempt(code=0)
    a.dialect, a.retain_available = Dialect("5", retain=retain), available
    assert a.can_retain is expected


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), (True, None), (0, None), (-1, None), ("5", None), (5, 5)]
)
def test_positive__only_a_positive_integer_is_a_limit(value: object, expected: int | None) -> None:
    assert positive(value) == expected


def test_refusal_words__retain_switched_off() -> None:
    assert refusal_words(0x9A, "Retain not supported") == (
        "CONNACK refused: Retain not supported (the broker has retain switched off)"
    )
