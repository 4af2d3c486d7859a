"""Brokers that misbehave in ways mosquitto cannot act: a TCP-only port and an MQTT-aware gate proxy.

``SilentBroker`` accepts TCP and never answers (a half-dead cluster node), or
hangs up at the CONNECT (a load balancer in front of a dead broker).

``GateProxy`` sits in front of a real mosquitto and reads the client's MQTT
packets (fixed header and remaining length only).  Per connection it can act
as a broker that speaks no MQTT 5 (``v5="close"``: close the socket at an MQTT 5
CONNECT, as RabbitMQ 3.10 does; ``v5="silent"``: neither answer nor close, as
amqtt 0.12 does at an MQTT 5 CONNECT with a will; ``v5="0x84"``: answer CONNACK 0x84;
``v5="0x01"``: answer a 3.1.1-form CONNACK 0x01), as one whose sessions die at
a SUBSCRIBE (``subscribe="kill"``, as a RabbitMQ node does when the
subscription queue's home node is down), and as one whose ACL refuses it
(``subscribe="refuse"``: a SUBACK failure, which mosquitto 2.0's acl_file never
sends).  Everything else is passed through unchanged, both ways.  All sockets are on 127.0.0.1; ``close()`` stops them all.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self

_CONNECT, _SUBSCRIBE = 0x10, 0x80
_CONNACK = {"0x84": b"\x20\x03\x00\x84\x00", "0x01": b"\x20\x02\x00\x01"}


class _Server:
    """A loopback listener with one thread per connection; ``close()`` ends everything it started."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._spawn(self._accept_loop)

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(t)
        t.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._track(conn)
            self._spawn(self.handle, conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in threads:
            t.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SilentBroker(_Server):
    """Accepts TCP and never sends a byte (no CONNACK, ever); with ``hang_up`` it closes at the CONNECT."""

    def __init__(self, *, hang_up: bool = False) -> None:
        self.hang_up = hang_up
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(4096) and not self.hang_up:
                pass
            conn.close()

    def __repr__(self) -> str:
        return f"<SilentBroker 127.0.0.1:{self.port} hang_up={self.hang_up} accepted={self.accepted}>"


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _read_packet(sock: socket.socket) -> tuple[int, bytes]:
    """One MQTT packet: (first byte, the whole packet as bytes)."""
    head = _read_exact(sock, 1)
    length, shift, raw = 0, 0, b""
    while True:
        b = _read_exact(sock, 1)
        raw += b
        length |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    return head[0], head + raw + _read_exact(sock, length)


def _protocol_level(packet: bytes) -> int:
    """The protocol level byte of a CONNECT: 4 is 3.1.1, 5 is MQTT 5."""
    i = 1
    while packet[i] & 0x80:
        i += 1
    i += 1  # past the remaining length
    name_len = int.from_bytes(packet[i : i + 2], "big")
    return packet[i + 2 + name_len]


class GateProxy(_Server):
    """A pass-through proxy to ``upstream_port`` that refuses MQTT 5 or kills sessions at SUBSCRIBE."""

    def __init__(self, upstream_port: int, *, v5: str | None = None, subscribe: str | None = None) -> None:
        self.upstream_port = upstream_port
        self.v5 = v5  # None (pass), "close", "silent", "0x84" or "0x01"
        self.subscribe = subscribe  # None (pass), "kill" or "refuse"
        self.connects: list[int] = []  # protocol level of every CONNECT seen, in order
        self.subscribes = 0  # SUBSCRIBEs killed or refused
        super().__init__()

    def drop_all(self) -> None:
        """Close every connection (a network cut); new connections are still accepted."""
        with self._lock:
            socks, self._socks = list(self._socks), []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def handle(self, conn: socket.socket) -> None:
        try:
            first, packet = _read_packet(conn)
            level = _protocol_level(packet) if first & 0xF0 == _CONNECT else 0
            self.connects.append(level)
            if level == 5 and self.v5 is not None:
                if self.v5 == "silent":  # amqtt 0.12 at a will it misreads: no answer, no close
                    while conn.recv(4096):
                        pass
                elif self.v5 in _CONNACK:
                    conn.sendall(_CONNACK[self.v5])
                conn.close()
                return
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            up.settimeout(None)
            self._track(up)
            up.sendall(packet)
        except (OSError, ConnectionError, IndexError):
            conn.close()
            return
        to_client = threading.Lock()  # both directions write to the client when a SUBACK is forged
        self._spawn(self._pipe, up, conn, to_client, level, False)
        self._pipe(conn, up, to_client, level, True)

    def _pipe(
        self, src: socket.socket, dst: socket.socket, to_client: threading.Lock, level: int, from_client: bool
    ) -> None:
        """Copy whole packets ``src`` → ``dst``, acting on the client's SUBSCRIBE."""
        try:
            while True:
                first, packet = _read_packet(src)
                if from_client and first & 0xF0 == _SUBSCRIBE and self.subscribe is not None:
                    self.subscribes += 1
                    if self.subscribe == "kill":
                        break
                    i = 2 if packet[1] < 0x80 else 3  # past a 1- or 2-byte remaining length
                    mid = packet[i : i + 2]
                    refusal = b"\x90\x04" + mid + b"\x00\x87" if level == 5 else b"\x90\x03" + mid + b"\x80"
                    with to_client:
                        src.sendall(refusal)
                    continue
                if from_client:
                    dst.sendall(packet)
                else:
                    with to_client:
                        dst.sendall(packet)
        except (OSError, ConnectionError):
            pass
        _close_both(src, dst)

    def __repr__(self) -> str:
        return (
            f"<GateProxy 127.0.0.1:{self.port} → {self.upstream_port} v5={self.v5} "
            f"subscribe={self.subscribe} connects={self.connects}>"
        )


def _close_both(a: socket.socket, b: socket.socket) -> None:
    for s in (a, b):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
