"""Shared fixtures: every test must leave no topology, loop thread or traced socket behind."""

from __future__ import annotations

import socket
import threading
import time

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


@pytest.fixture
def kernel_stamping():
    """Receive stamps (SO_TIMESTAMPNS) switched on for the whole system, as a lab role's
    stamping listener keeps them: the kernel switches them on a moment after the first socket
    asks (see TracedSocket.stamp_arrivals), so this waits until a byte comes back stamped, and
    holds a stamping listener open for the test."""
    listener = socket.create_server((sockets.LOOPBACK, 0))
    try:
        listener.setsockopt(socket.SOL_SOCKET, sockets._SO_TIMESTAMPNS, 1)
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            server, _ = listener.accept()
            with server:
                server.settimeout(5)
                deadline = time.monotonic() + 5
                while True:
                    client.sendall(b".")
                    _, ancillary, _, _ = server.recvmsg(1, sockets._STAMP_SPACE)
                    if ancillary:
                        break
                    assert time.monotonic() < deadline, "the kernel never stamped a received byte"
        yield
    finally:
        listener.close()
