"""A tiny MQTT 5 broker on 127.0.0.1 for what mosquitto will not do: CONNACK properties, DISCONNECT reasons, lost PUBACKs.

It reads CONNECT, PUBLISH, SUBSCRIBE, PINGREQ and DISCONNECT; answers with a
CONNACK (``connack_props``), SUBACK and PINGRESP; and hands each QoS 1
PUBLISH to ``on_publish(conn, packet_id, topic, payload)`` (by default a
PUBACK at once).  ``on_connected(conn)`` runs after the CONNACK.  Nothing is
routed anywhere.  ``close()`` ends the listener and every connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable

_CONNECT, _PUBLISH, _SUBSCRIBE, _PINGREQ, _DISCONNECT = 1, 3, 8, 12, 14


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def prop_u16(pid: int, v: int) -> bytes:
    return bytes([pid]) + struct.pack(">H", v)


def prop_u32(pid: int, v: int) -> bytes:
    return bytes([pid]) + struct.pack(">I", v)


def prop_str(pid: int, v: str) -> bytes:
    e = v.encode()
    return bytes([pid]) + struct.pack(">H", len(e)) + e


def props(*ps: bytes) -> bytes:
    b = b"".join(ps)
    return varint(len(b)) + b


def _read_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError
        buf += chunk
    return buf


def _read_varint(read: Callable[[], int]) -> int:
    mult = n = 0
    while True:
        b = read()
        n += (b & 0x7F) << mult
        mult += 7
        if not b & 0x80:
            return n


def _read_packet(s: socket.socket) -> tuple[int, bytes]:
    first = _read_exact(s, 1)[0]
    return first, _read_exact(s, _read_varint(lambda: _read_exact(s, 1)[0]))


class Conn:
    """One client connection: what the test may send on it, and what is still unacknowledged."""

    def __init__(self, sock: socket.socket, n: int) -> None:
        self.sock, self.n = sock, n
        self.lock = threading.Lock()
        self.unacked: set[int] = set()
        self.closed = False

    def send(self, data: bytes) -> None:
        with self.lock, contextlib.suppress(OSError):
            if not self.closed:
                self.sock.sendall(data)

    def puback(self, pid: int, rc: int = 0) -> None:
        self.unacked.discard(pid)
        self.send(packet(0x40, struct.pack(">H", pid) + (bytes([rc, 0]) if rc else b"")))

    def disconnect(self, rc: int, *ps: bytes) -> None:
        self.send(packet(0xE0, bytes([rc]) + props(*ps)))
        self.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


Publish = Callable[[Conn, int, str, bytes], None]


class Fake5:
    """The broker; ``max_unacked`` is the most QoS 1 publishes one connection ever had unacknowledged."""

    def __init__(
        self,
        *,
        connack_props: bytes = b"",
        on_publish: Publish | None = None,
        on_connected: Callable[[Conn], None] | None = None,
    ) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.connack_props = connack_props
        self.on_publish: Publish = on_publish or (lambda c, pid, _t, _p: c.puback(pid))
        self.on_connected = on_connected
        self.conns: list[Conn] = []
        self.published: list[tuple[int, str, bytes]] = []  # (connection number, topic, payload)
        self.max_unacked = 0
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.listener.accept()
            except OSError:
                return
            c = Conn(s, len(self.conns) + 1)
            self.conns.append(c)
            self._spawn(self._serve, c)

    def _serve(self, c: Conn) -> None:
        try:
            first, _body = _read_packet(c.sock)
            if first >> 4 != _CONNECT:
                return
            c.send(packet(0x20, bytes([0, 0]) + varint(len(self.connack_props)) + self.connack_props))
            if self.on_connected is not None:
                self.on_connected(c)
            while not c.closed:
                first, body = _read_packet(c.sock)
                kind = first >> 4
                if kind == _PUBLISH:
                    self._publish(c, first, body)
                elif kind == _SUBSCRIBE:
                    c.send(packet(0x90, body[:2] + b"\x00\x01"))
                elif kind == _PINGREQ:
                    c.send(b"\xd0\x00")
                elif kind == _DISCONNECT:
                    return
        except (ConnectionError, OSError, IndexError):
            pass
        finally:
            c.close()

    def _publish(self, c: Conn, first: int, body: bytes) -> None:
        qos = (first >> 1) & 3
        tl = struct.unpack(">H", body[:2])[0]
        topic, i = body[2 : 2 + tl].decode(), 2 + tl
        pid = 0
        if qos:
            pid, i = struct.unpack(">H", body[i : i + 2])[0], i + 2
        at: list[int] = [int(i)]

        def byte() -> int:
            at[0] += 1
            return int(body[at[0] - 1])

        plen = _read_varint(byte)
        payload = body[at[0] + plen :]
        self.published.append((c.n, topic, payload))
        if qos:
            c.unacked.add(pid)
            self.max_unacked = max(self.max_unacked, len(c.unacked))
            self.on_publish(c, pid, topic, payload)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # close() alone leaves a blocked accept() waiting
        self.listener.close()
        for c in list(self.conns):
            c.close()
        for t in self._threads:
            t.join(5)
