"""A long run leaves nothing behind: no file descriptor, thread, event loop or task."""

import gc
import os
import threading

import lablib
from lablib import sockets
from lablib.loops import unfinished_loops


def open_fds():
    return set(os.listdir("/proc/self/fd"))


def test_1000_trials_leave_no_fd_thread_or_task_behind():
    lablib.run("close-basics", 5)  # warm up: imports and caches open what they keep
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
    with sockets._open_lock:
        assert not sockets._open
