"""The HTTP clients a lab can drive: the lab's own raw client and real ones.

=========== ================================================================================
kind        what it is, and what it does when its upload fails (the server reset the
            connection mid-body)
=========== ================================================================================
raw         lablib's own client on a TracedSocket, so its calls are on the ladder. Writes the
            request head and body in one stream; after a failed write it gives up, or reads
            the response if ``read_after_write_error``.
http.client Python's standard library. Writes the head, then the body, in two ``send()``
            calls; stops at the failed write and raises (BrokenPipeError, ConnectionResetError).
requests    a requests Session on urllib3 2, which swallows EPIPE and ECONNRESET while
            sending the body and reads the response anyway (urllib3 connectionpool.py).
curl        the curl program. Keeps reading after a failed upload. It sends
            ``Expect: 100-continue`` for large bodies by default; the lab sets the header
            explicitly from ``expect_continue`` so that every size behaves the same.
=========== ================================================================================

:func:`post` (lab 01) uploads a body over HTTP/1.1 and reports the status. :func:`fetch`
(lab 03) makes one request on a fresh connection in HTTP/1.0 or in HTTP/1.1 with
Connection: close, by ``raw``, ``http.client`` or ``curl``, reads the whole response and
times it: from before connect() until the client knows the response is complete. For a
response without Content-Length to an HTTP/1.0 client, that moment is the server's FIN.

Each returns a :class:`Reply`: the status (or None), and a short outcome: the status code
(``complete`` for a whole 200 from :func:`fetch`), ``truncated`` (a response began but did
not arrive whole), ``reset`` (ECONNRESET or EPIPE before any response), ``closed`` (the
connection ended before any response), or ``timeout``.

Not covered: chunked uploads, TLS, and clients other than these four.
"""

from __future__ import annotations

import asyncio
import http.client
import shutil
import subprocess
import time
from dataclasses import dataclass

import h11

from .sockets import TracedSocket, errno_name
from .trace import Trace

__all__ = ["KINDS", "FETCH_KINDS", "HTTP_VERSIONS", "Reply", "post", "fetch", "judge", "available_kinds",
           "curl_path", "KeepAliveClient"]

KINDS = ("raw", "http.client", "requests", "curl")
#: the clients :func:`fetch` drives (requests speaks only HTTP/1.1)
FETCH_KINDS = ("raw", "http.client", "curl")
HTTP_VERSIONS = ("1.0", "1.1")
TARGET = "/upload"
#: what :func:`fetch` asks for
PAGE = "/"
#: how long a client that sent Expect: 100-continue waits before it sends the body anyway (curl's default)
EXPECT_WAIT = 1.0


@dataclass(frozen=True)
class Reply:
    outcome: str
    status: int | None = None
    error: str = ""
    #: raw client only: request bytes its kernel had taken when the upload ended (or failed)
    bytes_sent: int | None = None
    #: fetch only: seconds from before connect() until the response was complete (or the
    #: request failed), and the response body bytes received
    latency_s: float | None = None
    received: int | None = None


def curl_path() -> str | None:
    return shutil.which("curl")


def available_kinds() -> list[str]:
    return [k for k in KINDS if k != "curl" or curl_path()]


async def post(kind: str, address: tuple[str, int], body: bytes, *, trace: Trace, timeout: float,
               expect_continue: bool = False, read_after_write_error: bool = False,
               body_file: str | None = None) -> Reply:
    """POST ``body`` to ``address`` with client ``kind``; the real clients run in a thread."""
    if kind == "raw":
        return await _raw(address, body, trace, timeout, expect_continue, read_after_write_error)
    if kind == "http.client":
        return await asyncio.to_thread(_http_client, address, body, timeout)
    if kind == "requests":
        return await asyncio.to_thread(_requests, address, body, timeout)
    if kind == "curl":
        if body_file is None:
            raise ValueError("curl needs the body in a file (body_file)")
        return await asyncio.to_thread(_curl, address, body_file, timeout, expect_continue)
    raise ValueError(f"client kind {kind!r}: choose one of {', '.join(KINDS)}")


def judge(status: int | None, received: int, *, whole: bool, expected: int | None = None,
          failure: str = "reset") -> str:
    """The outcome of a fetch: ``failure`` (``reset``, ``closed``, ``timeout``) when no status
    arrived; ``truncated`` when the response did not arrive whole (``whole`` is what the
    client could tell: a short Content-Length or chunked body, an error mid-body) or a 200's
    body is not the ``expected`` size (a response ended by the close has no length to check:
    only the lab, knowing what the server sent, can tell); else ``complete`` for 200 and the
    status code for others.

    >>> judge(200, 1024, whole=True, expected=1024), judge(200, 512, whole=True, expected=1024)
    ('complete', 'truncated')
    """
    if status is None:
        return failure
    if not whole or (status == 200 and expected is not None and received != expected):
        return "truncated"
    return "complete" if status == 200 else str(status)


async def fetch(kind: str, address: tuple[str, int], *, http_version: str = "1.0", body: bytes = b"",
                expected: int | None = None, trace: Trace, timeout: float, body_file: str | None = None) -> Reply:
    """One request to ``address`` on a fresh connection, by client ``kind``: GET, or POST of
    ``body`` when there is one; HTTP/1.0, or HTTP/1.1 with Connection: close. ``expected`` is
    the size of a whole 200 body. The real clients run in a thread; curl needs ``body_file``
    for a body."""
    if http_version not in HTTP_VERSIONS:
        raise ValueError(f"http_version {http_version!r}: choose one of {', '.join(HTTP_VERSIONS)}")
    if kind == "raw":
        return await _raw_fetch(address, body, http_version, expected, trace, timeout)
    if kind == "http.client":
        return await asyncio.to_thread(_http_client_fetch, address, body, http_version, expected, timeout)
    if kind == "curl":
        if body and body_file is None:
            raise ValueError("curl needs the body in a file (body_file)")
        return await asyncio.to_thread(_curl_fetch, address, body_file if body else None, http_version,
                                       expected, timeout)
    raise ValueError(f"client kind {kind!r} cannot fetch: choose one of {', '.join(FETCH_KINDS)}")


# --- raw --------------------------------------------------------------------------------------

async def _raw(address: tuple[str, int], body: bytes, trace: Trace, timeout: float, expect_continue: bool,
               read_after_write_error: bool) -> Reply:
    c = await TracedSocket.connect(address, trace, "client")
    conn = h11.Connection(h11.CLIENT)
    headers = [(b"host", b"lab"), (b"content-type", b"application/octet-stream"),
               (b"content-length", str(len(body)).encode())]
    if expect_continue:
        headers.append((b"expect", b"100-continue"))
    head = conn.send(h11.Request(method=b"POST", target=TARGET, headers=headers)) or b""
    try:
        if expect_continue:
            await c.sendall(head)
            try:  # wait for 100 Continue, or a final response that makes the body unnecessary
                early = await asyncio.wait_for(_next_response(c, conn, informational=True), EXPECT_WAIT)
            except TimeoutError:
                early = None
            if early is not None and early.status_code >= 200:
                reply = await _finish(c, conn, early)
                return Reply(reply.outcome, reply.status, "answered before the body", c.bytes_sent)
            head = b""
        payload = head + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        write_error = ""
        try:
            await c.sendall(payload)
        except OSError as exc:
            write_error = errno_name(exc)
            if not read_after_write_error:
                return Reply("reset", error=write_error, bytes_sent=c.bytes_sent)
        try:
            response = await asyncio.wait_for(_next_response(c, conn), timeout)
        except OSError as exc:
            return Reply("reset", error=errno_name(exc), bytes_sent=c.bytes_sent)
        if response is None:
            return Reply("closed", error="EOF before any response", bytes_sent=c.bytes_sent)
        reply = await _finish(c, conn, response)
        return Reply(reply.outcome, reply.status, f"write failed first: {write_error}" if write_error else "",
                     c.bytes_sent)
    finally:
        c.close()


async def _next_response(c: TracedSocket, conn: h11.Connection, informational: bool = False) -> h11.Response | None:
    """The next response head (100 Continue too, if ``informational``); None at EOF."""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if event is h11.NEED_DATA:
            data = await c.recv()
            conn.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse) and informational:
            return event  # type: ignore[return-value]
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.ConnectionClosed):
            return None


async def _finish(c: TracedSocket, conn: h11.Connection, response: h11.Response) -> Reply:
    """Read the rest of the response (what a client does before it reports the status)."""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await c.recv())
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    except (OSError, h11.ProtocolError):
        pass  # the status line arrived: that is what the client reports
    return Reply(str(response.status_code), response.status_code)


@dataclass
class _Reading:
    """What has arrived of one response so far (kept when the read fails part-way)."""

    status: int | None = None
    received: int = 0
    #: the response reached its end (Content-Length, last chunk); False if the peer closed first
    whole: bool = False


async def _read_reply(c: TracedSocket, conn: h11.Connection, got: _Reading) -> None:
    """Read one response on ``c`` into ``got``, until its end or the peer's close. Raises the
    socket's error, or h11's for a malformed response or EOF where a length says more comes."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await c.recv())
        elif isinstance(event, h11.Response):
            got.status = event.status_code
        elif isinstance(event, h11.Data):
            got.received += len(event.data)
        elif isinstance(event, h11.EndOfMessage):
            got.whole = True
            return
        elif isinstance(event, h11.ConnectionClosed):
            return


def _request_bytes(conn: h11.Connection, method: bytes, target: str, headers: list[tuple[bytes, bytes]],
                   body: bytes) -> bytes:
    """One whole request as ``conn`` frames it."""
    data = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
    data += (conn.send(h11.Data(data=body)) or b"") if body else b""
    return data + (conn.send(h11.EndOfMessage()) or b"")


async def _raw_fetch(address: tuple[str, int], body: bytes, http_version: str, expected: int | None,
                     trace: Trace, timeout: float) -> Reply:
    started = time.perf_counter()
    c = await TracedSocket.connect(address, trace, "client")
    conn = h11.Connection(h11.CLIENT)
    headers = [(b"host", b"lab")]
    if body:
        headers += [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(body)).encode())]
    if http_version == "1.1":
        headers.append((b"connection", b"close"))
    payload = _request_bytes(conn, b"POST" if body else b"GET", PAGE, headers, body)
    if http_version == "1.0":  # h11 writes HTTP/1.1 only; the rest of its bytes are valid 1.0
        payload = payload.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    got, error = _Reading(), ""
    try:
        async with asyncio.timeout(timeout):
            await c.sendall(payload)
            await _read_reply(c, conn, got)
    except TimeoutError:
        return Reply("timeout", got.status, "timeout", latency_s=time.perf_counter() - started, received=got.received)
    except OSError as exc:
        error, failure = errno_name(exc), "reset"
    except h11.RemoteProtocolError as exc:  # EOF mid-body with a length to check, or a bad response
        error, failure = f"protocol error: {exc}", "closed"
    else:
        failure = "closed"
    finally:
        c.close()
    outcome = judge(got.status, got.received, whole=got.whole, expected=expected, failure=failure)
    return Reply(outcome, got.status, error, c.bytes_sent, time.perf_counter() - started, got.received)


class KeepAliveClient:
    """The raw client as a keep-alive load generator (lab 04): each request takes an idle
    connection to ``address`` or opens a new one, and puts it back after a complete response.

    It has no idle timeout and no check before reuse: it is meant for a peer that never closes
    an idle connection (the lab's proxy has no downstream idle timeout), so that the only
    keep-alive race of a run is the one between the proxy and its upstream. A connection that
    fails is closed and the request reported (``reset`` or ``closed``), not retried.

    Not covered: pipelining, and peers that close idle connections (lab 02 is about those).
    """

    def __init__(self, address: tuple[str, int], trace: Trace, actor: str = "client") -> None:
        self.address, self.trace, self.actor = address, trace, actor
        self.idle: list[tuple[TracedSocket, h11.Connection]] = []

    async def request(self, method: str, target: str = PAGE, *, body: bytes = b"",
                      headers: tuple[tuple[bytes, bytes], ...] = ()) -> Reply:
        """One request; its Reply carries the status, the body size and the latency."""
        started = time.perf_counter()
        if self.idle:
            c, conn = self.idle.pop()
        else:
            c, conn = await TracedSocket.connect(self.address, self.trace, self.actor), h11.Connection(h11.CLIENT)
        fields = [(b"host", b"lab"), *headers]
        if body or method == "POST":
            fields.append((b"content-length", str(len(body)).encode()))
        got = _Reading()
        try:
            await c.sendall(_request_bytes(conn, method.encode(), target, fields, body))
            await _read_reply(c, conn, got)
            if not got.whole:
                raise h11.RemoteProtocolError("connection closed before the response ended")
        except (OSError, h11.ProtocolError) as exc:
            c.close()
            error = errno_name(exc) if isinstance(exc, OSError) else f"protocol error: {exc}"
            return Reply("reset" if isinstance(exc, OSError) else "closed", got.status, error,
                         latency_s=time.perf_counter() - started, received=got.received)
        except BaseException:  # cancelled (the trial's deadline): the connection is in an unknown state
            c.close()
            raise
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.idle.append((c, conn))
        else:
            c.close()
        return Reply(str(got.status), got.status, latency_s=time.perf_counter() - started, received=got.received)

    def close(self) -> None:
        """Close the idle connections."""
        while self.idle:
            self.idle.pop()[0].close()


# --- real clients (blocking, run in a thread) -----------------------------------------------

class _Http10Connection(http.client.HTTPConnection):
    """http.client speaking HTTP/1.0 (as PHP's file_get_contents, ab and old health checkers
    do): the version it writes is a class attribute."""

    _http_vsn = 10
    _http_vsn_str = "HTTP/1.0"


def _http_client_fetch(address: tuple[str, int], body: bytes, http_version: str, expected: int | None,
                       timeout: float) -> Reply:
    started = time.perf_counter()
    cls = _Http10Connection if http_version == "1.0" else http.client.HTTPConnection
    conn = cls(*address, timeout=timeout)
    headers = {"Connection": "close"} if http_version == "1.1" else {}
    if body:
        headers["Content-Type"] = "application/octet-stream"
    status: int | None = None
    received = 0
    try:
        conn.request("POST" if body else "GET", PAGE, body=body or None, headers=headers)
        response = conn.getresponse()
        status = response.status
        received = len(response.read())
        return Reply(judge(status, received, whole=True, expected=expected), status,
                     latency_s=time.perf_counter() - started, received=received)
    except http.client.IncompleteRead as exc:
        return Reply("truncated", status, "IncompleteRead", latency_s=time.perf_counter() - started,
                     received=len(exc.partial))
    except http.client.RemoteDisconnected:
        return Reply("closed", error="RemoteDisconnected", latency_s=time.perf_counter() - started)
    except TimeoutError:
        return Reply("timeout", status, "timeout", latency_s=time.perf_counter() - started)
    except OSError as exc:
        return Reply(judge(status, received, whole=False), status, errno_name(exc),
                     latency_s=time.perf_counter() - started, received=received)
    finally:
        conn.close()


def _http_client(address: tuple[str, int], body: bytes, timeout: float) -> Reply:
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("POST", TARGET, body=body, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        response.read()
        return Reply(str(response.status), response.status)
    except http.client.RemoteDisconnected:
        return Reply("closed", error="RemoteDisconnected")
    except TimeoutError:
        return Reply("timeout", error="timeout")
    except OSError as exc:
        return Reply("reset", error=errno_name(exc))
    finally:
        conn.close()


def _requests(address: tuple[str, int], body: bytes, timeout: float) -> Reply:
    import requests

    with requests.Session() as session:
        try:
            response = session.post(f"http://{address[0]}:{address[1]}{TARGET}", data=body, timeout=timeout,
                                    headers={"Content-Type": "application/octet-stream"})
            return Reply(str(response.status_code), response.status_code)
        except requests.Timeout:
            return Reply("timeout", error="timeout")
        except requests.ConnectionError as exc:
            cause = _socket_error(exc)
            if isinstance(cause, http.client.RemoteDisconnected):
                return Reply("closed", error="RemoteDisconnected")
            return Reply("reset", error=errno_name(cause))


def _socket_error(exc: BaseException) -> BaseException:
    """The socket-level error inside a requests exception (urllib3 wraps it in ProtocolError
    or MaxRetryError, as an argument, a ``reason`` or a cause)."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, http.client.RemoteDisconnected) or (isinstance(e, OSError) and e.errno):
            return e
        todo += [x for x in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
                 if isinstance(x, BaseException)]
    return exc


#: curl exit codes that mean the connection failed, and what they mean here
_CURL_EXIT = {52: "closed", 55: "reset", 56: "reset", 28: "timeout"}
#: curl's exit code for a transfer that ended before its announced end (CURLE_PARTIAL_FILE)
_CURL_PARTIAL = 18


def _curl(address: tuple[str, int], body_file: str, timeout: float, expect_continue: bool) -> Reply:
    argv = [curl_path() or "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", f"{timeout:g}",
            "-H", "Content-Type: application/octet-stream",
            "-H", "Expect: 100-continue" if expect_continue else "Expect:",
            "--data-binary", f"@{body_file}", f"http://{address[0]}:{address[1]}{TARGET}"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return Reply("timeout", error="curl did not exit")
    code = out.stdout.strip()
    if code.isdigit() and code != "000":
        return Reply(code, int(code))
    return Reply(_CURL_EXIT.get(out.returncode, f"curl exit {out.returncode}"), error=out.stderr.strip()[:200])


def _curl_fetch(address: tuple[str, int], body_file: str | None, http_version: str, expected: int | None,
                timeout: float) -> Reply:
    argv = [curl_path() or "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
            "--max-time", f"{timeout:g}"]
    argv += ["--http1.0"] if http_version == "1.0" else ["--http1.1", "-H", "Connection: close"]
    if body_file:
        argv += ["-H", "Content-Type: application/octet-stream", "-H", "Expect:", "--data-binary", f"@{body_file}"]
    argv.append(f"http://{address[0]}:{address[1]}{PAGE}")
    started = time.perf_counter()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return Reply("timeout", error="curl did not exit", latency_s=time.perf_counter() - started)
    code, size, total = (out.stdout.split() + ["", "", ""])[:3]
    status = int(code) if code.isdigit() and code != "000" else None
    received = int(size) if size.isdigit() else 0
    latency = float(total) if total.replace(".", "", 1).isdigit() else time.perf_counter() - started
    error = out.stderr.strip()[:200]
    if out.returncode == 28:
        return Reply("timeout", status, error, latency_s=latency, received=received)
    whole = out.returncode == 0
    failure = _CURL_EXIT.get(out.returncode, f"curl exit {out.returncode}")
    if out.returncode not in (0, _CURL_PARTIAL, *_CURL_EXIT):
        return Reply(failure, status, error, latency_s=latency, received=received)
    return Reply(judge(status, received, whole=whole, expected=expected, failure=failure), status, error,
                 latency_s=latency, received=received)
