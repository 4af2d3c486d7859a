"""Can the press's flush overlap the work after it?  One block written, then Python work, three ways.

    .venv/bin/python bench/syncoverlap.py [--rounds 200] [--gap-ms 25] [--workdir /var/tmp]

``sequential``: ``pwrite``, ``fdatasync``, then the work (what the agent does:
nothing after the flush may reach the wire before it returns).  ``thread``: a
Python thread waiting on a lock does the ``fdatasync`` while this one works.
``aio``: glibc's ``aio_fsync`` through ctypes (a C thread, no interpreter
lock) does it.  ``work``: the work alone.  Every round runs each once, the
order fixed, ``--gap-ms`` of idleness before each, as between presses.  Prints
the median and p90 of each in µs.  A profiling aid for issue 11 (README,
Performance), not a figure of ``make bench``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

BLOCK = 4096
BLOCKS = 64
_EINPROGRESS = 115
_SIGEV_NONE = 1
_AIOCB_SIGEV_NOTIFY = 44  # struct aiocb on 64-bit Linux: aio_sigevent at 32, sigev_notify 12 bytes into it


def work() -> None:
    """About what the agent runs between its flush and the socket (the recent list, window, paho)."""
    d = {str(i): json.dumps({"a": i, "b": [i, i + 1]}) for i in range(40)}
    assert d


def _ways(fd: int) -> dict[str, Callable[[int], None]]:
    """The four contenders on the open file ``fd`` (its helper threads are daemons)."""
    block = b"x" * BLOCK
    go, done = threading.Lock(), threading.Lock()
    go.acquire()
    done.acquire()

    def syncer() -> None:
        while True:
            go.acquire()
            os.fdatasync(fd)
            done.release()

    threading.Thread(target=syncer, daemon=True).start()
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    cb = ctypes.create_string_buffer(256)
    ctypes.c_int.from_buffer(cb, 0).value = fd
    ctypes.c_int.from_buffer(cb, _AIOCB_SIGEV_NOTIFY).value = _SIGEV_NONE
    cbs = (ctypes.c_void_p * 1)(ctypes.addressof(cb))

    def sequential(i: int) -> None:
        os.pwrite(fd, block, BLOCK * (i % BLOCKS))
        os.fdatasync(fd)
        work()

    def in_thread(i: int) -> None:
        os.pwrite(fd, block, BLOCK * (i % BLOCKS))
        go.release()
        work()
        done.acquire()

    def in_aio(i: int) -> None:
        os.pwrite(fd, block, BLOCK * (i % BLOCKS))
        if libc.aio_fsync(os.O_DSYNC, cb) != 0:
            raise OSError(ctypes.get_errno(), "aio_fsync")
        work()
        while libc.aio_error(cb) == _EINPROGRESS:
            libc.aio_suspend(cbs, 1, None)
        if libc.aio_return(cb) != 0:
            raise OSError(ctypes.get_errno(), "aio_fsync")

    return {"sequential": sequential, "thread": in_thread, "aio": in_aio, "work": lambda _i: work()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--gap-ms", type=float, default=25.0)
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = p.parse_args()
    path = args.workdir / f"campus-syncoverlap-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.pwrite(fd, bytes(BLOCK * BLOCKS), 0)
        os.fsync(fd)
        ways = _ways(fd)
        times: dict[str, list[float]] = {k: [] for k in ways}
        for r in range(args.rounds):
            for name, fn in ways.items():
                time.sleep(args.gap_ms / 1e3)
                t = time.perf_counter_ns()
                fn(r)
                times[name].append((time.perf_counter_ns() - t) / 1e3)
    finally:
        os.close(fd)
        path.unlink()
    print(f"{'way':12} {'median µs':>10} {'p90 µs':>10}")
    for name, v in times.items():
        v.sort()
        print(f"{name:12} {statistics.median(v):10.0f} {v[int(len(v) * 0.9)]:10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
