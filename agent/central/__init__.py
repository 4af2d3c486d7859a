"""The operator's tools at the security centre: ``campus-agent monitor`` and ``ack``.

``link`` is this audience's only paho importer (``settings``: where and how
it connects); ``fleet`` keeps per-device state (``deadlines``: when each
heartbeat is due; ``heartbeats``: when a status was sent and how often a
device reports; ``fleetevents``: events de-duplicated and checked), ``acks`` the alarm/ack desk, ``board`` the header,
attention list and full table, ``display`` turns payloads into escaped lines
a person reads, ``photos`` checks alarm photos and saves them on their own
thread (``photofiles``: the safe write under ``--snapshots DIR``),
``session`` is the print loop (``screen``: every line it writes, scrubbed on
the way out; ``keyboard``: the keys it acts on) and ``monitor`` the command
line.
"""
