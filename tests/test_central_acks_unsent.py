"""`monitor --ack`: an ack the broker has not confirmed, and a reply from the wrong device.

Before: Enter waited up to 5 s for the PUBACK on the print loop (alarms
waited behind it), then said "ack not sent" and forgot the ack, while paho
kept the message and delivered it after the reconnect: the device signalled
"help is coming" and its "accepted" reply was ignored.  And a reply on any
device's reply topic carrying our ``cmd_id`` was shown as the ack's answer.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent.central.acks import AckDesk
from agent.central.display import Alarm
from agent.central.link import Incoming
from agent.central.session import MonitorOptions, Target, _Session, run_monitor
from agent.central.settings import LinkSettings
from agent.config.model import BrokerAddress
from agent.errors import AgentError
from tests.central.test_monitor import FakeDevice, enc, event, topic
from tests.support.broker import Broker
from tests.support.faultproxy import FaultProxy
from tests.support.mqtt import Central
from tests.support.waiting import eventually

T = 1.8e9
EID = "0123456789abcdef0123456789abcdef"


def _reply(cmd_id: str, *, ok: bool = True) -> bytes:
    return json.dumps({"v": 1, "cmd_id": cmd_id, "ok": ok, "error": None if ok else "busy"}).encode()


# ---- the desk: whose reply counts ------------------------------------------------------


def test_ack_desk__reply_from_another_device_neither_confirms_nor_consumes_the_ack() -> None:
    desk = AckDesk(tz=dt.UTC)
    alarm = Alarm("main", "gate-a", EID, "panic", T)
    desk.offer(alarm)
    desk.sent(alarm, "c-1234", T)
    [line] = desk.feed("campus/main/gate-b/reply", _reply("c-1234"), T + 1)  # gate-b names gate-a's ack
    assert "accepted" not in line.text
    assert "a reply to ack c-1234 of main/gate-a, from another device; ignored" in line.text
    [line] = desk.feed("campus/main/gate-a/reply", _reply("c-1234"), T + 2)  # the real reply still counts
    assert f"ack of panic {EID} accepted" in line.text


def test_ack_desk__reply_after_the_wait_is_shown_and_acknowledges_the_alarm_again_offered() -> None:
    desk = AckDesk(tz=dt.UTC, reply_timeout_s=10)
    alarm = Alarm("main", "gate-a", EID, "panic", T)
    desk.offer(alarm)
    desk.sent(alarm, "c-1", T)
    [gave_up] = desk.tick(T + 11)
    assert "no reply to ack c-1 within 10 s" in gave_up.text
    assert desk.next_unacked() == alarm  # offered again: the operator may press Enter once more
    [line] = desk.feed("campus/main/gate-a/reply", _reply("c-1"), T + 30)  # the link delivered it after all
    assert f"ack of panic {EID} accepted (late: after the 10 s wait)" in line.text
    assert desk.next_unacked() is None


# ---- the print loop with a link that does not answer at once ---------------------------


class _SlowLink:
    """A link whose broker answers when the test says so; ``send`` never waits."""

    def __init__(self, *, up: bool = True) -> None:
        self.settings = LinkSettings((BrokerAddress("127.0.0.1", 1883),), connect_timeout_s=5.0)
        self.broker = self.settings.brokers[0]
        self.up = up
        self.sent: list[tuple[str, bytes]] = []
        self.answers: dict[int, str | None] = {}
        self.forgotten: list[int] = []

    def send(self, topic: str, payload: bytes) -> int:
        if not self.up:
            raise AgentError("not connected to a broker")
        self.sent.append((topic, payload))
        return len(self.sent)

    def settled(self, token: int) -> tuple[bool, str | None]:
        if token in self.answers:
            return True, self.answers.pop(token)
        return False, None

    def forget(self, token: int) -> None:
        self.forgotten.append(token)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _session(link: _SlowLink, clock: _Clock) -> tuple[_Session, io.StringIO, str]:
    out = io.StringIO()
    session = _Session(
        link,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        "campus",
        MonitorOptions(),
        out,
        wall=lambda: T + clock.t,
        mono=clock,
    )
    doc = event("gate-a")
    session._incoming(Incoming(topic("event/panic", "gate-a"), enc(doc), False, T))
    return session, out, str(doc["id"])


def _cmd_id(link: _SlowLink) -> str:
    return str(json.loads(link.sent[-1][1])["id"])


def test_session__unconfirmed_ack_is_said_so_and_its_reply_still_counts() -> None:
    link, clock = _SlowLink(), _Clock()
    session, out, eid = _session(link, clock)
    session._ack(T)
    assert f"ack sent for panic {eid}" in out.getvalue()  # at once: the loop never waited for the PUBACK
    cmd_id = _cmd_id(link)
    clock.t = 4.9
    session._confirmations(T + clock.t, clock.t)
    assert "not confirmed" not in out.getvalue()
    clock.t = 5.0
    session._confirmations(T + clock.t, clock.t)
    text = out.getvalue()
    assert f"main/gate-a: ack {cmd_id} not confirmed by the broker within 5 s; it may still be delivered" in text
    assert "ack not sent" not in text
    assert link.forgotten == [1]
    session._confirmations(T + 6, 6.0)
    assert text.count("not confirmed") == 1, "said once, not at every turn"
    session._incoming(Incoming("campus/main/gate-a/reply", _reply(cmd_id), False, T + 7))
    assert f"ack of panic {eid} accepted" in out.getvalue()


def test_session__ack_the_broker_refuses_offers_the_alarm_again() -> None:
    link, clock = _SlowLink(), _Clock()
    session, out, eid = _session(link, clock)
    session._ack(T)
    link.answers[1] = "Not authorized"
    session._confirmations(T + 0.1, 0.1)
    assert "not delivered: broker 127.0.0.1:1883 refused it (Not authorized)" in out.getvalue()
    again = session.desk.next_unacked()
    assert again is not None
    assert again.event_id == eid


def test_session__confirmed_ack_prints_nothing_more_and_with_the_link_down_nothing_is_queued() -> None:
    link, clock = _SlowLink(), _Clock()
    session, out, _eid = _session(link, clock)
    session._ack(T)
    link.answers[1] = None
    session._confirmations(T + 0.1, 0.1)
    clock.t = 60.0
    session._confirmations(T + 60, 60.0)
    assert "WARNING" not in out.getvalue()
    down = _SlowLink(up=False)
    session, out, eid = _session(down, _Clock())
    session._ack(T)
    assert "ack not sent: not connected to a broker" in out.getvalue()
    again = session.desk.next_unacked()
    assert again is not None
    assert again.event_id == eid


# ---- against a real broker: a link that swallows the ack, then heals ------------------


@pytest.fixture
def proxy(broker: Broker) -> Iterator[FaultProxy]:
    p = FaultProxy(broker.port).start()
    yield p
    p.stop()


@pytest.mark.broker
def test_monitor__ack_swallowed_by_a_dead_link_is_delivered_after_the_heal_and_its_reply_shown(
    proxy: FaultProxy, broker: Broker, device: str
) -> None:
    dev = FakeDevice(broker.port, device)
    out, err, stop = io.StringIO(), io.StringIO(), threading.Event()
    keys_r, keys_w = os.pipe()
    failed: list[BaseException] = []
    target = Target(LinkSettings((BrokerAddress("127.0.0.1", proxy.port),), connect_timeout_s=0.5))

    def main() -> None:
        with os.fdopen(keys_r) as keys:
            try:
                run_monitor(target, MonitorOptions(table_every_s=0.0), out=out, err=err, keys=keys, stop=stop)
            except BaseException as exc:  # shown by the test, not lost on its thread
                failed.append(exc)

    def printed(needle: str) -> Any:
        def seen() -> str | None:
            if failed:
                raise failed[0]
            return out.getvalue() if needle in out.getvalue() else None

        return eventually(seen, 10, lambda: f"{needle!r} on screen; it showed:\n{out.getvalue()}")

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    try:
        eventually(lambda: "monitoring " in err.getvalue() or failed, 10, "the monitor to start")
        central = Central(broker.port, topics=("none/#",))
        try:
            alarm = event(device, seq=1)
            central.publish(topic("event/panic", device), enc(alarm))
        finally:
            central.close()
        printed(str(alarm["id"]))
        proxy.set_blackhole(True)  # the link looks up, but nothing gets through
        os.write(keys_w, b"\n")
        printed(f"ack sent for panic {alarm['id']}")
        printed("not confirmed by the broker within 0.5 s; it may still be delivered")
        proxy.set_blackhole(False)  # the heal resets the connection; paho resends the ack
        text = printed(f"ack of panic {alarm['id']} accepted")
        assert "ack not sent" not in text
        assert dev.commands.get(timeout=5)["event_id"] == alarm["id"]
    finally:
        stop.set()
        os.close(keys_w)
        thread.join(10)
        dev.close()
