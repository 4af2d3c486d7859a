"""``campus-agent doctor``: a good setup is all OK, and each failure it checks is named with its fix.

Real mosquitto brokers (mutual TLS, passwords, ACLs), real loopback cameras,
MockFactory pins and a real agent process; the machine's clock and systemd
are the only fakes (``Host``), because this machine has neither.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import DEFAULT_PATH, load_config
from agent.config.model import CameraConfig, CameraKind, OutboxConfig
from agent.doctor.checks import (
    Check,
    Level,
    check_camera,
    check_clock,
    check_outbox_folder,
    check_pins,
    check_systemd,
    run_with_deadline,
)
from agent.doctor.runner import Host, _Printer, add_doctor_parser, cmd_doctor, probe_agent, run_doctor
from tests.support.agentproc import AgentProc, short_socket_path, write_config
from tests.support.broker import Broker, free_port
from tests.support.camservers import HttpCamera, RtspServer, camera_cfg
from tests.support.certs import Issued, issue, make_pki
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
DEV = "gate-north-1"
ROOT_TOPIC = f"campus/main/{DEV}"
ACL_LINE = "pattern readwrite campus/+/%u/doctor/#"
PASSWORD = "pw-Correct-horse-7"
GOOD_HOST = Host(clock_synced=lambda: True, systemctl=None)


# ---- fixtures and helpers -----------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    d = tmp_path_factory.mktemp("pki")
    p = make_pki(d, devices=(DEV,))
    p["server"] = issue(p["ca"], d, "localhost", "server", server=True, days=365)
    p[DEV] = issue(p["ca"], d, DEV, DEV, server=False, days=365)
    p["expired"] = issue(p["ca"], d, "localhost", "expired", server=True, days=-1, start_days_ago=3)
    p["server-soon"] = issue(p["ca"], d, "localhost", "server-soon", server=True, days=9.5)
    p["otherhost"] = issue(p["ca"], d, "otherhost", "otherhost", server=True, dns=("otherhost.lan",), ips=())
    p["client-soon"] = issue(p["ca"], d, DEV, "client-soon", server=False, days=10.5)
    p["client-expired"] = issue(p["ca"], d, DEV, "client-expired", server=False, days=-1, start_days_ago=3)
    p["rogue"] = issue(p["rogue-ca"], d, DEV, "rogue-client", server=False, days=365)
    return p


# An ACL keyed on the device id alone, doctor using the device's identity: how brokers set up
# before the {site}/{id} identities look.  The shipped example (config/mosquitto/, doctor with its
# own identity) is run in tests/security/test_broker_identity.py.
LEGACY_ACL = f"""\
user central
topic read campus/#
topic write campus/+/+/cmd/#
pattern write campus/+/%u/status
pattern write campus/+/%u/event/#
pattern write campus/+/%u/reply
pattern read campus/+/%u/cmd/#
{ACL_LINE}
"""


@pytest.fixture(scope="module")
def acl_with_doctor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ACL with the one line doctor needs."""
    path = tmp_path_factory.mktemp("acl") / "campus.acl"
    path.write_text(LEGACY_ACL)
    return path


def acl_without_doctor(tmp_path: Path) -> Path:
    """The same ACL as an older broker would have it: without the doctor line."""
    path = tmp_path / "campus-old.acl"
    path.write_text("\n".join(line for line in LEGACY_ACL.splitlines() if line != ACL_LINE) + "\n")
    return path


def tls_broker(workdir: Path, pki: dict[str, Issued], acl: Path, server: str = "server") -> Broker:
    extra = (
        f"cafile {pki['ca'].cert_path}\ncertfile {pki[server].cert_path}\nkeyfile {pki[server].key_path}\n"
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
        f"acl_file {acl}\n"
    )
    return Broker(workdir, listener_extra=extra).start()


@pytest.fixture
def good_broker(tmp_path: Path, pki: dict[str, Issued], acl_with_doctor: Path) -> Iterator[Broker]:
    b = tls_broker(tmp_path / "broker", pki, acl_with_doctor)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def password_broker(tmp_path: Path, acl_with_doctor: Path) -> Iterator[Broker]:
    pw = tmp_path / "passwd"
    pw.touch()
    pw.chmod(0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), DEV, PASSWORD], check=True, capture_output=True)
    b = Broker(
        tmp_path / "pw-broker",
        listener_extra=f"allow_anonymous false\npassword_file {pw}\nacl_file {acl_with_doctor}\n",
    ).start()
    try:
        yield b
    finally:
        b.stop()


def write_cfg(workdir: Path, port: int, **extra: Any) -> Path:
    """``write_config`` for this device, minus the empty socket folder it makes in /tmp: doctor only probes the path."""
    path = write_config(workdir, port, device=DEV, **extra)
    with contextlib.suppress(OSError):
        Path(yaml.safe_load(path.read_text())["control"]["socket"]).parent.rmdir()
    return path


def tls_cfg(
    tmp_path: Path,
    port: int,
    pki: dict[str, Issued],
    *,
    ca: str = "ca",
    cert: str | None = DEV,
    host: str = "127.0.0.1",
    **extra: Any,
) -> Path:
    tls = {"ca_file": str(pki[ca].cert_path)}
    if cert is not None:
        tls |= {"cert_file": str(pki[cert].cert_path), "key_file": str(pki[cert].key_path)}
    mqtt = {"host": host, "tls": tls} | extra.pop("mqtt", {})
    return write_cfg(tmp_path / "agent", port, mqtt=mqtt, **extra)


def doctor(cfg: Path, *, timeout: float = 2.0, host: Host = GOOD_HOST) -> tuple[int, list[str]]:
    out = io.StringIO()
    rc = run_doctor(cfg, timeout_s=timeout, out=out, host=host)
    return rc, out.getvalue().splitlines()


def find(lines: list[str], level: str, *words: str) -> str:
    """The one line of ``level`` holding all ``words``; a failing assert shows the whole report."""
    hits = [ln for ln in lines if ln.startswith(f"{level} ") and all(w in ln for w in words)]
    assert hits, f"no {level} line with {words} in:\n" + "\n".join(lines)
    return hits[0]


def checks_of(lines: list[str]) -> list[str]:
    return [ln for ln in lines if not ln.startswith("doctor: ")]


# ---- the good setup ----------------------------------------------------------------


@pytest.mark.broker
def test_doctor__good_setup_is_all_ok(tmp_path: Path, pki: dict[str, Issued], good_broker: Broker) -> None:
    http_cam, rtsp_cam = HttpCamera("jpeg").start(), RtspServer("ok").start()
    try:
        cfg = tls_cfg(
            tmp_path,
            good_broker.port,
            pki,
            host="localhost",
            outputs={"ack_led": {"pin": 22}, "buzzer": {"pin": 23}},
            cameras=[
                {"name": "gate-cam", "kind": "http_snapshot", "url": http_cam.url, "timeout_s": 2},
                {"name": "yard-cam", "kind": "rtsp", "url": rtsp_cam.url, "timeout_s": 2},
            ],
        )
        t0 = time.monotonic()
        rc, lines = doctor(cfg)
        took = time.monotonic() - t0
    finally:
        http_cam.stop()
        rtsp_cam.stop()
    report = "\n".join(lines)
    assert rc == 0, report
    assert all(ln.startswith("OK    ") for ln in checks_of(lines)), report
    assert lines[-1] == f"doctor: {len(lines) - 1} OK, 0 WARN, 0 FAIL"
    find(lines, "OK", f"config {cfg} valid", f"device main/{DEV}")
    find(lines, "OK", "simulated pins (mock)", "GPIO17", "GPIO22", "GPIO23")
    find(lines, "OK", "outbox folder", "writable", "MB free")
    find(lines, "OK", "clock synchronised")
    find(lines, "OK", "client certificate", "valid until")
    find(lines, "OK", f"broker localhost:{good_broker.port}: DNS localhost → ", "127.0.0.1")
    find(lines, "OK", "TCP connected to 127.0.0.1")
    find(lines, "OK", "TLS handshake ok (TLSv1.3)", "broker certificate valid until")
    find(lines, "OK", "MQTT 5 login accepted (client certificate, client id main/gate-north-1/doctor)")
    find(lines, "OK", f"round trip: published and received {ROOT_TOPIC}/doctor/ping")
    find(lines, "OK", "camera gate-cam (http_snapshot", "200 image/jpeg")
    find(lines, "OK", "camera yard-cam (rtsp", "RTSP/1.0 200 OK")
    find(lines, "OK", "not under systemd", "skipped")
    assert took < 10, f"a good setup should take about a second, took {took:.1f} s"


# ---- config and the command line ----------------------------------------------------


def test_doctor__bad_config_prints_each_problem_and_stops(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, 1883, inputs=[{"name": "panic", "pin": 99}], mqtt={"hots": "x"})
    rc, lines = doctor(cfg)
    assert rc == 1  # doctor reports; only check-config exits 2
    pin = find(lines, "FAIL", f"{cfg}:", "inputs[0].pin")
    assert pin.endswith("→ fix it in the config file, then run doctor again")
    assert find(lines, "FAIL", f"{cfg}:", "mqtt.hots: unknown key").endswith("→ did you mean 'host'?")
    assert lines[-1] == "doctor: 0 OK, 0 WARN, 2 FAIL"
    assert not any("broker" in ln or "GPIO" in ln for ln in lines), lines


def test_doctor__missing_config_is_one_fail(tmp_path: Path) -> None:
    rc, lines = doctor(tmp_path / "nope.yaml")
    assert rc == 1
    assert lines == [
        f"FAIL  {tmp_path / 'nope.yaml'}: file not found  → give the right path (check-config FILE, the other commands --config FILE)",
        "doctor: 0 OK, 0 WARN, 1 FAIL",
    ]


def test_add_doctor_parser__options_defaults_and_dispatch(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="campus-agent")
    add_doctor_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor"])
    assert (args.config, args.timeout, args.func) == (DEFAULT_PATH, 5.0, cmd_doctor)
    args = parser.parse_args(["doctor", "-c", str(tmp_path / "x.yaml"), "--timeout", "1.5"])
    assert (args.config, args.timeout) == (tmp_path / "x.yaml", 1.5)
    assert args.func(args) == 1  # a missing config is a FAIL, reported on stdout
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["doctor", "--timeout", bad])


def test_check__every_non_ok_line_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="must say what to do"):
        Check(Level.FAIL, "broken")
    assert Check.warn("a", "b").line() == "WARN  a  → b"
    assert Check.ok("all  good\nhere").line() == "OK    all good here"


def test_printer__secrets_blanked_and_arrow_falls_back_on_latin1() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="latin-1")
    printer = _Printer(out)
    printer.hide(PASSWORD, None, "ab")
    printer.show(Check.fail(f"login with {PASSWORD} refused…", "fix ab"))
    assert printer.finish() == 1
    text = raw.getvalue().decode("latin-1")
    assert PASSWORD not in text
    assert text.splitlines()[0] == "FAIL  login with ******** refused?  -> fix ab"


# ---- GPIO ------------------------------------------------------------------------------


def test_check_pins__free_mock_pins_are_ok(tmp_path: Path, mock_factory: Any) -> None:
    cfg = load_config(write_cfg(tmp_path, 1883, outputs={"ack_led": {"pin": 22}}))
    assert check_pins(cfg, mock_factory) == [Check.ok("simulated pins (mock): GPIO17, GPIO22 claimed and released")]
    assert check_pins(cfg, mock_factory)[0].level is Level.OK  # released: claimable again


@pytest.mark.parametrize(("held_pin", "words"), [(17, "GPIO17 (input 'panic')"), (22, "GPIO22 (output ack_led)")])
def test_check_pins__pin_held_by_another_owner_fails(
    tmp_path: Path, mock_factory: Any, held_pin: int, words: str
) -> None:
    from gpiozero import DigitalOutputDevice

    cfg = load_config(write_cfg(tmp_path, 1883, outputs={"ack_led": {"pin": 22}}))
    other = DigitalOutputDevice(held_pin, pin_factory=mock_factory)
    try:
        found = check_pins(cfg, mock_factory)
    finally:
        other.close()
    assert [c.level for c in found] == [Level.FAIL]
    assert f"{words} cannot be claimed: GPIOPinInUse" in found[0].what
    assert "no other program uses the pin" in found[0].todo


NOT_A_PI = not Path("/proc/device-tree/model").exists() and "GPIOZERO_PIN_FACTORY" not in os.environ


@pytest.mark.skipif(importlib.util.find_spec("lgpio") is not None, reason="lgpio works here")
def test_doctor__unusable_pin_backend_fails_with_the_fix(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, free_port(), gpio={"pin_factory": "lgpio"})
    rc, lines = doctor(cfg, timeout=0.5)
    assert rc == 1
    line = find(lines, "FAIL", "gpio.pin_factory: lgpio cannot be used on this machine")
    assert "→ install python3-lgpio" in line


@pytest.mark.skipif(not NOT_A_PI, reason="gpiozero finds a real backend here")
def test_check_pins__no_default_backend_off_a_pi(tmp_path: Path) -> None:
    cfg = load_config(write_cfg(tmp_path, 1883, gpio={"pin_factory": "default"}))
    [c] = check_pins(cfg, None)
    assert c.level is Level.FAIL
    assert c.what.startswith("GPIO: no pin backend works on this machine (Falling back from lgpio")
    assert c.todo.endswith("elsewhere set gpio.pin_factory: mock")


# ---- outbox and clock -------------------------------------------------------------------


def test_check_outbox_folder__file_in_place_of_the_folder_fails(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a folder")
    found = check_outbox_folder(OutboxConfig(tmp_path / "state" / "outbox.db", 50))
    assert found[0].level is Level.FAIL
    assert f"{tmp_path / 'state'} is a file, not a folder" in found[0].what


def test_check_outbox_folder__unwritable_folder_fails(tmp_path: Path) -> None:
    # sysfs refuses new files even to root, where chmod would not stop us
    found = check_outbox_folder(OutboxConfig(Path("/sys/campus-agent-doctor/outbox.db"), 50))
    assert found[0].level is Level.FAIL
    assert "outbox folder /sys not writable (Permission denied)" in found[0].what
    assert "install -d -o campus-agent" in found[0].todo


def test_check_outbox_folder__missing_folder_is_created_by_the_agent(tmp_path: Path) -> None:
    found = check_outbox_folder(OutboxConfig(tmp_path / "new" / "outbox.db", 50))
    assert found[0].level is Level.OK
    assert f"does not exist yet; the agent creates it in {tmp_path}" in found[0].what
    assert list(tmp_path.iterdir()) == []  # the scratch file is gone, nothing was created


def test_check_outbox_folder__too_little_room_for_the_cap_warns(tmp_path: Path) -> None:
    found = check_outbox_folder(OutboxConfig(tmp_path / "outbox.db", 1e9))
    assert found[0].level is Level.WARN
    assert "for an outbox cap of 1e+09 MB" in found[0].what
    assert found[0].todo == "free disk space or lower outbox.max_mb"


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A 2 MB tmpfs: a disk that is full as far as the outbox is concerned (skipped where mount is not allowed)."""
    where = Path(tempfile.mkdtemp(prefix="cea-disk-", dir="/tmp"))
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True, check=False
        ).returncode
        == 0
    )
    try:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here")
        yield where
    finally:
        if mounted:
            subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


def test_check_outbox_folder__full_disk_fails(tiny_disk: Path) -> None:
    [c] = check_outbox_folder(OutboxConfig(tiny_disk / "outbox.db", 50))
    assert c.level is Level.FAIL
    assert c.what == f"outbox folder {tiny_disk}: disk full (2 MB free); presses cannot be recorded"
    assert "free disk space now" in c.todo


def test_doctor__unwritable_outbox_fails_the_run(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, free_port(), outbox={"path": "/sys/campus-agent-x/outbox.db"})
    rc, lines = doctor(cfg, timeout=0.5)
    assert rc == 1
    find(lines, "FAIL", "outbox folder /sys not writable")


def test_check_clock__unsynchronised_is_a_warning_with_the_fix() -> None:
    assert check_clock(True).level is Level.OK
    c = check_clock(False)
    assert c.level is Level.WARN
    assert "clock_synced: false" in c.what
    assert "systemd-timesyncd" in c.todo
    assert "NTP server is reachable" in c.todo


# ---- broker: name, address, TLS ------------------------------------------------------------


def test_doctor__dns_failure(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path, 1883, mqtt={"host": "nonexistent.invalid"})
    rc, lines = doctor(cfg)
    assert rc == 1
    line = find(lines, "FAIL", "broker nonexistent.invalid:1883: host name nonexistent.invalid not found")
    assert "→ check mqtt.host (or brokers) for a typo, and the Pi's DNS server" in line
    assert not any("TCP" in ln for ln in lines)


def test_doctor__connection_refused(tmp_path: Path) -> None:
    port = free_port()
    rc, lines = doctor(write_cfg(tmp_path, port))
    assert rc == 1
    line = find(lines, "FAIL", f"connection refused by 127.0.0.1 port {port}")
    assert "check mqtt.port and that the broker (mosquitto) runs" in line


@pytest.mark.broker
def test_doctor__failover_broker_is_checked_too(tmp_path: Path, password_broker: Broker) -> None:
    port = free_port()
    secret = tmp_path / "mqtt.pass"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    cfg = write_cfg(
        tmp_path,
        0,
        mqtt={
            "host": None,
            "port": None,
            "username": DEV,
            "password_file": str(secret),
            "allow_plaintext_password": True,
            "brokers": [{"host": "127.0.0.1", "port": password_broker.port}, {"host": "127.0.0.1", "port": port}],
        },
    )
    rc, lines = doctor(cfg)
    assert rc == 1
    find(lines, "OK", f"broker 127.0.0.1:{password_broker.port}: round trip")
    find(lines, "FAIL", f"broker 127.0.0.1:{port}: connection refused")


@pytest.mark.broker
@pytest.mark.parametrize(
    ("server", "ca", "level", "words"),
    [
        ("server", "rogue-ca", "FAIL", "the broker's certificate is not signed by the CA in mqtt.tls.ca_file"),
        ("expired", "ca", "FAIL", "the broker's certificate has expired"),
        ("otherhost", "ca", "FAIL", "the broker's certificate is not valid for 127.0.0.1"),
        ("server-soon", "ca", "WARN", "TLS handshake ok (TLSv1.3), but broker certificate valid until"),
    ],
)
def test_doctor__broker_certificate_problems(
    tmp_path: Path, pki: dict[str, Issued], acl_with_doctor: Path, server: str, ca: str, level: str, words: str
) -> None:
    b = tls_broker(tmp_path / "broker", pki, acl_with_doctor, server=server)
    try:
        rc, lines = doctor(tls_cfg(tmp_path, b.port, pki, ca=ca))
    finally:
        b.stop()
    line = find(lines, level, f"broker 127.0.0.1:{b.port}: TLS", words)
    assert "→ " in line
    if level == "WARN":
        assert rc == 0
        assert "(9 days)" in line
        assert "ask the broker's admin to renew" in line
        find(lines, "OK", "round trip")
    else:
        assert rc == 1
        assert not any("MQTT" in ln for ln in lines)  # stops at the first failing step


@pytest.mark.broker
@pytest.mark.parametrize(
    ("cert", "cert_line", "tls_words"),
    [
        ("client-soon", ("WARN", "expires on", "(in 10 days)"), None),
        ("client-expired", ("FAIL", "EXPIRED on"), "the broker refused this device's client certificate as expired"),
        ("rogue", ("OK", "valid until"), "the broker refused this device's client certificate"),
        (None, None, "the broker requires a client certificate"),
    ],
)
def test_doctor__client_certificate_problems(
    tmp_path: Path,
    pki: dict[str, Issued],
    good_broker: Broker,
    cert: str | None,
    cert_line: tuple[str, ...] | None,
    tls_words: str | None,
) -> None:
    rc, lines = doctor(tls_cfg(tmp_path, good_broker.port, pki, cert=cert))
    if cert_line is not None:
        level, *words = cert_line
        find(lines, level, "client certificate", *words)
    if tls_words is None:
        assert rc == 0
        assert find(lines, "WARN", "client certificate").endswith("→ renew it before then (mqtt.tls.cert_file)")
        find(lines, "OK", "round trip")
    else:
        assert rc == 1
        find(lines, "FAIL", f"broker 127.0.0.1:{good_broker.port}: TLS: {tls_words}")


def test_doctor__silent_port_times_out_and_lines_come_as_they_are_known(tmp_path: Path, pki: dict[str, Issued]) -> None:
    """A port that accepts and never speaks: the TLS step waits its timeout, earlier lines are already out."""
    silent = socket.create_server(("127.0.0.1", 0))
    written: list[tuple[float, str]] = []

    class Stamped(io.StringIO):
        def write(self, s: str) -> int:
            written.append((time.monotonic(), s))
            return super().write(s)

    try:
        cfg = tls_cfg(tmp_path, silent.getsockname()[1], pki)
        rc = run_doctor(cfg, timeout_s=1.0, out=Stamped(), host=GOOD_HOST)
    finally:
        silent.close()
    assert rc == 1
    lines = [s.rstrip("\n") for _t, s in written]
    tls = find(lines, "FAIL", "TLS: no TLS answer within 1 s")
    assert "usually 8883" in tls
    t_tcp = next(t for t, s in written if "TCP connected" in s)
    t_tls = next(t for t, s in written if "no TLS answer" in s)
    assert t_tls - t_tcp >= 0.9  # the TCP line was printed before the slow step, not with it


@pytest.mark.broker
def test_doctor__tls_against_a_plain_port(tmp_path: Path, pki: dict[str, Issued], password_broker: Broker) -> None:
    rc, lines = doctor(tls_cfg(tmp_path, password_broker.port, pki))
    assert rc == 1
    find(
        lines,
        "FAIL",
        "TLS: the broker dropped the connection during the handshake",
        "may not speak TLS",
        "usually 8883",
    )


# ---- broker: login and the round trip -----------------------------------------------------


def password_cfg(tmp_path: Path, port: int, password: str, protocol: str = "5") -> Path:
    secret = tmp_path / "mqtt.pass"
    secret.write_text(password)
    secret.chmod(0o600)
    return write_cfg(
        tmp_path / "agent",
        port,
        mqtt={"username": DEV, "password_file": str(secret), "protocol": protocol, "allow_plaintext_password": True},
    )


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_doctor__password_login(tmp_path: Path, password_broker: Broker, protocol: str) -> None:
    rc, lines = doctor(password_cfg(tmp_path, password_broker.port, PASSWORD, protocol))
    assert rc == 0, "\n".join(lines)
    find(lines, "OK", f"MQTT {protocol} login accepted (user {DEV}, client id main/{DEV}/doctor)")
    find(lines, "OK", "round trip")
    assert not any(PASSWORD in ln for ln in lines)


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_doctor__wrong_password(tmp_path: Path, password_broker: Broker, protocol: str) -> None:
    wrong = "pw-Wrong-battery-9"
    rc, lines = doctor(password_cfg(tmp_path, password_broker.port, wrong, protocol))
    assert rc == 1
    line = find(lines, "FAIL", f"MQTT {protocol}: CONNACK not authorised: Not authorized")
    assert "→ check mqtt.username and the password in mqtt.password_file" in line
    assert not any(wrong in ln for ln in lines)
    assert not any("round trip" in ln for ln in lines)


@pytest.mark.broker
@pytest.mark.parametrize(
    ("protocol", "words"),
    [
        ("5", f"broker refused the publish to {ROOT_TOPIC}/doctor/ping (Not authorized)"),
        ("3.1.1", f"{ROOT_TOPIC}/doctor/ping not received within 1 s"),  # 3.1.1 acks the refused publish
    ],
)
def test_doctor__acl_without_the_doctor_line_fails_the_round_trip(
    tmp_path: Path, pki: dict[str, Issued], protocol: str, words: str
) -> None:
    b = tls_broker(tmp_path / "broker", pki, acl_without_doctor(tmp_path))
    try:
        rc, lines = doctor(tls_cfg(tmp_path, b.port, pki, mqtt={"protocol": protocol}), timeout=1.0)
    finally:
        b.stop()
    assert rc == 1
    find(lines, "OK", f"MQTT {protocol} login accepted")
    line = find(lines, "FAIL", "round trip", words)
    assert line.endswith(
        f"→ check the broker ACL allows {ROOT_TOPIC}/doctor/# (read and write) for this device, e.g. '{ACL_LINE}'"
    )


# ---- cameras ------------------------------------------------------------------------------


def camera(kind: CameraKind, url: str | None, name: str = "cam") -> CameraConfig:
    return camera_cfg(url, kind=kind, name=name)


def test_check_camera__http_500_fails_with_the_detail() -> None:
    cam = HttpCamera("error500").start()
    try:
        c = check_camera(camera(CameraKind.HTTP_SNAPSHOT, cam.url))
    finally:
        cam.stop()
    assert c.level is Level.FAIL
    assert c.what == (
        f"camera cam (http_snapshot 127.0.0.1:{cam.port}): HTTP 500 from 127.0.0.1: the camera "
        "reports an internal error; power-cycle it"
    )
    assert "check that the camera is powered" in c.todo


@pytest.mark.parametrize(
    ("kind", "scheme", "words"),
    [
        (CameraKind.HTTP_SNAPSHOT, "http", "connection refused by 127.0.0.1:{port}: camera off or wrong port"),
        (CameraKind.RTSP, "rtsp", "connection refused by 127.0.0.1:{port}: camera off or wrong port"),
    ],
)
def test_check_camera__refused(kind: CameraKind, scheme: str, words: str) -> None:
    port = free_port()
    c = check_camera(camera(kind, f"{scheme}://127.0.0.1:{port}/x"))
    assert c.level is Level.FAIL
    assert words.format(port=port) in c.what


def test_check_camera__rtsp_not_found_and_picamera_missing() -> None:
    rtsp = RtspServer("not_found").start()
    try:
        c = check_camera(camera(CameraKind.RTSP, rtsp.url))
    finally:
        rtsp.stop()
    assert c.level is Level.FAIL
    assert "RTSP/1.0 404 Not Found" in c.what
    if importlib.util.find_spec("picamera2") is not None:
        return
    c = check_camera(camera(CameraKind.PICAMERA2, None))
    assert c.level is Level.FAIL
    assert c.what.startswith("camera cam (picamera2 #0): ")
    assert "ribbon cable" in c.todo


# ---- the running agent ---------------------------------------------------------------------


@pytest.mark.broker
def test_doctor__running_agent_is_reported_and_not_disturbed(
    tmp_path: Path, pki: dict[str, Issued], good_broker: Broker
) -> None:
    cfg = tls_cfg(tmp_path, good_broker.port, pki)
    agent = AgentProc(cfg).start()
    try:
        eventually(
            lambda: (st := agent.status())["link"]["connected"] and st["status"]["outbox"]["pending"] == 0,
            20,
            "the agent to connect and send agent_started",
        )
        before = agent.status()["status"]["link"]
        assert before["connected_since"] is not None
        rc, lines = doctor(cfg)
        after = agent.status()
    finally:
        agent.cleanup()
    report = "\n".join(lines)
    assert rc == 0, report
    find(lines, "OK", "agent running: version")
    find(lines, "OK", f"agent connected to broker 127.0.0.1:{good_broker.port}")
    find(lines, "OK", "GPIO held by the running agent: panic ok (GPIO17)")
    find(lines, "OK", "agent outbox: 0 events waiting")
    find(lines, "OK", "round trip")
    assert "simulated pins" not in report  # the agent's pins were not touched
    assert after["link"]["connected"] is True
    same = ("connected_since", "reconnects", "broker", "protocol")  # link.stats moves on with time
    assert {k: after["status"]["link"][k] for k in same} == {k: before[k] for k in same}  # not kicked off
    assert "already connected" not in good_broker.log.read_text()


def test_doctor__agent_that_does_not_answer(tmp_path: Path) -> None:
    path = short_socket_path()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)  # accepts into the backlog, never answers
    try:
        assert probe_agent(path, 0.3).problem is not None
        cfg = write_cfg(tmp_path, free_port(), control={"socket": str(path)})
        rc, lines = doctor(cfg, timeout=0.3)
        assert rc == 1
        find(lines, "FAIL", f"agent on {path} does not answer")
        find(lines, "WARN", "GPIO pins not checked")
        server.close()
        assert path.exists()
        assert probe_agent(path, 0.3) == probe_agent(path.with_name("none.sock"), 0.3)  # stale socket = not running
    finally:
        server.close()
        shutil.rmtree(path.parent, ignore_errors=True)


# ---- systemd -----------------------------------------------------------------------------


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Callable[..., tuple[str, Path]]:
    """A stand-in systemctl answering is-active / is-enabled as told, and a /proc/1/comm saying systemd."""
    comm = tmp_path / "comm"
    comm.write_text("systemd\n")

    def make(active: str, enabled: str, enabled_rc: int = 0) -> tuple[str, Path]:
        script = tmp_path / "systemctl"
        script.write_text(
            f'#!/bin/sh\ncase "$1" in\n  is-active) echo {active};;\n'
            f'  is-enabled) echo "{enabled}" >&{2 if enabled_rc else 1}; exit {enabled_rc};;\nesac\n'
        )
        script.chmod(0o755)
        return str(script), comm

    return make


@pytest.mark.parametrize(
    ("active", "enabled", "rc", "level", "words"),
    [
        ("active", "enabled", 0, Level.OK, "service campus-agent: active, enabled"),
        ("active", "disabled", 1, Level.WARN, "systemctl enable campus-agent"),
        ("failed", "enabled", 0, Level.FAIL, "journalctl -u campus-agent"),
        ("inactive", "enabled", 0, Level.WARN, "systemctl enable --now campus-agent"),
        (
            "inactive",
            "Failed to get unit file state for campus-agent.service: No such file or directory",
            1,
            Level.WARN,
            "scripts/install.sh",
        ),
    ],
)
def test_check_systemd__states(
    fake_systemd: Callable[..., tuple[str, Path]], active: str, enabled: str, rc: int, level: Level, words: str
) -> None:
    c = check_systemd(*fake_systemd(active, enabled, rc))
    assert c.level is level
    assert words in c.line()


def test_check_systemd__skipped_without_systemd(tmp_path: Path, fake_systemd: Callable[..., tuple[str, Path]]) -> None:
    systemctl, comm = fake_systemd("failed", "enabled")
    comm.write_text("init\n")
    for c in (check_systemd(systemctl, comm), check_systemd(None, comm), check_systemd(systemctl, tmp_path / "no")):
        assert c == Check.ok("not under systemd: service state not checked (skipped)")
    assert check_systemd(None).level is Level.OK  # this machine: never crash without systemd


@pytest.mark.broker
def test_doctor__warnings_alone_exit_zero(tmp_path: Path, password_broker: Broker) -> None:
    cfg = password_cfg(tmp_path, password_broker.port, PASSWORD)
    rc, lines = doctor(cfg, host=Host(clock_synced=lambda: False, systemctl=None))
    assert rc == 0
    find(lines, "WARN", "clock not synchronised")
    assert lines[-1].endswith("1 WARN, 0 FAIL")


def test_run_with_deadline_threads_do_not_linger() -> None:
    before = threading.active_count()
    assert run_with_deadline(lambda: 42, 1.0, "t") == 42
    with pytest.raises(ZeroDivisionError):
        run_with_deadline(lambda: 1 // 0, 1.0, "t")
    assert threading.active_count() == before


def test_doctor__a_crashing_check_is_one_fail_and_the_rest_still_run(tmp_path: Path) -> None:
    def broken_clock() -> bool:
        raise OSError("adjtimex went away")

    cfg = write_cfg(tmp_path, free_port())
    rc, lines = doctor(cfg, host=Host(clock_synced=broken_clock, systemctl=None))
    assert rc == 1
    find(lines, "FAIL", "clock check crashed: OSError: adjtimex went away", "report it as a doctor bug")
    find(lines, "FAIL", "connection refused")  # the broker was still checked after the crash
    find(lines, "OK", "not under systemd")


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as nobody for a moment")
def test_doctor__technician_without_rights_gets_warnings_not_fails() -> None:
    """A user who is not root cannot test the service user's private folder or socket: WARN, run with sudo."""
    base = Path(tempfile.mkdtemp(prefix="cea-", dir="/tmp"))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        base.chmod(0o755)
        folder = base / "state"
        folder.mkdir(mode=0o700)  # as StateDirectoryMode=0700 leaves it, owned by someone else
        sock_path = base / "ctl.sock"
        server.bind(str(sock_path))
        sock_path.chmod(0o600)
        server.listen(8)
        os.seteuid(NOBODY)  # the real uid stays root, so the finally below can switch back
        try:
            [c] = check_outbox_folder(OutboxConfig(folder / "outbox.db", 50))
            agent = probe_agent(sock_path, 0.5)
        finally:
            os.seteuid(0)
    finally:
        server.close()
        shutil.rmtree(base, ignore_errors=True)
    assert c.line() == (
        f"WARN  outbox folder {folder} not readable (Permission denied): it belongs to root, "
        f"so uid {NOBODY} cannot test it  → run doctor with sudo to test the outbox folder"
    )
    assert agent.denied
