"""The running agent as its own status shows it: itself, its link, its outbox, its inputs and its warnings.

Doctor leaves a running agent's pins alone and reads its status instead, so
what the status admits (``warnings``: agent/notices.py, agent/health.py) must
become doctor lines too: an agent holding events in memory answers "running,
connected" while a power cut would lose them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.doctor.checks import Check, Level

_BACKLOG_WARN_S = 60.0
_LOG = "journalctl -u campus-agent -n 50"
# Status sections whose loss hides nothing about an alarm's way out (agent/health.py names them).
_SIDE_SECTIONS = frozenset({"system", "cameras", "photos", "link.stats", "test_mode", "outputs", "commands"})
_SECTION = re.compile(r"(?:cannot read: |\), )([a-z_.]+) \(")


def _same_file(a: str | None, b: Path) -> bool:
    """True unless ``a`` (the running agent's config path) surely names another file than ``b``."""
    try:
        return a is None or Path(a).resolve() == b.resolve()
    except OSError:
        return True


def _link_checks(broker: object, link: dict[str, Any]) -> list[Check]:
    """The connected agent's link as its status shows it: MQTT version, retain, commands."""
    proto = f" (MQTT {link['protocol']})" if link.get("protocol") else ""
    found = [Check.ok(f"agent connected to broker {broker}{proto}")]
    if link.get("retain") is False:
        found.append(
            Check.warn(
                "agent: retain unavailable on this broker; status and will are sent without retain",
                "ask the broker's admin to allow retain (mosquitto: retain_available true)",
            )
        )
    cmds = link.get("commands") or {}
    if cmds.get("available") is False and cmds.get("reason") != "subscribing":  # a fresh connection is no fault
        found.append(
            Check.warn(
                f"agent: commands unavailable ({cmds.get('reason')}); events are still delivered",
                "check the broker's ACL and log for the cmd/+ subscription",
            )
        )
    return found


def _outbox_check(ob: dict[str, Any]) -> Check:
    pending, dropped, age = int(ob.get("pending", 0)), int(ob.get("dropped", 0)), ob.get("oldest_age_s")
    depth = f"agent outbox: {pending} events waiting" + (f", oldest {age:.0f} s" if age is not None else "")
    if ob.get("disk_low"):
        return Check.warn(f"{depth}; disk nearly full, outbox capped", "free disk space on the outbox's disk")
    if dropped:
        return Check.warn(
            f"{depth}; {dropped} non-alarm events dropped for lack of room", "free disk space or raise outbox.max_mb"
        )
    if pending and age is not None and age > _BACKLOG_WARN_S:
        return Check.warn(depth, "they go out once the broker link works: see the broker lines")
    return Check.ok(depth)


def check_running_agent(reply: dict[str, Any], cfg: Config) -> list[Check]:
    """The running agent's own view: itself, its broker link, its outbox backlog and its warnings."""
    st, link = reply.get("status", {}), reply.get("link", {})
    agent = st.get("agent", {})
    found = [Check.ok(f"agent running: version {agent.get('version', '?')}, up {agent.get('uptime_s', '?')} s")]
    same = _same_file(reply.get("config"), cfg.source)
    if not same:
        found.append(
            Check.warn(
                f"the running agent uses {reply.get('config')}, not {cfg.source}",
                f"run doctor -c {reply.get('config')}, or restart the agent with this file",
            )
        )
    if link.get("connected"):
        found.extend(_link_checks(link.get("broker"), st.get("link", {})))
    else:
        found.append(
            Check.fail(
                f"agent not connected to a broker: {link.get('last_error') or 'connecting'}",
                "see the broker lines below; presses are kept in the outbox meanwhile",
            )
        )
    found.append(_outbox_check(st.get("outbox", {})))
    found.extend(check_warnings(st.get("warnings") or [], cfg, same_config=same))
    return found


def check_warnings(warnings: list[str], cfg: Config, *, same_config: bool = True) -> list[Check]:
    """One line per warning of the agent's status, FAIL where an alarm is at risk.

    The certificate's expiry is left to doctor's own client certificate line
    when the agent runs this config: that line reads the same file, and fresher.
    """
    found = []
    for text in warnings:
        if same_config and text.startswith("client certificate "):
            continue
        level, todo = _judge(text, cfg)
        found.append(Check(level, f"agent warns: {text}", todo))
    return found


def _judge(text: str, cfg: Config) -> tuple[Level, str]:
    """How bad one status warning is and what fixes it; the texts are agent/notices.py's and agent/health.py's."""
    if "events held in memory" in text:
        return Level.FAIL, (
            f"they are lost if the agent stops or the power fails: check the outbox's disk "
            f"({cfg.outbox.path.parent}: df -h, dmesg), then read why: {_LOG}"
        )
    if text.startswith("status incomplete"):
        level = Level.WARN if _side_sections_only(text) else Level.FAIL
        return level, f"the agent cannot read part of itself: read why (a traceback per section): {_LOG}"
    if text.startswith("LED/buzzer"):
        return Level.WARN, f"alarms are still sent, the presser gets no feedback: check the LED/buzzer wiring; {_LOG}"
    if text.startswith("client certificate "):
        return Level.WARN, "renew it (mqtt.tls.cert_file), then restart the agent"
    if "(mqtt." in text:  # security the config weakens on purpose
        return Level.WARN, "lab use only: change it in the agent's config file, then restart the agent"
    return Level.WARN, f"see campus-agent status and the log: {_LOG}"


def _side_sections_only(text: str) -> bool:
    """True when every section a "status incomplete" warning names is outside an alarm's way out.

    A text cut at the status's length limit (it ends in "…") may hide further sections: then False.
    """
    names = _SECTION.findall(text)
    return bool(names) and text.endswith(")") and set(names) <= _SIDE_SECTIONS


def check_held_pins(reply: dict[str, Any], cfg: Config) -> list[Check]:
    """The inputs as the agent that holds their pins sees them; a configured input it does not report FAILs."""
    inputs: dict[str, Any] = reply.get("status", {}).get("inputs") or {}
    pins = {i.name: i.pin for i in cfg.inputs}
    found = []
    if inputs or not cfg.inputs:
        shown = ", ".join(f"{name} {i.get('state')} (GPIO{pins.get(name, '?')})" for name, i in inputs.items())
        found.append(Check.ok(f"GPIO held by the running agent: {shown or 'no inputs'}"))
    found += [
        Check.fail(
            f"input {name} (GPIO{pin}) is configured but the running agent does not report it",
            f"the agent cannot read its inputs, or runs another config: see the agent lines above; {_LOG}",
        )
        for name, pin in pins.items()
        if name not in inputs
    ]
    for name, i in inputs.items():
        if i.get("state") == "fault":
            found.append(
                Check.warn(
                    f"input {name} reports a fault (stuck, or an open loop)",
                    "check the button for a jam and the wiring for a cut or loose wire",
                )
            )
        elif i.get("state") == "active":
            found.append(
                Check.warn(
                    f"input {name} is active right now (pressed, or its loop is open)",
                    "release it; if nobody presses it, check the wiring",
                )
            )
    return found
