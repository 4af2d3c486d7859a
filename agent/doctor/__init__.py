"""The technician's self-check, ``campus-agent doctor``.

``runner`` drives the checks and prints them; ``checks`` holds the local ones
(config, pins, outbox, cameras, systemd); ``broker`` the broker path; ``mqtt`` is
this audience's only paho importer, a small probe for one round trip.
"""
