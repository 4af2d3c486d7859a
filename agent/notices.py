"""The status document's ``warnings``: every degraded mode a technician should see, one line each.

Gathered here rather than in the daemon so each source stays one line: hardware
that could not start, an LED or buzzer pin that fails at run time (the status
would otherwise show the pattern meant while the presser sees or hears nothing,
or the wrong thing), a client certificate close to expiry (re-read at most
hourly, so a renewed file is picked up), events held in memory, and security the
config deliberately weakened.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from agent.config.model import Config
from agent.errors import ConfigError

log = logging.getLogger(__name__)

CERT_RECHECK_S = 3600.0


class Notices:
    """Collects the warnings; :meth:`lines` is the status source (any thread)."""

    def __init__(
        self,
        cfg: Config,
        *,
        wall: Callable[[], float],
        mono: Callable[[], float],
        held: Callable[[], int] = lambda: 0,
        outputs: Callable[[], list[str]] = list,
    ) -> None:
        """``held`` counts events held in memory; ``outputs`` names failing outputs (``Indicators.failing``)."""
        self.cfg = cfg
        self.hardware: list[str] = []
        self.held = held
        self.outputs = outputs
        self._wall = wall
        self._mono = mono
        self._cert_checked: float | None = None
        self._cert_note: str | None = None

    def cert_warning(self) -> str | None:
        """Client certificate expiry, re-read at most hourly."""
        tls = self.cfg.mqtt.tls
        if tls is None or tls.cert_file is None:
            return None
        now = self._mono()
        if self._cert_checked is None or now - self._cert_checked >= CERT_RECHECK_S:
            from agent.certinfo import expiry_warning  # noqa: PLC0415 - only devices with a client certificate

            try:
                warning = expiry_warning(tls.cert_file, dt.datetime.fromtimestamp(self._wall(), dt.UTC))
            except ConfigError as exc:
                warning = str(exc)
            if warning and warning != self._cert_note:
                log.warning("%s", warning)
            self._cert_note = warning
            self._cert_checked = now  # only now: a status asked meanwhile (control thread) reads the file too
        return self._cert_note

    def lines(self) -> list[str]:
        """Most urgent first: the status keeps only the first few."""
        held = self.held()
        out = [f"{held} events held in memory: outbox cannot write"] if held else []  # alarms at risk: first
        out.extend(self.hardware)
        failing = self.outputs()
        if failing:
            out.append(f"LED/buzzer pin failing: {', '.join(failing)} cannot be switched (see the log)")
        cert = self.cert_warning()
        if cert:
            out.append(cert)
        out.extend(self.cfg.warnings)  # weakened security the config asks for (agent/config/model.py)
        return out
