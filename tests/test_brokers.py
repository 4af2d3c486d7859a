"""Broker helpers shared by the uplink and the tools: reconnect backoff, connect errors in words.

No broker needed: pure functions.
"""

from __future__ import annotations

import random
import socket
import ssl

import pytest

from agent.uplink import backoff_delay, describe_connect_error


@pytest.mark.parametrize("attempt", [0, 1, 3, 10, 50])
def test_backoff_delay__full_jitter_within_cap(attempt: int) -> None:
    rng = random.Random(attempt)
    values = [backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(2000)]
    ceiling = min(60.0, 2.0**attempt)
    assert min(values) >= 0.0
    assert max(values) <= ceiling
    assert max(values) > ceiling * 0.9, "full jitter spans the whole range"
    assert len({round(v, 6) for v in values}) > 1900, "devices must not reconnect in lock-step"


def test_backoff_delay__two_devices_differ() -> None:
    a = [backoff_delay(3, 1, 60, random.Random(1)) for _ in range(1)]
    b = [backoff_delay(3, 1, 60, random.Random(2)) for _ in range(1)]
    assert a != b


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "host name not found (Name or service not known)"),
        (TimeoutError(), "no answer within 3 s"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS handshake failed"),
    ],
)
def test_describe_connect_error__words(exc: BaseException, words: str) -> None:
    assert words in describe_connect_error(exc, 3.0)
