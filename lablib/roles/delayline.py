"""DelayLine: a user-space relay that adds a one-way delay to a hop, FIN and RST included.

For each connection it accepts, the delay line connects to its upstream and relays both
directions. Whatever it reads from one side reaches the other ``delay`` seconds later, in
order: data as data, an EOF (the peer's FIN) as ``shutdown(SHUT_WR)`` (a half-close, so the
other direction goes on), a reset (ECONNRESET, or a write that fails because the far side
reset) as an abortive close (SO_LINGER 0), which makes the kernel send RST. This is how the
labs widen race windows of microseconds on loopback to the milliseconds of a real network,
without root (tc/netem needs CAP_NET_ADMIN).

A reset that follows a FIN is relayed too: after relaying a FIN, the delay line keeps watching
that side for an RST (the keep-alive race: a request reaches a server that closed, and its
kernel answers RST).

Buffers are bounded: a direction holds at most ``buffer_bytes`` in flight and stops reading
when full, so TCP flow control pushes back on the sender as a real path would. A relay that
read everything first would hide resets (toxiproxy#72); this one keeps them. The delay line is
still a TCP endpoint, as any proxy is: it acknowledges data itself, so a sender's kernel learns
of a reset beyond it only when the delay line passes the reset on.

Data is due ``delay`` after the kernel received it (its receive stamp, SO_TIMESTAMPNS), not
after the delay line got round to reading it, so a busy loop's late reads do not lengthen the
delay; a FIN or RST is due ``delay`` after it was read (the kernel stamps no EOF). Each item
leaves within half a millisecond of when it is due (see :func:`lablib.loops.sleep_until`)
when the loop is not busy; under load, its wake-up can be a few milliseconds late. Not
covered: loss, reordering, bandwidth limits, and a delay that differs between the two
directions.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

from ..loops import Completions, sleep_until
from ..sockets import TracedSocket, errno_name
from ..trace import Trace
from .base import ListeningRole

__all__ = ["DelayLine"]

CHUNK = 65536


@dataclass
class _Direction:
    """One way through the relay: read ``src``, write ``dst`` ``delay`` seconds later."""

    src: TracedSocket
    dst: TracedSocket
    delay: float
    limit: int
    owner: "DelayLine"
    items: collections.deque[tuple[float, str, bytes]] = field(default_factory=collections.deque)
    queued: int = 0
    has_items: asyncio.Event = field(default_factory=asyncio.Event)
    has_room: asyncio.Event = field(default_factory=asyncio.Event)
    reader_done: bool = False
    dst_reset: bool = False  # a write to dst failed: dst's peer reset the connection

    def put(self, kind: str, data: bytes = b"", arrived: float | None = None) -> None:
        """Queue an item that arrived at monotonic time ``arrived`` (now if None), due
        ``delay`` later, and never before the item ahead of it."""
        due = (time.monotonic() if arrived is None else arrived) + self.delay
        if self.items:
            due = max(due, self.items[-1][0])
        self.items.append((due, kind, data))
        self.queued += len(data)
        self.owner.peak_queued = max(self.owner.peak_queued, self.queued)
        self.has_items.set()

    async def take(self) -> tuple[float, str, bytes] | None:
        """The next item, or None once the reader is done and nothing is left."""
        while not self.items:
            if self.reader_done:
                return None
            self.has_items.clear()
            await self.has_items.wait()
        item = self.items.popleft()
        self.queued -= len(item[2])
        self.has_room.set()
        return item

    async def room(self) -> int:
        """Wait until the direction can hold more; return how many bytes it can take."""
        while self.queued >= self.limit:
            self.has_room.clear()
            await self.has_room.wait()
        return self.limit - self.queued


class _Link:
    """The two directions of one relayed connection and the four tasks that move them.

    Each reader ends at an error (relayed as RST), or at EOF (relayed as FIN) once the socket
    is reset (relayed as RST) or closed both ways. Each writer ends after relaying a RST, when
    its write fails, or when its reader is done and nothing is left to relay. Relaying a RST
    stops everything that touches the socket being reset, so the link always finishes.
    """

    def __init__(self, down: TracedSocket, up: TracedSocket, owner: "DelayLine") -> None:
        self.down, self.up = down, up
        self.to_up = _Direction(down, up, owner.delay, owner.limit, owner)
        self.to_down = _Direction(up, down, owner.delay, owner.limit, owner)
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def other(self, d: _Direction) -> _Direction:
        return self.to_down if d is self.to_up else self.to_up

    def name(self, d: _Direction) -> str:
        return "up" if d is self.to_up else "down"

    async def run(self) -> None:
        for d in (self.to_up, self.to_down):
            self.tasks[f"read-{self.name(d)}"] = asyncio.create_task(self.read(d))
            self.tasks[f"write-{self.name(d)}"] = asyncio.create_task(self.write(d))
        try:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        finally:
            for task in self.tasks.values():
                task.cancel()
            for s in (self.down, self.up):
                s.close()

    async def read(self, d: _Direction) -> None:
        try:
            while True:
                room = await d.room()
                try:
                    data = await d.src.recv(min(CHUNK, room))
                except OSError:
                    d.put("rst")
                    return
                if data:
                    d.put("data", data, arrived=d.src.last_arrival_ns / 1e9)
                    continue
                # EOF after one of our writes to this socket failed was a reset whose error
                # the write consumed (Linux reports it once), not a FIN.
                if self.other(d).dst_reset:
                    d.put("rst")
                    return
                d.put("fin")
                # The peer may still reset after its FIN (our data reached its closed socket,
                # the keep-alive race): keep watching, and relay that too.
                if await d.src.wait_reset() is not None or self.other(d).dst_reset:
                    d.put("rst")
                return
        finally:
            d.reader_done = True
            d.has_items.set()

    async def write(self, d: _Direction) -> None:
        while (item := await d.take()) is not None:
            due, kind, data = item
            await sleep_until(due)
            try:
                if kind == "data":
                    await d.dst.sendall(data)
                elif kind == "fin":
                    d.dst.shutdown()
                else:
                    self.reset(d)
                    return
            except OSError:
                d.dst_reset = True  # the reader of d.dst sees the reset (or EOF) and relays it
                return

    def reset(self, d: _Direction) -> None:
        """Relay a reset from d.src to d.dst: stop every task touching d.dst, then abort it."""
        back = self.name(self.other(d))
        for name in (f"read-{back}", f"write-{back}"):
            task = self.tasks.get(name)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        d.dst.abort(detail=f"relaying RST after {d.delay * 1000:g} ms")


class DelayLine(ListeningRole):
    """Listens on 127.0.0.1 and relays every connection to ``upstream`` with a one-way delay."""

    actor = "wire"
    stamp_arrivals = True

    def __init__(self, trace: Trace, upstream: tuple[str, int], delay: float, buffer_bytes: int = 262144,
                 actor: str = "wire") -> None:
        if delay < 0:
            raise ValueError(f"delay={delay!r}: must be 0 or more seconds")
        if buffer_bytes < 1:
            raise ValueError(f"buffer_bytes={buffer_bytes!r}: must be at least 1")
        super().__init__(trace, actor)
        self.upstream, self.delay, self.limit = upstream, delay, buffer_bytes
        self.links = Completions()  # downstream connection name -> upstream connection name
        self.peak_queued = 0  # the most bytes ever held in one direction

    async def upstream_of(self, conn: str, timeout: float = 5.0) -> str:
        """The upstream connection that relays downstream connection ``conn``."""
        return await self.links.wait(conn, timeout)

    async def relayed(self, conn: str, timeout: float) -> None:
        """Wait until downstream connection ``conn`` is relayed to its end, both ways: a trial
        that ends earlier would miss what its last segments still cause (an RST from the far
        side, a kernel counter moving)."""
        await self.finished.wait(conn, timeout)

    async def serve(self, down: TracedSocket) -> None:
        try:
            up = await TracedSocket.connect(self.upstream, self.trace, self.actor)
        except OSError as exc:
            self.trace.record(self.actor, "note", conn=down.conn, result=errno_name(exc),
                              detail="upstream connect failed")
            down.abort()
            return
        except BaseException:
            down.close()
            raise
        # time each item from its arrival, not from our read of it (down inherited the
        # stamping from our listener)
        up.stamp_arrivals()
        self.trace.record(self.actor, "relay", conn=down.conn, detail=up.conn)
        self.links.publish(down.conn, up.conn)
        await _Link(down, up, self).run()
        self.finish(down, {"upstream": up.conn})  # all relayed: whatever it caused has happened
