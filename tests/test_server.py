"""The HTTP server role, driven by real clients: http.client and curl."""

import asyncio
import http.client
import shutil
import socket
import subprocess
import time

import pytest

from lablib.knobs import Config
from lablib.roles.server import SERVER_KNOBS, HttpServer
from lablib.topology import Topology
from lablib.trace import Trace

BIG = 8 * 1024 * 1024


@pytest.fixture
def serve():
    topologies = []

    def start(**knobs):
        topo = Topology(Trace())
        topologies.append(topo)
        server = topo.start_now(HttpServer(topo.trace, Config(SERVER_KNOBS, knobs)), "server")
        return server

    yield start
    for topo in topologies:
        topo.close()


def post(address, body):
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("POST", "/upload", body=body)
        return conn.getresponse().status
    except OSError as exc:
        return type(exc).__name__
    finally:
        conn.close()


def test_answers_and_keeps_the_connection_alive(serve):
    server = serve()
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    for _ in range(3):
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
    conn.close()
    assert server.requests == 3


def test_an_idle_connection_is_closed_with_a_fin_after_the_keepalive_timeout(serve):
    server = serve(**{"server.keepalive_timeout": 0.1})
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(1000).endswith(b"ok\n")
        started = time.monotonic()
        assert s.recv(1000) == b""  # EOF: a FIN, not a reset
        assert 0.09 <= time.monotonic() - started < 1.0
    summary = asyncio.run(server.finished.wait("#0", 5))
    assert summary["ended_by"] == "keep-alive timeout" and summary["sent"] == "FIN"
    assert 0 <= summary["keepalive_late_ms"] < 100  # how late its timer fired: a millisecond or so


def test_the_last_allowed_response_announces_the_close(serve):
    server = serve(**{"server.max_requests_per_connection": 2})
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    conn.request("GET", "/")
    first = conn.getresponse()
    assert first.getheader("connection") is None and first.read() == b"ok\n"
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.getheader("connection") == "close" and response.read() == b"ok\n"
    conn.close()


def test_an_early_413_then_close_resets_http_client_mid_upload(serve):
    server = serve(**{"server.max_request_bytes": 1024, "server.close_mode": "close"})
    outcomes = [post(server.address, b"x" * BIG) for _ in range(5)]
    assert set(outcomes) <= {"ConnectionResetError", "BrokenPipeError"}, outcomes


@pytest.mark.parametrize("mode", ["lingering", "delayed"])
def test_lingering_and_delayed_close_let_http_client_read_the_413(serve, mode):
    server = serve(**{"server.max_request_bytes": 1024, "server.close_mode": mode})
    assert [post(server.address, b"x" * BIG) for _ in range(5)] == [413] * 5


def test_a_small_body_gets_200(serve):
    server = serve(**{"server.max_request_bytes": 1024})
    assert post(server.address, b"x" * 100) == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_reads_the_413_even_after_its_upload_fails(serve, tmp_path):
    server = serve(**{"server.max_request_bytes": 1024, "server.close_mode": "close"})
    body = tmp_path / "body"
    body.write_bytes(b"x" * BIG)
    host, port = server.address
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{body}",
                          f"http://{host}:{port}/"], capture_output=True, text=True, timeout=30)
    assert out.stdout == "413", out.stderr
