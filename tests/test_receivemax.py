"""The broker's Receive Maximum on its own (agent/receivemax.py): events in flight, paho's limit, a photo's slot."""

from __future__ import annotations

import logging

import pytest

from agent.config.model import BrokerAddress
from agent.receivemax import inflight_for


class _Session:
    def __init__(self, receive_maximum: int | None) -> None:
        self.broker = BrokerAddress("127.0.0.1", 1883)
        self.receive_maximum = receive_maximum
        self.limit: int | None = None

    def limit_inflight(self, n: int) -> None:
        self.limit = n


@pytest.mark.parametrize(
    ("receive_maximum", "expected", "paho_limit"),
    [
        (None, (10, True), None),  # none announced: the config's figure, paho left alone
        (100, (10, True), 100),
        (11, (10, True), 11),  # one slot beside ten events
        (5, (4, True), 5),
        (2, (1, True), 2),
        (1, (1, False), 1),  # no slot beside the one event: no photo on this broker
    ],
)
def test_inflight_for__within_the_brokers_figure(
    receive_maximum: int | None, expected: tuple[int, bool], paho_limit: int | None
) -> None:
    s = _Session(receive_maximum)
    assert inflight_for(s, 10, photos=True) == expected
    assert s.limit == paho_limit


def test_inflight_for__a_receive_maximum_of_one_is_said_only_where_photos_are_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="agent.uplink"):
        inflight_for(_Session(1), 10, photos=False)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        inflight_for(_Session(1), 10, photos=True)
    assert [r.name for r in caplog.records if "photos are not sent" in r.getMessage()] == ["agent.uplink"]


def test_inflight_for__a_smaller_figure_is_logged_once_per_session(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="agent.uplink"):
        inflight_for(_Session(5), 10, photos=False)
        inflight_for(_Session(11), 10, photos=False)
    assert [r.getMessage() for r in caplog.records] == [
        "broker 127.0.0.1:1883 takes 5 unacknowledged publishes at most; events in flight: 4"
    ]
