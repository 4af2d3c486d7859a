"""Which broker next, and after how long: the sender's failover and backoff between connection attempts.

A session that worked (it lasted ``STABLE_S``, the broker did not send the
agent away, and it acknowledged what it was sent) resets both: the same broker
is tried again, soon.  Anything else is a failed attempt: the next broker in
the list, and a backoff that grows with full jitter (no lock-step storms when
a campus of devices loses its broker at once).  A broker that accepts and then
drops the agent at once, again and again, is said in the log: another device
may be using this one's client id.

Within one configured broker, each address its name resolves to is a target
of its own (agent/addresses.py, :attr:`Failover.addresses`): the one that
failed is tried last, so a half-dead node of a cluster behind one name does
not keep the agent from the live ones.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from agent.addresses import AddressBook
from agent.brokers import backoff_delay
from agent.config.model import BrokerAddress, MqttConfig
from agent.session import ConnectFailure

log = logging.getLogger(__name__)

STABLE_S = 10.0  # a session shorter than this counts as a failed attempt: the backoff grows, failover goes on
MOVE_ON = frozenset({0x9C, 0x9D})  # DISCONNECT: use another server, server moved
_SHORT_STREAK = 3  # accepted sessions in a row that ended at once: said in the log


@dataclass(frozen=True)
class Ended:
    """How an attempt ended: it failed (``failure``), or a session ran and ended this way."""

    failure: ConnectFailure | None
    lasted_s: float = 0.0
    lost_code: int | None = None  # the broker's DISCONNECT reason, if it sent one
    overdue: bool = False  # ended by the agent: the broker kept an event without a PUBACK


class Failover:
    """The broker to try, and the wait before the next attempt once one has ended."""

    def __init__(self, cfg: MqttConfig, rng: random.Random) -> None:
        self.addresses = AddressBook()  # which of each broker's addresses failed: they go last
        self._cfg = cfg
        self._rng = rng
        self._index = 0
        self._attempt = 0  # failed attempts in a row
        self._short = 0  # accepted sessions in a row that ended at once

    @property
    def broker(self) -> BrokerAddress:
        return self._cfg.brokers[self._index % len(self._cfg.brokers)]

    def after(self, ended: Ended) -> float:
        """Move on (or not) after ``ended``; return the seconds to wait before the next attempt."""
        if held_up(ended):
            self._attempt = self._short = 0  # a session that lasted: try that broker first again, soon
        else:  # a broker that accepts and then drops us at once must not get a reconnect a second
            broker = self.broker
            self._attempt += 1
            self._index += 1
            self._short = self._short + 1 if ended.failure is None and not ended.overdue else 0
            if self._short == _SHORT_STREAK:
                self._say_dropped_at_once(broker)
        return backoff_delay(self._attempt, self._cfg.reconnect_min_s, self._cfg.reconnect_max_s, self._rng)

    def _say_dropped_at_once(self, broker: BrokerAddress) -> None:
        log.warning(
            "broker %s accepted the connection and closed it within %g s, %d times in a row: another client "
            "with this device's client id %r may be taking the session over (two devices sharing a client id "
            "or a certificate), or the broker drops this client (its log says why); reconnecting with backoff",
            broker,
            STABLE_S,
            self._short,
            self._cfg.client_id,
        )


def held_up(ended: Ended) -> bool:
    """Whether a session worked: it lasted, was not sent away, and its broker acknowledged what it got.

    A broker that keeps an event without a PUBACK (its storage stuck)
    answers pings for as long as the agent stays; ending that session is a
    failed attempt, or the agent would reconnect to it forever and never try
    the next broker.
    """
    return ended.failure is None and ended.lasted_s >= STABLE_S and ended.lost_code not in MOVE_ON and not ended.overdue
