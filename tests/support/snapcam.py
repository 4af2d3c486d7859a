"""A loopback HTTP camera for the snapshot tests: :class:`~tests.support.camservers.HttpCamera` with a chosen JPEG.

The probe tests only need *a* JPEG; the snapshot tests need one of a given
size (a 200 kB still, one over ``max_kb``) and to know which bytes arrived.
Every mode of ``HttpCamera`` (``jpeg``, ``basic``, ``digest``, ``hang``,
``error500``, ...) works unchanged; the 200 answers carry :attr:`SnapCamera.jpeg`.
"""

from __future__ import annotations

import random

from tests.support.camservers import JPEG, HttpCamera, _Handler


def make_jpeg(size: int, seed: int = 0) -> bytes:
    """Bytes that pass as a JPEG (SOI, APP0 header ... EOI) of exactly ``size`` bytes."""
    head, tail = JPEG[:20], b"\xff\xd9"
    filler = random.Random(seed).randbytes(max(0, size - len(head) - len(tail))).replace(b"\xff", b"\x00")
    return head + filler + tail


class _SnapHandler(_Handler):
    def _send(self, code: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        if code == 200 and body == JPEG:
            body = self.server.camera.jpeg  # type: ignore[attr-defined]
        super()._send(code, ctype, body, headers)


class SnapCamera(HttpCamera):
    """``HttpCamera`` serving :attr:`jpeg` (default a 200 kB still) on every successful GET."""

    def __init__(self, mode: str = "jpeg", *, size: int = 200_000, **kw: str) -> None:
        super().__init__(mode, **kw)
        self.jpeg = make_jpeg(size)
        self._server.RequestHandlerClass = _SnapHandler
