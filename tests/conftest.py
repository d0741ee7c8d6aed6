"""Shared fixtures: every test must leave no topology, loop thread or traced socket behind."""

from __future__ import annotations

import threading

import pytest

from lablib import sockets
from lablib.loops import unfinished_loops
from lablib.topology import live_topologies


@pytest.fixture(autouse=True)
def nothing_left_running():
    yield
    assert live_topologies() == [], "a topology was left open"
    assert unfinished_loops() == [], "an event loop thread was left running"
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("lablib-")]
    assert leftover == [], f"threads left running: {leftover}"
    with sockets._open_lock:
        still_open = list(sockets._open)
    assert still_open == [], f"traced sockets left open: {still_open}"
