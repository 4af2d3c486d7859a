"""The brokers the interop suite runs against, behind one small interface.

Each target knows how to start and stop its broker (whole-broker outage on the
same ports), which MQTT version a central subscriber must speak to it, the
credentials it wants, and what it is known to support.  The agent config is
built here too: the default config (no ``mqtt.protocol``) unless the target
forces one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from tests.support.amqtt import AMQTT_VERSION, AmqttBroker
from tests.support.broker import Broker
from tests.support.rabbitmq import PASSWORD, USER, RabbitCluster

# For checking this harness against an agent that cannot negotiate yet: forces mqtt.protocol on
# every target that does not force one itself.  Committed tests run with it unset (the default config).
FORCE_PROTOCOL = os.environ.get("INTEROP_AGENT_PROTOCOL") or None


class WatcherArgs(TypedDict):
    v5: bool
    username: str | None
    password: str | None


@dataclass
class Target:
    """One broker set-up under test."""

    name: str
    description: str
    agent_protocol: str | None  # forced mqtt.protocol, None = default config
    expect_protocol: str  # what the agent should end up speaking
    sub_v5: bool  # the protocol the central watcher speaks to this broker
    server: Broker | AmqttBroker | RabbitCluster = field(repr=False)
    username: str | None = None
    password: str | None = None
    will: bool = True
    retained_wildcard: bool = True  # retained messages delivered through '+'/'#' filters
    speaks_v5: bool = True  # accepts an MQTT 5 CONNECT
    shared_subscriptions: bool = True  # $share/{group}/... splits messages between the group

    @property
    def ports(self) -> list[int]:
        if isinstance(self.server, RabbitCluster):
            return self.server.mqtt_ports
        return [self.server.port]

    @property
    def port(self) -> int:
        return self.ports[0]

    def start(self) -> None:
        if isinstance(self.server, RabbitCluster):
            for n in self.server.nodes:
                n.start()
        else:
            self.server.start()

    def stop(self) -> None:
        if isinstance(self.server, RabbitCluster):
            for n in reversed(self.server.nodes):
                n.stop()
        else:
            self.server.stop()

    def ensure_running(self) -> None:
        """Bring a broker back that an earlier, failed test left stopped."""
        if isinstance(self.server, RabbitCluster):
            if not all(n.running for n in self.server.nodes):
                raise RuntimeError(f"{self.name}: a node is down after an earlier test; {self.server!r}")
        elif not self.server.running:
            self.server.start()

    def close(self) -> None:
        if isinstance(self.server, RabbitCluster):
            self.server.close()
        else:
            self.server.stop()

    def watcher_args(self) -> WatcherArgs:
        """What a :class:`~tests.interop.watch.Watcher` needs to speak to this broker."""
        return {"v5": self.sub_v5, "username": self.username, "password": self.password}

    def agent_config(self, workdir: Path, ports: list[int] | None = None) -> dict[str, Any]:
        """The mqtt section for the agent: one broker, or the failover list for a cluster."""
        ports = ports or self.ports
        mqtt: dict[str, Any]
        if len(ports) == 1:
            mqtt = {"host": "127.0.0.1", "port": ports[0]}
        else:
            mqtt = {"host": None, "port": None, "brokers": [{"host": "127.0.0.1", "port": p} for p in ports]}
        protocol = self.agent_protocol or FORCE_PROTOCOL
        if protocol is not None:
            mqtt["protocol"] = protocol
        if self.username is not None:
            secret = workdir / "mqtt.password"
            workdir.mkdir(parents=True, exist_ok=True)
            secret.write_text(f"{self.password}\n")
            secret.chmod(0o600)
            mqtt["username"] = self.username
            mqtt["password_file"] = str(secret)
            mqtt["allow_plaintext_password"] = True  # a loopback test broker: RabbitMQ's guest login, no TLS
        return {"mqtt": mqtt}

    def logs(self) -> str:
        """The broker's log tail, for failure messages."""
        if isinstance(self.server, RabbitCluster):
            return "\n".join(n.tail(15) for n in self.server.nodes)
        log: Path = self.server.log
        return (
            f"--- {log} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]) if log.exists() else ""
        )


def mosquitto(workdir: Path, variant: str) -> Target:
    """mosquitto 2: forced MQTT 5, forced 3.1.1, or the default (auto)."""
    forced = {"v5": "5", "v311": "3.1.1", "auto": None}[variant]
    return Target(
        name=f"mosquitto-{variant}",
        description=f"mosquitto 2 ({'default config' if forced is None else 'mqtt.protocol: ' + forced})",
        agent_protocol=forced,
        expect_protocol=forced or "5",
        sub_v5=True,
        server=Broker(workdir).start(),
    )


def amqtt(workdir: Path) -> Target:
    return Target(
        name="amqtt",
        description=f"amqtt {AMQTT_VERSION} (MQTT 3.1.1 only)",
        agent_protocol=None,
        expect_protocol="3.1.1",
        sub_v5=False,
        speaks_v5=False,
        shared_subscriptions=False,
        server=AmqttBroker(workdir).start(),
    )


def rabbitmq(workdir: Path, size: int) -> Target:
    name = "rabbitmq" if size == 1 else f"rabbitmq-cluster{size}"
    return Target(
        name=name,
        description=f"RabbitMQ 3.10 MQTT plugin, {'single node' if size == 1 else f'{size}-node cluster'}",
        agent_protocol=None,
        expect_protocol="3.1.1",
        sub_v5=False,
        username=USER,
        password=PASSWORD,
        retained_wildcard=False,
        speaks_v5=False,
        shared_subscriptions=False,
        server=RabbitCluster(workdir, size=size).start(),
    )
