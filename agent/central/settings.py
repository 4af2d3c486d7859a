"""Where and how the central tools connect: brokers, MQTT version, TLS and credentials.

Plain values and the TLS context, no paho: :mod:`agent.central.link` turns
them into a client.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from agent.config.model import BrokerAddress, Secret, TlsConfig

DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_SESSION_EXPIRY_S = 3600
_MAX_SESSION_EXPIRY_S = 2**32 - 1
PROTOCOLS = ("auto", "5", "3.1.1")


@dataclass(frozen=True)
class LinkSettings:
    """Where to connect and how: brokers in order, protocol, TLS and credentials.

    ``tls`` ``None`` is plain MQTT; ``protocol`` is ``auto``, ``5`` or ``3.1.1``.
    ``session_expiry_s``: how long the broker keeps the monitor's session (and
    queues its events) after the link drops, in seconds; 0 is a clean session
    that keeps nothing (``campus-agent ack``).  An hour covers a broker or
    network restart without letting a killed monitor's queue grow for days.
    """

    brokers: tuple[BrokerAddress, ...]
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    protocol: str = "auto"
    tls: TlsConfig | None = None
    username: str | None = None
    password: Secret | None = None
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S

    def __post_init__(self) -> None:
        if not 0 <= self.session_expiry_s <= _MAX_SESSION_EXPIRY_S:
            raise ValueError(f"session_expiry_s {self.session_expiry_s} is not 0 to {_MAX_SESSION_EXPIRY_S} seconds")
        if not self.brokers:
            raise ValueError("LinkSettings needs at least one broker")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol '{self.protocol}' is not one of {', '.join(PROTOCOLS)}")

    def __repr__(self) -> str:
        how = "TLS" if self.tls is not None else "plain"
        who = f"user {self.username}" if self.username else "anonymous"
        return f"<LinkSettings {', '.join(map(str, self.brokers))} MQTT {self.protocol} {how} {who}>"


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """Verify the broker always (TLS 1.2 or later); present a client certificate when one is given."""
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    ctx.check_hostname = tls.check_hostname
    return ctx
