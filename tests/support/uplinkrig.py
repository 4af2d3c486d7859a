"""An Outbox + Uplink pair for uplink tests, and the MQTT config they run with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config.model import BrokerAddress, MqttConfig
from agent.events import Clock, Event, EventType
from agent.outbox import Outbox
from agent.uplink import Uplink

CLOCK = Clock(synced=lambda: False, boot_id="b")


def mqtt_cfg(*ports: int, client_id: str, **kw: Any) -> MqttConfig:
    """Loopback brokers on ``ports`` with short reconnect delays; ``kw`` overrides any field."""
    base: dict[str, Any] = {
        "brokers": tuple(BrokerAddress("127.0.0.1", p) for p in ports),
        "keepalive_s": 5,
        "topic_prefix": "campus",
        "client_id": client_id,
        "protocol": "5",
        "username": None,
        "password": None,
        "tls": None,
        "connect_timeout_s": 3.0,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "max_inflight": 10,
        "drain_rate_per_s": 10000.0,
    }
    base.update(kw)
    return MqttConfig(**base)


class Rig:
    """An Outbox + Uplink pair with fake status documents."""

    def __init__(self, tmp_path: Path, cfg: MqttConfig, device: str) -> None:
        self.root = f"campus/main/{device}"
        self.outbox = Outbox(tmp_path / f"{device}.db", site="main", device=device)
        self.delivered: list[int] = []
        self.commands: list[tuple[str, int, bool]] = []  # (name, payload size, retained)
        self.uplink = Uplink(
            cfg,
            topic_root=self.root,
            outbox=self.outbox,
            status=lambda: {"v": 1, "state": "online"},
            offline=lambda reason: {"v": 1, "state": "offline", "reason": reason},
            on_delivered=lambda row: self.delivered.append(row.seq),
            on_command=self._command,
        )

    def _command(self, name: str, payload: bytes, *, retained: bool = False) -> None:
        self.commands.append((name, len(payload), retained))

    def put(self, n: int, kind: EventType = EventType.PANIC) -> list[str]:
        ids = []
        for _ in range(n):
            e = Event.create(CLOCK, kind, "panic")
            self.outbox.put(e)
            ids.append(e.id)
        self.uplink.wake()
        return ids

    def close(self) -> None:
        self.uplink.stop()
        self.outbox.close()


RigFactory = Callable[[MqttConfig, str], Rig]  # the rig_factory fixture: (config, device id) → a Rig
