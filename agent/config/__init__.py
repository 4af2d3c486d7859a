"""Loading the agent's one YAML file into a validated :class:`Config`.

``load_config`` either returns a complete, frozen config or raises
:class:`~agent.errors.ConfigError` listing every problem as
``file:line: key.path: what is wrong``.
"""

from __future__ import annotations

import re
from pathlib import Path

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
from agent.config.reader import Ctx, Invalid, Section, load_marked
from agent.config.schema import build
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
    "load_config",
]

_LINE = re.compile(r":(\d+): ")


def load_config(path: Path | str) -> Config:
    """Read, validate and return the config at ``path``.

    Raises:
        ConfigError: with every problem found, sorted by line.

    """
    path = Path(path)
    try:
        data, structural = load_marked(path)
    except Invalid as exc:
        raise ConfigError(str(exc)) from None
    ctx = Ctx(path)
    for line, key, message in structural:
        ctx.error(line, key or "(top level)", message)
    config = build(Section(ctx, data, "", getattr(data, "line", 1)))
    if ctx.problems or config is None:
        raise ConfigError(sorted(ctx.problems, key=_line_of))
    return config


def _line_of(problem: str) -> int:
    m = _LINE.search(problem)
    return int(m.group(1)) if m else 0
