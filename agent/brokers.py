"""Reaching a broker: the TLS context, backoff with full jitter, and connection errors in words.

Shared by the agent's uplink and the technician's tools (doctor, monitor), so
all of them verify the broker the same way and describe failures alike.
"""

from __future__ import annotations

import random
import socket
import ssl

from agent.config.model import MqttConfig


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, min * 2**attempt)]."""
    ceiling = min(max_s, min_s * (2 ** min(attempt, 30)))
    return rng.uniform(0.0, ceiling)


def describe_connect_error(exc: BaseException, timeout_s: float) -> str:
    """Turn what connect() raised into words a technician can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = getattr(exc, "verify_message", None) or exc
        return f"TLS certificate check failed: {why}; check mqtt.tls.ca_file and the broker's host name"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}; check the certificates on both sides"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"host name not found ({exc.strerror})"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def describe_attempt_error(phase: str, exc: BaseException, timeout_s: float) -> str:
    """A connect error in words, led by the phase it came in: ``DNS``, ``TCP``, ``TLS`` or ``MQTT``.

    A TLS handshake that times out or is reset says so, and that TCP
    connected: the broker's TLS side is silent, not the network.
    ``timeout_s`` is what the phase was given.
    """
    words = describe_connect_error(exc, timeout_s)
    if isinstance(exc, socket.gaierror):
        return f"DNS: {words}"
    if words.startswith("TLS"):  # certificate and handshake failures name themselves
        return words
    if phase == "TLS":
        return f"TLS handshake: {words} (TCP connected)"
    return f"{phase}: {words}"


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """Server verification always on; host name checking only off when configured."""
    assert cfg.tls is not None
    ctx = ssl.create_default_context(cafile=str(cfg.tls.ca_file) if cfg.tls.ca_file else None)
    if cfg.tls.cert_file is not None and cfg.tls.key_file is not None:
        ctx.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
    ctx.check_hostname = cfg.tls.check_hostname
    return ctx
