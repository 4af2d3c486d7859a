"""A real :class:`agent.session.Session` to a test broker, for the tests of the daemon's paho seam."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.config.model import BrokerAddress
from agent.session import Dialect, Session
from tests.support.agentproc import write_config


def new_session(
    tmp_path: Path,
    port: int,
    device: str,
    *,
    on_ack: Callable[[int, str | None], None] = lambda *_a: None,
    **mqtt: Any,
) -> Session:
    """A Session (MQTT 5, retain) for ``device`` on 127.0.0.1:``port``, not yet opened; ``mqtt``: config overrides."""
    cfg = load_config(write_config(tmp_path, port, device=device, mqtt=mqtt)).mqtt
    return Session(
        cfg,
        BrokerAddress("127.0.0.1", port),
        Dialect("5", retain=True),
        will=(f"t/{device}/status", b"{}"),
        wake=lambda: None,
        on_ack=on_ack,
        on_message=lambda *_a: None,
    )


def opened(s: Session) -> Session:
    """``s`` connected and accepted by the broker (asserts both)."""
    assert s.open() is None
    assert s.verdict(10.0) is None
    return s
