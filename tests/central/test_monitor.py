"""`campus-agent monitor` and `ack`: the fleet view on its own, then against a real mosquitto."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.central.acks import AckDesk, ack_command, parse_reply
from agent.central.board import DeviceState, table
from agent.central.display import Alarm, LineKind
from agent.central.fleet import FleetView
from agent.central.monitor import (
    MonitorOptions,
    Target,
    add_monitor_parsers,
    broker_address,
    resolve_target,
    run_monitor,
)
from agent.central.settings import LinkSettings
from agent.config import BrokerAddress
from agent.errors import AgentError, ConfigError
from agent.events import iso_ms, new_id
from tests.support.agentproc import AgentProc, unique_id, write_config
from tests.support.broker import Broker, free_port
from tests.support.certs import make_pki
from tests.support.mqtt import Central
from tests.support.waiting import eventually

# the ``validate`` fixture of tests/conftest.py: checks a document against its contract schema and returns it
Validate = Callable[[str, dict[str, Any]], dict[str, Any]]

T0 = dt.datetime(2026, 11, 29, 6, 1, 2, 345000, tzinfo=dt.UTC).timestamp()


def status(device: str = "gate-north-1", *, ts: float = T0, synced: bool = True, pending: int = 0) -> dict[str, Any]:
    return {
        "v": 1,
        "site": "main",
        "device": device,
        "state": "online",
        "ts": iso_ms(ts),
        "clock_synced": synced,
        "agent": {"version": "0.1.0", "boot_id": "b" * 32, "uptime_s": 5},
        "link": {"connected_since": iso_ms(ts), "reconnects": 0},
        "outbox": {"pending": pending, "oldest_age_s": None, "dropped": 0},
        "inputs": {},
        "cameras": {},
        "system": {"cpu_temp_c": None, "disk_free_mb": None, "load1": None},
        "test_mode_until": None,
    }


def offline(device: str = "gate-north-1", reason: str = "lost") -> dict[str, Any]:
    return {"v": 1, "site": "main", "device": device, "state": "offline", "reason": reason, "ts": iso_ms(T0)}


def event(
    device: str = "gate-north-1",
    *,
    seq: int = 1042,
    type_: str = "panic",
    ts: float = T0,
    test: bool = False,
    synced: bool = True,
    id_: str | None = None,
) -> dict[str, Any]:
    return {
        "v": 1,
        "id": id_ or new_id(),
        "seq": seq,
        "site": "main",
        "device": device,
        "type": type_,
        "source": "panic",
        "test": test,
        "ts": iso_ms(ts),
        "clock_synced": synced,
        "boot_id": "b" * 32,
        "mono_ms": 1000,
        "data": {"pin": 17, "contact": "normally_open"},
    }


def enc(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def col(device: str) -> str:
    """How a device is printed at the start of a line: padded to line up."""
    return f"main/{device}".ljust(20)


def topic(kind: str, device: str = "gate-north-1") -> str:
    return f"campus/main/{device}/{kind}"


@pytest.fixture
def fleet() -> FleetView:
    return FleetView(tz=dt.UTC)


# ---- FleetView: events ------------------------------------------------------------


def test_fleet__event_line_shows_time_device_type_source_seq_test_and_delay(fleet: FleetView) -> None:
    doc = event(test=True)
    [line] = fleet.feed(topic("event/panic"), enc(doc), T0 + 0.046)
    assert line.kind is LineKind.EVENT
    assert line.text.startswith("06:01:02.391  main/gate-north-1")
    for part in ("panic", "from panic", "seq 1042", "TEST", "+46 ms", f"id {doc['id']}"):
        assert part in line.text
    assert "clock?" not in line.text
    assert line.record["delay_ms"] == 46
    assert line.alarm == Alarm("main", "gate-north-1", doc["id"], "panic", T0 + 0.046, test=True)


def test_fleet__unsynced_clock_is_marked_and_not_test_has_no_flag(fleet: FleetView) -> None:
    [line] = fleet.feed(topic("event/input_fault"), enc(event(type_="input_fault", synced=False)), T0 + 120)
    assert "clock?" in line.text
    assert "TEST" not in line.text
    assert "+2 min" in line.text
    assert line.alarm is None


def test_fleet__same_id_is_shown_once(fleet: FleetView) -> None:
    doc = event()
    assert len(fleet.feed(topic("event/panic"), enc(doc), T0)) == 1
    assert fleet.feed(topic("event/panic"), enc(doc), T0 + 1) == []
    fleet.feed(topic("event/panic"), enc(event(seq=1043)), T0 + 2)
    assert fleet.feed(topic("event/panic"), enc(doc), T0 + 3) == []  # a redelivery after a reconnect
    assert (fleet.events, fleet.duplicates) == (2, 2)
    assert "2 events, 2 duplicates suppressed" in table(fleet, 0, T0 + 3)


def test_fleet__dedup_memory_is_bounded() -> None:
    fleet = FleetView(dedup_ids=3, tz=dt.UTC)
    docs = [event(seq=i) for i in range(1, 5)]
    for d in docs:
        fleet.feed(topic("event/panic"), enc(d), T0)
    assert fleet.feed(topic("event/panic"), enc(docs[-1]), T0) == []
    assert len(fleet.feed(topic("event/panic"), enc(docs[0]), T0)) == 1  # forgotten: the oldest fell out


def test_fleet__seq_gap_warns_and_a_late_event_says_so(fleet: FleetView) -> None:
    fleet.feed(topic("event/panic"), enc(event(seq=41)), T0)
    warn, _event_line = fleet.feed(topic("event/panic"), enc(event(seq=44)), T0)
    assert warn.kind is LineKind.WARNING
    assert "seq jumped 41 -> 44: 2 event(s) not seen yet" in warn.text
    [late] = fleet.feed(topic("event/panic"), enc(event(seq=42)), T0)
    assert "seq 42" in late.text
    assert "late (after seq 44)" in late.text


@pytest.mark.parametrize(
    ("where", "payload", "why"),
    [
        ("event/panic", b"garbage", "payload is not JSON"),
        ("event/panic", b"\xff\xfe", "payload is not UTF-8"),
        ("event/panic", b"[1, 2]", "payload is JSON list, not an object"),
        ("event/panic", b"[" * 5000, "payload is not JSON"),
        ("event/panic", b'{"seq": 1}', "event without an id"),
        ("event/panic", b"{" * 70_000, "too large"),
        ("status", b'{"state": "sleeping"}', "status with state 'sleeping'"),
        ("status", b"null", "payload is JSON NoneType, not an object"),
    ],
)
def test_fleet__malformed_payload_is_one_warning(fleet: FleetView, where: str, payload: bytes, why: str) -> None:
    lines = fleet.feed(topic(where), payload, T0)
    assert [ln.kind for ln in lines] == [LineKind.WARNING]
    assert why in lines[0].text
    assert fleet.feed(topic("event/panic"), enc(event()), T0)[0].kind is LineKind.EVENT


def test_fleet__event_with_odd_fields_still_prints(fleet: FleetView) -> None:
    [line] = fleet.feed(topic("event/panic"), b'{"id": "%s", "seq": true, "ts": "yesterday"}' % (b"a" * 32), T0)
    assert "panic" in line.text  # the type comes from the topic
    assert "seq ?" in line.text
    assert line.record["delay_ms"] is None


def test_fleet__foreign_topic_is_a_warning_and_cmd_topics_are_silent(fleet: FleetView) -> None:
    assert fleet.feed("campus/main", b"{}", T0)[0].kind is LineKind.WARNING
    assert fleet.feed(topic("cmd/ack"), b"{}", T0) == []


# ---- FleetView: devices ------------------------------------------------------------


def test_fleet__will_marks_device_offline(fleet: FleetView) -> None:
    assert fleet.feed(topic("status"), enc(status()), T0)[0].text.endswith("online           (first status seen)")
    [line] = fleet.feed(topic("status"), enc(offline()), T0 + 5)
    assert line.kind is LineKind.STATE
    assert "OFFLINE" in line.text
    assert "lost: the broker lost its connection (will)" in line.text
    [row] = fleet.rows(T0 + 7)
    assert (row.state, row.reason) == (DeviceState.OFFLINE, "lost")
    assert "main/gate-north-1       offline   (lost) 2 s ago    -" in table(fleet, 0, T0 + 7)
    assert fleet.feed(topic("status"), enc(offline()), T0 + 6) == []  # said once
    assert "was offline" in fleet.feed(topic("status"), enc(status()), T0 + 9)[0].text


def test_fleet__retained_statuses_fill_the_table_quietly(fleet: FleetView) -> None:
    assert fleet.feed(topic("status", "a-1"), enc(offline("a-1")), T0, retained=True) == []
    assert fleet.feed(topic("status", "b-2"), enc(status("b-2", pending=3)), T0, retained=True) == []
    fleet.feed(topic("event/panic", "c-3"), enc(event("c-3")), T0)
    text = table(fleet, 0, T0 + 75)
    assert "3 devices: 1 online, 0 OVERDUE, 1 offline, 1 unknown" in text
    assert "main/a-1                offline   (lost)            -       -" in text
    assert "main/b-2                online    75 s ago          3       -" in text
    assert "main/c-3                ?         -                 -       -             -         panic 75 s ago" in text


def test_fleet__overdue_after_three_default_intervals(fleet: FleetView) -> None:
    fleet.feed(topic("status"), enc(status(pending=3)), T0)
    assert fleet.tick(T0 + 89) == []
    [line] = fleet.tick(T0 + 91)
    assert "OVERDUE" in line.text
    assert "no heartbeat for 91 s (expected every 30 s)" in line.text
    assert fleet.tick(T0 + 92) == []  # flagged once
    assert "main/gate-north-1       OVERDUE   92 s ago          3" in table(fleet, 0, T0 + 92)
    [back] = fleet.feed(topic("status"), enc(status()), T0 + 95)
    assert "online" in back.text
    assert "heartbeat back" in back.text
    assert fleet.rows(T0 + 95)[0].state is DeviceState.ONLINE


def test_fleet__interval_is_learned_from_consecutive_statuses(fleet: FleetView) -> None:
    for i in range(4):
        fleet.feed(topic("status"), enc(status()), T0 + 10 * i)
    assert fleet.rows(T0 + 30)[0].interval_s == 10
    assert fleet.tick(T0 + 59) == []
    assert "expected every 10 s" in fleet.tick(T0 + 61)[0].text


def test_fleet__long_interval_is_learned_when_two_gaps_match_and_change_statuses_do_not_shrink_it(
    fleet: FleetView,
) -> None:
    """A 5-minute heartbeat goes overdue at the default deadline until two equal gaps show its interval."""
    fleet.feed(topic("status"), enc(status()), T0)
    assert fleet.tick(T0 + 100)  # overdue at 3 x the default 30 s
    fleet.feed(topic("status"), enc(status()), T0 + 300)  # one long gap: a hang or a long heartbeat?
    assert fleet.tick(T0 + 400)
    fleet.feed(topic("status"), enc(status()), T0 + 600)  # the same gap again: a long heartbeat
    assert fleet.rows(T0 + 600)[0].interval_s == 300
    assert fleet.tick(T0 + 600 + 100) == []
    for t in (T0 + 610, T0 + 610.2, T0 + 610.4, T0 + 610.6):  # a burst of statuses sent on changes
        fleet.feed(topic("status"), enc(status()), t)
    assert fleet.rows(T0 + 611)[0].interval_s == 300


def test_fleet__overdue_after_override() -> None:
    fleet = FleetView(overdue_after_s=2, tz=dt.UTC)
    fleet.feed(topic("status"), enc(status()), T0)
    assert fleet.tick(T0 + 1.9) == []
    assert "no heartbeat for 2.1 s (overdue after 2.0 s)" in fleet.tick(T0 + 2.1)[0].text


@pytest.mark.parametrize(("synced", "overdue"), [(True, True), (False, False)])
def test_fleet__stale_retained_status_counts_from_its_ts_when_the_clock_is_good(
    fleet: FleetView, synced: bool, overdue: bool
) -> None:
    fleet.feed(topic("status"), enc(status(ts=T0 - 3600, synced=synced)), T0, retained=True)
    assert bool(fleet.tick(T0 + 1)) is overdue


# ---- acknowledging -----------------------------------------------------------------


def alarm(n: int = 0) -> Alarm:
    return Alarm("main", "gate-north-1", f"{n:032x}", "panic", T0 + n)


def reply(cmd_id: str, ok: bool = True, error: str | None = None) -> bytes:
    return enc({"v": 1, "cmd_id": cmd_id, "ok": ok, "error": error, "ts": iso_ms(T0)})


def test_ack_command__follows_the_contract(validate: Validate) -> None:
    cmd_id, payload = ack_command("a" * 32, T0)
    doc = validate("command", json.loads(payload))
    assert doc == {"v": 1, "id": cmd_id, "ts": "2026-11-29T06:01:02.345Z", "event_id": "a" * 32}
    assert cmd_id.startswith("c-")


def test_ack_desk__latest_alarm_first_and_reply_shown() -> None:
    desk = AckDesk(tz=dt.UTC)
    desk.offer(alarm(1))
    desk.offer(alarm(2))
    assert desk.next_unacked() == alarm(2)
    desk.sent(alarm(2), "c-1", T0)
    assert desk.next_unacked() == alarm(1)
    assert desk.feed(topic("reply"), reply("c-other"), T0) == []
    [line] = desk.feed(topic("reply"), reply("c-1"), T0 + 0.2)
    assert line.kind is LineKind.REPLY
    assert f"ack of panic {alarm(2).event_id} accepted" in line.text
    assert desk.command_topic(alarm(2)) == "campus/main/gate-north-1/cmd/ack"


def test_ack_desk__refused_or_unanswered_ack_is_offered_again() -> None:
    desk = AckDesk(reply_timeout_s=5, tz=dt.UTC)
    desk.offer(alarm(1))
    desk.sent(alarm(1), "c-1", T0)
    [line] = desk.feed(topic("reply"), reply("c-1", ok=False, error="no event with that id"), T0)
    assert "REFUSED: no event with that id" in line.text
    assert desk.next_unacked() == alarm(1)
    desk.sent(alarm(1), "c-2", T0)
    assert desk.tick(T0 + 4) == []
    assert "no reply to ack c-2 within 5 s" in desk.tick(T0 + 6)[0].text
    assert desk.next_unacked() == alarm(1)


def test_parse_reply__rejects_what_is_not_a_reply() -> None:
    assert parse_reply(b'{"cmd_id": "c-1", "ok": "yes"}') is None
    assert parse_reply(b"[") is None
    assert parse_reply(reply("c-1", ok=False, error="x")).error == "x"  # type: ignore[union-attr]


# ---- the command line ----------------------------------------------------------------


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="campus-agent")
    add_monitor_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("broker.campus.lan:8883", "broker.campus.lan", 8883),
        ("10.0.0.5", "10.0.0.5", 1883),
        ("[::1]:1884", "::1", 1884),
    ],
)
def test_broker_address__valid(text: str, host: str, port: int) -> None:
    assert broker_address(text) == BrokerAddress(host, port)


@pytest.mark.parametrize(
    "argv",
    [
        ["monitor", "--broker", "host:http"],
        ["monitor", "--broker", "host:0"],
        ["monitor", "--site", "Main"],
        ["monitor", "--once", "--duration", "3"],
        ["monitor", "--overdue-after", "-1"],
        ["ack", "abc", "--device", "main/gate-1"],
        ["ack", "a" * 32, "--device", "gate-1"],
        ["ack", "a" * 32],
        ["monitor", "--prefix", "campus/#"],
    ],
)
def test_cli__bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(*argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_resolve_target__says_what_to_pass_without_broker_or_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no broker given: pass --broker HOST:PORT .* or -c FILE"):
        resolve_target(None, None, None, default_config=tmp_path / "agent.yaml")
    with pytest.raises(ConfigError, match="missing.yaml"):
        resolve_target(None, tmp_path / "missing.yaml", None)


def test_resolve_target__config_gives_brokers_and_prefix_broker_flag_overrides(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 1884, device="gate-1", mqtt={"topic_prefix": "north"})
    t = resolve_target(None, cfg, None)
    assert (t.link.brokers, t.prefix, t.link.protocol) == ((BrokerAddress("127.0.0.1", 1884),), "north", "auto")
    t = resolve_target(BrokerAddress("b", 1), cfg, "south")
    assert (t.link.brokers, t.prefix) == ((BrokerAddress("b", 1),), "south")


def test_cli__unreachable_broker_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert cli("monitor", "--broker", f"127.0.0.1:{port}", "--once") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"campus-agent monitor: cannot reach broker 127.0.0.1:{port} (connection refused)"]


# ---- against a real broker -----------------------------------------------------------


class MonitorRun:
    """run_monitor on a thread, its output captured; stopped in close()."""

    def __init__(self, port: int, *, keys: bool = False, **opts: Any) -> None:
        self.target = Target(LinkSettings((BrokerAddress("127.0.0.1", port),)))
        self.opts = MonitorOptions(**{"table_every_s": 0.0, **opts})
        self.out, self.err = io.StringIO(), io.StringIO()
        self.stop = threading.Event()
        self.rc: int | None = None
        self.exc: BaseException | None = None
        self._keys_w: int | None = None
        self.keys: TextIO | None = None
        if keys:
            keys_r, self._keys_w = os.pipe()
            self.keys = os.fdopen(keys_r, "r")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.wait_for("monitoring ", stream="err")

    def _run(self) -> None:
        try:
            self.rc = run_monitor(self.target, self.opts, out=self.out, err=self.err, keys=self.keys, stop=self.stop)
        except BaseException as exc:
            self.exc = exc

    def press(self, text: str = "") -> None:
        assert self._keys_w is not None
        os.write(self._keys_w, f"{text}\n".encode())

    def wait_for(self, needle: str, *, stream: str = "out", timeout: float = 10.0) -> str:
        """Everything printed on ``stream`` once it holds ``needle``; a monitor that crashed fails at once."""
        buf = self.out if stream == "out" else self.err

        def printed() -> str | None:
            if self.exc is not None:
                raise self.exc
            text = buf.getvalue()
            return text if needle in text else None

        return eventually(printed, timeout, lambda: f"{needle!r} to be printed; {stream} was:\n{buf.getvalue()}")

    def close(self) -> int | None:
        self.stop.set()
        self.thread.join(5)
        if self._keys_w is not None:
            os.close(self._keys_w)
            self._keys_w = None
        return self.rc


@pytest.fixture
def monitor() -> Iterator[Callable[..., MonitorRun]]:
    runs: list[MonitorRun] = []

    def start(port: int, **kw: Any) -> MonitorRun:
        runs.append(MonitorRun(port, **kw))
        return runs[-1]

    yield start
    for r in runs:
        r.close()


class FakeDevice:
    """Answers commands the way the contract says the agent will."""

    def __init__(self, port: int, device: str, *, ok: bool = True, error: str | None = None) -> None:
        self.root = f"campus/main/{device}"
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        ready = threading.Event()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"fake-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5
        )

        def on_message(cl: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
            doc = json.loads(m.payload)
            self.commands.put(doc)
            answer = {"v": 1, "cmd_id": doc["id"], "ok": ok, "error": error, "ts": iso_ms(time.time())}
            cl.publish(f"{self.root}/reply", json.dumps(answer), qos=1)

        self.c.on_connect = lambda cl, *a: cl.subscribe(f"{self.root}/cmd/#", qos=1)
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = on_message
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        assert ready.wait(10), "fake device got no SUBACK"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def fake_device() -> Iterator[Callable[..., FakeDevice]]:
    devices: list[FakeDevice] = []

    def make(port: int, device: str, **kw: Any) -> FakeDevice:
        devices.append(FakeDevice(port, device, **kw))
        return devices[-1]

    yield make
    for d in devices:
        d.close()


@pytest.mark.broker
def test_monitor__duplicated_event_is_printed_once(
    broker: Broker, central: Central, device: str, monitor: Callable[..., MonitorRun], validate: Validate
) -> None:
    text, js = monitor(broker.port), monitor(broker.port, json=True)
    dup, sentinel = validate("event", event(device, seq=7)), validate("event", event(device, seq=8))
    central.publish(topic("event/panic", device), enc(dup))
    central.publish(topic("event/panic", device), enc(dup))
    central.publish(topic("event/panic", device), enc(sentinel))
    out = text.wait_for(sentinel["id"])
    assert out.count(dup["id"]) == 1
    assert f"{col(device)}  panic            from panic       seq 7 " in out
    records = [json.loads(ln) for ln in js.wait_for(sentinel["id"]).splitlines()]
    assert [r["seq"] for r in records if r["kind"] == "event" and r["device"] == device] == [7, 8]
    assert text.close() == 0
    assert "1 duplicate suppressed" in text.out.getvalue()


@pytest.mark.broker
def test_monitor__real_agent_press_then_sigkill_shows_offline(
    broker: Broker, agent_proc: Callable[..., AgentProc], device: str, monitor: Callable[..., MonitorRun]
) -> None:
    run = monitor(broker.port, site="main")
    agent = agent_proc(broker.port, device=device)
    run.wait_for(f"{col(device)}  online")
    agent.click()
    seq = agent.wait_recorded(1)[0]["seq"]
    run.wait_for(f"{col(device)}  panic            from panic       seq {seq} ")
    agent.kill()
    out = run.wait_for("lost: the broker lost its connection (will)")
    assert f"{col(device)}  OFFLINE" in out
    run.close()
    assert re.search(rf"\nmain/{device} +offline +\(lost\) ", run.out.getvalue())


@pytest.mark.broker
def test_monitor__device_whose_heartbeat_stops_is_flagged_overdue(
    broker: Broker, central: Central, device: str, monitor: Callable[..., MonitorRun], validate: Validate
) -> None:
    run = monitor(broker.port, overdue_after_s=0.5)
    central.publish(topic("status", device), enc(validate("status", status(device))), retain=True)
    run.wait_for(f"{col(device)}  online           (first status seen)")
    run.wait_for(f"{col(device)}  OVERDUE          no heartbeat for")
    central.publish(topic("status", device), enc(status(device)), retain=True)
    run.wait_for(f"{col(device)}  online           (heartbeat back)")
    central.publish(topic("status", device), b"", retain=True)  # clear the retained status


@pytest.mark.broker
def test_monitor__enter_acknowledges_the_latest_alarm(
    broker: Broker,
    central: Central,
    device: str,
    monitor: Callable[..., MonitorRun],
    fake_device: Callable[..., FakeDevice],
) -> None:
    fake = fake_device(broker.port, device)
    run = monitor(broker.port, keys=True)
    doc = event(device, seq=3)
    central.publish(topic("event/panic", device), enc(doc))
    run.wait_for(doc["id"])
    run.press()
    out = run.wait_for(f"ack of panic {doc['id']} accepted")
    cmd = fake.commands.get(timeout=5)
    assert cmd["event_id"] == doc["id"]
    assert f"ack sent for panic {doc['id']} as {cmd['id']}" in out
    run.press()
    run.wait_for("nothing to acknowledge")
    run.press("q")
    run.thread.join(5)
    assert run.rc == 0


@pytest.mark.broker
def test_monitor__resubscribes_after_the_broker_restarts(
    own_broker: Broker, monitor: Callable[..., MonitorRun]
) -> None:
    run = monitor(own_broker.port)
    own_broker.restart()
    run.wait_for(f"lost the connection to 127.0.0.1:{own_broker.port}")
    run.wait_for(f"reconnected to 127.0.0.1:{own_broker.port}")
    c = Central(own_broker.port, topics=("none/#",))
    try:
        doc = event("gate-1", seq=1)
        c.publish(topic("event/panic", "gate-1"), enc(doc))
        run.wait_for(doc["id"])
    finally:
        c.close()


@pytest.mark.broker
def test_ack__round_trip_with_a_device(
    broker: Broker,
    device: str,
    fake_device: Callable[..., FakeDevice],
    capsys: pytest.CaptureFixture[str],
    validate: Validate,
) -> None:
    fake = fake_device(broker.port, device)
    eid = new_id()
    assert cli("ack", eid, "--device", f"main/{device}", "--broker", f"127.0.0.1:{broker.port}") == 0
    cmd = validate("command", fake.commands.get(timeout=5))
    assert cmd["event_id"] == eid
    assert capsys.readouterr().out == f"main/{device}: ack of event {eid} accepted ({cmd['id']})\n"


@pytest.mark.broker
def test_ack__refused_or_unanswered_exits_1(
    broker: Broker, device: str, fake_device: Callable[..., FakeDevice], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_device(broker.port, device, ok=False, error="no event with that id")
    eid = new_id()
    assert cli("ack", eid, "--device", f"main/{device}", "--broker", f"127.0.0.1:{broker.port}", "--json") == 1
    assert json.loads(capsys.readouterr().out)["error"] == "no event with that id"
    silent = unique_id("gate")
    assert (
        cli("ack", eid, "--device", f"main/{silent}", "--broker", f"127.0.0.1:{broker.port}", "--timeout", "0.3") == 1
    )
    assert f"no reply from main/{silent}" in capsys.readouterr().err


@pytest.mark.broker
def test_monitor__tls_and_client_certificate_from_the_config(
    tmp_path: Path, device: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki", devices=(device,))
    extra = (
        f"cafile {pki['ca'].cert_path}\ncertfile {pki['server'].cert_path}\nkeyfile {pki['server'].key_path}\n"
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
    )
    tls_broker = Broker(tmp_path / "broker", listener_extra=extra).start()
    try:
        tls = {
            "ca_file": str(pki["ca"].cert_path),
            "cert_file": str(pki[device].cert_path),
            "key_file": str(pki[device].key_path),
        }
        cfg = write_config(tmp_path / "agent", tls_broker.port, device=device, mqtt={"host": "localhost", "tls": tls})
        c = Central(
            tls_broker.port,
            host="localhost",
            ca_certs=str(pki["ca"].cert_path),
            certfile=str(pki[device].cert_path),
            keyfile=str(pki[device].key_path),
        )
        try:
            c.publish(topic("status", device), enc(status(device, ts=time.time())), retain=True)
        finally:
            c.close()
        assert cli("monitor", "-c", str(cfg), "--once", "--table") == 0
        assert f"main/{device}".ljust(24) + "online" in capsys.readouterr().out
        assert cli("monitor", "--broker", f"localhost:{tls_broker.port}", "--once") == 1  # no TLS: refused
        err = capsys.readouterr().err
        assert f"cannot reach broker localhost:{tls_broker.port} (the broker closed the connection" in err
        assert "does it want TLS or a client certificate (--cafile, --cert/--key)" in err
    finally:
        tls_broker.stop()


def test_run_monitor__unreachable_raises_agent_error() -> None:
    target = Target(LinkSettings((BrokerAddress("127.0.0.1", free_port()),), connect_timeout_s=1))
    with pytest.raises(AgentError, match=r"cannot reach broker 127\.0\.0\.1:\d+ \(connection refused\)"):
        run_monitor(target, MonitorOptions(), out=io.StringIO(), err=io.StringIO())
