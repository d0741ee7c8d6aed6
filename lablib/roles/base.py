"""ListeningRole: what every role that accepts connections shares.

It listens on 127.0.0.1 (port 0 unless given), serves each accepted connection in a task of
its own, and on :meth:`stop` cancels those tasks (their ``finally`` blocks close their
sockets) and closes the listener. A role subclasses it and writes :meth:`serve`.

Connections are numbered in the order they are accepted (``accept_index``). When one is done,
the role publishes a summary of it in ``finished``, under its name and under ``#N``: a trial
that drives a client it cannot look into (curl, requests) and runs alone knows that its
connection is the next one accepted.

Not covered: roles that only connect out (the client runs in the scenario's trial instead).
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

from ..loops import Completions
from ..sockets import TracedSocket, errno_name
from ..trace import Trace

__all__ = ["ListeningRole"]


class ListeningRole:
    actor = "server"
    #: ask the kernel for receive stamps on the listener (see TracedSocket.stamp_arrivals):
    #: for roles that time what they do from when data arrived
    stamp_arrivals = False

    def __init__(self, trace: Trace, actor: str | None = None, port: int = 0) -> None:
        self.trace = trace
        self.actor = actor or type(self).actor
        self.port = port
        self.address: tuple[str, int] | None = None
        self._listener: TracedSocket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.accepted_count = 0
        self.finished = Completions()

    async def start(self) -> None:
        self._listener = TracedSocket.listen(self.trace, self.actor, port=self.port)
        if self.stamp_arrivals:
            self._listener.stamp_arrivals()
        self.address = self._listener.local
        self.spawn(self._accept_loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task that :meth:`stop` will cancel."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            conn = await self._listener.accept()
            conn.accept_index = self.accepted_count
            self.accepted_count += 1
            self.accepted(conn)
            self.spawn(self.serve(conn))

    def accepted(self, conn: TracedSocket) -> None:
        """Called on the loop as soon as ``conn`` is accepted, before it is served."""

    async def serve(self, conn: TracedSocket) -> None:
        raise NotImplementedError

    def finish(self, conn: TracedSocket, summary: dict[str, Any]) -> None:
        """Publish what happened to ``conn`` (call once it is closed)."""
        summary.setdefault("conn", conn.conn)
        self.finished.publish(conn.conn, summary)
        self.finished.publish(f"#{conn.accept_index}", summary)

    def conclude(self, conn: TracedSocket, summary: dict[str, Any]) -> None:
        """Close ``conn`` if it is still open, add how it ended on the wire to ``summary``
        (bytes unread at the close, the FIN/RST sent) and publish it."""
        if not conn.closed:
            conn.close()
        summary.update(unread=conn.close_unread, sent="+".join(conn.ends_sent) or "-")
        self.finish(conn, summary)

    def note(self, conn: TracedSocket, text: str) -> None:
        """Record an HTTP-level event (a request, a response, a decision) on ``conn``."""
        self.trace.record(self.actor, "http", conn=conn.conn, detail=text)

    def gave_up(self, conn: TracedSocket, summary: dict[str, Any], exc: Exception) -> None:
        """Note the socket or protocol error that ended ``conn``."""
        summary["ended_by"] = errno_name(exc) if isinstance(exc, OSError) else f"protocol error: {exc}"
        self.note(conn, f"gave up: {summary['ended_by']}")

    async def summary_of(self, index: int, timeout: float) -> dict[str, Any]:
        """The summary of the ``index``-th connection accepted, once it is done."""
        return await self.finished.wait(f"#{index}", timeout)
