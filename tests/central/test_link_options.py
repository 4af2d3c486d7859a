"""`monitor` and `ack` reach brokers the way mosquitto_sub does: --protocol, --cafile/--cert/--key, --username/--password-file."""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.central.monitor import add_monitor_parsers
from agent.errors import ConfigError
from agent.events import iso_ms
from tests.support.broker import Broker, free_port
from tests.support.certs import Issued, make_pki
from tests.support.mqtt import Central


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="campus-agent")
    add_monitor_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def status(device: str) -> bytes:
    now = time.time()
    return json.dumps(
        {
            "v": 1,
            "site": "main",
            "device": device,
            "state": "online",
            "ts": iso_ms(now),
            "clock_synced": True,
            "agent": {"version": "0.1.0", "boot_id": "b" * 32, "uptime_s": 5},
            "link": {"connected_since": iso_ms(now), "reconnects": 0},
            "outbox": {"pending": 0, "oldest_age_s": None, "dropped": 0},
            "inputs": {},
            "cameras": {},
            "system": {"cpu_temp_c": None, "disk_free_mb": None, "load1": None},
            "test_mode_until": None,
        }
    ).encode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_pki(tmp_path_factory.mktemp("pki"), devices=("central", "gate-1"))


@pytest.fixture
def tls_broker(tmp_path: Path, pki: dict[str, Any]) -> Iterator[Broker]:
    """Mutual TLS on one listener; the certificate's CN is the user name."""
    extra = (
        f"cafile {pki['ca'].cert_path}\ncertfile {pki['server'].cert_path}\nkeyfile {pki['server'].key_path}\n"
        "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
    )
    b = Broker(tmp_path / "tls", listener_extra=extra).start()
    yield b
    b.stop()


@pytest.fixture
def password_broker(tmp_path: Path, pki: dict[str, Any]) -> Iterator[Broker]:
    """TLS (server certificate only) with a password file: the way a centre with user names runs it."""
    pw = tmp_path / "passwd"
    pw.touch()
    pw.chmod(0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "central", "c-secret"], check=True)
    extra = (
        f"cafile {pki['ca'].cert_path}\ncertfile {pki['server'].cert_path}\nkeyfile {pki['server'].key_path}\n"
        f"allow_anonymous false\npassword_file {pw}\n"
    )
    b = Broker(tmp_path / "pw", listener_extra=extra).start()
    yield b
    b.stop()


def publish_tls(port: int, pki: dict[str, Any], topic: str, payload: bytes, *, retain: bool = False) -> None:
    c = Central(
        port,
        host="localhost",
        topics=("none/#",),
        ca_certs=str(pki["ca"].cert_path),
        certfile=str(pki["gate-1"].cert_path),
        keyfile=str(pki["gate-1"].key_path),
    )
    try:
        c.publish(topic, payload, retain=retain)
    finally:
        c.close()


@pytest.mark.broker
def test_monitor__cafile_cert_and_key_flags_reach_a_mutual_tls_broker(
    tls_broker: Broker, pki: dict[str, Issued], capsys: pytest.CaptureFixture[str]
) -> None:
    publish_tls(tls_broker.port, pki, "campus/main/gate-1/status", status("gate-1"), retain=True)
    flags = [
        "--cafile",
        str(pki["ca"].cert_path),
        "--cert",
        str(pki["central"].cert_path),
        "--key",
        str(pki["central"].key_path),
    ]
    assert cli("monitor", "--broker", f"localhost:{tls_broker.port}", *flags, "--once", "--table") == 0
    out = capsys.readouterr()
    assert "main/gate-1".ljust(24) + "online" in out.out
    assert "(MQTT 5)" in out.err
    assert (
        cli("monitor", "--broker", f"localhost:{tls_broker.port}", "--cafile", str(pki["ca"].cert_path), "--once") == 1
    )  # no client certificate: refused, and said so
    assert f"cannot reach broker localhost:{tls_broker.port}" in capsys.readouterr().err


@pytest.mark.broker
def test_monitor__wrong_ca_is_refused_with_the_reason(
    tls_broker: Broker, pki: dict[str, Issued], capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [
        "--cafile",
        str(pki["rogue-ca"].cert_path),
        "--cert",
        str(pki["central"].cert_path),
        "--key",
        str(pki["central"].key_path),
    ]
    assert cli("monitor", "--broker", f"localhost:{tls_broker.port}", *flags, "--once") == 1
    assert "TLS certificate check failed" in capsys.readouterr().err


@pytest.mark.broker
def test_ack__username_and_password_file_over_tls(
    password_broker: Broker, pki: dict[str, Issued], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "central.pw"
    secret.write_text("c-secret\n")
    secret.chmod(0o600)
    common = [
        "--broker",
        f"localhost:{password_broker.port}",
        "--cafile",
        str(pki["ca"].cert_path),
        "--username",
        "central",
    ]
    assert cli("monitor", *common, "--password-file", str(secret), "--once") == 0
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("nope")
    wrong.chmod(0o600)
    assert cli("ack", "a" * 32, "--device", "main/gate-1", *common, "--password-file", str(wrong)) == 1
    assert "Not authorized" in capsys.readouterr().err


def test_password_file__refused_without_tls_or_when_others_may_read_it(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    secret.chmod(0o600)
    with pytest.raises(ConfigError, match=r"a password without TLS crosses the network in clear; add --cafile"):
        cli("monitor", "--broker", "127.0.0.1:1883", "--username", "u", "--password-file", str(secret))
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=r"mode 0644 lets others read or change a secret; run 'chmod 600"):
        cli("monitor", "--broker", "127.0.0.1:8883", "--cafile", str(secret), "--password-file", str(secret))
    with pytest.raises(ConfigError, match="--cert and --key go together"):
        cli("monitor", "--broker", "127.0.0.1:8883", "--cafile", str(secret), "--cert", str(secret))


def test_cli__no_insecure_option_and_protocol_choices(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["monitor", "--insecure"], ["monitor", "--protocol", "4"]):
        with pytest.raises(SystemExit) as exc:
            cli(*argv)
        assert exc.value.code == 2
    assert "--insecure" in capsys.readouterr().err


class V311Only:
    """A broker front that speaks only MQTT 3.1.1, as RabbitMQ 3.10 and amqtt do.

    A v5 CONNECT gets CONNACK 0x01 (unacceptable protocol version) and a close
    (``v5="refuse"``), only a close (``"close"``, as RabbitMQ 3.x does), or is
    relayed like the rest (``"relay"``); a 3.1.1 CONNECT is passed on to the
    real mosquitto behind it, and the bytes are then relayed both ways.  The
    first ``drop_first`` connections are closed after their CONNECT whatever
    they speak: a link resetting as it heals.
    """

    def __init__(self, upstream: int, *, v5: str = "refuse", drop_first: int = 0) -> None:
        self.upstream = upstream
        self.v5 = v5
        self.drop_first = drop_first
        self.levels: list[int] = []
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.refused_v5 = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        first = conn.recv(4096)  # a CONNECT fits in one segment on loopback
        level = first[8] if len(first) > 8 else 0  # fixed header (2), "MQTT" (2 + 4), then the level
        self.levels.append(level)
        if len(self.levels) <= self.drop_first:
            conn.close()
            return
        if level == 5 and self.v5 != "relay":
            self.refused_v5 += 1
            if self.v5 == "refuse":
                conn.sendall(b"\x20\x02\x00\x01")
            conn.close()
            return
        up = socket.create_connection(("127.0.0.1", self.upstream))
        up.sendall(first)
        conn.settimeout(None)
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.srv.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def v311(broker: Broker) -> Iterator[V311Only]:
    front = V311Only(broker.port)
    yield front
    front.close()


@pytest.mark.broker
def test_monitor__auto_falls_back_to_3_1_1_and_says_so(
    v311: V311Only, broker: Broker, device: str, capsys: pytest.CaptureFixture[str]
) -> None:
    c = Central(broker.port, topics=("none/#",))
    try:
        c.publish(f"campus/main/{device}/status", status(device), retain=True)
        assert cli("monitor", "--broker", f"127.0.0.1:{v311.port}", "--site", "main", "--once", "--table") == 0
        out = capsys.readouterr()
        assert "(MQTT 3.1.1)" in out.err
        assert f"127.0.0.1:{v311.port} does not speak MQTT 5" in out.out
        assert f"main/{device}".ljust(24) + "online" in out.out
        assert v311.refused_v5 == 1
        assert cli("monitor", "--broker", f"127.0.0.1:{v311.port}", "--protocol", "5", "--once") == 1
        assert "the broker does not speak this MQTT version; try --protocol" in capsys.readouterr().err
        assert cli("monitor", "--broker", f"127.0.0.1:{v311.port}", "--protocol", "3.1.1", "--once") == 0
        assert v311.refused_v5 == 2
    finally:
        c.publish(f"campus/main/{device}/status", b"", retain=True)
        c.close()


@pytest.mark.broker
def test_monitor__a_reset_at_the_first_connect_does_not_cost_mqtt_5(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """One close before the CONNACK used to put the monitor on MQTT 3.1.1 for the life of the process.

    A healing link or a broker still starting resets a connection; MQTT 3.1.1
    then works, but so would MQTT 5, and the monitor would lose the refusal
    reasons and the photos' properties.  The fallback is checked by trying
    MQTT 5 once more; a broker that closes it again is taken at its word.
    """
    front = V311Only(broker.port, v5="relay", drop_first=1)
    try:
        assert cli("monitor", "--broker", f"127.0.0.1:{front.port}", "--once") == 0
        out = capsys.readouterr()
        assert "(MQTT 5)" in out.err
        assert "lost the connection" not in out.out + out.err, "the 3.1.1 session closed on purpose is no lost link"
        assert front.levels == [5, 4, 5], "MQTT 5, reset; 3.1.1 answered, so MQTT 5 once more"
    finally:
        front.close()
    closer = V311Only(broker.port, v5="close")
    try:
        assert cli("monitor", "--broker", f"127.0.0.1:{closer.port}", "--once") == 0
        out = capsys.readouterr()
        assert "(MQTT 3.1.1)" in out.err
        assert f"127.0.0.1:{closer.port} does not speak MQTT 5" in out.out
        # closed twice: MQTT 3.1.1 it is; the last is the clean connect at exit that ends the persistent session
        assert closer.levels == [5, 4, 5, 4, 4]
    finally:
        closer.close()


@pytest.mark.broker
def test_monitor__auto_does_not_fall_back_when_nothing_listens(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert cli("monitor", "--broker", f"127.0.0.1:{port}", "--once") == 1
    want = f"campus-agent monitor: cannot reach broker 127.0.0.1:{port} (connection refused)"
    assert capsys.readouterr().err.strip() == want
