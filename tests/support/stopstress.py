"""Child process for tests/test_stop_bounded.py: ``Agent.run()`` again and again, each stopped by a real SIGTERM.

``python -m tests.support.stopstress CONFIG RUNS SECONDS`` runs the agent in
this process's main thread (where Python runs signal handlers) up to RUNS
times or until SECONDS have passed, and prints ``runs N`` at the end.  Each
run is stopped by a SIGTERM sent either while it starts or right after
``READY=1``.  ``WATCHDOG_USEC=1`` makes the main thread's serve loop spin
(one wait per watchdog tick), so a SIGTERM often lands inside that wait: the
window where a handler taking the waited-on lock deadlocks the agent.

One process for many runs: a run costs milliseconds, not an interpreter start,
so a race that bites one stop in thirty shows up within one test.  A run whose
``run()`` has not returned :data:`BOUND_S` after its SIGTERM (systemd's
``TimeoutStopSec``) dumps every thread's stack to stderr and exits 3.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from agent.config import load_config
from agent.daemon import Agent
from agent.notify import Notifier

BOUND_S = 15.0  # systemd/campus-agent.service TimeoutStopSec
HANG_EXIT = 3


class _Systemd:
    """systemd, in a process of its own: drains the notify sockets and sends each SIGTERM.

    A SIGTERM sent from a thread of the agent's own process lands while the main
    thread waits for the interpreter lock, always between two whole Python
    calls; from another process it lands anywhere, as systemd's does.  Running
    the notify socket there too keeps this process free of threads that would
    take the interpreter lock from the main thread.

    Protocol, one line each way: ``bind PATH`` → ``bound`` (a fresh socket per
    run, so no READY=1 is left over); ``kill MODE DELAY`` sends SIGTERM DELAY
    seconds after READY=1 (MODE ``ready``) or after the line (MODE ``now``).
    """

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ntf-", dir="/tmp")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.stopstress", "--systemd", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def bind(self, run: int) -> str:
        path = os.path.join(self.dir, f"{run}.sock")
        self._say(f"bind {path}")
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "bound":
            raise RuntimeError("the systemd helper did not bind the notify socket")
        return path

    def kill(self, mode: str, delay: float) -> None:
        self._say(f"kill {mode} {delay}")

    def _say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _systemd_side(pid: int) -> None:
    """The helper process's loop (see :class:`_Systemd`)."""
    sock: socket.socket | None = None
    buf, ready, wait_ready, delay, kill_at = b"", False, False, 0.0, None
    while True:
        timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic())
        fds: list[Any] = [0] if sock is None else [0, sock]
        readable, _, _ = select.select(fds, [], [], timeout)
        if sock is not None and sock in readable:
            got = sock.recv(4096)  # always read: an undrained socket blocks the agent's next notify
            ready = ready or b"READY=1" in got.split(b"\n")
        if 0 in readable:
            chunk = os.read(0, 4096)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                word, *args = line.decode().split()
                if word == "bind":
                    if sock is not None:
                        sock.close()
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.bind(args[0])
                    ready, wait_ready, kill_at = False, False, None
                    print("bound", flush=True)
                else:
                    wait_ready, delay = args[0] == "ready", float(args[1])
                    kill_at = None if wait_ready else time.monotonic() + delay
        if wait_ready and ready:
            wait_ready, kill_at = False, time.monotonic() + delay
        if kill_at is not None and time.monotonic() >= kill_at:
            kill_at = None
            os.kill(pid, signal.SIGTERM)


def _terminate(run: int, at_ready: bool, systemd: _Systemd, returned: threading.Event, before: object) -> None:
    """Have the SIGTERM sent, then wait for ``run()`` to return; on a hang, show every stack and end the process."""
    while signal.getsignal(signal.SIGTERM) is before:  # run() has not put its handler in yet
        time.sleep(0.001)
    # after READY=1: spread over the serve loop; otherwise somewhere in start(), or just after
    systemd.kill("ready" if at_ready else "now", random.uniform(0, 0.02 if at_ready else 0.05))
    if not returned.wait(BOUND_S):
        sys.stderr.write(f"stopstress: run {run} ({'after READY' if at_ready else 'while starting'}) still ")
        sys.stderr.write(f"running {BOUND_S:g} s after SIGTERM; every thread's stack:\n")
        faulthandler.dump_traceback(all_threads=True)
        os._exit(HANG_EXIT)


def main(argv: list[str]) -> int:
    if argv[0] == "--systemd":
        _systemd_side(int(argv[1]))
        return 0
    cfg = load_config(argv[0])
    runs, seconds = int(argv[1]), float(argv[2])
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    end = time.monotonic() + seconds
    systemd = _Systemd()
    done = 0
    try:
        while done < runs and time.monotonic() < end:
            at_ready = done % 8 != 7  # mostly after READY=1, where the deadlock was; some while starting
            returned = threading.Event()
            agent = Agent(cfg, notifier=Notifier({"NOTIFY_SOCKET": systemd.bind(done), "WATCHDOG_USEC": "1"}))
            before = signal.getsignal(signal.SIGTERM)
            killer = threading.Thread(target=_terminate, args=(done, at_ready, systemd, returned, before), daemon=True)
            killer.start()
            try:
                agent.run()
            finally:
                returned.set()
                killer.join()
            done += 1
    finally:
        systemd.close()
    print(f"runs {done}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
