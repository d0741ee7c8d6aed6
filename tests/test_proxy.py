"""The Envoy-like proxy: what it forwards, what it answers itself, and outside clients through
``serve server`` and ``serve proxy`` running as real processes."""

import concurrent.futures
import http.client
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

import pytest

from lablib.knobs import Config
from lablib.roles.proxy import PROXY_KNOBS, HttpProxy
from lablib.roles.server import SERVER_KNOBS, HttpServer
from lablib.topology import Topology
from lablib.trace import Trace

BIG = 8 * 1024 * 1024


class RecordingUpstream:
    """A bare upstream on a thread: keeps each request head it receives and answers 200."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.address = self.listener.getsockname()
        self.heads = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.heads.append(data.split(b"\r\n\r\n")[0].decode().lower())
                self.respond(conn)

    def respond(self, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")

    def close(self):
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def upstream():
    up = RecordingUpstream()
    yield up
    up.close()


@pytest.fixture
def proxy_to(upstream):
    with Topology(Trace()) as topo:
        yield topo.start_now(HttpProxy(topo.trace, Config(PROXY_KNOBS, {}), upstream.address), "proxy")


def test_requests_pass_through_and_the_downstream_connection_stays_open(upstream, proxy_to):
    conn = http.client.HTTPConnection(*proxy_to.address, timeout=5)
    for _ in range(3):
        conn.request("GET", "/", headers={"Connection": "keep-alive, x-hop", "X-Hop": "1", "X-End": "2"})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
        assert response.getheader("connection") is None  # the upstream's close is its own hop's
    conn.close()
    assert len(upstream.heads) == 3  # one upstream connection per request
    head = upstream.heads[0]
    assert "x-end: 2" in head and "x-hop" not in head and "keep-alive" not in head


def test_the_proxy_answers_expect_100_continue_itself_and_does_not_forward_it(upstream, proxy_to):
    with socket.create_connection(proxy_to.address, timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(1000).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"hello")
        assert b"200 OK" in s.recv(1000)
    assert "expect" not in upstream.heads[0]


def test_an_upstream_that_refuses_connections_gets_a_503():
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        address = closed.getsockname()
    with Topology(Trace()) as topo:
        proxy = topo.start_now(HttpProxy(topo.trace, Config(PROXY_KNOBS, {}), address), "proxy")
        conn = http.client.HTTPConnection(*proxy.address, timeout=5)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 503 and b"connection failure" in response.read()
        conn.close()


def test_a_proxy_needs_an_upstream():
    with pytest.raises(ValueError, match="proxy.upstream is not set"):
        HttpProxy(Trace(), Config(PROXY_KNOBS, {}))


# --- outside clients through `serve server` and `serve proxy` ------------------------------

def serve(*args):
    proc = subprocess.Popen([sys.executable, "-m", "lablib", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    proc.stdout.readline()
    return proc, int(match.group(1))


def stop(proc):
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err, err


def post_http_client(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("POST", "/upload", body=b"x" * BIG)
        response = conn.getresponse()
        response.read()
        return str(response.status)
    except OSError as exc:
        return type(exc).__name__
    finally:
        conn.close()


def post_curl(port, body_file):
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{body_file}",
                          f"http://127.0.0.1:{port}/upload"], capture_output=True, text=True, timeout=30)
    return out.stdout


@pytest.fixture(scope="module")
def early_413_server():
    proc, port = serve("server", "--set", "server.max_request_bytes=1024", "--set", "server.close_mode=close")
    yield port
    stop(proc)


@pytest.mark.parametrize("read_on, expected, at_least", [("off", "503", 18), ("on", "413", 19)])
def test_outside_clients_through_serve_proxy_see_the_503_or_with_the_fix_the_413(early_413_server, tmp_path,
                                                                                  read_on, expected, at_least):
    proc, port = serve("proxy", "--set", f"proxy.upstream=127.0.0.1:{early_413_server}",
                       "--set", f"proxy.read_response_on_write_error={read_on}")
    try:
        got = [post_http_client(port) for _ in range(20)]
        assert got.count(expected) >= at_least, got
        if shutil.which("curl"):
            body = tmp_path / "body"
            body.write_bytes(b"x" * BIG)
            got = [post_curl(port, body) for _ in range(20)]
            assert got.count(expected) >= at_least, got
    finally:
        stop(proc)


def test_directly_against_serve_server_http_client_is_reset_and_curl_gets_the_413(early_413_server, tmp_path):
    got = [post_http_client(early_413_server) for _ in range(20)]
    assert sum(g in ("ConnectionResetError", "BrokenPipeError") for g in got) >= 19, got
    if shutil.which("curl"):
        body = tmp_path / "body"
        body.write_bytes(b"x" * BIG)
        assert [post_curl(early_413_server, body) for _ in range(10)] == ["413"] * 10


def test_serve_proxy_without_an_upstream_says_what_to_set():
    out = subprocess.run([sys.executable, "-m", "lablib", "serve", "proxy"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "proxy.upstream is not set" in out.stderr and out.stderr.count("\n") == 1


def curl_http10_seconds(port):
    out = subprocess.run(["curl", "-sS", "--http1.0", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=30)
    code, seconds = out.stdout.split()
    assert code == "200", out
    return float(seconds)


@pytest.fixture(scope="module")
def streaming_server():
    proc, port = serve("server", "--set", "server.response_framing=chunked", "--set", "server.response_bytes=1KiB")
    yield port
    stop(proc)


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
@pytest.mark.parametrize("settings, low, high", [
    (["proxy.skip_delay_close=off"], 0.45, 0.6),
    (["proxy.skip_delay_close=on"], 0.0, 0.02),
    (["proxy.skip_delay_close=off", "proxy.close_mode=lingering"], 0.0, 0.02),
], ids=["delayed", "skip", "lingering"])
def test_curl_http10_through_serve_proxy_waits_for_the_delayed_close_unless_it_is_skipped(streaming_server, settings,
                                                                                          low, high):
    sets = [a for s in ["proxy.delayed_close_timeout=0.5", *settings] for a in ("--set", s)]
    proc, port = serve("proxy", "--set", f"proxy.upstream=127.0.0.1:{streaming_server}", *sets)
    try:
        seconds = statistics.median(curl_http10_seconds(port) for _ in range(5))
        assert low <= seconds < high
    finally:
        stop(proc)


class DyingUpstream(RecordingUpstream):
    """Reads each request head; closes the first ``fail`` connections without a response (as
    a server that timed out the connection would, seen from the request), answers the rest."""

    def __init__(self, fail):
        self.fail = fail
        super().__init__()

    def respond(self, conn):
        if len(self.heads) > self.fail:
            super().respond(conn)


@pytest.mark.parametrize("method, retry_on, status, attempts, written_retried", [
    ("GET", "none", 503, 1, False),
    ("GET", "reset", 200, 2, True),
    ("POST", "reset", 200, 2, True),  # sent again though the upstream may have acted on it
    ("POST", "reset-before-request", 503, 1, False),  # it was written: not sent again
    ("GET", "reset-before-request", 503, 1, False),  # the same for a GET: written is written
])
def test_an_upstream_that_closes_without_a_response(method, retry_on, status, attempts, written_retried):
    dying = DyingUpstream(fail=1)
    config = Config(PROXY_KNOBS, {"proxy.retry_on": retry_on, "proxy.retry_backoff": 0.001})
    try:
        with Topology(Trace()) as topo:
            proxy = topo.start_now(HttpProxy(topo.trace, config, dying.address), "proxy")
            conn = http.client.HTTPConnection(*proxy.address, timeout=5)
            conn.request(method, "/", body=b"x" * 10 if method == "POST" else None, headers={"X-Request-Id": "r1"})
            response = conn.getresponse()
            body = response.read()
            conn.close()
            record = topo.loop("proxy").call(proxy.exchanges.wait("r1", 5), 6)
    finally:
        dying.close()
    assert response.status == status
    if status == 503:
        assert b"reset reason: connection termination" in body
    assert (record["flag"], record["attempts"], record["written_retried"]) == ("UC", attempts, written_retried)
    assert len(dying.heads) == attempts


def test_the_pool_reuses_a_keep_alive_upstream_connection():
    with Topology(Trace()) as topo:
        server = topo.start_now(HttpServer(topo.trace, Config(SERVER_KNOBS, {})), "server")
        proxy = topo.start_now(HttpProxy(topo.trace, Config(PROXY_KNOBS, {}), server.address), "proxy")
        for i in range(3):
            conn = http.client.HTTPConnection(*proxy.address, timeout=5)  # a new client connection each time
            conn.request("GET", "/", headers={"X-Request-Id": f"r{i}"})
            assert conn.getresponse().read() == b"ok\n"
            conn.close()
        records = [topo.loop("proxy").call(proxy.exchanges.wait(f"r{i}", 5), 6) for i in range(3)]
    assert server.accepted_count == 1
    assert [r["upstreams"][0].split(" (")[1] for r in records][0] == "new)"
    assert all("reused after" in r["upstreams"][0] for r in records[1:])


@pytest.fixture(scope="module")
def silently_closing_server():
    """Closes every connection right after its one response, without Connection: close."""
    proc, port = serve("server", "--set", "server.max_requests_per_connection=1",
                       "--set", "server.connection_close_header=off")
    yield port
    stop(proc)


def eight_sessions_of_ten_gets(port):
    import requests

    def one_user(_):
        with requests.Session() as session:
            return [session.get(f"http://127.0.0.1:{port}/", timeout=10).status_code for _ in range(10)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return sum(pool.map(one_user, range(8)), [])


def test_requests_through_serve_proxy_meet_envoy_2715_and_the_access_log_says_503_uc(silently_closing_server):
    """Eight users share the proxy's one upstream connection; the server closes it after each
    response without saying so. Handed over at once, it is dead; after the next poll, the pool
    has seen the FIN and opens a new one for most of them."""
    codes, logs = {}, {}
    for attach in ("off", "on"):
        proc, port = serve("proxy", "--set", f"proxy.upstream=127.0.0.1:{silently_closing_server}",
                           "--set", "proxy.max_connections=1", "--set", f"proxy.attach_on_next_iteration={attach}")
        try:
            codes[attach] = eight_sessions_of_ten_gets(port)
        finally:
            proc.send_signal(signal.SIGINT)
            logs[attach], _ = proc.communicate(timeout=10)
    assert set(codes["off"]) <= {200, 503} and set(codes["on"]) <= {200, 503}
    assert codes["off"].count(503) >= 16, codes["off"]
    assert codes["on"].count(503) < codes["off"].count(503), (codes["on"].count(503), codes["off"].count(503))
    assert logs["off"].count(" 503 UC ") == codes["off"].count(503)
    assert "(handed over)" in logs["off"]


def test_curl_through_serve_proxy_reuses_the_pooled_connection(streaming_server):
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    proc, port = serve("proxy", "--set", f"proxy.upstream=127.0.0.1:{streaming_server}")
    try:
        for _ in range(2):
            out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/"],
                                 capture_output=True, text=True, timeout=30)
            assert out.stdout == "200", out
    finally:
        proc.send_signal(signal.SIGINT)
        log, _ = proc.communicate(timeout=10)
    first, second = [line for line in log.splitlines() if line.startswith("GET / ")]
    assert first.endswith("(new)") and "reused after" in second


@pytest.mark.parametrize("ending", ["FIN", "RST"])
def test_a_client_that_goes_away_mid_upload_gives_back_the_pools_only_connection(ending):
    with Topology(Trace()) as topo:
        server = topo.start_now(HttpServer(topo.trace, Config(SERVER_KNOBS, {"server.max_request_bytes": BIG})),
                                "server")
        proxy = topo.start_now(HttpProxy(topo.trace, Config(PROXY_KNOBS, {"proxy.max_connections": 1}),
                                         server.address), "proxy")
        leaving = socket.create_connection(proxy.address, timeout=5)
        leaving.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 1000)
        deadline = time.monotonic() + 5
        while server.accepted_count == 0 and time.monotonic() < deadline:  # the proxy took its connection
            time.sleep(0.001)
        if ending == "RST":
            leaving.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        leaving.close()
        conn = http.client.HTTPConnection(*proxy.address, timeout=5)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
        conn.close()
