"""clients.fetch against misbehaving servers: each one a socket on a thread that answers one
request with exactly the bytes (and the ending) the test gives it."""

import asyncio
import socket
import struct
import threading

import pytest

from lablib import clients
from lablib.clients import judge
from lablib.trace import Trace

KINDS = ["raw", "http.client"] + (["curl"] if clients.curl_path() else [])


class OneShotServer:
    """Reads one request head, sends ``reply``, then ends the connection by ``ending``
    (``close``: FIN; ``reset``: SO_LINGER 0; ``hold``: keeps it open until stopped)."""

    def __init__(self, reply: bytes, ending: str = "close"):
        self.reply, self.ending = reply, ending
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.address = self.listener.getsockname()
        self.request = b""
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.listener.accept()
        with conn:
            while b"\r\n\r\n" not in self.request:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                self.request += chunk
            conn.sendall(self.reply)
            if self.ending == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif self.ending == "hold":
                self.stopped.wait(10)

    def close(self):
        self.stopped.set()
        self.thread.join(10)
        self.listener.close()


@pytest.fixture
def server_that_sends(request):
    servers = []

    def start(reply, ending="close"):
        servers.append(OneShotServer(reply, ending))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def fetch(kind, server, version="1.0", expected=None, timeout=5.0):
    return asyncio.run(clients.fetch(kind, server.address, http_version=version, expected=expected,
                                     trace=Trace(), timeout=timeout))


@pytest.mark.parametrize("kind", KINDS)
def test_a_response_ended_by_the_close_is_complete_when_all_of_it_came(server_that_sends, kind):
    server = server_that_sends(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 100)
    reply = fetch(kind, server, expected=100)
    assert (reply.outcome, reply.status, reply.received) == ("complete", 200, 100)
    assert 0 < reply.latency_s < 1
    assert server.request.startswith(b"GET / HTTP/1.0\r\n")


@pytest.mark.parametrize("kind", KINDS)
def test_a_response_ended_by_the_close_too_early_only_the_lab_can_call_truncated(server_that_sends, kind):
    server = server_that_sends(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 50)
    assert fetch(kind, server, expected=100).outcome == "truncated"


@pytest.mark.parametrize("kind", KINDS)
def test_a_content_length_not_met_before_the_fin_is_truncated(server_that_sends, kind):
    server = server_that_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
    reply = fetch(kind, server, version="1.1")
    assert (reply.outcome, reply.status) == ("truncated", 200)
    assert b"connection: close" in server.request.lower() and b" HTTP/1.1\r\n" in server.request


@pytest.mark.parametrize("kind", KINDS)
def test_a_reset_after_the_head_is_truncated_and_before_any_response_is_reset(server_that_sends, kind):
    head_then_rst = server_that_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx", ending="reset")
    assert fetch(kind, head_then_rst).outcome == "truncated"
    nothing_then_rst = server_that_sends(b"", ending="reset")
    assert fetch(kind, nothing_then_rst).outcome == "reset"


@pytest.mark.parametrize("kind", KINDS)
def test_a_fin_before_any_response_is_closed(server_that_sends, kind):
    assert fetch(kind, server_that_sends(b"")).outcome == "closed"


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_waiting_for_a_fin_that_never_comes_times_out(server_that_sends, kind):
    server = server_that_sends(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nxx", ending="hold")
    reply = fetch(kind, server, timeout=0.5)
    assert reply.outcome == "timeout" and reply.latency_s >= 0.45


def test_judge_reports_the_status_of_a_whole_non_200():
    assert judge(413, 17, whole=True, expected=1024) == "413"
    assert judge(None, 0, whole=False, failure="closed") == "closed"
