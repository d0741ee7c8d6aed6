"""ListeningRole: what every role that accepts connections shares.

It listens on 127.0.0.1 (port 0 unless given), serves each accepted connection in a task of
its own, and on :meth:`stop` cancels those tasks (their ``finally`` blocks close their
sockets) and closes the listener. A role subclasses it and writes :meth:`serve`.

Not covered: roles that only connect out (the client runs in the scenario's trial instead).
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine

from ..sockets import TracedSocket
from ..trace import Trace

__all__ = ["ListeningRole"]


class ListeningRole:
    actor = "server"

    def __init__(self, trace: Trace, actor: str | None = None, port: int = 0) -> None:
        self.trace = trace
        self.actor = actor or type(self).actor
        self.port = port
        self.address: tuple[str, int] | None = None
        self._listener: TracedSocket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._listener = TracedSocket.listen(self.trace, self.actor, port=self.port)
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
            self.accepted(conn)
            self.spawn(self.serve(conn))

    def accepted(self, conn: TracedSocket) -> None:
        """Called on the loop as soon as ``conn`` is accepted, before it is served."""

    async def serve(self, conn: TracedSocket) -> None:
        raise NotImplementedError
