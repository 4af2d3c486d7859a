"""Certificate expiry warnings and the TLS settings a technician is warned about: no broker needed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agent.certinfo import expiry_warning, not_after
from agent.config import load_config
from tests.support.agentproc import AgentProc, write_config
from tests.support.certs import Issued, device_pki

DEV = "gate-north-1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    return device_pki(tmp_path_factory.mktemp("pki"), DEV)


def test_certinfo__expiry_read_from_pem(pki: dict[str, Issued]) -> None:
    end = not_after(pki["soon"].cert_path)
    assert end == pki["soon"].cert.not_valid_after_utc.replace(microsecond=0)
    now = dt.datetime.now(dt.UTC)
    assert "expires on" in (expiry_warning(pki["soon"].cert_path, now) or "")
    assert expiry_warning(pki[DEV].cert_path, now) is None
    assert "EXPIRED" in (expiry_warning(pki["expired"].cert_path, now) or "")


def test_tls__hostname_checking_off_is_never_silent(tmp_path: Path, pki: dict[str, Issued]) -> None:
    cfg_path = write_config(
        tmp_path / "a",
        8883,
        device=DEV,
        mqtt={"host": "b", "tls": {"ca_file": str(pki["ca"].cert_path), "check_hostname": False}},
    )
    assert load_config(cfg_path).mqtt.tls.check_hostname is False  # type: ignore[union-attr]
    agent = AgentProc(cfg_path).start()
    try:
        assert any("host name checking is off" in w for w in agent.status()["status"]["warnings"])
        assert "TLS host name checking is OFF" in agent.log.read_text()
    finally:
        agent.cleanup()


def test_certs__rogue_ca_is_distinct(pki: dict[str, Issued]) -> None:
    """The rogue CA the TLS tests present is another CA, not a second copy of the real one."""
    assert pki["rogue-ca"].cert.subject != pki["ca"].cert.subject
    assert pki["rogue"].cert.issuer == pki["rogue-ca"].cert.subject
