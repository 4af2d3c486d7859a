"""A broker name with several addresses (a cluster behind round-robin DNS): each address is a target of its own.

The order (agent/addresses.py) is tested as a pure function with a fake
resolver; the uplink against a name whose first address is a half-dead node
(a real mosquitto behind the second) and one whose addresses are all
blackholed, with ``socket.getaddrinfo`` patched to give the cluster's answer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from agent.addresses import Address, AddressBook, connect_first, resolve
from agent.config.model import BrokerAddress
from agent.events import EventType
from tests.support.broker import Broker, free_port
from tests.support.mqtt import Central
from tests.support.uplinkrig import RigFactory, mqtt_cfg
from tests.support.waiting import eventually

CLUSTER = BrokerAddress("cluster.test", 1883)


def _addr(port: int) -> Address:
    return Address(socket.AF_INET, ("127.0.0.1", port))


def _cluster_dns(monkeypatch: pytest.MonkeyPatch, ports: list[int]) -> list[str | bytes]:
    """``cluster.test`` resolves to 127.0.0.1 at ``ports``, in that order; returns the hosts asked for."""
    real, asked = socket.getaddrinfo, list[str | bytes]()

    def fake(host: str | bytes | None, port: object, *a: object, **kw: object) -> object:
        if host in ("cluster.test", b"cluster.test"):
            asked.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p)) for p in ports]
        return real(host, port, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


@contextlib.contextmanager
def _blackholes(n: int) -> Iterator[list[int]]:
    """``n`` loopback ports that never answer a SYN: each listener's accept queue (backlog 0) is already full."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            lst = stack.enter_context(socket.socket())
            lst.bind(("127.0.0.1", 0))
            lst.listen(0)
            ports.append(lst.getsockname()[1])
            stack.enter_context(socket.create_connection(("127.0.0.1", ports[-1])))  # fills the queue
        yield ports


# ---- the order of one broker's addresses -------------------------------------------------------


def test_address_book__untried_first_then_the_failed_the_oldest_failure_first() -> None:
    a, b, c = _addr(1), _addr(2), _addr(3)
    book = AddressBook(lambda _b: [a, b, c])
    assert book.order(CLUSTER) == [a, b, c]
    book.failed(CLUSTER, a)
    assert book.order(CLUSTER) == [b, c, a]
    book.failed(CLUSTER, b)
    book.failed(CLUSTER, c)
    assert book.order(CLUSTER) == [a, b, c], "all failed: the one that failed longest ago first"
    book.failed(CLUSTER, a)
    assert book.order(CLUSTER) == [b, c, a]
    book.worked(CLUSTER, c)
    assert book.order(CLUSTER) == [c, b, a]


def test_address_book__follows_dns_and_forgets_addresses_it_no_longer_gives() -> None:
    a, b, c = _addr(1), _addr(2), _addr(3)
    answer = [a, b]
    book = AddressBook(lambda _b: list(answer))
    book.failed(CLUSTER, a)
    assert book.order(CLUSTER) == [b, a]
    answer[:] = [c, b]  # the DNS record changed: a is gone
    assert book.order(CLUSTER) == [c, b]
    assert repr(book) == "<AddressBook 0 failed>"
    answer[:] = [a, c]
    assert book.order(CLUSTER) == [a, c], "a came back: its old failure is forgotten"


def test_address_book__brokers_kept_apart() -> None:
    a, b = _addr(1), _addr(2)
    book = AddressBook(lambda _b: [a, b])
    other = BrokerAddress("other.test", 1883)
    book.failed(CLUSTER, a)
    assert book.order(other) == [a, b]
    assert book.order(CLUSTER) == [b, a]


def test_resolve__an_ascii_name_goes_to_the_resolver_as_bytes_each_address_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = _cluster_dns(monkeypatch, [5, 6, 5])
    assert resolve(CLUSTER) == [_addr(5), _addr(6)]
    assert asked == [b"cluster.test"], "a str name would load the IDNA codec (docs/architecture.md, Memory)"


# ---- TCP: a refusal moves on at once, silence spends the budget ---------------------------------


def test_connect_first__a_refused_address_is_passed_over_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as live:
        refused, port = free_port(), live.getsockname()[1]
        failed: list[Address] = []
        sock, at = connect_first([_addr(refused), _addr(port)], time.monotonic() + 5.0, failed.append)
        sock.close()
    assert (at, failed) == (_addr(port), [_addr(refused)])


def test_connect_first__a_silent_address_spends_the_whole_budget_not_one_per_address() -> None:
    budget = 0.5
    with _blackholes(3) as ports:
        failed: list[Address] = []
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            connect_first([_addr(p) for p in ports], began + budget, failed.append)
        took = time.monotonic() - began
    assert took < 2 * budget, f"one connect budget for all addresses, took {took:.2f} s"
    assert failed == [_addr(ports[0])], "the next attempt starts with the next address"


# ---- the uplink ---------------------------------------------------------------------------------


@pytest.mark.broker
def test_uplink__cluster_name_with_a_silent_first_node__the_alarm_goes_via_a_live_node(
    broker: Broker,
    central: Central,
    device: str,
    rig_factory: RigFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as dead:  # never accept()s: the kernel takes TCP, nobody answers
        _cluster_dns(monkeypatch, [dead.getsockname()[1], broker.port])
        cfg = mqtt_cfg(client_id=device, connect_timeout_s=1.0, brokers=(CLUSTER,))
        rig = rig_factory(cfg, device)
        rig.put(1, EventType.PANIC)
        with caplog.at_level(logging.WARNING, logger="agent.uplink"):
            rig.uplink.start()
            assert central.wait_events(1, "panic", timeout=10)
    line = next(r.getMessage() for r in caplog.records if "unreachable" in r.getMessage())
    # the name has several addresses: the one that failed is named
    assert "broker cluster.test:1883 unreachable (127.0.0.1: no CONNACK within 1 s" in line


def test_uplink__a_name_with_three_silent_addresses__an_attempt_ends_within_the_connect_budget(
    device: str, rig_factory: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's watchdog allows a connect attempt two connect timeouts (agent/daemon.py, stall_after_s)."""
    ct = 1.0
    with _blackholes(3) as ports:
        _cluster_dns(monkeypatch, ports)
        rig = rig_factory(mqtt_cfg(client_id=device, connect_timeout_s=ct, brokers=(CLUSTER,)), device)
        rig.uplink.start()
        worst, end = 0.0, time.monotonic() + 3.5 * ct  # three attempts and their backoff at least
        while time.monotonic() < end:  # a measurement window, not a wait: the sender is sampled throughout
            worst = max(worst, time.monotonic() - rig.uplink.progress)
            time.sleep(0.02)
        err = eventually(lambda: rig.uplink.state().last_error, what="a failed attempt")
        rig.uplink.stop(timeout=2 * ct)
    assert worst < 2 * ct, f"the sender showed no progress for {worst:.2f} s"
    assert err == "127.0.0.1: TCP: no answer within 1 s"
