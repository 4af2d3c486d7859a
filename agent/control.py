"""The local control socket: how ``campus-agent status`` and ``simulate`` reach the agent.

A UNIX stream socket (mode 0660, so a technicians' group can use it), one JSON
request line in, one JSON reply line out.  Requests are served one at a time,
each within an overall deadline (:data:`REQUEST_DEADLINE_S` from accept to the
last byte of the reply, not per ``recv``), so a client that trickles a byte
at a time cannot hold ``status`` for longer than that, and a stuck client
cannot pile up threads; nothing here is on the button's path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.closing import Closing
from agent.errors import AgentError, ControlError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024
REQUEST_DEADLINE_S = 2.0
ACCEPT_RETRY_S = 0.5  # pause after a failed accept(): a descriptor or memory shortage lasts
ACCEPT_LOG_EVERY_S = 60.0


class ControlServer(Closing):
    """Serves ``{"cmd": name, ...}`` requests with the registered handlers."""

    def __init__(self, path: Path, handlers: dict[str, Handler], mode: int = 0o660) -> None:
        self.path = Path(path)
        self._handlers = handlers
        self._mode = mode
        self._sock: socket.socket | None = None
        self._bound: tuple[int, int] | None = None  # (device, inode) of the socket file this server made
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._accept_failures = 0
        self._accept_logged: float | None = None

    def start(self) -> None:
        """Bind the socket (replacing a stale one) and serve in a thread.

        Only a socket nobody listens on, or a symbolic link, is removed to
        make way: a regular file or a directory at ``control.socket`` is a
        mistake in the config (it may be the outbox itself) and is left alone.

        Raises:
            ControlError: another agent is already listening there, or the path is unusable.

        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._clear_stale()
        except OSError as exc:
            raise ControlError(f"cannot open control socket {self.path}: {exc}; check control.socket") from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            st = self.path.stat()
            self._bound = (st.st_dev, st.st_ino)
            self.path.chmod(self._mode)
            sock.listen(8)
        except OSError as exc:
            sock.close()
            self._unlink_own()
            raise ControlError(f"cannot open control socket {self.path}: {exc}; check control.socket") from exc
        self._sock = sock  # blocking accept: an idle agent does not wake up for it; close() shuts it down
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if stat.S_ISSOCK(st.st_mode):
            if _is_listening(self.path):
                raise ControlError(f"another agent is already running on control socket {self.path}")
        elif not stat.S_ISLNK(st.st_mode):
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "a file that is not a socket"
            raise ControlError(
                f"control socket {self.path} is {what}; left alone: point control.socket at a path of "
                "its own (default /run/campus-agent/control.sock)"
            )
        self.path.unlink()

    def _unlink_own(self) -> None:
        """Remove the socket file only if it is still the one this server bound."""
        bound, self._bound = self._bound, None
        if bound is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == bound:
                self.path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError as exc:
                if self._closed.is_set():
                    return
                self._accept_failed(exc)
                continue
            try:
                with conn:
                    self._serve_one(conn, time.monotonic() + REQUEST_DEADLINE_S)
            except Exception:
                log.exception("control request failed; serving the next one")

    def _accept_failed(self, exc: OSError) -> None:
        """Pause before accepting again: at its descriptor limit (EMFILE) accept() fails at once, forever.

        Retrying at once would spin the control thread at 100 % CPU beside the
        inputs and the sender; the log line is throttled for the same reason.
        The pause waits on the stop event, so ``close()`` stays prompt.
        """
        self._accept_failures += 1
        now = time.monotonic()
        if self._accept_logged is None or now - self._accept_logged >= ACCEPT_LOG_EVERY_S:
            hint = (
                "; raise LimitNOFILE in the unit or look for leaked descriptors"
                if exc.errno in (errno.EMFILE, errno.ENFILE)
                else ""
            )
            log.warning(
                "control socket %s: accept failed (%s), %d time(s) since the last such line; "
                "`campus-agent status` gets no answer until it recovers%s",
                self.path,
                exc.strerror or exc,
                self._accept_failures,
                hint,
            )
            self._accept_logged, self._accept_failures = now, 0
        self._closed.wait(ACCEPT_RETRY_S)

    def _serve_one(self, conn: socket.socket, deadline: float) -> None:
        try:
            raw = _read_line(conn, deadline)
            reply = self._answer(raw)
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except (OSError, ValueError) as exc:
            log.debug("control client went away or was too slow: %s", exc)

    def _answer(self, raw: bytes) -> dict[str, Any]:
        try:
            req = json.loads(raw)
        except (ValueError, RecursionError):
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": "request needs a 'cmd' string"}
        handler = self._handlers.get(req["cmd"])
        if handler is None:
            return {"ok": False, "error": f"unknown request '{req['cmd']}'; known: {', '.join(sorted(self._handlers))}"}
        try:
            return {"ok": True, **handler(req)}
        except AgentError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control request %r failed", req["cmd"])
            return {"ok": False, "error": f"internal error: {exc}"}

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
            self._sock.close()
        if self._thread is not None:
            self._thread.join(2.0)
        self._unlink_own()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _repr_id(self) -> str:
        return str(self.path)

    def _repr_state(self) -> str:
        return "serving"


def _read_line(conn: socket.socket, deadline: float) -> bytes:
    """One request line, all of it before ``deadline`` (monotonic), however slowly it trickles."""
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete request within {REQUEST_DEADLINE_S:g} s")
        conn.settimeout(left)
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too large")
    return buf.split(b"\n", 1)[0]


def _is_listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def request(path: Path, cmd: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
    """Send one request to a running agent and return its reply.

    Raises:
        ControlError: the agent is not running, not reachable, or refused the request.

    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):  # no file, or the one a killed agent left
        raise ControlError(
            f"no agent is listening on {path}: is it running? (systemctl status campus-agent)",
        ) from None
    except PermissionError:
        raise ControlError(f"no permission to use {path}: run as root or as a member of its group") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to the agent on {path}: {exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the agent on {path} gave no usable answer") from None
    if not isinstance(reply, dict):
        raise ControlError(f"the agent on {path} gave no usable answer")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))
    return reply
