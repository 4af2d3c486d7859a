"""The addresses behind a broker's name: each its own failover target, and one connect budget for TCP and TLS.

A cluster is often one name in ``mqtt.brokers`` (round-robin DNS).
``socket.create_connection`` stops at the first address that takes TCP, so a
node that accepts and never answers MQTT took every attempt while the live
nodes behind the same name were never tried; it also gave each address the
whole connect timeout, so one attempt could outlast the watchdog's allowance.

So the sender resolves the name itself, at every attempt (a DNS change is
followed), and :class:`AddressBook` orders the answer: addresses that have not
failed first, in the resolver's order, then those that failed, the one that
failed longest ago first; every node gets its turn.  :class:`Dial` is one
connection's way in: a refusal moves to the next address at once, as
``create_connection`` does, but TCP and then TLS share one connect timeout,
whatever the number of addresses, and the phase an error came in is kept for
its words (agent/brokers.py, :func:`~agent.brokers.describe_attempt_error`).

An ASCII name goes to the resolver as bytes: a str makes ``getaddrinfo()``
load the IDNA codec, 0.4 MB for the same bytes (docs/architecture.md,
"Memory"); an address is connected to as given, which needs no codec.  TLS
still checks the configured name (SNI, certificate), never an address.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.brokers import describe_attempt_error
from agent.config.model import BrokerAddress

_MIN_TLS_S = 0.01  # a handshake left no time still gets a real timeout (0 would make the socket non-blocking)


@dataclass(frozen=True)
class Address:
    """One TCP address a broker's name resolved to (the port included)."""

    family: int
    sockaddr: tuple[Any, ...]

    def __str__(self) -> str:
        host = str(self.sockaddr[0])
        return f"[{host}]" if self.family == socket.AF_INET6 else host


def resolve(broker: BrokerAddress) -> list[Address]:
    """Every TCP address of ``broker``, each once, in the resolver's order; raises ``socket.gaierror``."""
    host: str | bytes = broker.host.encode("ascii") if broker.host.isascii() else broker.host
    infos = socket.getaddrinfo(host, broker.port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(Address(int(family), tuple(addr)) for family, _t, _p, _n, addr in infos))


def connect_first(
    addresses: Sequence[Address], deadline: float, failed: Callable[[Address], None]
) -> tuple[socket.socket, Address]:
    """TCP to the first of ``addresses`` that takes it before ``deadline`` (``time.monotonic()``).

    A refusal moves on at once; an address that does not answer spends what
    is left.  Each address that failed is passed to ``failed``, and the last
    one's error is raised.
    """
    error: OSError = TimeoutError("no address left to try")
    for address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(address.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(left)
            sock.connect(address.sockaddr)
        except OSError as exc:
            sock.close()
            failed(address)
            error = exc
            continue
        return sock, address
    raise error


class Dial:
    """One connection's way to its broker: the addresses to try, the phase reached, the connect budget.

    Args:
        broker: the configured name and port.
        timeout_s: the budget for TCP and TLS together (``mqtt.connect_timeout_s``).
        addresses: the ones to try, in order; None resolves ``broker`` at :meth:`tcp`.
        tls: whether a TLS handshake follows TCP.

    """

    def __init__(
        self, broker: BrokerAddress, timeout_s: float, addresses: Sequence[Address] | None = None, *, tls: bool
    ) -> None:
        self.broker = broker
        self.timeout_s = timeout_s
        self.addresses = addresses
        self.phase = "DNS" if addresses is None else "TCP"  # where an error now would have come from
        self.phase_timeout_s = timeout_s  # the time the current phase was given
        self.address: Address | None = None  # the one TCP reached
        self.unreachable: list[Address] = []  # those TCP failed at, in order
        self._tls = tls

    def tcp(self) -> socket.socket:
        """Resolve if needed, then TCP to one address; TLS is left what remains of the budget."""
        deadline = time.monotonic() + self.timeout_s
        if self.addresses is None:
            self.addresses = resolve(self.broker)
        self.phase = "TCP"
        sock, self.address = connect_first(self.addresses, deadline, self.unreachable.append)
        self.phase = "TLS" if self._tls else "MQTT"
        self.phase_timeout_s = max(_MIN_TLS_S, deadline - time.monotonic())
        return sock

    def tls_done(self) -> None:
        """The handshake is through: an error now is MQTT's."""
        self.phase = "MQTT"

    @property
    def at(self) -> Address | None:
        """The address the connection reached, or the last one TCP failed at."""
        return self.address or (self.unreachable[-1] if self.unreachable else None)

    def words(self, exc: BaseException) -> str:
        """What connect() raised, in words, with the phase it came in."""
        return describe_attempt_error(self.phase, exc, round(self.phase_timeout_s, 1))

    def __repr__(self) -> str:
        return f"<Dial {self.broker} {self.phase} at {self.at}>"


class AddressBook:
    """Which addresses of each configured broker failed, and when: they go last, the oldest failure first.

    Only addresses the name still resolves to are remembered, so the book
    stays as small as the DNS answers.
    """

    def __init__(self, resolver: Callable[[BrokerAddress], list[Address]] = resolve) -> None:
        self._resolve = resolver
        self._failed: dict[BrokerAddress, dict[Address, int]] = {}
        self._count = 0

    def order(self, broker: BrokerAddress) -> list[Address]:
        """``broker`` resolved now, in the order to try; raises what the resolver raises."""
        found = self._resolve(broker)
        failed = {a: n for a, n in self._failed.get(broker, {}).items() if a in found}
        self._failed[broker] = failed
        return sorted(found, key=lambda a: failed.get(a, -1))

    def failed(self, broker: BrokerAddress, address: Address) -> None:
        """An attempt at ``address`` failed: it goes last next time."""
        self._count += 1
        self._failed.setdefault(broker, {})[address] = self._count

    def worked(self, broker: BrokerAddress, address: Address) -> None:
        """A session at ``address`` held up: it takes its place in the resolver's order again."""
        self._failed.get(broker, {}).pop(address, None)

    def __repr__(self) -> str:
        return f"<AddressBook {sum(map(len, self._failed.values()))} failed>"
