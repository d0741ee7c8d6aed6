"""The proxy's upstream pool on real sockets, one loop, against servers the test drives by hand:
a server that closes right behind its response, one that closes an idle connection, and the
event-loop ordering that decides whether the pool sees the FIN in time."""

import asyncio
import socket
import time

import h11
import pytest

from lablib.roles.proxy import _read_response
from lablib.roles.upstream_pool import UpstreamPool
from lablib.sockets import TracedSocket
from lablib.trace import Trace

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


class HandServer:
    """A listener whose connections the test answers and closes itself, step by step."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.setblocking(False)
        self.address = self.listener.getsockname()
        self.conns: list[socket.socket] = []

    async def accept(self) -> socket.socket:
        conn, _ = await asyncio.get_running_loop().sock_accept(self.listener)
        self.conns.append(conn)
        return conn

    async def answer(self, conn: socket.socket, *, then_close: bool = False) -> None:
        """Read one request head, send the 200; close at once behind it if ``then_close``
        (on loopback the FIN is in the proxy's receive queue when close() returns)."""
        data = b""
        while b"\r\n\r\n" not in data:
            data += await asyncio.get_running_loop().sock_recv(conn, 65536)
        conn.sendall(RESPONSE)
        if then_close:
            conn.close()

    def close(self):
        for conn in self.conns:
            conn.close()
        self.listener.close()


@pytest.fixture
def hand_server():
    server = HandServer()
    yield server
    server.close()


def pool_for(server, **settings) -> UpstreamPool:
    options = dict(max_connections=1, max_requests=0, idle_timeout=0.0, attach_on_next_iteration=True)
    options.update(settings)
    return UpstreamPool(Trace(), "proxy", server.address, **options)


def get_bytes(up):
    return up.h11.send(h11.Request(method="GET", target="/", headers=[("host", "x")])) + up.h11.send(h11.EndOfMessage())


async def one_request(pool, up, server, conn, *, then_close=False, read_late_by=0.0):
    """A GET on ``up`` that ``server`` answers; the proxy's loop reads the response
    ``read_late_by`` seconds after it arrived (busy elsewhere meanwhile)."""
    await up.sock.sendall(get_bytes(up))
    await server.answer(conn, then_close=then_close)
    await up.sock.wait_readable()
    time.sleep(read_late_by)
    response, body, error = await _read_response(up)
    assert response is not None and response.status_code == 200, error
    return response


def test_asyncio_runs_a_call_soon_callback_before_the_reader_callbacks_of_the_next_poll():
    """The fact behind attach_on_next_iteration: one call_soon step is not enough."""
    async def scenario():
        a, b = socket.socketpair()
        a.setblocking(False)
        order = []
        loop = asyncio.get_running_loop()
        loop.add_reader(a.fileno(), lambda: (order.append("reader"), loop.remove_reader(a.fileno())))
        b.close()  # the FIN is in a's queue now: the next poll reports it
        loop.call_soon(order.append, "one call_soon")
        loop.call_soon(loop.call_soon, order.append, "two call_soon steps")
        await asyncio.sleep(0.01)
        a.close()
        return order

    assert run(scenario()) == ["one call_soon", "reader", "two call_soon steps"]


@pytest.mark.parametrize("attach_on_next_iteration, handed_the_closed_one", [(False, True), (True, False)])
def test_a_waiting_request_and_a_fin_right_behind_the_response(hand_server, attach_on_next_iteration,
                                                              handed_the_closed_one):
    """envoy#2715: the server closes right after its response, without Connection: close,
    while another request waits for the pool's only connection."""
    async def scenario():
        pool = pool_for(hand_server, attach_on_next_iteration=attach_on_next_iteration)
        up, how = await pool.acquire()
        conn = await hand_server.accept()
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        assert not waiting.done() and len(pool.waiters) == 1
        await one_request(pool, up, hand_server, conn, then_close=True)
        assert pool.release(up)
        got, got_how = await waiting
        facts = got is up, got_how, pool.closed_while_idle
        if got is not up:
            got.sock.close()
        up.sock.close()
        await pool.close()
        return facts

    same, how, closed_while_idle = run(scenario())
    assert same is handed_the_closed_one
    assert (how, closed_while_idle) == (("handed over", 0) if handed_the_closed_one else ("new (waited)", 1))


def test_an_idle_connection_leaves_the_pool_when_its_fin_arrives(hand_server):
    async def scenario():
        pool = pool_for(hand_server)
        up, _ = await pool.acquire()
        conn = await hand_server.accept()
        await one_request(pool, up, hand_server, conn)
        pool.release(up)
        assert pool.idle == [up]
        conn.close()  # the server's keep-alive timeout, say
        for _ in range(3):
            await asyncio.sleep(0)
        facts = pool.idle, pool.closed_while_idle, up.sock.closed, pool.open
        await pool.close()
        return facts

    assert run(scenario()) == ([], 1, True, 0)


def test_the_idle_timeout_closes_with_the_proxys_own_fin(hand_server):
    async def scenario():
        pool = pool_for(hand_server, idle_timeout=0.02)
        up, _ = await pool.acquire()
        conn = await hand_server.accept()
        await one_request(pool, up, hand_server, conn)
        pool.release(up)
        conn.setblocking(True)
        conn.settimeout(5)
        eof = await asyncio.to_thread(conn.recv, 10)  # the server sees the proxy's FIN
        facts = eof, pool.expired, up.sock.ends_sent, pool.idle
        await pool.close()
        return facts

    assert run(scenario()) == (b"", 1, ["FIN"], [])


def test_a_connection_past_its_idle_timeout_is_not_handed_out_though_its_timer_is_late(hand_server):
    """A busy loop runs timers late; the pool checks a connection's age when it takes one,
    as Go's Transport does, and opens a new connection instead."""
    async def scenario():
        pool = pool_for(hand_server, idle_timeout=0.02, max_connections=2)
        up, _ = await pool.acquire()
        conn = await hand_server.accept()
        await one_request(pool, up, hand_server, conn)
        pool.release(up)
        time.sleep(0.03)  # the loop is blocked past the idle timeout: its timer cannot run
        fresh, how = await pool.acquire()
        facts = fresh is up, how, up.sock.closed, pool.expired
        fresh.sock.close()
        await pool.close()
        return facts

    assert run(scenario()) == (False, "new", True, 1)


def test_idle_time_counts_from_the_responses_arrival_not_from_when_the_loop_read_it(hand_server, kernel_stamping):
    async def scenario():
        pool = pool_for(hand_server)
        up, _ = await pool.acquire()
        conn = await hand_server.accept()
        await one_request(pool, up, hand_server, conn, read_late_by=0.03)
        pool.release(up)
        _, how = await pool.acquire()
        up.sock.close()
        await pool.close()
        return float(how.split()[2])  # "reused after N ms idle"

    assert 30 <= run(scenario()) < 100


def test_a_connection_is_closed_after_max_requests_and_after_connection_close(hand_server):
    async def scenario():
        pool = pool_for(hand_server, max_requests=2)
        up, _ = await pool.acquire()
        conn = await hand_server.accept()
        await one_request(pool, up, hand_server, conn)
        kept_after_first = pool.release(up)
        again, how = await pool.acquire()
        await one_request(pool, again, hand_server, conn)
        kept_after_second = pool.release(again)
        await pool.close()
        return kept_after_first, again is up, how.startswith("reused"), kept_after_second, up.sock.closed

    assert run(scenario()) == (True, True, True, False, True)


def test_a_response_with_connection_close_is_not_pooled(hand_server):
    async def scenario():
        pool = pool_for(hand_server)
        up, _ = await pool.acquire()
        conn = await hand_server.accept()
        await up.sock.sendall(get_bytes(up))
        await asyncio.get_running_loop().sock_recv(conn, 65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        response, _, _ = await _read_response(up)
        kept = pool.release(up)
        await pool.close()
        return response.status_code, kept, up.sock.closed

    assert run(scenario()) == (200, False, True)


def test_a_refused_connection_raises_and_frees_its_place():
    async def scenario():
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        address = listener.getsockname()
        listener.close()  # nothing listens there now
        pool = UpstreamPool(Trace(), "proxy", address, max_connections=1, max_requests=0, idle_timeout=0.0,
                            attach_on_next_iteration=True)
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()
        return pool.open

    assert run(scenario()) == 0


def test_closing_the_pool_fails_its_waiters(hand_server):
    async def scenario():
        pool = pool_for(hand_server)
        up, _ = await pool.acquire()
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)
        await pool.close()
        with pytest.raises(ConnectionAbortedError):
            await waiting
        up.sock.close()

    run(scenario())


def test_traced_sockets_of_the_pool_are_all_closed(hand_server):
    async def scenario():
        pool = pool_for(hand_server, max_connections=3)
        ups = [(await pool.acquire())[0] for _ in range(3)]
        conns = [await hand_server.accept() for _ in range(3)]
        for up, conn in zip(ups, conns, strict=True):
            await one_request(pool, up, hand_server, conn)
            pool.release(up)
        await pool.close()
        return [isinstance(up.sock, TracedSocket) and up.sock.closed for up in ups]

    assert run(scenario()) == [True, True, True]
