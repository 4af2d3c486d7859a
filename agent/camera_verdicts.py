"""What every camera probe shares: its timed verdict, and the words for a camera it could not use.

Kept apart from :mod:`agent.camprobes` (the HTTP and Pi camera probes) and
:mod:`agent.rtsp_probe` so both word their verdicts the same way, and a
still (:mod:`agent.stills`) names a refused certificate or a broken HTTP head
as the probe does.  A detail is one line a technician can act on: where the
camera did answer, the network is not blamed, since checking cables would
waste the visit.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent.errors import CameraError, printable

MAX_DETAIL = 160  # characters; the status schema's limit
USER_AGENT = "campus-edge-agent camera probe"


@dataclass(frozen=True)
class ProbeResult:
    """One probe's verdict: ``detail`` is one line a technician can act on (<= 160 chars)."""

    ok: bool
    detail: str
    elapsed_ms: int


def one_line(text: str) -> str:
    """``text`` on one line, cut to :data:`MAX_DETAIL`, with control characters escaped.

    A detail quotes what a camera sent (an RTSP status line, a Content-Type):
    it reaches ``status``, ``doctor`` and the log, and an ESC or a bidi
    override in it must not act on a technician's terminal.
    """
    one = printable(" ".join(text.split()))
    return one if len(one) <= MAX_DETAIL else one[: MAX_DETAIL - 1] + "…"


def elapsed_ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


def timed(check: Callable[[float], str]) -> ProbeResult:
    """Run ``check(t0)``: a returned string is success, a :class:`CameraError` the failure's detail."""
    t0 = time.monotonic()
    try:
        ok, detail = True, check(t0)
    except CameraError as exc:
        ok, detail = False, str(exc)
    return ProbeResult(ok=ok, detail=one_line(detail), elapsed_ms=elapsed_ms(t0))


def address_of(url: str, default_port: int) -> tuple[str, int, str]:
    """(host, port, "host:port") of a URL, without any user name."""
    parts = urlsplit(url)
    host, port = parts.hostname or "?", parts.port or default_port
    return host, port, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and all it wraps: causes, args, and urllib3's ``reason``."""
    found: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if all(e is not f for f in found):
            found.append(e)
            more = (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
            todo.extend(m for m in more if isinstance(m, BaseException))
    return found


def answer_problem(exc: BaseException, where: str) -> tuple[str, str] | None:
    """(still reason, detail) when ``exc`` shows the camera did answer, but with a certificate or bytes we refuse.

    A self-signed certificate or a head of 150 lines is no network trouble:
    sending the technician after the network would waste the visit.  The
    detail quotes what the camera sent, so it is :func:`one_line` like a
    probe's: a still's reaches its ``snapshot_failed`` event and the log as is.
    """
    causes = _causes(exc)
    for e in causes:
        if isinstance(e, ssl.SSLCertVerificationError):
            why = e.verify_message or e.reason or "not verified"
            return "unreachable", one_line(
                f"the certificate of {where} is not trusted: {why[:50]}; use http:// or a publicly trusted certificate"
            )
    cert = next((e for e in causes if isinstance(e, ssl.SSLError)), None)
    if cert is not None:
        return "unreachable", one_line(
            f"TLS with {where} failed ({cert.reason or cert}): check https:// against the camera"
        )
    odd = next((e for e in causes if _malformed_http(e)), None)
    if odd is not None:
        return "http_error", one_line(f"{where} answered, but not with a camera's HTTP: {type(odd).__name__}: {odd}")
    return None


def _malformed_http(exc: BaseException) -> bool:
    """An HTTP head broken or too large (not a dropped connection, nor a wrong port's non-HTTP answer)."""
    dropped = (http.client.RemoteDisconnected, http.client.IncompleteRead, http.client.BadStatusLine)
    return isinstance(exc, http.client.HTTPException) and not isinstance(exc, dropped)


def network_detail(exc: BaseException, host: str, where: str, timeout_s: float) -> str:
    problem = answer_problem(exc, where)
    return problem[1] if problem is not None else _reach_detail(exc, host, where, timeout_s)


def _reach_detail(exc: BaseException, host: str, where: str, timeout_s: float) -> str:
    causes = _causes(exc)
    names = {type(e).__name__ for e in causes}
    if any(isinstance(e, ConnectionRefusedError) for e in causes):
        return f"connection refused by {where}: camera off or wrong port"
    if any(isinstance(e, socket.gaierror) for e in causes):
        return f"cannot resolve {host}: check the host name in the URL and the Pi's DNS"
    if any(isinstance(e, TimeoutError) or "timed out" in str(e) for e in causes):
        return f"no answer from {where} within {timeout_s:g} s: camera off, hung or unreachable"
    if "BadStatusLine" in names:
        return f"not an HTTP answer from {where}: check the port in the URL"
    if names & {"ConnectionResetError", "RemoteDisconnected", "IncompleteRead", "ChunkedEncodingError"}:
        return f"{where} dropped the connection mid-answer: camera rebooting or overloaded"
    return f"cannot reach {where} ({type(exc).__name__}): check the network and the URL"
