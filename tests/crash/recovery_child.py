"""Child: open a corrupt outbox and die (SIGKILL from the parent) right after it was moved aside.

Wraps ``move_aside`` wherever the outbox imports it: the real rename runs,
then the child reports ``MOVED`` and waits to be killed, so the salvage
commit never happens in this process.
"""

import importlib
import sys
import threading
from pathlib import Path

import agent.outbox_recovery as recovery

real = recovery.move_aside


def move_then_hang(path: Path, exc: Exception) -> Path:
    aside = real(path, exc)
    sys.stdout.write(f"MOVED {aside}\n")
    sys.stdout.flush()
    threading.Event().wait()  # until SIGKILL
    return aside


for name in ("agent.outbox_db", "agent.outbox"):
    try:
        module = importlib.import_module(name)
    except ImportError:
        continue
    if hasattr(module, "move_aside"):
        vars(module)["move_aside"] = move_then_hang  # the module's own namespace: what its functions look up

from agent.outbox import Outbox  # noqa: E402 - after the seam is in place

Outbox(sys.argv[1], site="main", device="crash-1")
sys.stdout.write("OPENED\n")  # never reached while the seam holds
sys.stdout.flush()
