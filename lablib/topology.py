"""Topology: the roles of one run, each on its own event loop, started and stopped together.

``with Topology(trace) as topo:`` gives loops by name (``topo.loop("server")``) and starts
roles on them (``await topo.start(role, "server")`` from another loop, or ``start_now`` from a
plain thread). Leaving the block, or :meth:`Topology.close`, stops every role, cancels every
task, joins every thread and closes every socket the run opened, also after a
KeyboardInterrupt. Topologies still open when the interpreter exits are closed then.

Not covered: restarting a stopped topology (make a new one).
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Any, Protocol, TypeVar

from .loops import LoopThread
from .sockets import close_leftovers
from .trace import Trace

__all__ = ["Role", "Topology", "live_topologies"]

_live: "weakref.WeakSet[Topology]" = weakref.WeakSet()
_live_lock = threading.Lock()
START_TIMEOUT = 10.0


class Role(Protocol):
    """What a topology needs of a role: start listening, stop, and say where it listens."""

    actor: str
    address: tuple[str, int] | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


R = TypeVar("R", bound=Role)


class Topology:
    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.loops: dict[str, LoopThread] = {}
        self.roles: list[tuple[Any, LoopThread]] = []
        self.closed = False
        with _live_lock:
            _live.add(self)

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def loop(self, name: str) -> LoopThread:
        """The loop called ``name``, started on first use."""
        if self.closed:
            raise RuntimeError("this topology is closed; make a new one")
        if name not in self.loops:
            self.loops[name] = LoopThread(name)
        return self.loops[name]

    async def start(self, role: R, loop: str) -> R:
        """Start ``role`` on loop ``loop`` and wait for it, from a coroutine on another loop."""
        thread = self.loop(loop)
        self.roles.append((role, thread))
        await thread.acall(role.start())
        return role

    def start_now(self, role: R, loop: str) -> R:
        """Start ``role`` on loop ``loop`` from a plain (non-loop) thread."""
        thread = self.loop(loop)
        self.roles.append((role, thread))
        thread.call(role.start(), START_TIMEOUT)
        return role

    def close(self) -> None:
        """Stop roles (last started first), then their loops; close any socket left open."""
        if self.closed:
            return
        self.closed = True
        try:
            for role, thread in reversed(self.roles):
                if thread.running:
                    try:
                        thread.call(role.stop(), 2.0)
                    except Exception:
                        pass  # its loop is stopped next, which cancels whatever is left
        finally:
            for thread in self.loops.values():
                thread.stop()
            close_leftovers(self.trace)
            with _live_lock:
                _live.discard(self)


def live_topologies() -> list[Topology]:
    """Topologies not yet closed (for tests and for the exit hook)."""
    with _live_lock:
        return [t for t in _live if not t.closed]


@atexit.register
def _close_all_at_exit() -> None:
    for topo in live_topologies():
        topo.close()
