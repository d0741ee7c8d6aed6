"""TracedSocket records every call, with what a close leaves unread and what it sends."""

import asyncio
import errno
import time

import pytest

from lablib.loops import LoopThread
from lablib.sockets import TracedSocket
from lablib.trace import Trace


def on_a_loop(coro_fn):
    loop = LoopThread("test")
    try:
        return loop.call(coro_fn(), 10)
    finally:
        loop.stop()


async def pair(trace):
    listener = TracedSocket.listen(trace, "server")
    client = await TracedSocket.connect(listener.local, trace, "client")
    server = await listener.accept()
    listener.close()
    return client, server


def test_events_name_the_connection_the_same_way_at_both_ends():
    trace = Trace()

    async def scenario():
        client, server = await pair(trace)
        await client.sendall(b"hello")
        assert await server.recv() == b"hello"
        client.close()
        assert await server.recv() == b""
        server.close()
        return client.conn, server.conn

    client_conn, server_conn = on_a_loop(scenario)
    assert client_conn == server_conn
    ops = [(e.actor, e.op, e.result) for e in trace.events() if e.conn == client_conn]
    assert ops == [("client", "connect", "ok"), ("server", "accept", "ok"), ("client", "send", "ok"),
                   ("server", "recv", "ok"), ("client", "close", "ok"), ("server", "recv", "eof"),
                   ("server", "close", "ok")]


def test_close_records_unread_bytes_and_the_rst_it_causes():
    trace = Trace()

    async def scenario():
        client, server = await pair(trace)
        await client.sendall(b"x" * 500)
        await server.wait_readable(low_water=500)
        assert server.unread() == 500
        server.close()
        with pytest.raises(ConnectionResetError):
            await client.recv()
        assert client.tcp_state() == "CLOSE"
        client.close()

    on_a_loop(scenario)
    close = next(e for e in trace.events() if e.actor == "server" and e.op == "close" and e.conn)
    assert close.unread == 500 and close.wire == "RST" and close.state == "ESTABLISHED"
    failed = next(e for e in trace.events() if e.actor == "client" and e.op == "recv")
    assert failed.result == "ECONNRESET"


def test_shutdown_sends_fin_once_and_the_final_close_sends_nothing_more():
    trace = Trace()

    async def scenario():
        client, server = await pair(trace)
        server.shutdown()
        assert await client.recv() == b""
        assert client.tcp_state() == "CLOSE_WAIT"
        client.close()
        assert await server.recv() == b""
        server.close()
        return server.ends_sent

    assert on_a_loop(scenario) == ["FIN"]


def test_abort_sends_rst_with_nothing_unread():
    trace = Trace()

    async def scenario():
        client, server = await pair(trace)
        server.abort()
        with pytest.raises(ConnectionResetError):
            await client.recv()
        client.close()
        return server.ends_sent

    assert on_a_loop(scenario) == ["RST"]


def test_a_send_is_stamped_before_the_recv_that_returns_its_bytes():
    trace = Trace()

    async def scenario():
        client, server = await pair(trace)
        for _ in range(50):
            await client.sendall(b"x")
            await server.recv()
        client.close()
        server.close()

    on_a_loop(scenario)
    sends = [e.t_ns for e in trace.events() if e.op == "send"]
    recvs = [e.t_ns for e in trace.events() if e.op == "recv"]
    assert all(s <= r for s, r in zip(sends, recvs))


def test_a_port_in_use_is_named_in_the_error():
    trace = Trace()
    taken = TracedSocket.listen(trace, "server")
    try:
        with pytest.raises(OSError, match=f"port {taken.local[1]} on 127.0.0.1 is in use"):
            TracedSocket.listen(trace, "server", port=taken.local[1])
    finally:
        taken.close()


def test_loop_call_from_its_own_thread_is_refused_not_deadlocked():
    loop = LoopThread("self")
    try:
        async def inner():
            return loop.call(asyncio.sleep(0), 1)

        with pytest.raises(RuntimeError, match="deadlock"):
            loop.call(inner(), 5)
    finally:
        loop.stop()


def test_closing_a_socket_wakes_its_waiter_and_frees_the_fd_number_cleanly():
    trace = Trace()

    async def scenario():
        client, server = await pair(trace)
        waiter = asyncio.ensure_future(server.recv())
        await asyncio.sleep(0.01)  # the recv is now waiting for data
        server.close()
        with pytest.raises(OSError) as err:
            await waiter
        assert err.value.errno == errno.EBADF
        # the fd number is free again; a new socket that gets it must work normally
        again_client, again_server = await pair(trace)
        await again_client.sendall(b"still fine")
        assert await again_server.recv() == b"still fine"
        for s in (client, again_client, again_server):
            s.close()

    on_a_loop(scenario)


def test_wait_reset_tells_a_reset_from_a_clean_close():
    trace = Trace()

    async def scenario():
        client, server = await pair(trace)
        server.close()  # FIN
        assert await client.recv() == b""
        await client.send(b"x")  # the closed server's kernel answers RST
        assert await client.wait_reset() == "EPIPE"
        client.close()
        client, server = await pair(trace)
        server.shutdown()
        assert await client.recv() == b""
        client.shutdown()
        assert await server.recv() == b""
        assert await client.wait_reset() is None  # both directions closed: no reset
        client.close()
        server.close()

    on_a_loop(scenario)


def test_arrival_stamps_say_when_the_kernel_received_the_data_not_when_it_was_read(kernel_stamping):
    trace = Trace()

    async def scenario():
        listener = TracedSocket.listen(trace, "server")
        assert listener.stamp_arrivals()
        client = await TracedSocket.connect(listener.local, trace, "client")
        server = await listener.accept()  # stamps as its listener does
        await client.sendall(b"early")
        sent = time.monotonic_ns()
        time.sleep(0.05)  # the data waits in the kernel
        assert await server.recv() == b"early"
        assert server.arrival_stamped
        stamped, read = server.last_arrival_ns, time.monotonic_ns()
        client.close()
        assert await server.recv() == b""  # an EOF carries no stamp: the time of the read
        eof = server.last_arrival_ns, server.arrival_stamped
        server.close()
        listener.close()
        return sent, stamped, read, eof

    sent, stamped, read, (eof, eof_stamped) = on_a_loop(scenario)
    assert abs(stamped - sent) < 5_000_000 and read - stamped >= 50_000_000
    assert eof >= read and not eof_stamped
