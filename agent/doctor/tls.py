"""The TLS steps of ``campus-agent doctor``: the handshake with the broker, and both certificates' expiry.

The handshake uses the agent's own :func:`~agent.brokers.tls_context`, so it
trusts exactly what the agent trusts; each way it can fail (expired, wrong
name, wrong CA, client certificate refused, not TLS at all) is put in words
with what to change.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from typing import Any

from agent.brokers import tls_context
from agent.certinfo import WARN_DAYS, not_after
from agent.config.model import BrokerAddress, MqttConfig
from agent.doctor.checks import Check
from agent.errors import ConfigError

EXPIRY_WARN_DAYS = WARN_DAYS
_ALERT_WAIT_S = 0.5  # TLS 1.3 sends a refusal of our client certificate just after the handshake


def _days(left: dt.timedelta) -> str:
    n = left.days
    return f"{n} day{'' if n == 1 else 's'}"


def _verify_failure(exc: ssl.SSLCertVerificationError, broker: BrokerAddress) -> tuple[str, str]:
    why = exc.verify_message or str(exc)
    code = exc.verify_code
    if code == 10:
        return (
            f"the broker's certificate has expired ({why})",
            "the broker's admin must renew its certificate; the agent cannot connect until then",
        )
    if code == 9:
        return (
            f"the broker's certificate is not valid yet ({why})",
            "this Pi's clock is probably wrong: see the clock line; else the certificate starts in the future",
        )
    if code in (62, 64):
        return (
            f"the broker's certificate is not valid for {broker.host} ({why})",
            "set mqtt.host to a name in the broker's certificate, or have the certificate reissued with this name",
        )
    if code in (2, 18, 19, 20, 21):
        return (
            f"the broker's certificate is not signed by the CA in mqtt.tls.ca_file ({why})",
            "set mqtt.tls.ca_file to the campus CA that signed the broker's certificate",
        )
    return f"TLS certificate check failed ({why})", "check mqtt.tls.ca_file and the broker's certificate"


def _alert_failure(reason: str) -> tuple[str, str]:
    """Words for a TLS alert the broker sent about our side of the handshake."""
    if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
        return (
            f"the broker requires a client certificate ({reason})",
            "set mqtt.tls.cert_file and key_file to this device's certificate and key",
        )
    if "EXPIRED" in reason:
        return (
            f"the broker refused this device's client certificate as expired ({reason})",
            "renew the client certificate (mqtt.tls.cert_file)",
        )
    if any(word in reason for word in ("UNKNOWN_CA", "BAD_CERTIFICATE", "DECRYPT_ERROR", "UNSUPPORTED_CERTIFICATE")):
        return (
            f"the broker refused this device's client certificate ({reason})",
            "use a client certificate signed by the CA the broker trusts (mqtt.tls.cert_file)",
        )
    if any(word in reason for word in ("WRONG_VERSION_NUMBER", "RECORD_LAYER", "UNEXPECTED_EOF", "PACKET_LENGTH")):
        return (
            f"the broker does not speak TLS on this port ({reason})",
            "use the broker's TLS port (usually 8883), or remove mqtt.tls for a plain port",
        )
    return f"TLS handshake failed ({reason})", "check the certificates on both sides and the broker's log"


def _server_expiry(peer: dict[str, Any], now: dt.datetime) -> tuple[bool, str]:
    """(expires soon?, words) for the broker's certificate as seen in the handshake."""
    raw = peer.get("notAfter")
    if not isinstance(raw, str):
        return False, "certificate expiry unknown"
    end = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(raw), dt.UTC)
    left = end - now
    soon = left <= dt.timedelta(days=EXPIRY_WARN_DAYS)
    return soon, f"broker certificate valid until {end:%Y-%m-%d} ({_days(left)})"


def check_tls(cfg: MqttConfig, broker: BrokerAddress, sock: socket.socket, timeout_s: float, now: dt.datetime) -> Check:
    """Handshake on ``sock`` with the agent's own TLS context; report the broker certificate's expiry.

    ``sock`` is closed in every case.
    """
    label = f"broker {broker}: TLS"
    try:
        ctx = tls_context(cfg)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        return Check.fail(
            f"{label}: cannot load the certificates ({exc})",
            "check mqtt.tls ca_file, cert_file and key_file (the key must match the certificate)",
        )
    try:
        with ctx.wrap_socket(sock, server_hostname=broker.host) as tls:
            version, peer = tls.version(), tls.getpeercert() or {}
            tls.settimeout(min(timeout_s, _ALERT_WAIT_S))
            try:
                closed = tls.recv(1) == b""
            except TimeoutError:
                closed = False  # no alert: the broker waits for our CONNECT, as it should
    except ssl.SSLCertVerificationError as exc:
        what, todo = _verify_failure(exc, broker)
        return Check.fail(f"{label}: {what}", todo)
    except ssl.SSLError as exc:
        what, todo = _alert_failure(str(exc.reason or exc))
        return Check.fail(f"{label}: {what}", todo)
    except TimeoutError:
        return Check.fail(
            f"{label}: no TLS answer within {timeout_s:g} s",
            "check that this port speaks TLS (usually 8883) and the broker is not overloaded",
        )
    except OSError as exc:
        return Check.fail(
            f"{label}: the broker dropped the connection during the handshake "
            f"({exc.strerror or exc}): this port may not speak TLS",
            "use the broker's TLS port (usually 8883), or remove mqtt.tls for a plain port; else read the broker's log",
        )
    if closed:
        return Check.fail(
            f"{label}: the broker hung up right after the handshake",
            "it probably refused the client certificate: check mqtt.tls.cert_file and the broker's log",
        )
    soon, expiry = _server_expiry(peer, now)
    if soon:
        return Check.warn(
            f"{label} handshake ok ({version}), but {expiry}",
            "ask the broker's admin to renew its certificate before it expires",
        )
    return Check.ok(f"{label} handshake ok ({version}), {expiry}")


def check_client_cert(cfg: MqttConfig, now: dt.datetime) -> list[Check]:
    """The expiry of this device's client certificate, and a warning when host name checking is off."""
    found: list[Check] = []
    tls = cfg.tls
    if tls is None:
        return found
    if not tls.check_hostname:
        found.append(
            Check.warn(
                "TLS host name checking is off (mqtt.tls.check_hostname: false)",
                "lab brokers only: set mqtt.tls.check_hostname: true",
            )
        )
    if tls.cert_file is None:
        return found
    try:
        end = not_after(tls.cert_file)
    except ConfigError as exc:
        found.append(Check.fail(str(exc), "set mqtt.tls.cert_file to this device's PEM certificate"))
        return found
    left = end - now
    if left.total_seconds() <= 0:
        found.append(
            Check.fail(
                f"client certificate {tls.cert_file} EXPIRED on {end:%Y-%m-%d}",
                "renew it now: the broker refuses an expired certificate",
            )
        )
    elif left <= dt.timedelta(days=EXPIRY_WARN_DAYS):
        found.append(
            Check.warn(
                f"client certificate {tls.cert_file} expires on {end:%Y-%m-%d} (in {_days(left)})",
                "renew it before then (mqtt.tls.cert_file)",
            )
        )
    else:
        found.append(Check.ok(f"client certificate {tls.cert_file} valid until {end:%Y-%m-%d} ({_days(left)})"))
    return found
