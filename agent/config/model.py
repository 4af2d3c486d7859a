"""The validated configuration: frozen dataclasses, no raw dicts past here.

Defaults live in ``schema.py`` (the validation), not here, so there is one
place that says what a technician may leave out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from agent.config.snapshots import NO_SNAPSHOTS, SnapshotsConfig

PROTOCOLS = ("auto", "5", "3.1.1")  # mqtt.protocol: auto tries MQTT 5 first and falls back to 3.1.1 per broker


class Secret:
    """A password read from a file; never printed, logged or repr'd."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: Path) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.source)


class InputKind(StrEnum):
    PANIC_BUTTON = "panic_button"
    TAMPER = "tamper"


class Contact(StrEnum):
    """How the switch is wired between the pin and ground (pin pulled up).

    ``normally_open``: the circuit closes when pressed, so the pin reads low when
    active.  ``normally_closed``: the loop is closed at rest and opens when
    pressed or cut, so a cut wire reads as active, never as silently idle.
    """

    NORMALLY_OPEN = "normally_open"
    NORMALLY_CLOSED = "normally_closed"


class CameraKind(StrEnum):
    PICAMERA2 = "picamera2"
    HTTP_SNAPSHOT = "http_snapshot"
    RTSP = "rtsp"


@dataclass(frozen=True)
class DeviceConfig:
    id: str
    site: str
    location: str


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    check_hostname: bool


@dataclass(frozen=True)
class MqttConfig:
    brokers: tuple[BrokerAddress, ...]
    keepalive_s: int
    topic_prefix: str
    client_id: str
    protocol: str  # one of PROTOCOLS
    username: str | None
    password: Secret | None
    tls: TlsConfig | None
    connect_timeout_s: float
    reconnect_min_s: float
    reconnect_max_s: float
    max_inflight: int
    drain_rate_per_s: float
    allow_plaintext_password: bool = False  # the lab switch, and only when in use (a warning in every status)


@dataclass(frozen=True)
class GpioConfig:
    pin_factory: str


@dataclass(frozen=True)
class InputConfig:
    name: str
    kind: InputKind
    pin: int
    contact: Contact
    debounce_ms: int
    stuck_after_s: float
    silent: bool
    # Swinger shutdown (agent/flapping.py), tamper only.  0 = off here: code that builds an InputConfig
    # itself opts in; a config file's tamper input gets schema.py's defaults.
    flap_limit: int = 0
    flap_window_s: float = 60.0


@dataclass(frozen=True)
class OutputConfig:
    pin: int
    active_high: bool


@dataclass(frozen=True)
class OutputsConfig:
    ack_led: OutputConfig | None
    buzzer: OutputConfig | None
    ack_hold_s: float
    fault_after_s: float


@dataclass(frozen=True)
class HeartbeatConfig:
    interval_s: float


@dataclass(frozen=True)
class CameraConfig:
    name: str
    kind: CameraKind
    url: str | None
    timeout_s: float
    probe_interval_s: float
    fail_after: int
    username: str | None
    password: Secret | None
    auth: str
    camera_num: int


@dataclass(frozen=True)
class OutboxConfig:
    path: Path
    max_mb: float
    intake: bool = True


@dataclass(frozen=True)
class ControlConfig:
    socket: Path


@dataclass(frozen=True)
class DoctorConfig:
    """``campus-agent doctor``'s own broker identity: files are checked only when doctor uses them.

    The agent never reads them (the service user need not be able to), and
    with no identity given doctor falls back to the device's own.
    """

    username: str | None
    password_file: Path | None
    cert_file: Path | None
    key_file: Path | None

    @property
    def given(self) -> bool:
        return self.username is not None or self.cert_file is not None


@dataclass(frozen=True)
class CommandsConfig:
    rate_per_min: int


@dataclass(frozen=True)
class Config:
    source: Path
    device: DeviceConfig
    mqtt: MqttConfig
    gpio: GpioConfig
    inputs: tuple[InputConfig, ...]
    outputs: OutputsConfig
    heartbeat: HeartbeatConfig
    cameras: tuple[CameraConfig, ...]
    outbox: OutboxConfig
    control: ControlConfig
    commands: CommandsConfig
    log_level: str
    doctor: DoctorConfig = DoctorConfig(None, None, None, None)  # frozen, so one shared default is safe
    snapshots: SnapshotsConfig = NO_SNAPSHOTS

    @property
    def topic_root(self) -> str:
        return f"{self.mqtt.topic_prefix}/{self.device.site}/{self.device.id}"

    @property
    def warnings(self) -> list[str]:
        """Weakened security the config asks for: logged at start and shown in every status."""
        out = []
        if self.mqtt.allow_plaintext_password:
            out.append("the MQTT password is sent without TLS (mqtt.allow_plaintext_password: true); lab use only")
        if self.mqtt.tls is not None and not self.mqtt.tls.check_hostname:
            out.append("TLS host name checking is off (mqtt.tls.check_hostname: false)")
        return out
