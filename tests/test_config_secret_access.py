"""Who can read the agent's secrets: ``sudo check-config`` judges them as the service user will.

Root reads every file, so without this a root-owned 0600 ``mqtt.pass`` (the
``chown`` of docs/install.md forgotten) passed ``sudo campus-agent check-config``
while the service exited 2 at every start.  A technician without sudo is told
to use sudo, never to loosen a secret.

The tests that need root to play both users skip elsewhere; the rest fake the
ids and run as anyone.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import doctor_mqtt, files, load_config
from agent.config.files import SERVICE_GROUPS, SERVICE_USER, existing_file, service_can_read
from agent.config.reader import Invalid
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SERVICE_UID = 64999  # a service user that owns nothing on this machine
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can own files for two users and act as another")

GOOD = """\
device: {id: gate-north-1, site: main}
mqtt:
  host: h
  username: u
  password_file: mqtt.pass
  allow_plaintext_password: true
gpio: {pin_factory: mock}
inputs:
  - {name: panic, pin: 17}
"""


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder every user may enter (pytest's own are 0700 under root)."""
    d = Path(tempfile.mkdtemp(prefix="cfg-access-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _gate(folder: Path, secret_mode: int = 0o600) -> Path:
    secret = folder / "mqtt.pass"
    secret.write_text("s3cret\n")
    secret.chmod(secret_mode)
    cfg = folder / "gate.yaml"
    cfg.write_text(GOOD)
    cfg.chmod(0o644)
    return cfg


@pytest.fixture
def service_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine gets the Pi's service user."""
    real = pwd.getpwnam

    def getpwnam(name: str) -> Any:
        if name == SERVICE_USER:
            return pwd.struct_passwd((SERVICE_USER, "x", SERVICE_UID, SERVICE_UID, "", "/var/lib/x", "/sbin/nologin"))
        return real(name)

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)


def test_service_names__match_the_unit_and_sysusers() -> None:
    unit = (ROOT / "systemd/campus-agent.service").read_text()
    assert re.search(rf"^User={SERVICE_USER}$", unit, re.MULTILINE)
    groups = re.findall(r"^(?:Group|SupplementaryGroups)=(.+)$", unit, re.MULTILINE)
    assert tuple(" ".join(groups).split()) == SERVICE_GROUPS
    assert re.search(rf"^u {SERVICE_USER} ", (ROOT / "systemd/campus-agent.sysusers").read_text(), re.MULTILINE)


def _as_root_with_service(monkeypatch: pytest.MonkeyPatch, uid: int, gids: set[int]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(files, "_service_ids", lambda: (uid, gids))


def test_service_can_read__secret_of_another_owner_is_refused_with_chown(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = folder / "mqtt.pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    _as_root_with_service(monkeypatch, SERVICE_UID, set())
    with pytest.raises(Invalid) as err:
        service_can_read(secret, secret=True)
    assert str(err.value).startswith(f"the service user {SERVICE_USER} cannot read {secret} (owner ")
    assert str(err.value).endswith(
        f"mode 0600), so the agent would stop at every start: run 'chown {SERVICE_USER} {secret}'"
    )


def test_service_can_read__its_own_secret_and_a_public_certificate_pass(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, cert = folder / "mqtt.pass", folder / "ca.crt"
    for p, mode in ((secret, 0o600), (cert, 0o644)):
        p.write_text("x")
        p.chmod(mode)
    _as_root_with_service(monkeypatch, secret.stat().st_uid, set())
    service_can_read(secret, secret=True)
    _as_root_with_service(monkeypatch, SERVICE_UID, set())
    service_can_read(cert, secret=False)


def test_service_can_read__folder_it_cannot_enter_is_refused(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = folder / "pki"
    inner.mkdir(mode=0o700)
    cert = inner / "ca.crt"
    cert.write_text("x")
    cert.chmod(0o644)
    _as_root_with_service(monkeypatch, SERVICE_UID, set())
    with pytest.raises(Invalid, match=rf"cannot enter {inner} \(owner .*, mode 0700\).*run 'chmod o\+x {inner}'"):
        service_can_read(cert, secret=False)


def test_service_can_read__not_judged_without_root_or_service_user(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = folder / "mqtt.pass"
    secret.write_text("x")
    secret.chmod(0o600)
    monkeypatch.setattr(files, "_service_ids", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    service_can_read(secret, secret=True)  # a developer's machine or a container: no such user


@as_root
@pytest.mark.usefixtures("service_user")
def test_load__sudo_check_config_refuses_a_secret_the_service_cannot_read(folder: Path) -> None:
    cfg = _gate(folder)  # root:root 0600: the chown of docs/install.md forgotten
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert str(err.value) == (
        f"{cfg}:5: mqtt.password_file: the service user {SERVICE_USER} cannot read {folder}/mqtt.pass "
        f"(owner root, mode 0600), so the agent would stop at every start: "
        f"run 'chown {SERVICE_USER} {folder}/mqtt.pass'"
    )
    os.chown(folder / "mqtt.pass", SERVICE_UID, SERVICE_UID)
    assert load_config(cfg).mqtt.password is not None


@as_root
@pytest.mark.usefixtures("service_user")
def test_doctor_mqtt__doctor_key_owned_by_root_is_fine(folder: Path) -> None:
    """Doctor reads its own identity under sudo (docs/install.md): the service user need not."""
    cfg = _gate(folder)
    os.chown(folder / "mqtt.pass", SERVICE_UID, SERVICE_UID)
    for name, mode in (("ca.crt", 0o644), ("doctor.crt", 0o644), ("doctor.key", 0o600)):
        (folder / name).write_text("x")
        (folder / name).chmod(mode)
    text = cfg.read_text().replace("  host: h\n", "  host: h\n  tls: {ca_file: ca.crt}\n")
    cfg.write_text(text + "doctor: {cert_file: doctor.crt, key_file: doctor.key}\n")
    tls = doctor_mqtt(load_config(cfg)).tls
    assert tls is not None
    assert tls.key_file == folder / "doctor.key"


def _as_nobody(check: Any, value: str) -> str:
    """What ``check(value)`` says to a technician without sudo (uid 65534), run in a child."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                check(value)
                msg = "OK"
            except Invalid as exc:
                msg = str(exc)
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode()
    os.waitpid(pid, 0)
    return msg


@as_root
def test_existing_file__someone_elses_secret_says_use_sudo(folder: Path) -> None:
    _gate(folder)
    secret = folder / "mqtt.pass"
    assert _as_nobody(existing_file(folder), "mqtt.pass") == (
        f"file {secret} (owner root, mode 0600) is not readable by nobody; "
        "run this command with sudo (do not loosen the file's mode)"
    )
    (folder / "inner").mkdir(mode=0o700)
    assert _as_nobody(existing_file(folder), "inner/x.pass").endswith("as nobody; run this command with sudo")


def test_existing_file__own_unreadable_file_says_chmod(folder: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a mode 0000 file")
    secret = folder / "mqtt.pass"
    secret.write_text("x")
    secret.chmod(0)
    with pytest.raises(Invalid, match=rf"not readable by its owner .*\(mode 0000\); run 'chmod u\+r {secret}'"):
        existing_file(folder)("mqtt.pass")


@as_root
def test_existing_file__the_service_itself_is_told_the_chown_not_sudo(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent under systemd (User=campus-agent) meeting a root-owned secret: its start error went to the journal
    as 'run this command with sudo', a fix the service cannot apply."""
    monkeypatch.setattr(files, "SERVICE_USER", "nobody")  # nobody stands in for the service user running
    _gate(folder)
    secret = folder / "mqtt.pass"
    assert _as_nobody(existing_file(folder), "mqtt.pass") == (
        f"file {secret} (owner root, mode 0600) is not readable by the service user nobody; "
        f"run 'chown nobody {secret}' (a secret keeps mode 600)"
    )
    (folder / "inner").mkdir(mode=0o700)
    assert _as_nobody(existing_file(folder), "inner/x.pass").endswith(
        f"as nobody; run 'chmod o+x {folder / 'inner'}' or keep the file in /etc/campus-agent"
    )
