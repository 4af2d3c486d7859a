"""The client half of the control socket: one request to the running agent, within one deadline.

Apart from :mod:`agent.control` (the server, inside the agent) because the
command line imports it for ``status``, ``simulate`` and ``test-mode``, and
the tools should load no more than they use.  The request carries the
client's deadline (:data:`DEADLINE_FIELD`, on CLOCK_MONOTONIC, which every
process on the machine shares): the agent refuses it, changing nothing, once
it has passed, so a request given up on here is never carried out later.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

from agent.errors import ControlError

DEADLINE_FIELD = "deadline_mono"


def request(path: Path, cmd: str, timeout: float = 5.0, *, unsure: str = "", **fields: Any) -> dict[str, Any]:
    """Send one request to a running agent and return its reply, all within ``timeout`` seconds.

    The request carries that deadline: the agent refuses it, changing
    nothing, once the deadline has passed, so a request given up on here is
    not carried out later.  ``unsure`` is added to the error when the request
    went out and no answer came (it may have been carried out all the same):
    say there how to check.

    Raises:
        ControlError: the agent is not running, not reachable, or refused the request.

    """
    deadline = time.monotonic() + timeout
    sent = False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            sent = True
            data = _exchange(s, {"cmd": cmd, **fields, DEADLINE_FIELD: deadline}, deadline)
    except (FileNotFoundError, ConnectionRefusedError):  # no file, or the one a killed agent left
        raise ControlError(
            f"no agent is listening on {path}: is it running? (systemctl status campus-agent)",
        ) from None
    except PermissionError:
        raise ControlError(f"no permission to use {path}: run as root or as a member of its group") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to the agent on {path}: {exc}{_unsure(sent, unsure)}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the agent on {path} gave no usable answer{_unsure(sent, unsure)}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"the agent on {path} gave no usable answer{_unsure(sent, unsure)}")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))
    return reply


def _exchange(s: socket.socket, req: dict[str, Any], deadline: float) -> bytes:
    """Send ``req`` and read the reply line, both before ``deadline`` (monotonic)."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # turned away before we spoke: read why
        s.sendall(json.dumps(req).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        s.settimeout(left)
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _unsure(sent: bool, hint: str) -> str:
    return f"; the request went out and may have been carried out all the same: {hint}" if sent and hint else ""
