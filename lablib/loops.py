"""LoopThread: an asyncio event loop in a thread of its own, one per role.

Each role (client, delay line, server, proxy) runs on its own loop so that it behaves like a
separate program: "the next loop iteration" of the proxy means what it means in Envoy, and a
busy server does not delay the client's reads. It also means the library works the same from
plain Python and from Jupyter, whose own loop is already running: nothing here calls
``asyncio.run`` on the caller's thread.

Not covered: running roles in separate processes (the GIL is shared; a role that computes
for long delays the others, which the labs avoid by doing only I/O).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
import weakref
from typing import Any, Awaitable, Coroutine, TypeVar

__all__ = ["LoopThread", "Completions", "unfinished_loops", "sleep_until"]

T = TypeVar("T")
_every: "weakref.WeakSet[LoopThread]" = weakref.WeakSet()


class LoopThread:
    """A started event loop on a daemon thread; :meth:`stop` cancels its tasks and joins it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=f"lablib-{name}", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait()
        _every.add(self)

    def __repr__(self) -> str:
        return f"<LoopThread {self.name} {'running' if self.running else 'stopped'}>"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self._ready.set()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on this loop; the returned future is safe to wait on anywhere."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on this loop and wait for it from another thread, at most ``timeout``
        seconds (then it is cancelled and TimeoutError raised)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(f"LoopThread.call from its own loop ({self.name}) would deadlock; await instead")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def acall(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Run ``coro`` on this loop and await it from another loop."""
        return asyncio.wrap_future(self.submit(coro))

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every task, let them finish their ``finally`` blocks, stop and close the loop."""
        if not self.running:
            if not self.loop.is_closed():
                self.loop.close()
            return
        try:
            self.call(_cancel_all_tasks(), timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError):
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.loop.close()


#: epoll waits whole milliseconds, rounded up: aiming this much early centres the error on zero
HALF_TICK = 0.0005


async def sleep_until(deadline: float) -> None:
    """Wait until about ``time.monotonic() == deadline``: within half a millisecond either way.

    ``asyncio.sleep(t)`` wakes up to a millisecond late, half a millisecond on average: epoll
    waits in whole milliseconds, rounded up. That lateness would add to every delay the delay
    line imposes and to every idle gap a client keeps, and shift race windows by milliseconds.
    Aiming half a tick early makes the error as often early as late. (Spinning to the exact
    instant was tried: with dozens of connections it costs more lateness than it saves.)
    """
    pause = deadline - time.monotonic() - HALF_TICK
    if pause > 0:
        await asyncio.sleep(pause)


async def _cancel_all_tasks() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    loop = asyncio.get_running_loop()
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()  # the threads asyncio.to_thread started (real clients)


def unfinished_loops() -> list[LoopThread]:
    """LoopThreads whose thread still runs or whose loop was not closed (for leak checks)."""
    return [lt for lt in list(_every) if lt.running or not lt.loop.is_closed()]


class Completions:
    """Named results that one loop publishes and another awaits (connection finished, link
    made). Keeps the most recent ``keep`` entries so a long-running server does not grow."""

    def __init__(self, keep: int = 4096) -> None:
        self._futures: collections.OrderedDict[str, concurrent.futures.Future[Any]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep

    def _future(self, key: str) -> concurrent.futures.Future[Any]:
        with self._lock:
            future = self._futures.get(key)
            if future is None:
                future = self._futures[key] = concurrent.futures.Future()
                while len(self._futures) > self._keep:
                    self._futures.popitem(last=False)
            return future

    def publish(self, key: str, value: Any = None) -> None:
        future = self._future(key)
        if not future.done():
            future.set_result(value)

    async def wait(self, key: str, timeout: float) -> Any:
        """The value published under ``key``; TimeoutError after ``timeout`` seconds."""
        future = self._future(key)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        finally:
            with self._lock:
                if future.done():
                    self._futures.pop(key, None)
