"""A failed connect says which phase failed: DNS, TCP, the TLS handshake (TCP connected) or MQTT.

The words are tested as a table; then real sessions against loopback TLS
servers written here: one that takes TCP and never answers (the kernel
completes the handshake of a listener that never accepts), one that resets
the connection at the ClientHello, and one that records the SNI it is sent
(the configured name, not the address connected to).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.brokers import describe_attempt_error
from agent.config.model import BrokerAddress, MqttConfig, TlsConfig
from agent.session import Dialect, Session
from tests.support.certs import Issued, issue, make_ca
from tests.support.uplinkrig import RigFactory, mqtt_cfg
from tests.support.waiting import eventually


@pytest.mark.parametrize(
    ("phase", "exc", "words"),
    [
        (
            "DNS",
            socket.gaierror(-2, "Name or service not known"),
            "DNS: host name not found (Name or service not known)",
        ),
        ("TCP", ConnectionRefusedError(111, "Connection refused"), "TCP: connection refused"),
        ("TCP", TimeoutError(), "TCP: no answer within 1.5 s"),
        ("TLS", TimeoutError(), "TLS handshake: no answer within 1.5 s (TCP connected)"),
        (
            "TLS",
            ConnectionResetError(104, "Connection reset by peer"),
            "TLS handshake: Connection reset by peer (TCP connected)",
        ),
        ("TLS", ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS handshake failed: "),
        ("MQTT", BrokenPipeError(32, "Broken pipe"), "MQTT: Broken pipe"),
    ],
)
def test_describe_attempt_error__names_the_phase(phase: str, exc: BaseException, words: str) -> None:
    assert describe_attempt_error(phase, exc, 1.5).startswith(words)


# ---- real sessions -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return make_ca(tmp_path_factory.mktemp("words-ca"))


def _cfg(port: int, ca: Issued, *, check_hostname: bool = False, host: str = "127.0.0.1") -> MqttConfig:
    tls = TlsConfig(ca_file=ca.cert_path, cert_file=None, key_file=None, check_hostname=check_hostname)
    return mqtt_cfg(client_id="words", connect_timeout_s=1.0, tls=tls, brokers=(BrokerAddress(host, port),))


def _session(cfg: MqttConfig) -> Session:
    return Session(
        cfg,
        cfg.brokers[0],
        Dialect("5", retain=True),
        will=("t/words/status", b"{}"),
        wake=lambda: None,
        on_ack=lambda *_a: None,
        on_message=lambda *_a: None,
    )


def test_session__a_tls_port_that_never_answers__blames_the_handshake_not_tcp(ca: Issued) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent, _session(_cfg(silent.getsockname()[1], ca)) as s:
        began = time.monotonic()
        failure = s.open()
        took = time.monotonic() - began
    assert failure is not None
    assert (failure.kind, failure.words) == ("connect", "TLS handshake: no answer within 1 s (TCP connected)")
    assert took < 2.0, "TCP and TLS share one connect timeout"


@contextlib.contextmanager
def _resetting_server() -> Iterator[int]:
    """Reads the ClientHello, then resets the connection (SO_LINGER 0), as a dying TLS terminator may."""
    lst = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = lst.accept()
            conn.settimeout(5)
            conn.recv(4096)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield lst.getsockname()[1]
    finally:
        lst.close()
        t.join(5)


def test_session__a_reset_during_the_tls_handshake__is_said_as_tls(ca: Issued) -> None:
    with _resetting_server() as port, _session(_cfg(port, ca)) as s:
        failure = s.open()
    assert failure is not None
    assert failure.words == "TLS handshake: Connection reset by peer (TCP connected)"


def test_session__tls_checks_the_configured_name_at_a_resolved_address(
    ca: Issued, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = issue(ca, tmp_path, "broker.test", "server", server=True, dns=("broker.test",), ips=())
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(server.cert_path, server.key_path)
    names: list[str | None] = []
    ctx.sni_callback = lambda _s, name, _c: names.append(name)
    lst = socket.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = lst.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)  # until the client goes

    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda h, p, *a, **k: (
            [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
            if h in ("broker.test", b"broker.test")
            else real(h, p, *a, **k)
        ),
    )
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with _session(_cfg(port, ca, check_hostname=True, host="broker.test")) as s:
            assert s.open() is None, "the certificate names broker.test, not the address connected to"
            assert str(s.dial.address) == "127.0.0.1"
    finally:
        lst.close()
        t.join(5)
    assert names == ["broker.test"]


def test_uplink__a_silent_tls_broker__last_error_names_the_tls_handshake(ca: Issued, rig_factory: RigFactory) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        rig = rig_factory(_cfg(silent.getsockname()[1], ca), "words")
        rig.uplink.start()
        err = eventually(lambda: rig.uplink.state().last_error, what="a failed attempt")
        rig.uplink.stop(timeout=2)
    assert err == "TLS handshake: no answer within 1 s (TCP connected)"
