"""Child: put events into the real Outbox forever; print each id only after put() returned."""

import random
import sys

from agent.events import Clock, Event, EventType
from agent.outbox import Outbox

clock = Clock(synced=lambda: False, boot_id="crash-test")
ob = Outbox(sys.argv[1], site="main", device="crash-1", max_mb=2000)  # no eviction: this test is about kills
rng = random.Random(int(sys.argv[2]))
out = sys.stdout
out.write("READY\n")
out.flush()
kinds = [EventType.PANIC, EventType.PANIC, EventType.TAMPER, EventType.CAMERA_FAULT]
while True:
    kind = rng.choice(kinds)
    event = Event.create(clock, kind, "panic", data={"pad": "x" * rng.randint(0, 2000)})
    seq = ob.put(event)
    out.write(f"OK {event.id} {seq}\n")
    out.flush()
