"""The broker checks of ``campus-agent doctor``: DNS, TCP, TLS, login and a round trip, step by step.

Each step is its own function, so a failure names the layer it happened in
(a typo in the host name, a firewall, a wrong CA, a wrong password, an ACL)
instead of the one "cannot connect" a full MQTT client would report.  The TLS
step is :mod:`agent.doctor.tls`.

The MQTT steps go through :class:`~agent.doctor.mqtt.MqttProbe`, which keeps
paho to itself and never uses the agent's own client id.  The round trip
publishes to ``{root}/doctor/ping``, so the broker's ACL must allow this
device ``{root}/doctor/#`` (mosquitto: ``pattern readwrite campus/+/%u/doctor/#``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

from agent.brokers import describe_connect_error
from agent.config import doctor_mqtt
from agent.config.model import BrokerAddress, Config, MqttConfig
from agent.doctor.checks import Check, run_with_deadline
from agent.doctor.mqtt import MqttProbe, Note
from agent.doctor.tls import check_tls
from agent.errors import ConfigError
from agent.session import UNSUPPORTED_PROTOCOL

_LOGIN_REFUSED = {134, 135, 138, 140}  # bad user name or password, not authorised, banned, bad auth method

Address = tuple[socket.AddressFamily, Any]  # (family, sockaddr)


# ---- DNS and TCP -----------------------------------------------------------------


def check_dns(broker: BrokerAddress, timeout_s: float) -> tuple[Check, list[Address]]:
    """Resolve the broker's host name; return the verdict and the (family, address) list for TCP."""
    label = f"broker {broker}"
    try:
        infos = run_with_deadline(
            lambda: socket.getaddrinfo(broker.host, broker.port, type=socket.SOCK_STREAM), timeout_s, "doctor-dns"
        )
    except socket.gaierror as exc:
        return Check.fail(
            f"{label}: host name {broker.host} not found ({exc.strerror})",
            "check mqtt.host (or brokers) for a typo, and the Pi's DNS server (/etc/resolv.conf)",
        ), []
    except TimeoutError:
        return Check.fail(
            f"{label}: no DNS answer for {broker.host} within {timeout_s:g} s",
            "check the Pi's network and its DNS server (/etc/resolv.conf)",
        ), []
    addrs: list[Address] = list(dict.fromkeys((family, sockaddr) for family, _t, _p, _c, sockaddr in infos))
    try:
        ipaddress.ip_address(broker.host)
    except ValueError:
        shown = ", ".join(str(a[0]) for _f, a in addrs)
        return Check.ok(f"{label}: DNS {broker.host} → {shown}"), addrs
    return Check.ok(f"{label}: {broker.host} is an address, no DNS lookup needed"), addrs


def check_tcp(broker: BrokerAddress, addrs: list[Address], timeout_s: float) -> tuple[Check, socket.socket | None]:
    """Open a TCP connection to the first address that answers; the caller closes the socket."""
    label = f"broker {broker}"
    first: tuple[str, OSError] | None = None
    for family, sockaddr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        t0 = time.monotonic()
        try:
            sock.connect(sockaddr)
        except OSError as err:
            sock.close()
            first = first or (str(sockaddr[0]), err)
            continue
        ms = int((time.monotonic() - t0) * 1000)
        return Check.ok(f"{label}: TCP connected to {sockaddr[0]} port {broker.port} in {ms} ms"), sock
    if first is None:
        return Check.fail(f"{label}: no address to connect to", "check mqtt.host"), None
    where, exc = first
    if isinstance(exc, ConnectionRefusedError):
        return Check.fail(
            f"{label}: connection refused by {where} port {broker.port}",
            "nothing listens there: check mqtt.port and that the broker (mosquitto) runs",
        ), None
    if isinstance(exc, TimeoutError):
        return Check.fail(
            f"{label}: no answer from {where} port {broker.port} within {timeout_s:g} s",
            f"a firewall drops the connection or the host is down: check the network path and "
            f"that port {broker.port} is open",
        ), None
    return Check.fail(
        f"{label}: cannot reach {where} ({exc.strerror or exc})",
        "check the Pi's network (cable or Wi-Fi, ip route) and the broker address",
    ), None


# ---- MQTT ------------------------------------------------------------------------


def _login_todo(cfg: MqttConfig) -> str:
    if cfg.username is not None:
        return "check mqtt.username and the password in mqtt.password_file against the broker's password file"
    if cfg.tls is not None and cfg.tls.cert_file is not None:
        return "the broker does not accept this certificate's identity (its CN): check the broker's users and ACL"
    return "the broker wants a login: set mqtt.username and password_file, or a client certificate"


def check_login(cfg: MqttConfig, broker: BrokerAddress, probe: MqttProbe, timeout_s: float) -> Check:
    """MQTT CONNECT with the agent's credentials; the verdict on the CONNACK (kept in ``probe.answer``)."""
    label = f"broker {broker}: MQTT {probe.protocol}"
    try:
        probe.connect(broker)
    except (OSError, ValueError) as exc:
        return Check.fail(f"{label}: {describe_connect_error(exc, timeout_s)}", "see the TCP and TLS lines above")
    note = probe.answer = probe.wait(time.monotonic() + timeout_s, "connack")
    if note is None:
        return Check.fail(
            f"{label}: no CONNACK within {timeout_s:g} s",
            "the broker accepted the connection but does not answer MQTT: check its log and port",
        )
    if note.kind == "lost":
        return Check.fail(
            f"{label}: the broker closed the connection before CONNACK ({note.words})",
            "read the broker's log; with TLS it may refuse the client certificate, "
            "without TLS the port may be a TLS port (add mqtt.tls)",
        )
    if not note.failure:
        who = f"user {cfg.username}" if cfg.username else "client certificate" if cfg.tls else "anonymous"
        return Check.ok(f"{label} login accepted ({who}, client id {probe.client_id})")
    if note.code in _LOGIN_REFUSED:
        return Check.fail(f"{label}: CONNACK not authorised: {note.words}", _login_todo(cfg))
    if note.code == UNSUPPORTED_PROTOCOL:
        return Check.fail(
            f"{label}: CONNACK {note.words}",
            "the broker does not speak this MQTT version: set mqtt.protocol: auto (or '3.1.1')",
        )
    return Check.fail(f"{label}: CONNACK refused: {note.words}", "read the broker's log for the reason")


def _not_mqtt5(answer: Note | None) -> str | None:
    """Why an MQTT 5 CONNECT shows the broker speaks no MQTT 5 (auto then tries 3.1.1), or None."""
    if answer is not None and answer.kind == "lost":
        return f"it closed the connection at an MQTT 5 CONNECT, before any CONNACK ({answer.words})"
    if answer is not None and answer.code == UNSUPPORTED_PROTOCOL:
        return f"it answered an MQTT 5 CONNECT with {answer.words}"
    return None


def check_retain(broker: BrokerAddress, probe: MqttProbe) -> Check:
    """Whether the broker keeps retained messages (MQTT 5 says so in the CONNACK; 3.1.1 cannot tell)."""
    label = f"broker {broker}"
    if probe.answer is not None and not probe.answer.retain_available:
        return Check.warn(
            f"{label}: retain unavailable (CONNACK Retain Available 0): the agent publishes its "
            "status and will without retain; events are not affected",
            "a central that subscribes later sees this device only at its next heartbeat; "
            "ask the broker's admin to allow retain (mosquitto: retain_available true)",
        )
    if probe.protocol == "5":
        return Check.ok(f"{label}: retained messages available")
    return Check.ok(f"{label}: retain not checked (MQTT 3.1.1 cannot ask); the agent notices a refusal itself")


def check_round_trip(broker: BrokerAddress, root: str, prefix: str, probe: MqttProbe, timeout_s: float) -> Check:
    """Subscribe to ``{root}/doctor/#``, publish a nonce at QoS 1 to ``{root}/doctor/ping``, wait for it.

    mosquitto grants a subscription the ACL forbids and then silently drops
    what it would deliver, so only a message that comes back proves the path.
    """
    label = f"broker {broker}: round trip"
    topic, pattern = f"{root}/doctor/ping", f"{root}/doctor/#"
    acl = (
        f"check the broker ACL allows {pattern} (read and write) for this device, "
        f"e.g. 'pattern readwrite {prefix}/+/%u/doctor/#'"
    )
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    sub_mid = probe.subscribe(pattern)
    if sub_mid is None:
        return Check.fail(f"{label}: the subscription could not be sent", "read the broker's log")
    note = probe.wait(deadline, "suback")
    while note is not None and note.kind == "suback" and note.mid != sub_mid:
        note = probe.wait(deadline, "suback")
    if note is None or note.kind == "lost":
        why = f"connection lost ({note.words})" if note else f"no SUBACK within {timeout_s:g} s"
        return Check.fail(f"{label} on {topic}: {why}", "read the broker's log")
    if note.failure:
        return Check.fail(f"{label}: broker refused the subscription to {pattern} ({note.words})", acl)
    nonce = f"doctor {uuid.uuid4().hex}".encode()
    pub_mid = probe.publish(topic, nonce)
    if pub_mid is None:
        return Check.fail(f"{label} on {topic}: the publish could not be sent", "read the broker's log")
    while (note := probe.wait(deadline, "puback", "message")) is not None:
        if note.kind == "lost":
            return Check.fail(f"{label} on {topic}: connection lost ({note.words})", "read the broker's log")
        if note.kind == "puback" and note.mid == pub_mid and note.failure:
            return Check.fail(f"{label}: broker refused the publish to {topic} ({note.words})", acl)
        if note.kind == "message" and note.payload == nonce:
            ms = int((time.monotonic() - t0) * 1000)
            return Check.ok(f"{label}: published and received {topic} in {ms} ms")
    return Check.fail(f"{label} on {topic} not received within {timeout_s:g} s", acl)


# ---- all steps for one broker ------------------------------------------------------


def check_broker(cfg: Config, broker: BrokerAddress, timeout_s: float, now: dt.datetime) -> Iterator[Check]:
    """Every step for one broker, yielded as each is known; stops at the first FAIL."""
    try:
        mq = doctor_mqtt(cfg)  # doctor's own identity when the config gives one (docs/install.md)
    except ConfigError as exc:
        yield Check.fail(str(exc), "fix the doctor section of the config (docs/install.md, doctor identity)")
        return
    dns, addrs = check_dns(broker, timeout_s)
    yield dns
    if dns.failed:
        return
    tcp, sock = check_tcp(broker, addrs, timeout_s)
    yield tcp
    if sock is None:
        return
    if mq.tls is None:
        sock.close()
    else:
        tls = check_tls(mq, broker, sock, timeout_s, now)
        yield tls
        if tls.failed:
            return
    yield from _check_mqtt(cfg, mq, broker, timeout_s)


def _check_mqtt(cfg: Config, mq: MqttConfig, broker: BrokerAddress, timeout_s: float) -> Iterator[Check]:
    """Login as ``mq`` says (auto: MQTT 5, then 3.1.1 if the broker speaks no MQTT 5), retain, round trip."""
    protocols = ("5", "3.1.1") if mq.protocol == "auto" else (mq.protocol,)
    why: str | None = None
    for i, protocol in enumerate(protocols):
        with MqttProbe(mq, timeout_s, protocol) as probe:
            login = check_login(mq, broker, probe, timeout_s)
            if i + 1 < len(protocols) and (why := _not_mqtt5(probe.answer)) is not None:
                continue
            if why is not None and probe.answer is not None and probe.answer.kind == "connack":
                yield Check.warn(
                    f"broker {broker}: no MQTT 5 ({why}); MQTT 3.1.1 in use, as the agent does",
                    "MQTT 5 would add refusal visibility (an ACL refusal is seen, not silently "
                    "acknowledged): upgrade the broker, or set mqtt.protocol: '3.1.1'",
                )
            yield login
            if login.failed:
                return
            yield check_retain(broker, probe)
            yield check_round_trip(broker, cfg.topic_root, mq.topic_prefix, probe, timeout_s)
            return
