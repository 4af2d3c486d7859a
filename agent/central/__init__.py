"""The operator's tools at the security centre: ``campus-agent monitor`` and ``ack``.

``link`` is this audience's only paho importer; ``fleet`` keeps per-device state,
``acks`` the alarm/ack desk, ``display`` turns payloads into lines a person reads.
"""
