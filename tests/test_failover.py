"""Broker failover with two real mosquitto instances."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agentproc import AgentFactory
from tests.support.broker import Broker
from tests.support.mqtt import Central
from tests.support.waiting import eventually

pytestmark = pytest.mark.broker


def test_failover__first_broker_stops_mid_stream_all_arrive_in_order_via_second(
    tmp_path: Path, agent_proc: AgentFactory, device: str
) -> None:
    b1 = Broker(tmp_path / "b1").start()
    b2 = Broker(tmp_path / "b2").start()
    c1 = Central(b1.port, topics=(f"campus/+/{device}/#",))
    c2 = Central(b2.port, topics=(f"campus/+/{device}/#",))
    try:
        agent = agent_proc(
            0,
            device=device,
            mqtt={
                "host": None,
                "port": None,
                "brokers": [{"host": "127.0.0.1", "port": b1.port}, {"host": "127.0.0.1", "port": b2.port}],
                "drain_rate_per_s": 20,
                "max_inflight": 2,
            },
        )
        c1.wait_for(lambda m: m.topic.endswith("/status") and m.doc["state"] == "online")
        for _ in range(30):  # recorded at once, drained at 20/s: the stream is still going when b1 stops
            agent.click()
        recorded = agent.wait_recorded(30)
        ids = [e["id"] for e in sorted(recorded, key=lambda e: e["seq"])]
        c1.wait_events(3, "panic")
        b1.stop()
        via_second = c2.wait_events(1, "panic", timeout=20)
        eventually(
            lambda: {d["id"] for d in c1.events("panic")} | {d["id"] for d in c2.events("panic")} >= set(ids),
            30.0,
            "every event at one broker or the other",
        )
        got1 = [d["id"] for d in c1.events("panic")]
        via_second = [d["id"] for d in c2.events("panic")]
        assert set(got1) | set(via_second) >= set(ids), "an event was lost in the failover"
        first_seen = list(dict.fromkeys(via_second))
        assert first_seen == [i for i in ids if i in set(first_seen)], "reordered through the second broker"
        assert set(ids) - set(got1) <= set(via_second)
        st = agent.status()
        assert st["status"]["link"]["broker"] == f"127.0.0.1:{b2.port}"
    finally:
        c1.close()
        c2.close()
        b1.stop()
        b2.stop()
