"""The peer: mqtt-io, the closest open-source program doing this job (GPIO → MQTT), in a virtual environment of its own.

mqtt-io publishes a pin change at its defaults (QoS 0, nothing written to
disk): it is the "fire and forget" figure the agent's durable, acknowledged
alarm is held against.  The environment is made once under the bench's
``--workdir`` with pinned versions (pip, the ordinary client) and reused by
later runs; gpiozero and paho-mqtt are the versions the agent uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PEER = "mqtt-io"
PEER_VERSION = "2.7.0"
# mqtt-io's own dependencies, pinned so a later run measures the same code
REQUIREMENTS = (
    f"mqtt-io=={PEER_VERSION}",
    "aiomqtt==2.5.1",
    "paho-mqtt==2.2.0",
    "gpiozero==2.0.1.post3",
    "Cerberus==1.3.8",
    "PyYAML==6.0.4",
    "backoff==2.2.1",
    "confp==0.4.1",
    "docutils==0.18.1",
)


def peer_python(root: Path) -> Path:
    """The peer environment's interpreter under ``root``; made (about a minute) when missing or stale."""
    venv = root / f"campus-bench-peer-{PEER}-{PEER_VERSION}"
    py = venv / "bin" / "python"
    stamp = venv / "requirements.json"
    want = json.dumps(list(REQUIREMENTS))
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    print(f"making the peer's environment {venv} ({', '.join(REQUIREMENTS[:1])}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
        check=True,
        timeout=900,
    )
    stamp.write_text(want)
    return py


def peer_versions(py: Path) -> dict[str, str]:
    """Installed versions in the peer's environment, for the results."""
    code = (
        "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
        "('mqtt-io', 'aiomqtt', 'paho-mqtt', 'gpiozero')}))"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60, check=False)
    try:
        got: dict[str, str] = json.loads(out.stdout)
    except ValueError:
        return {}
    return got


def write_config(path: Path, port: int, prefix: str, client_id: str, pin: int = 17) -> Path:
    """mqtt-io's config: one interrupt-driven input on the gpiozero module (mock pins), everything else default."""
    cfg: dict[str, Any] = {
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": prefix, "client_id": client_id},
        "gpio_modules": [{"name": "pins", "module": "gpiozero"}],
        "digital_inputs": [{"name": "panic", "module": "pins", "pin": pin, "interrupt": "both", "pullup": True}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
