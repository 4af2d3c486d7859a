"""Issue 14.6, 14.8, 14.9 (alias bomb), 10 (reserved characters), 9.8 (client id): refused at check-config.

Black-box where it matters: ``campus-agent check-config`` as a process, its exit
status and what it prints; the rest through :func:`load_config`.
"""

from __future__ import annotations

import os
import pwd
import resource
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from tests.security.conftest import ROOT
from tests.support.agentproc import AgentProc
from tests.support.broker import Broker

GOOD = """\
device: {id: gate-north-1, site: main}
mqtt:
  host: 127.0.0.1
gpio: {pin_factory: mock}
inputs:
  - {name: panic, pin: 17}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def check_config(path: Path, *, limit_mb: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if limit_mb is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    return subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        preexec_fn=limit,
        check=False,
    )


def secret(tmp_path: Path, name: str = "mqtt.pass", mode: int = 0o600, text: str = "s3cret\n") -> Path:
    p = tmp_path / name
    p.write_text(text)
    p.chmod(mode)
    return p


# ---- 14.6: plaintext passwords ------------------------------------------------------------------


def test_check_config__password_without_tls_is_refused_with_the_reason(tmp_path: Path) -> None:
    secret(tmp_path)
    cfg = write(
        tmp_path,
        GOOD.replace("host: 127.0.0.1", "host: b.lan\n  port: 8883\n  username: u\n  password_file: mqtt.pass"),
    )
    r = check_config(cfg)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "mqtt.password_file: a password without TLS is sent in clear text" in r.stderr
    assert "mqtt.allow_plaintext_password: true" in r.stderr


def test_check_config__lab_switch_accepts_it_and_warns(tmp_path: Path) -> None:
    secret(tmp_path)
    cfg = write(
        tmp_path,
        GOOD.replace(
            "host: 127.0.0.1",
            "host: b.lan\n  username: u\n  password_file: mqtt.pass\n  allow_plaintext_password: true",
        ),
    )
    r = check_config(cfg)
    assert r.returncode == 0, r.stderr
    assert "WARNING: the MQTT password is sent without TLS (mqtt.allow_plaintext_password: true)" in r.stdout
    assert load_config(cfg).warnings[0].startswith("the MQTT password is sent without TLS")


def test_check_config__lab_switch_alone_warns_about_nothing(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace("host: 127.0.0.1", "host: b\n  allow_plaintext_password: true")))
    assert cfg.warnings == []


@pytest.mark.broker
def test_status__plaintext_lab_switch_warns_in_every_status(
    broker: Broker, agent_proc: Callable[..., AgentProc], tmp_path: Path
) -> None:
    pw = secret(tmp_path)
    agent = agent_proc(
        broker.port,
        device="lab-1",
        mqtt={"username": "lab-1", "password_file": str(pw), "allow_plaintext_password": True},
    )
    warnings = agent.status()["status"]["warnings"]
    assert any("password is sent without TLS" in w for w in warnings), warnings


def test_check_config__check_hostname_off_needs_ca_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, GOOD.replace("host: 127.0.0.1", "host: b\n  tls: {check_hostname: false}"))
    r = check_config(cfg)
    assert r.returncode == 2
    assert "mqtt.tls.check_hostname: check_hostname: false needs ca_file" in r.stderr


# ---- issue 10: characters brokers map or reserve; 9.8: injective client id ------------------------------


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("topic_prefix", "campus.north", "RabbitMQ maps '.' to '/'"),
        ("topic_prefix", "cam$pus", "brokers reserve '$' topics"),
        ("topic_prefix", "$SYS", "brokers reserve '$' topics"),
        ("topic_prefix", "org/+/campus", "'+' and '#' are MQTT wildcards"),
        ("topic_prefix", "org//campus", "between single '/'"),
        ("topic_prefix", "'org/campus/'", "between single '/'"),
        ("id", "gate.north", "RabbitMQ maps '.' to '/'"),
        ("id", "gate/north", "'/' separates topic levels"),
        ("site", "'main#'", "'+' and '#' are MQTT wildcards"),
        ("site", "ma$n", "brokers reserve '$' topics"),
    ],
)
def test_check_config__reserved_characters_are_refused_with_the_reason(
    tmp_path: Path, key: str, value: str, reason: str
) -> None:
    if key == "topic_prefix":
        text = GOOD.replace("host: 127.0.0.1", f"host: h\n  topic_prefix: {value}")
    else:
        text = GOOD.replace("id: gate-north-1" if key == "id" else "site: main", f"{key}: {value}")
    with pytest.raises(ConfigError, match=reason.replace("+", r"\+").replace("$", r"\$")):
        load_config(write(tmp_path, text))


def test_client_id__default_is_injective(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, GOOD.replace("id: gate-north-1, site: main", "id: c, site: a-b")))
    b = load_config(write(tmp_path, GOOD.replace("id: gate-north-1, site: main", "id: b-c, site: a")))
    assert (a.mqtt.client_id, b.mqtt.client_id) == ("a-b/c", "a/b-c")


# ---- 14.8: owners and modes ------------------------------------------------------------------------------


TLS = """\
  tls:
    ca_file: ca.crt
    cert_file: client.crt
    key_file: client.key
"""


def tls_config(tmp_path: Path, *, ca: int = 0o644, cert: int = 0o644, key: int = 0o600, pw: int = 0o600) -> Path:
    secret(tmp_path, "ca.crt", ca, "-----BEGIN CERTIFICATE-----\n")
    secret(tmp_path, "client.crt", cert, "-----BEGIN CERTIFICATE-----\n")
    secret(tmp_path, "client.key", key, "-----BEGIN PRIVATE KEY-----\n")
    secret(tmp_path, "mqtt.pass", pw)
    return write(
        tmp_path,
        GOOD.replace("host: 127.0.0.1", "host: h\n  username: u\n  password_file: mqtt.pass\n" + TLS.rstrip("\n")),
    )


def test_modes__owner_only_secrets_and_read_only_ca_are_accepted(tmp_path: Path) -> None:
    cfg = load_config(tls_config(tmp_path, key=0o400, pw=0o400))
    assert cfg.mqtt.password is not None


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"pw": 0o660}, r"mqtt\.pass is writable by its group \(mode 0660\); it holds a secret: run 'chmod 600"),
        ({"pw": 0o620}, r"mqtt\.pass is writable by its group \(mode 0620\)"),
        ({"pw": 0o640}, r"mqtt\.pass is readable by its group \(mode 0640\); it holds a secret: run 'chmod 600"),
        ({"pw": 0o604}, r"mqtt\.pass is readable by others \(mode 0604\)"),
        ({"key": 0o660}, r"client\.key is writable by its group \(mode 0660\)"),
        ({"key": 0o640}, r"client\.key is readable by its group"),
        ({"ca": 0o666}, r"ca\.crt is writable by others \(mode 0666\); the agent trusts what it says: run 'chmod 644"),
        ({"ca": 0o664}, r"ca\.crt is writable by its group \(mode 0664\)"),
        ({"cert": 0o646}, r"client\.crt is writable by others"),
    ],
)
def test_modes__unsafe_modes_are_refused(tmp_path: Path, kwargs: dict[str, int], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_config(tls_config(tmp_path, **kwargs))


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file owned by another user needs root")
@pytest.mark.parametrize("name", ["mqtt.pass", "client.key", "ca.crt"])
def test_owner__a_file_owned_by_another_user_in_a_sticky_world_writable_dir_is_refused(
    tmp_path: Path, name: str
) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    path = tls_config(shared)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(shared / name, nobody, -1)
    with pytest.raises(
        ConfigError,
        match=rf"{name.replace('.', '[.]')} is owned by nobody \(uid {nobody}\), not by "
        r"root \(uid 0\)(?: or campus-agent \(uid \d+\))?; .*run 'chown campus-agent",
    ):
        load_config(path)


# ---- 14.9: YAML alias bomb ----------------------------------------------------------------------------------


def test_check_config__alias_bomb_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """Shared aliased lists: 10 levels of 10 would print as ~10^10 items; refused under a 300 MB address cap."""
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb = "\n".join(levels) + "\n" + GOOD.replace("{pin_factory: mock}", "{pin_factory: *l9}") + "log: {level: *l9}\n"
    r = check_config(write(tmp_path, bomb), limit_mb=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "MemoryError" not in r.stderr
    assert "gpio.pin_factory: expected one of default, mock" in r.stderr
    assert "got a list" in r.stderr
    assert len(r.stderr) < 5000
