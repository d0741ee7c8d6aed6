"""UpstreamPool: the proxy's keep-alive connections to its upstream, as Envoy's HTTP/1 pool
keeps them, with the race of lab 04 left in.

A request takes an idle connection (the most recently used first), or opens a new one while
fewer than ``max_connections`` exist, or waits for one to be freed. When a response has
been read, the connection is put back (:meth:`UpstreamPool.release`) unless it must close
(:func:`lablib.pool.keep_upstream`). An idle connection is watched: its socket is one of the
loop's readers, so a FIN (or RST) that arrives while it sits in the pool is read in the loop
iteration whose poll saw it, and the connection leaves the pool then. It also leaves when
``upstream_idle_timeout`` passes (Envoy's cluster idle_timeout), with a FIN of the proxy's
own.

The race: a FIN that is on its way, or has arrived but not been read yet, is not known. A
request given such a connection is written into a socket the server has closed; the server's
kernel answers RST, and the proxy gets no response (503 UC). Two places in the pool decide how
often that happens:

* a request waiting when a connection is freed. With ``attach_on_next_iteration`` off the
  connection is handed to it at once (Envoy before PR #2871, envoy#2715), so a FIN that came
  right behind the response is never read first. With it on, the hand-over waits until the
  loop has polled the sockets once more and run their reader callbacks. In asyncio that takes
  two ``call_soon`` steps, not one: a callback queued with ``call_soon`` runs before the reader
  callbacks of the next poll (they are queued behind it), so a single step would still hand
  the connection over before the FIN is read. PR #7159 met the same ordering in libevent.
* an idle connection whose FIN is still on the wire: nothing in the pool can see it. Only
  an idle timeout below the server's, ``Connection: close`` from the server, or a retry helps.

Not covered: connect timeouts, HTTP/2 multiplexing, pending-request limits (Envoy's
max_pending_requests) and health checks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import h11

from ..pool import keep_upstream
from ..sockets import TracedSocket, errno_name
from ..trace import Trace

__all__ = ["UpstreamPool", "Upstream"]


@dataclass(eq=False)
class Upstream:
    """One upstream connection and its HTTP/1.1 client state."""

    sock: TracedSocket
    h11: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    served: int = 0
    #: monotonic time it last became idle (None while in use)
    idle_since: float | None = None
    #: how long it had been idle when the pool last gave it out (None: new, or handed over)
    picked_idle_ms: float | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def conn(self) -> str:
        return self.sock.conn


class UpstreamPool:
    """The pool of one proxy to one upstream address, on the proxy's loop."""

    def __init__(self, trace: Trace, actor: str, address: tuple[str, int], *, max_connections: int,
                 max_requests: int, idle_timeout: float, attach_on_next_iteration: bool) -> None:
        self.trace, self.actor, self.address = trace, actor, address
        self.max_connections = max_connections
        self.max_requests = max_requests
        self.idle_timeout = idle_timeout
        self.attach_on_next_iteration = attach_on_next_iteration
        self.idle: list[Upstream] = []
        self.waiters: list[asyncio.Future[Upstream]] = []
        self.open = 0  # connections open or being opened
        self.closed_while_idle = 0
        self.expired = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def acquire(self) -> tuple[Upstream, str]:
        """A connection for one request, and how it was got (``new``, ``reused after N ms
        idle``, ``handed over``). Raises OSError if a new connection cannot be made."""
        taken = self._take_idle()
        if taken is not None:
            up, idle_ms = taken
            up.picked_idle_ms = idle_ms
            return up, f"reused after {idle_ms:.1f} ms idle"
        if self.open < self.max_connections:
            return await self._connect(), "new"
        waiter: asyncio.Future[Upstream] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            up = await waiter
        except asyncio.CancelledError:  # its request went away; a connection handed to it goes back
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.discard(waiter.result(), "its request went away while it was handed over")
            raise
        finally:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
        up.picked_idle_ms = None
        return up, "handed over" if up.served else "new (waited)"

    def release(self, up: Upstream) -> bool:
        """Put ``up`` back after a complete response, or close it if it must close; True if
        it was kept. A waiting request gets it (now, or after the next poll)."""
        up.served += 1
        protocol_allows = up.h11.our_state is h11.DONE and up.h11.their_state is h11.DONE
        if not keep_upstream(protocol_allows=protocol_allows, served=up.served, max_requests=self.max_requests):
            why = ("max requests reached" if protocol_allows else
                   "the response said Connection: close" if up.h11.their_state is h11.MUST_CLOSE else
                   "the request was not sent in full")
            self._close(up, why)
            return False
        up.h11.start_next_cycle()
        if self.waiters and not self.attach_on_next_iteration:
            self._hand_over(up)  # envoy#2715: before any FIN that came with the response is read
            return True
        self._start_idling(up)
        if self.waiters:
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._attach_waiters)  # after the next poll's reader callbacks
        return True

    def discard(self, up: Upstream, why: str) -> None:
        """Close ``up`` after a failure; it never returns to the pool."""
        self._close(up, why)

    async def close(self) -> None:
        """Close every idle connection and fail the waiters (the proxy is stopping)."""
        for up in list(self.idle):
            self._close(up, "proxy stopping")
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionAbortedError("the proxy is stopping"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- internals ---------------------------------------------------------------------------

    async def _connect(self) -> Upstream:
        self.open += 1
        try:
            sock = await TracedSocket.connect(self.address, self.trace, self.actor)
        except BaseException:
            self.open -= 1
            self._serve_waiters()
            raise
        sock.stamp_arrivals()
        return Upstream(sock)

    def _note(self, up: Upstream, text: str) -> None:
        self.trace.record(self.actor, "http", conn=up.conn, detail=text)

    def _hand_over(self, up: Upstream) -> None:
        waiter = self.waiters.pop(0)
        waiter.set_result(up)

    def _attach_waiters(self) -> None:
        while self.waiters:
            taken = self._take_idle()
            if taken is None:
                break
            self._hand_over(taken[0])
        self._serve_waiters()

    def _serve_waiters(self) -> None:
        """Open connections for waiting requests while the limit allows."""
        for waiter in self.waiters[: max(0, self.max_connections - self.open)]:
            self.waiters.remove(waiter)
            task = asyncio.ensure_future(self._connect_for(waiter))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect_for(self, waiter: asyncio.Future[Upstream]) -> None:
        try:
            up = await self._connect()
        except OSError as exc:
            if not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter.done():  # its request went away meanwhile
            self._start_idling(up)
        else:
            waiter.set_result(up)

    def _start_idling(self, up: Upstream) -> None:
        """Into the pool. Idle time counts from when the response's last byte reached the
        proxy's kernel (its receive stamp), as it does in a proxy written in C, which reads
        it within microseconds; this loop may get to it milliseconds later when it is busy,
        and that lateness would otherwise be time the pool does not know of."""
        arrived = up.sock.last_arrival_ns / 1e9
        up.idle_since = arrived if arrived else time.monotonic()
        self.idle.append(up)
        up.sock.watch(lambda: self._readable_while_idle(up))
        if self.idle_timeout:  # (the loop's clock is time.monotonic)
            up.timer = asyncio.get_running_loop().call_at(up.idle_since + self.idle_timeout, self._expire, up)

    def _take_idle(self) -> tuple[Upstream, float] | None:
        """The most recently used idle connection and how long it idled (ms), out of the
        pool; None if there is none. One idle as long as the idle timeout is closed instead,
        although its timer has not fired yet (a busy loop runs timers late): Go's Transport
        checks an idle connection's age the same way when it takes one. Without this the
        timer's lateness would eat into the margin below the server's keep-alive timeout."""
        while self.idle:
            up = self.idle.pop()
            idle_ms = (time.monotonic() - (up.idle_since or time.monotonic())) * 1000
            self._stop_idling(up)
            if self.idle_timeout and idle_ms >= self.idle_timeout * 1000:
                self._expire(up)
                continue
            return up, idle_ms
        return None

    def _stop_idling(self, up: Upstream) -> None:
        up.sock.unwatch()
        if up.timer is not None:
            up.timer.cancel()
            up.timer = None
        up.idle_since = None

    def _readable_while_idle(self, up: Upstream) -> None:
        """An idle connection is readable: a FIN, an RST or stray bytes. It leaves the pool."""
        try:
            data = up.sock.recv_now()
        except OSError as exc:
            why = f"{errno_name(exc)} while idle"
        else:
            if data is None:
                return
            why = "upstream closed while idle (FIN)" if not data else "unexpected bytes while idle"
        self.closed_while_idle += 1
        self._close(up, why)

    def _expire(self, up: Upstream) -> None:
        up.timer = None
        self.expired += 1
        self.trace.record(self.actor, "timer", conn=up.conn, detail=f"upstream idle timeout ({self.idle_timeout:g} s)")
        self._close(up, "idle timeout")

    def _close(self, up: Upstream, why: str) -> None:
        if up in self.idle:
            self.idle.remove(up)
        self._stop_idling(up)
        if not up.sock.closed:
            self._note(up, f"pool closes it: {why}")
            up.sock.close()
            self.open -= 1
            self._serve_waiters()
