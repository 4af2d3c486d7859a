"""Reading a ``campus-agent monitor`` process's stdout until something has been printed.

The monitor runs as a real process (what an operator's terminal sees); its
stdout is read without blocking, so a monitor that prints nothing, or dies,
fails the test with what it did print instead of hanging it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import TypeVar

from tests.support.waiting import eventually

T = TypeVar("T")


def read_until(
    proc: subprocess.Popen[bytes], found: Callable[[bytes], T | None], timeout: float, what: str
) -> tuple[T, bytes]:
    """Read ``proc``'s stdout until ``found(everything read)`` is truthy; return it and what was read."""
    assert proc.stdout is not None
    fd, buf = proc.stdout.fileno(), bytearray()
    os.set_blocking(fd, False)

    def seen() -> T | None:
        while True:  # all that is there now, so a burst of output is one poll
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            buf.extend(chunk)
        got = found(bytes(buf))
        if not got:
            assert proc.poll() is None, f"the monitor exited ({proc.returncode}) before printing {what}; got {tail()}"
        return got

    def tail() -> str:
        return repr(bytes(buf[-3000:]))

    got = eventually(seen, timeout, lambda: f"{what} to be printed; got {tail()}")
    return got, bytes(buf)
