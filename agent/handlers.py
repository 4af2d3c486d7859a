"""What the agent answers: the control socket's requests and the centre's commands.

:mod:`agent.daemon` owns the parts and their start/stop order; this module is
the thin layer that turns a request from outside (``campus-agent status`` /
``simulate`` / ``test-mode`` over the Unix socket, or a command from the centre
over MQTT) into calls on those parts.  It reads the parts through the
:class:`~agent.daemon.Agent` at call time, so it can be built before they
exist.  The :class:`~agent.commands.CommandHandler` is imported and built at
the first command (memory: most posts hear a command rarely).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.control import read_only
from agent.errors import CommandError

if TYPE_CHECKING:
    from agent.commands import CommandHandler
    from agent.daemon import Agent

log = logging.getLogger(__name__)


class Handlers:
    """The control socket's handlers and the centre's command dispatch for one :class:`Agent`."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self.commands: CommandHandler | None = None

    # ---- the control socket -----------------------------------------------------------

    def control(self) -> dict[str, Any]:
        """The handlers :class:`~agent.control.ControlServer` dispatches to, by request name.

        Only ``status`` runs beside the others; a change waits for the one before it.
        """
        return {
            "status": read_only(self._ctl_status),
            "simulate": self._ctl_simulate,
            "test_mode": self._ctl_test_mode,
        }

    def _ctl_status(self, _req: dict[str, Any]) -> dict[str, Any]:
        agent = self._agent
        assert agent.uplink is not None
        link = agent.uplink.state()
        return {
            "status": agent.status_doc(),
            "link": {
                "connected": link.connected,
                "broker": link.broker,
                "last_error": link.last_error,
                "inflight": link.inflight,
                "published": link.published,
                "delivered": link.delivered,
                "refused": link.refused,
            },
            "recent_events": agent.recorder.recent() if agent.recorder is not None else [],
            "config": str(agent.cfg.source),
        }

    def _ctl_simulate(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self._agent.inputs is not None
        name, action = req.get("input"), req.get("action")
        if not isinstance(name, str) or action not in ("press", "release"):
            raise CommandError("simulate needs an input name and 'press' or 'release'")
        self._agent.inputs.simulate(name, active=action == "press")
        return {"input": name, "action": action}

    def _ctl_test_mode(self, req: dict[str, Any]) -> dict[str, Any]:
        from agent.cmdparse import MAX_MINUTES  # noqa: PLC0415 - not the command handler's modules: only the limit

        minutes = req.get("minutes")
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not 0 <= minutes <= MAX_MINUTES:
            raise CommandError(f"test mode takes minutes 0-{MAX_MINUTES} (0 ends it)")
        until = self._set_test_mode(float(minutes), "")
        self._agent.save_state()  # before the reply: a restart from now on resumes it (or not, once it is off)
        return {"test_mode_until": until}

    def _cmd_test_mode(self, minutes: int) -> str | None:
        """The centre's ``test_mode``, on paho's network thread: set in memory; the file is saved elsewhere.

        Writing the state file here (two fsyncs, and ``_state_lock``) would hold
        paho's thread, and with it the PUBLISH of an alarm pressed meanwhile,
        for as long as the SD card takes.  The reply waits for the save
        (:meth:`_save_then`): a restart before it would undo what it says.
        """
        return self._set_test_mode(float(minutes), " (command from the centre)")

    def _save_then(self, send: Callable[[], None]) -> None:
        """On the agent's chores thread: save test mode's new end, then send the command's reply."""
        try:
            self._agent.save_state()
        except Exception:
            log.exception("saving test mode's end failed; the reply goes all the same (the change holds until a stop)")
        send()

    def _set_test_mode(self, minutes: float, origin: str) -> str | None:
        """Set test mode in memory (the caller has the state file saved); never blocks."""
        until = self._agent.test_mode.set(float(minutes))
        log.info("test mode %s%s", f"on until {until}" if until else "off", origin)
        self._agent.heartbeat.changed()
        return until

    # ---- commands from the centre: the handler is built at the first one ----------------------

    def command(self, name: str, payload: bytes, *, retained: bool = False) -> None:
        """One command, on paho's thread (the only caller); the first one imports and builds the handler."""
        agent = self._agent
        if self.commands is None:
            from agent.commands import CommandHandler  # noqa: PLC0415 - memory; never on the alarm path

            self.commands = CommandHandler(
                on_ack=self._cmd_ack,
                on_ping=agent.heartbeat.changed,
                on_test_mode=self._cmd_test_mode,
                reply=lambda doc: agent.uplink.publish("reply", doc) if agent.uplink is not None else None,
                rate_per_min=agent.cfg.commands.rate_per_min,
                defer_reply=lambda send: agent.chores.run_soon(lambda: self._save_then(send)),
                wall=agent.clock.wall,
                mono=agent.clock.mono,
            )
        self.commands.handle(name, payload, retained=retained)

    def command_counters(self) -> dict[str, int]:
        """Accepted and refused commands so far, for the status document."""
        return {"accepted": 0, "rejected": 0} if self.commands is None else self.commands.counters()

    def _cmd_ack(self, event_id: str) -> bool:
        # paho's thread: a snapshot of the recent events, nothing that blocks
        agent = self._agent
        shown = agent.indicators is not None and agent.indicators.acknowledged(event_id)
        known = shown or (agent.recorder is not None and agent.recorder.knows(event_id))
        if known:
            log.info("the centre acknowledged event %s", event_id)
        return known
