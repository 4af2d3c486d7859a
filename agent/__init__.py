"""campus-edge-agent: panic buttons and camera health from a Raspberry Pi to MQTT."""

__version__ = "0.1.0"
