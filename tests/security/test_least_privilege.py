"""Issue 14.5, 14.7 (root), 14.8 (umask) and 9.7 (clock sync under ProtectClock), from outside where possible."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.control_client import request
from agent.errors import ControlError
from agent.events import kernel_clock_synced
from tests.security.conftest import ROOT
from tests.support.agentproc import AgentProc, write_config
from tests.support.broker import Broker
from tests.support.waiting import eventually

ENV_NO_ROOT = {k: v for k, v in os.environ.items() if k != "CAMPUS_AGENT_ALLOW_ROOT"}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


# ---- 14.7: root ---------------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_run__as_root_is_refused_without_allow_root(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 1, device="root-1")
    r = run_cli("run", "-c", str(cfg), env=ENV_NO_ROOT)
    assert r.returncode == 2
    assert "refusing to run as root" in r.stderr
    assert "--allow-root" in r.stderr
    assert not (tmp_path / "outbox.db").exists(), "nothing may be written before the refusal"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.broker
def test_run__as_root_with_allow_root_starts(tmp_path: Path, broker: Broker) -> None:
    cfg = write_config(tmp_path, broker.port, device="root-2")
    sock = Path(__import__("yaml").safe_load(cfg.read_text())["control"]["socket"])
    p = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--allow-root", "-c", str(cfg)],
        cwd=ROOT,
        env=ENV_NO_ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        wait_answer(sock, p)
    finally:
        p.terminate()
        p.wait(15)


def wait_answer(sock: Path, p: subprocess.Popen[bytes], timeout: float = 20.0) -> dict[str, Any]:
    """The agent's first status answer; fail at once, with its stderr, if the process died."""

    def answer() -> dict[str, Any]:
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
        return request(sock, "status", timeout=1.0)

    return eventually(answer, timeout, f"the agent to answer on {sock}", retry_on=(ControlError,))


# ---- 14.8: umask ----------------------------------------------------------------------------------------


@pytest.mark.broker
def test_run__by_hand_under_umask_022_keeps_its_files_private(tmp_path: Path, broker: Broker) -> None:
    cfg = write_config(tmp_path, broker.port, device="umask-1")
    sock = Path(__import__("yaml").safe_load(cfg.read_text())["control"]["socket"])
    p = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "-c", str(cfg)],
        cwd=ROOT,
        preexec_fn=lambda: os.umask(0o022),  # noqa: PLW1509
        stderr=subprocess.PIPE,
    )
    try:
        wait_answer(sock, p)
        for name in ("outbox.db", "agent-state.json"):
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode == 0o600, f"{name} is {mode:04o}"
    finally:
        p.terminate()
        p.wait(15)


# ---- 14.5: the control path reads no secret ---------------------------------------------------------------


@pytest.mark.broker
def test_status_simulate_test_mode__read_only_the_socket_from_the_config(
    tmp_path: Path, broker: Broker, agent_proc: Callable[..., AgentProc]
) -> None:
    pw = tmp_path / "mqtt.pass"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    agent = agent_proc(
        broker.port,
        device="ctl-1",
        mqtt={"username": "ctl-1", "password_file": str(pw), "allow_plaintext_password": True},
    )
    pw.unlink()  # a technician outside the service user could not read it: here nobody can
    assert run_cli("check-config", str(agent.config)).returncode == 2  # the full read needs the secret
    r = run_cli("status", "-c", str(agent.config))
    assert r.returncode == 0, r.stderr
    assert "device   main/ctl-1" in r.stdout
    r = run_cli("test-mode", "on", "--minutes", "5", "-c", str(agent.config))
    assert r.returncode == 0, r.stderr
    r = run_cli("simulate", "press", "panic", "-c", str(agent.config))
    assert r.returncode == 0, r.stderr
    run_cli("simulate", "release", "panic", "-c", str(agent.config))


def test_status__bad_socket_path_is_still_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("control: {socket: " + "/x" * 80 + "}\n")
    r = run_cli("status", "-c", str(cfg))
    assert r.returncode == 2
    assert "control.socket: UNIX socket paths stop at 107 bytes" in r.stderr


# ---- 9.7: clock sync under ProtectClock --------------------------------------------------------------------


def _adjtimex_fails(err: int) -> Callable[[object], int]:
    def call(_tx: object) -> int:
        ctypes.set_errno(err)
        return -1

    return call


def test_clock_synced__eperm_falls_back_to_timesyncd_flag(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    assert kernel_clock_synced(_adjtimex_fails(errno.EPERM), flag) is False
    flag.touch()
    assert kernel_clock_synced(_adjtimex_fails(errno.EPERM), flag) is True


def test_clock_synced__other_errors_never_claim_a_synced_clock(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    flag.touch()
    assert kernel_clock_synced(_adjtimex_fails(errno.EINVAL), flag) is False


def test_clock_synced__the_real_call_still_answers(tmp_path: Path) -> None:
    assert kernel_clock_synced(flag=tmp_path / "absent") in (True, False)
