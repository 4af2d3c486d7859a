"""JSON Schemas of the wire contract (v1), shipped with the package."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

NAMES = ("event", "status", "command", "reply")


def load(name: str) -> dict[str, Any]:
    """Return the schema called ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise KeyError(f"no schema '{name}'; known: {', '.join(NAMES)}")
    text = resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]
