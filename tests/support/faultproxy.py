"""A small TCP fault-injection proxy for tests (pure Python, asyncio in a thread).

    client --> 127.0.0.1:proxy.port --> upstream (e.g. mosquitto)

Faults (call from the test thread at any time):
    p.drop_all()           RST every open connection; new connections still accepted
    p.set_down(True)       drop all and stop listening -> clients get ECONNREFUSED
    p.set_down(False)      listen again on the same port
    p.set_blackhole(True)  sockets stay open, nothing is forwarded either way (not
                           even the broker's FIN): a half-open link that only
                           keepalive detects. New connections are accepted and
                           swallowed too.
    p.set_blackhole(False) heal: connections that lived through the blackhole are
                           reset (their byte streams are no longer intact);
                           p.tainted_connections counts them
    p.set_latency(0.3)     delay every chunk by 0.3 s in each direction (order kept)
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _Conn:
    def __init__(self, *writers: asyncio.StreamWriter) -> None:
        self.writers = writers
        self.tasks: tuple[asyncio.Task[None], ...] = ()
        self.tainted = False  # bytes were swallowed while blackholed

    def abort(self) -> None:
        for w in self.writers:
            _rst(w)
        for t in self.tasks:
            t.cancel()


class FaultProxy:
    def __init__(
        self, upstream_port: int, upstream_host: str = "127.0.0.1", listen_host: str = "127.0.0.1", listen_port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen_host, self.port = listen_host, listen_port
        self.latency = 0.0
        self.blackholed = False
        self.accepted = 0
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)

    # ---------- control API: thread-safe, returns when done ----------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._unlisten())
        self._call(self._cancel_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def drop_all(self) -> None:
        self._call(self._abort(lambda c: True))

    def set_down(self, down: bool) -> None:
        self._call(self._unlisten() if down else self._listen())

    def set_blackhole(self, on: bool) -> None:
        self.blackholed = on
        if not on:
            self._call(self._abort(lambda c: c.tainted))

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def tainted_connections(self) -> int:
        """Open connections that lost bytes to the blackhole: the ones a heal resets."""
        return self._call(self._count_tainted())

    # ---------- internals: run on the proxy's event loop ----------
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.listen_host, self.port, reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._abort(lambda c: True)

    async def _count_tainted(self) -> int:
        return sum(c.tainted for c in self._conns)  # on the loop: the set is not changed meanwhile

    async def _cancel_all(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _abort(self, which: Callable[[_Conn], bool]) -> None:
        for c in [c for c in self._conns if which(c)]:
            c.abort()
            self._conns.discard(c)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _rst(c_writer)  # upstream down: client sees a reset
            return
        conn = _Conn(c_writer, u_writer)
        self._conns.add(conn)
        up = asyncio.create_task(self._pipe(conn, c_reader, u_writer, to_client=False))
        down = asyncio.create_task(self._pipe(conn, u_reader, c_writer, to_client=True))
        conn.tasks = (up, down)
        try:
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if conn.tainted:
                conn.abort()
            else:
                for w in conn.writers:
                    w.close()
                for t in conn.tasks:
                    t.cancel()
            self._conns.discard(conn)

    async def _pipe(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_client: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

        async def sender() -> None:
            while True:
                due, data = await q.get()
                if (d := due - loop.time()) > 0:
                    await asyncio.sleep(d)
                if data is None:
                    return
                writer.write(data)
                await writer.drain()

        tx = asyncio.create_task(sender())
        try:
            while True:
                try:
                    data = await reader.read(65536)
                except OSError:
                    data = b""
                if self.blackholed:
                    conn.tainted = True
                    if not data and to_client:
                        await asyncio.Future()  # broker hung up: never tell the client
                    if not data:
                        return  # client gave up: tidy up
                    continue  # swallow the bytes
                q.put_nowait((loop.time() + self.latency, data or None))
                if not data:
                    await tx  # flush delayed bytes, then end
                    return
        except OSError:
            pass
        finally:
            tx.cancel()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), like a dead peer or a middlebox reset."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()
