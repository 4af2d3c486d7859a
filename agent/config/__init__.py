"""Loading the agent's one YAML file into a validated :class:`Config`.

``load_config`` either returns a complete, frozen config or raises
:class:`~agent.errors.ConfigError` listing every problem as
``file:line: key.path: what is wrong``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from agent.config.files import secret_file, trusted_file
from agent.config.model import (
    BrokerAddress,
    CameraConfig,
    CameraKind,
    Config,
    Contact,
    InputConfig,
    InputKind,
    MqttConfig,
    OutputConfig,
    Secret,
    TlsConfig,
)
from agent.config.reader import Ctx, Invalid, MarkedMap, Section, load_marked
from agent.config.schema import build, control_socket
from agent.errors import ConfigError

DEFAULT_PATH = Path("/etc/campus-agent/agent.yaml")

__all__ = [
    "DEFAULT_PATH",
    "BrokerAddress",
    "CameraConfig",
    "CameraKind",
    "Config",
    "Contact",
    "InputConfig",
    "InputKind",
    "MqttConfig",
    "OutputConfig",
    "Secret",
    "TlsConfig",
    "doctor_mqtt",
    "load_config",
    "load_control_socket",
]

_LINE = re.compile(r":(\d+): ")


def load_config(path: Path | str) -> Config:
    """Read, validate and return the config at ``path``.

    Raises:
        ConfigError: with every problem found, sorted by line.

    """
    path = Path(path)
    data, structural, ctx = _read(path)
    for line, key, message in structural:
        ctx.error(line, key or "(top level)", message)
    config = build(Section(ctx, data, "", getattr(data, "line", 1)))
    if ctx.problems or config is None:
        raise ConfigError(sorted(ctx.problems, key=_line_of))
    return config


def _read(path: Path) -> tuple[Any, list[tuple[int, str, str]], Ctx]:
    """The marked YAML, its structural problems and a fresh problem list; a file that is not YAML raises."""
    try:
        data, structural = load_marked(path)
    except Invalid as exc:
        raise ConfigError(str(exc)) from None
    return data, structural, Ctx(path)


def _line_of(problem: str) -> int:
    m = _LINE.search(problem)
    return int(m.group(1)) if m else 0


def load_control_socket(path: Path | str) -> Path:
    """Only ``control.socket`` from the config at ``path``: what ``status``, ``simulate`` and ``test-mode`` need.

    Reads no secret and judges no other key, so a technician in the control
    group (who may read the config but none of the secrets) can talk to the agent.

    Raises:
        ConfigError: the file is not YAML, or ``control.socket`` is invalid.

    """
    path = Path(path)
    data, _structural, ctx = _read(path)
    root = Section(ctx, data if isinstance(data, MarkedMap) else None, "", getattr(data, "line", 1))
    socket = control_socket(root.section("control"), path.parent)
    if ctx.problems:
        raise ConfigError(sorted(ctx.problems, key=_line_of))
    return socket


class _DoctorLines:
    """Problems of the doctor section, each on the line of its key like every other config problem.

    :class:`Config` keeps no lines, so the file is read again: only doctor asks, and only on a problem.
    """

    def __init__(self, source: Path) -> None:
        self.ctx = Ctx(source)
        self._lines: dict[str, int] | None = None

    def error(self, key: str, message: str) -> None:
        self.ctx.error(self._line(key), f"doctor.{key}", message)

    def _line(self, key: str) -> int:
        if self._lines is None:
            self._lines = {}
            try:
                data, _structural = load_marked(self.ctx.file)
            except Invalid:
                data = None
            section = data.get("doctor") if isinstance(data, MarkedMap) else None
            if isinstance(section, MarkedMap):
                self._lines = {"": section.line, **section.key_lines}
        return self._lines.get(key, self._lines.get("", 1))


def doctor_mqtt(cfg: Config) -> MqttConfig:
    """The MQTT settings ``doctor`` logs in with: the device's, with doctor's own identity when one is given.

    With the example broker (client id bound to the certificate) logging in
    with the device's own identity would knock the running agent off, so
    doctor gets an identity of its own (docs/install.md); its files are checked here.

    Raises:
        ConfigError: a doctor file is missing or has a dangerous owner or mode.

    """
    d, mq = cfg.doctor, cfg.mqtt
    if not d.given:
        return mq
    where = _DoctorLines(cfg.source)
    base = cfg.source.parent

    def check(key: str, value: Path, *, secret: bool) -> Path:
        try:
            # Doctor reads its own files under sudo: they need not be readable by the service user.
            return (secret_file if secret else trusted_file)(base, service=False)(str(value))  # type: ignore[no-any-return]
        except Invalid as exc:
            where.error(key, str(exc))
            return value

    problems = where.ctx.problems
    if d.cert_file is not None and d.key_file is not None:
        if mq.tls is None:
            where.error("cert_file", "a client certificate needs TLS; add mqtt.tls")
            raise ConfigError(problems)
        with_cert = dataclasses.replace(
            mq.tls,
            cert_file=check("cert_file", d.cert_file, secret=False),
            key_file=check("key_file", d.key_file, secret=True),
        )
        out = dataclasses.replace(mq, tls=with_cert, username=None, password=None)
    else:
        assert d.password_file is not None
        if mq.tls is None:
            where.error("password_file", "a password needs TLS; add mqtt.tls")
            raise ConfigError(problems)
        secret_path = check("password_file", d.password_file, secret=True)
        try:
            # utf-8-sig: Windows Notepad starts the file with a BOM, which is no part of the password.
            text = "" if problems else secret_path.read_text(encoding="utf-8-sig").strip()
        except (OSError, UnicodeDecodeError) as exc:
            where.error("password_file", f"cannot read {secret_path}: {exc}; save it as UTF-8 text")
            text = ""
        no_cert = dataclasses.replace(mq.tls, cert_file=None, key_file=None)
        out = dataclasses.replace(mq, tls=no_cert, username=d.username, password=Secret(text, secret_path))
    if problems:
        raise ConfigError(problems)
    return out
