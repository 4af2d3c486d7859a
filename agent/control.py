"""The local control socket: how ``campus-agent status`` and ``simulate`` reach the agent.

A UNIX stream socket (mode 0660, so a technicians' group can use it), one JSON
request line in, one JSON reply line out.  Each connection is served on its
own short-lived thread, at most :data:`MAX_CONNECTIONS` at once (one more
waits :data:`SLOT_WAIT_S` for a slot, then is turned away with a one-line
error), so an idle or slow client cannot make a healthy agent look dead.  Each is read and answered within an
overall deadline (:data:`REQUEST_DEADLINE_S` from accept to the last byte of
the reply, not per ``recv``), so a client that trickles a byte at a time holds
only its own thread, and only that long.

Requests that change state (all but those marked :func:`read_only`) are
carried out one at a time, so their order and replies stay sane.  A request
may carry the client's deadline (``deadline_mono``: seconds on
CLOCK_MONOTONIC, which every process on the machine shares); one that arrives
after it, or could only be started after it, is refused and changes nothing:
a ``test-mode on`` the technician was told had failed must not be switched on
later.  A request without it (an older client) keeps working.  Nothing here
is on the button's path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.closing import Closing
from agent.control_client import DEADLINE_FIELD
from agent.errors import AgentError, ControlError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024
REQUEST_DEADLINE_S = 2.0
MAX_CONNECTIONS = 8  # one thread each; one more waits SLOT_WAIT_S for a slot, then is turned away
SLOT_WAIT_S = 0.25  # a client's next request can come before the thread that answered its last one has ended
START_MARGIN_S = 0.25  # a request starts at least this long before the client's deadline, so the reply is heard
CLOSE_WAIT_S = 2.0
ACCEPT_RETRY_S = 0.5  # pause after a failed accept(): a descriptor or memory shortage lasts
ACCEPT_LOG_EVERY_S = 60.0
_STOPPING = {"ok": False, "error": "the agent is stopping; request not carried out, nothing changed"}


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
        self._active: dict[socket.socket, threading.Thread] = {}  # connection -> its thread, under _active_lock
        self._active_lock = threading.Lock()
        self._slot_freed = threading.Condition(self._active_lock)
        self._changes = threading.Lock()  # held while a request that changes state is carried out

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
            self._dispatch(conn, time.monotonic())

    def _dispatch(self, conn: socket.socket, accepted: float) -> None:
        """Serve ``conn`` on a thread of its own; or, once every slot stayed taken SLOT_WAIT_S, turn it away.

        The short wait is for a thread that has sent its reply and not yet
        ended: a script's next request, made at once, must not be refused for it.
        """
        with self._active_lock:
            self._slot_freed.wait_for(lambda: len(self._active) < MAX_CONNECTIONS, timeout=SLOT_WAIT_S)
            if self._closed.is_set():
                conn.close()
                return
            if len(self._active) < MAX_CONNECTIONS:
                worker = threading.Thread(
                    target=self._work, args=(conn, accepted + REQUEST_DEADLINE_S), name="control-conn", daemon=True
                )
                self._active[conn] = worker
                try:
                    worker.start()  # under the lock: close() never sees a thread it cannot join
                except RuntimeError as exc:  # no thread to be had: memory, or a task limit
                    del self._active[conn]
                    conn.close()
                    log.warning("control socket %s: cannot start a thread for a request (%s)", self.path, exc)
                return
        _turn_away(conn)

    def _work(self, conn: socket.socket, deadline: float) -> None:
        try:
            self._serve_one(conn, deadline)
        except Exception:
            log.exception("control request failed")
        finally:
            with self._active_lock:  # out of the table before closing: close() shuts down only open sockets
                del self._active[conn]
                self._slot_freed.notify()
            conn.close()

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
            raw = _read_line(conn, deadline)  # close() ends a read early: nothing is carried out then
            reply = _STOPPING if self._closed.is_set() else self._answer(raw, deadline)
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except (OSError, ValueError) as exc:
            log.debug("control client went away or was too slow: %s", exc)

    def _answer(self, raw: bytes, deadline: float) -> dict[str, Any]:
        parsed = self._parse(raw, deadline)
        if isinstance(parsed, str):
            return {"ok": False, "error": parsed}
        req, handler, start_by = parsed
        if time.monotonic() >= start_by:
            return _refused(req["cmd"], "it reached the agent after the deadline its client gave")
        if isinstance(handler, _ReadOnly):
            return self._call(handler, req)
        return self._change(handler, req, start_by)

    def _parse(self, raw: bytes, deadline: float) -> tuple[dict[str, Any], Handler, float] | str:
        """The request, its handler and the last moment it may start; or what is wrong with it."""
        try:
            req = json.loads(raw)
        except (ValueError, RecursionError):
            return "request is not JSON"
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return "request needs a 'cmd' string"
        handler = self._handlers.get(req["cmd"])
        if handler is None:
            return f"unknown request '{req['cmd']}'; known: {', '.join(sorted(self._handlers))}"
        # A late status changes nothing: only a change needs the margin that keeps it from landing unheard.
        margin = 0.0 if isinstance(handler, _ReadOnly) else START_MARGIN_S
        start_by = _start_by(req.pop(DEADLINE_FIELD, None), deadline, margin_s=margin)
        if start_by is None:
            return f"'{DEADLINE_FIELD}' must be a number: seconds on the monotonic clock"
        return req, handler, start_by

    def _change(self, handler: Handler, req: dict[str, Any], start_by: float) -> dict[str, Any]:
        """Carry out a request that changes state once the one before it is done, if still in time."""
        cmd = req["cmd"]
        if not self._changes.acquire(timeout=max(0.0, start_by - time.monotonic())):
            return _refused(cmd, "the agent was still busy with another change when its client's deadline came")
        try:
            if self._closed.is_set():
                return _refused(cmd, "the agent is stopping")
            if time.monotonic() >= start_by:
                return _refused(cmd, "its client's deadline came while it waited for another change")
            return self._call(handler, req)
        finally:
            self._changes.release()

    @staticmethod
    def _call(handler: Handler, req: dict[str, Any]) -> dict[str, Any]:
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
        give_up = time.monotonic() + CLOSE_WAIT_S
        if self._thread is not None:
            self._thread.join(CLOSE_WAIT_S)
        with self._active_lock:
            workers = list(self._active.values())
            for conn in self._active:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)  # wakes a read; a reply being made can still be sent
        for worker in workers:
            worker.join(max(0.0, give_up - time.monotonic()))
        self._unlink_own()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _repr_id(self) -> str:
        return str(self.path)

    def _repr_state(self) -> str:
        return "serving"


class _ReadOnly:
    """A handler that changes nothing: it runs beside others, without waiting for the change lock."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def __call__(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._handler(req)


def read_only(handler: Handler) -> Handler:
    """Mark ``handler`` as changing nothing (``status``); every other handler is carried out one at a time."""
    return _ReadOnly(handler)


def _start_by(client: object, own: float, *, margin_s: float = START_MARGIN_S) -> float | None:
    """The last moment a request may start: before the server's own deadline and, if given, the client's.

    ``margin_s`` before the client's, so the reply can still reach it.  None
    when the client's deadline is not a number.
    """
    if client is None:
        return own
    if isinstance(client, bool) or not isinstance(client, (int, float)):
        return None
    try:
        at = float(client)  # an integer past a float's range overflows here, not in the serving thread
    except OverflowError:
        return None
    if not math.isfinite(at):
        return None
    return min(own, at - margin_s)


def _refused(cmd: str, why: str) -> dict[str, Any]:
    return {"ok": False, "error": f"request '{cmd}' not carried out, nothing changed: {why}; try again"}


def _turn_away(conn: socket.socket) -> None:
    """Say why, without waiting on the client: a fresh socket's buffer takes one short line at once."""
    error = (
        f"the agent is already serving {MAX_CONNECTIONS} control connections (a stuck script, or an open "
        "`nc -U`?); nothing changed: try again in a few seconds"
    )
    with conn, contextlib.suppress(OSError):
        conn.setblocking(False)  # noqa: FBT003 - the socket API's own spelling
        conn.send(json.dumps({"ok": False, "error": error}).encode() + b"\n")


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
