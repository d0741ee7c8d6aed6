"""A long run leaves nothing behind: no file descriptor, thread, event loop or task."""

import asyncio
import gc
import os
import threading

import lablib
from lablib import loops, sockets
from lablib.loops import unfinished_loops
from lablib.roles.base import ListeningRole


def open_fds():
    return set(os.listdir("/proc/self/fd"))


def test_1000_trials_leave_no_fd_thread_or_task_behind(monkeypatch):
    lablib.run("close-basics", 5)  # warm up: imports and caches open what they keep
    alive_at_stop = []
    stop_role = ListeningRole.stop
    cancel_all = loops._cancel_all_tasks

    async def recording_stop(role):
        alive_at_stop.extend(t.get_coro().__qualname__ for t in role._tasks if not t.done())
        await stop_role(role)

    async def recording_cancel():
        me = asyncio.current_task()
        alive_at_stop.extend(t.get_coro().__qualname__ for t in asyncio.all_tasks() if t is not me)
        await cancel_all()

    monkeypatch.setattr(ListeningRole, "stop", recording_stop)
    monkeypatch.setattr(loops, "_cancel_all_tasks", recording_cancel)
    gc.collect()
    fds, threads = open_fds(), set(threading.enumerate())
    modes = ["drained", "unread", "shutdown", "linger0"]
    results = [lablib.run("close-basics", 250, {"close.mode": m}) for m in modes]
    assert sum(r.n for r in results) == 1000
    assert all(r.count("timeout") == 0 and r.count("error") == 0 for r in results)
    gc.collect()
    assert open_fds() - fds == set()
    assert set(threading.enumerate()) - threads == set()
    assert unfinished_loops() == []
    # when each role and loop stopped, only the roles' accept loops were still running: every
    # trial's and every connection's task had finished by itself
    assert set(alive_at_stop) == {"ListeningRole._accept_loop"}
    with sockets._open_lock:
        assert not sockets._open
