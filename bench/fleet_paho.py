"""The floor for the fleet bench: a bare paho-mqtt subscriber that does nothing but print ids.

Same subscriptions as ``campus-agent monitor`` (statuses at QoS 0, events at
QoS 1, MQTT 5, paho's own network loop), no de-duplication, no state: what
any Python consumer on paho pays before doing its own work.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def main() -> int:
    port = int(sys.argv[1])
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-paho-floor", protocol=MQTTProtocolVersion.MQTTv5)

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        if "/event/" in m.topic:
            print(f"event id {json.loads(m.payload)['id']}", flush=True)
        elif "fleet-sentinel" in m.topic:
            print("fleet-sentinel online", flush=True)

    c.on_connect = lambda cl, *_a: cl.subscribe([("campus/+/+/status", 0), ("campus/+/+/event/#", 1)])
    c.on_subscribe = lambda *_a: print("subscribed", file=sys.stderr, flush=True)
    c.on_message = on_message
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
