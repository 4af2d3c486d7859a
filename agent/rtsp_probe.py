"""The RTSP camera probe: one ``OPTIONS`` over a plain socket, and the camera's login when it asks for one.

Kept apart from :mod:`agent.camprobes` because it needs neither requests nor
picamera2: the probe speaks just enough RTSP to see the streaming server
answer, without pulling any video, and answers a 401 once with the camera's
login (Digest MD5 when offered, else Basic, RFC 2617), built here since no
library is loaded for it.  :mod:`agent.camprobes` re-exports
:func:`probe_rtsp`; scheduling is :mod:`agent.cameras`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import time
from urllib.parse import urlsplit, urlunsplit

from agent.camera_verdicts import USER_AGENT, ProbeResult, address_of, elapsed_ms, network_detail, timed
from agent.config.model import CameraConfig
from agent.errors import CameraError

_RTSP_MAX_HEAD = 4096  # bytes


def probe_rtsp(cfg: CameraConfig) -> ProbeResult:
    """Send RTSP ``OPTIONS`` over a plain socket and expect ``RTSP/1.0 200``, within ``timeout_s`` seconds a try.

    This proves the camera's streaming server answers, without pulling any
    video.  A 401 is answered once with the camera's login (Digest MD5 when the
    camera offers it, else Basic), so a try more: at most ``2 * timeout_s``.
    The password goes to the camera only, never into a detail or a log.
    """
    url = cfg.url or ""
    host, port, where = address_of(url, 554)
    parts = urlsplit(url)
    target = urlunsplit(("rtsp", parts.netloc.rpartition("@")[2], parts.path or "/", parts.query, ""))

    def check(t0: float) -> str:
        head = _rtsp_options(host, port, where, target, cseq=1, login=None, timeout_s=cfg.timeout_s)
        status = _rtsp_status(head, where)
        if " 401" in status and cfg.username is not None:
            login = _rtsp_login(cfg, _rtsp_challenges(head), target)
            if login is None:
                offered = ", ".join(sorted({c[0] for c in _rtsp_challenges(head)})) or "none"
                raise CameraError(
                    f"{status[:60]} from {host}: it asks for a login the probe cannot send (offers {offered[:30]})"
                )
            status = _rtsp_status(
                _rtsp_options(host, port, where, target, cseq=2, login=login, timeout_s=cfg.timeout_s), where
            )
        if status.split()[1:2] != ["200"]:
            raise CameraError(f"{status[:60]} from {host}: {_rtsp_hint(status, has_login=cfg.username is not None)}")
        return f"{status[:60]} in {elapsed_ms(t0)} ms"

    return timed(check)


def _rtsp_hint(status: str, *, has_login: bool) -> str:
    if " 401" not in status:
        return "check the stream path in the URL"
    if has_login:
        return "login refused; check the camera's username and password_file"
    return "the camera wants a login even for OPTIONS; set username and password_file"


def _rtsp_options(
    host: str, port: int, where: str, target: str, *, cseq: int, login: str | None, timeout_s: float
) -> bytes:
    """One ``OPTIONS`` exchange on its own connection: the answer's head, all within ``timeout_s`` seconds."""
    t0 = time.monotonic()
    auth = f"Authorization: {login}\r\n" if login else ""
    request = f"OPTIONS {target} RTSP/1.0\r\nCSeq: {cseq}\r\n{auth}User-Agent: {USER_AGENT}\r\n\r\n".encode()
    head = b""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(request)
            while b"\r\n\r\n" not in head and len(head) < _RTSP_MAX_HEAD:
                sock.settimeout(max(0.001, t0 + timeout_s - time.monotonic()))
                chunk = sock.recv(1024)
                if not chunk:
                    break
                head += chunk
    except OSError as exc:
        if not head:  # once the status line is in, a reset or a stall still leaves enough to judge
            raise CameraError(network_detail(exc, host, where, timeout_s)) from None
    if not head:
        raise CameraError(f"{where} closed the connection without answering: not an RTSP server? check the port")
    return head


def _rtsp_status(head: bytes, where: str) -> str:
    status = head.split(b"\r\n", 1)[0].decode("latin-1").strip()
    if not status.startswith("RTSP/1.0 "):
        raise CameraError(f"not an RTSP answer from {where} (got {status[:40]!r}): check the port in the URL")
    return status


_AUTH_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def _rtsp_challenges(head: bytes) -> list[tuple[str, dict[str, str]]]:
    """Each ``WWW-Authenticate`` of an RTSP head: (scheme in lower case, its parameters with lower-case names)."""
    found = []
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() != "www-authenticate" or not value.strip():
            continue
        scheme, _, rest = value.strip().partition(" ")
        params = {m[1].lower(): m[3] if m[2] is None else m[2].replace("\\", "") for m in _AUTH_PARAM.finditer(rest)}
        found.append((scheme.lower(), params))
    return found


def _rtsp_login(cfg: CameraConfig, challenges: list[tuple[str, dict[str, str]]], target: str) -> str | None:
    """The ``Authorization`` value answering the camera's challenge (Digest MD5 first), or None if none fits."""
    user = cfg.username or ""
    secret = cfg.password.reveal() if cfg.password is not None else ""
    for scheme, params in challenges:
        if scheme == "digest" and params.get("algorithm", "MD5").upper() == "MD5" and "nonce" in params:
            return _digest(user, secret, params, target)
    if any(scheme == "basic" for scheme, _ in challenges):
        return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
    return None


def _digest(user: str, secret: str, params: dict[str, str], uri: str) -> str:
    """RFC 2617 Digest (MD5, ``qop=auth`` when offered) for ``OPTIONS uri``."""

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    realm, nonce = params.get("realm", ""), params["nonce"]
    ha1, ha2 = md5(f"{user}:{realm}:{secret}"), md5(f"OPTIONS:{uri}")
    fields = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    if "auth" in [q.strip() for q in params.get("qop", "").split(",")]:
        cnonce = os.urandom(8).hex()
        response = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        fields += ["qop=auth", "nc=00000001", f'cnonce="{cnonce}"']
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    fields.append(f'response="{response}"')
    if "opaque" in params:
        fields.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(fields)
