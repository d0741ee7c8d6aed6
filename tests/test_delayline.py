"""The delay line relays data, FIN and RST each one delay later, and never buffers without bound."""

import asyncio
import socket
import threading
import time

import pytest

from lablib.roles.delayline import DelayLine
from lablib.sockets import TracedSocket
from lablib.topology import Topology
from lablib.trace import Trace

DELAY = 0.03


class Sink:
    """A server that accepts and hands each connection to the test."""

    actor = "server"

    def __init__(self, trace):
        self.trace, self.address, self.conns = trace, None, None

    async def start(self):
        self.conns = asyncio.Queue()
        self.listener = TracedSocket.listen(self.trace, self.actor)
        self.address = self.listener.local
        self.task = asyncio.ensure_future(self._accept())

    async def _accept(self):
        while True:
            await self.conns.put(await self.listener.accept())

    async def stop(self):
        self.task.cancel()
        self.listener.close()


@pytest.fixture
def hop():
    """(topology, delay line, sink): client -> delay line -> sink, all on their own loops."""
    trace = Trace()
    with Topology(trace) as topo:
        sink = topo.start_now(Sink(trace), "server")
        wire = topo.start_now(DelayLine(trace, sink.address, DELAY, buffer_bytes=64 * 1024), "wire")
        yield topo, wire, sink


def drive(topo, sink, scenario):
    """Run ``scenario(client_connect, next_server_conn, on_server)`` on the client loop."""
    server_loop = topo.loop("server")

    async def next_conn():
        return await server_loop.acall(asyncio.wait_for(sink.conns.get(), 5))

    def on_server(coro):
        return server_loop.acall(coro)

    return topo.loop("client").call(scenario(next_conn, on_server), 20)


def test_data_takes_one_delay_each_way(hop):
    topo, wire, sink = hop

    async def scenario(next_conn, on_server):
        c = await TracedSocket.connect(wire.address, topo.trace, "client")
        s = await next_conn()
        started = time.monotonic()
        await c.sendall(b"ping")
        assert await on_server(s.recv()) == b"ping"
        one_way = time.monotonic() - started
        await on_server(s.sendall(b"pong"))
        assert await c.recv() == b"pong"
        round_trip = time.monotonic() - started
        c.close()
        await on_server(s.drain())
        await on_server(asyncio.sleep(0, s.close()))
        return one_way, round_trip

    one_way, round_trip = drive(topo, sink, scenario)
    assert DELAY <= one_way < DELAY + 0.02
    assert 2 * DELAY <= round_trip < 2 * DELAY + 0.04


def test_data_is_due_one_delay_after_it_arrived_though_the_relay_read_it_late(hop, kernel_stamping):
    """The relay times data from the kernel's receive stamp: a loop that is busy when the
    data arrives (20 ms here) does not add to the delay."""
    topo, wire, sink = hop
    blocking = threading.Event()

    async def busy():
        blocking.set()
        time.sleep(0.02)  # the delay line's loop cannot read meanwhile

    async def scenario(next_conn, on_server):
        c = await TracedSocket.connect(wire.address, topo.trace, "client")
        s = await next_conn()
        blocked = topo.loop("wire").acall(busy())
        await asyncio.to_thread(blocking.wait, 5)
        started = time.monotonic()
        await c.sendall(b"ping")
        assert await on_server(s.recv()) == b"ping"
        one_way = time.monotonic() - started
        await blocked
        c.close()
        await on_server(s.drain())
        await on_server(asyncio.sleep(0, s.close()))
        return one_way

    one_way = drive(topo, sink, scenario)
    assert DELAY <= one_way < DELAY + 0.012  # read 20 ms late: without the stamp, DELAY + 20 ms


def test_a_fin_is_relayed_as_a_half_close_and_the_other_way_stays_open(hop):
    topo, wire, sink = hop

    async def scenario(next_conn, on_server):
        c = await TracedSocket.connect(wire.address, topo.trace, "client")
        s = await next_conn()
        started = time.monotonic()
        c.shutdown()  # client: no more requests
        assert await on_server(s.recv()) == b""  # server sees EOF ...
        eof_after = time.monotonic() - started
        await on_server(s.sendall(b"late response"))  # ... and can still answer
        assert await c.recv() == b"late response"
        await on_server(asyncio.sleep(0, s.close()))
        assert await c.recv() == b""
        c.close()
        return eof_after

    assert drive(topo, sink, scenario) >= DELAY


def test_an_rst_is_relayed_as_an_rst_after_the_data_before_it(hop):
    topo, wire, sink = hop

    async def scenario(next_conn, on_server):
        c = await TracedSocket.connect(wire.address, topo.trace, "client")
        s = await next_conn()
        await on_server(s.sendall(b"last words"))
        started = time.monotonic()
        await on_server(asyncio.sleep(0, s.abort()))
        assert await c.recv() == b"last words"
        with pytest.raises(ConnectionResetError):
            while await c.recv():
                pass
        reset_after = time.monotonic() - started
        c.close()
        return reset_after

    assert drive(topo, sink, scenario) >= DELAY - 0.002


def test_a_reset_that_follows_a_fin_is_relayed_too(hop):
    """The keep-alive race: the server closed, the client writes anyway, the server's kernel
    answers RST. The client must learn of it one round trip later, as over a real path."""
    topo, wire, sink = hop

    async def scenario(next_conn, on_server):
        c = await TracedSocket.connect(wire.address, topo.trace, "client")
        s = await next_conn()
        await on_server(asyncio.sleep(0, s.close()))  # server: idle timeout, FIN
        assert await c.recv() == b""
        started = time.monotonic()
        await c.send(b"GET / HTTP/1.1\r\n\r\n")  # succeeds locally, as such writes do
        assert await c.wait_reset() is not None  # ... and the reset comes back through the relay
        round_trip = time.monotonic() - started
        with pytest.raises(BrokenPipeError):
            await c.send(b"more")
        c.close()
        return round_trip

    assert 2 * DELAY - 0.002 <= drive(topo, sink, scenario) < 2 * DELAY + 0.05


def test_a_slow_reader_makes_the_relay_push_back_instead_of_buffering(hop):
    topo, wire, sink = hop

    async def scenario(next_conn, on_server):
        c = await TracedSocket.connect(wire.address, topo.trace, "client")
        s = await next_conn()
        # the two ends' kernel buffers stay small; the relay's own sockets may grow theirs (to
        # tcp_wmem's max, 4 MiB, and tcp_rmem's, 32 MiB here), but not far enough to take 16 MiB
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        payload = b"x" * (16 * 1024 * 1024)
        sender = asyncio.ensure_future(c.sendall(payload))
        await asyncio.sleep(0.3)  # the server reads nothing for a while
        assert not sender.done()  # flow control reached the client: the relay stopped reading
        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)  # (then it drains fast)
        got = 0
        while got < len(payload):
            got += len(await on_server(s.recv(1 << 20)))
        await sender
        c.close()
        assert await on_server(s.recv()) == b""
        await on_server(asyncio.sleep(0, s.close()))

    drive(topo, sink, scenario)
    assert 0 < wire.peak_queued <= 64 * 1024
