"""HttpProxy: an Envoy-like HTTP/1.1 reverse proxy whose failure handling is the knobs.

For each request it accepts, it takes a connection to ``proxy.upstream`` from its pool
(:mod:`lablib.roles.upstream_pool`: keep-alive connections, Envoy's cluster idle_timeout,
max_requests_per_connection and the attach-on-next-iteration hand-over of PR #2871) and
forwards the request head at once and the body as it streams in, one chunk at a time (a chunk
read from the client is written upstream before the next is read, so at most one chunk is
held). Then it reads the upstream response and forwards it. When the upstream connection
resets or closes before any response, the proxy answers ``503`` (flag ``UC``), unless
``proxy.retry_on`` lets it send the request again on another connection
(:func:`lablib.pool.upstream_retry`; a request whose body is still streaming is never retried).
Each request's record (attempts, flags, the upstream connections used) is published under
its ``x-request-id`` header, when it has one, in ``exchanges``.

The order of events is explicit, because it decides the outcome of envoy#2929. While the
proxy writes the request body, it does not read from the upstream socket. When a write fails
(the upstream closed with the body unread, so its kernel sent RST), what happens next is
``proxy.read_response_on_write_error``:

* off, as Envoy's router did in #2929: the stream ends with a ``503`` made by the proxy
  (Envoy's access log flag ``UC``), whatever response bytes already sit in the upstream
  socket's receive queue;
* on: the proxy first reads what arrived (on Linux the early 413 is still there after the
  RST) and forwards a complete response if there is one.

A proxy that kept a reader on the upstream socket during the upload would not meet this
choice: asyncio runs a socket's reader callback before its writer callback in the same poll,
so the 413 would be read (and forwarded) before the failed write was seen, and the case would
hide.

A request without Host (HTTP/1.0 allows it; http.client leaves it out) is sent on with
``Host: upstream``, as Envoy does with ``default_host_for_http_10``.

``proxy.buffer_request`` turns it into a buffering middlebox: the whole request is read
first, then sent. ``proxy.max_request_bytes`` makes the proxy refuse a request itself: 413
on seeing its Content-Length, before any of the body is read. A client waiting on
``Expect: 100-continue`` gets ``100 Continue`` from the proxy itself, as from Envoy by
default; the header is not forwarded.

A response keeps its framing: one the upstream framed by Content-Length keeps it, one
without (chunked upstream) goes to an HTTP/1.1 client chunked and to an HTTP/1.0 client
ended by the close, as Envoy sends it. The downstream connection closes after a response when
its request was not read to the end, the client asked (Connection: close), or spoke HTTP/1.0.
How it closes is :func:`close_choice`: ``proxy.close_mode`` (Envoy's default is the delayed
close, ``delayed_close_timeout`` 1 s, which reads and discards the rest of an upload so that
the client gets its response instead of an RST, and sends the FIN only at the end), unless
``proxy.skip_delay_close`` says the delay is not needed.

The response is read whole from upstream before any of it is sent downstream (the labs'
bodies are small). Not covered: streaming a response, forwarding a response before the
request has been sent in full, retries on a 5xx response, and a downstream idle timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Callable

import h11

from ..closing import CLOSE_MODES, end_connection
from ..http import (
    content_length,
    continue_bytes,
    describe_request,
    forwardable,
    has_length,
    response_bytes,
)
from ..knobs import Config, address, choice, flag, integer, nbytes, seconds
from ..loops import Completions
from ..pool import RETRY_ON, retry_backoff, upstream_retry
from ..sockets import TracedSocket, errno_name
from ..trace import Trace
from .base import ListeningRole
from .upstream_pool import Upstream, UpstreamPool

__all__ = ["HttpProxy", "PROXY_KNOBS", "CLOSE_FRAMING_KNOBS", "POOL_KNOBS",
           "ONE_REQUEST_PER_CONNECTION", "UC_BODY", "close_choice"]

#: the body of Envoy's 503 for an upstream that reset or closed before it responded
UC_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
TOO_LARGE_BODY = b"Payload Too Large"
#: the Host the proxy gives a request that came without one (HTTP/1.0 allows that), as Envoy's
#: default_host_for_http_10 does
DEFAULT_HOST = b"upstream"
UF_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
CHUNK = 65536
SKIP_DELAY_CLOSE = ("off", "on", "always")

PROXY_KNOBS = (
    address("proxy.upstream", "Where the proxy sends requests (HOST:PORT; serve proxy needs it)",
            models="Envoy cluster endpoint"),
    flag("proxy.read_response_on_write_error", False,
         "When writing the request upstream fails, first read and forward a response that already arrived",
         models="Envoy in envoy#2929 (off: 503 at once); the same shape in envoy#38697", real_default="off"),
    flag("proxy.buffer_request", False, "Read the whole request before sending any of it upstream",
         models="a buffering middlebox (toxiproxy#72); Envoy's buffer filter", real_default="off"),
    choice("proxy.close_mode", "delayed", CLOSE_MODES,
           "How the proxy closes a downstream connection after a response: to a request it did not read "
           "to the end, to HTTP/1.0, or with Connection: close",
           models="Envoy HCM close: FlushWriteAndDelay (delayed), or close(fd) with delayed_close_timeout 0",
           real_default="Envoy: delayed"),
    seconds("proxy.delayed_close_timeout", 1.0, "delayed and lingering modes: how long to read and discard",
            high=60.0, models="Envoy HCM delayed_close_timeout (0: close at once)", real_default="1 s"),
    choice("proxy.skip_delay_close", "on", SKIP_DELAY_CLOSE,
           "Close at once, not by close_mode, when no RST can follow: the request was read to the end, or "
           "an HTTP/1.0 response is framed by the close; always: also when body bytes are unread (unsafe)",
           models="Envoy runtime flag envoy.reloadable_features.skip_delay_close (PR #19863)",
           real_default="Envoy 1.22+: on; before: off"),
    nbytes("proxy.max_request_bytes", 0,
           "Answer 413 itself, before reading the body, above this Content-Length (0: no limit)",
           models="Envoy buffer filter max_request_bytes; nginx client_max_body_size", real_default="no limit; 1 MiB"),

    seconds("proxy.upstream_idle_timeout", 3600.0,
            "Close an upstream connection idle this long in the pool (0: never); keep it below the upstream's "
            "keep-alive timeout", high=86400.0,
            models="Envoy cluster common_http_protocol_options.idle_timeout; Istio DestinationRule "
                   "connectionPool.http.idleTimeout", real_default="1 h"),
    flag("proxy.attach_on_next_iteration", True,
         "Give a freed upstream connection to a waiting request only after the loop's next poll, so a FIN "
         "that came with the response is read first", models="Envoy PR #2871 (envoy#2715)",
         real_default="on since Envoy 1.7"),
    integer("proxy.max_connections", 1024, "Upstream connections the pool may open; more requests wait", low=1,
            high=100_000, models="Envoy cluster circuit_breakers max_connections", real_default="1024"),
    integer("proxy.max_requests_per_connection", 0, "Close an upstream connection after this many requests "
            "(0: no limit)", models="Envoy upstream HttpProtocolOptions max_requests_per_connection",
            real_default="unlimited"),
    choice("proxy.retry_on", "none", RETRY_ON,
           "Send a request again when the upstream reset or closed before responding: never, always, or only "
           "if none of it was written", models="Envoy route retry_policy retry_on (x-envoy-retry-on)",
           real_default="no retry policy"),
    integer("proxy.num_retries", 1, "How many times a request may be sent again", high=10,
            models="Envoy retry_policy num_retries", real_default="1"),
    seconds("proxy.retry_backoff", 0.025, "Base of the jittered exponential wait before a retry", high=10.0,
            models="Envoy retry_back_off base_interval", real_default="25 ms"),
)

#: the knobs lab 03 adds (the labs before it leave them at their defaults)
CLOSE_FRAMING_KNOBS = ("proxy.skip_delay_close", "proxy.max_request_bytes")
#: the knobs of the upstream pool (lab 04); labs 01 and 03 open one connection per request
POOL_KNOBS = ("proxy.upstream_idle_timeout", "proxy.attach_on_next_iteration", "proxy.max_connections",
              "proxy.max_requests_per_connection", "proxy.retry_on", "proxy.num_retries", "proxy.retry_backoff")
#: the pool setting of the labs before lab 04: a fresh upstream connection for every request
ONE_REQUEST_PER_CONNECTION = {"proxy.max_requests_per_connection": 1}


class HttpProxy(ListeningRole):
    """The proxy on 127.0.0.1 (port 0 unless ``port``), sending to ``upstream``."""

    actor = "proxy"
    stamp_arrivals = True  # the upstream pool dates idleness from the kernel's receive stamps

    def __init__(self, trace: Trace, config: Config, upstream: tuple[str, int] | None = None,
                 actor: str = "proxy", port: int = 0, seed: int | None = None,
                 access_log: Callable[[str], None] | None = None) -> None:
        super().__init__(trace, actor, port)
        #: called with one line per request (``serve proxy`` prints them), in the spirit of
        #: Envoy's access log: method, target, status, flag, attempts, upstream connections
        self.access_log = access_log
        self.config = config
        self.upstream = upstream or config["proxy.upstream"]
        if not self.upstream:
            raise ValueError("proxy.upstream is not set: give HOST:PORT, for example --set proxy.upstream=127.0.0.1:8080")
        self.requests = 0
        self.pool = UpstreamPool(trace, actor, self.upstream, max_connections=config["proxy.max_connections"],
                                 max_requests=config["proxy.max_requests_per_connection"],
                                 idle_timeout=config["proxy.upstream_idle_timeout"],
                                 attach_on_next_iteration=config["proxy.attach_on_next_iteration"])
        #: per request with an x-request-id header: what became of it (see :meth:`_exchange`)
        self.exchanges = Completions()
        self._rng = random.Random(seed)

    async def stop(self) -> None:
        await self.pool.close()
        await super().stop()

    async def serve(self, down: TracedSocket) -> None:
        dconn = h11.Connection(h11.SERVER)
        summary: dict[str, Any] = {"responses": [], "upstream_error": "", "held_ms": 0.0, "discarded": 0,
                                   "ended_by": ""}
        try:
            while True:
                request = await _next_event(down, dconn)
                if not isinstance(request, h11.Request):
                    summary["ended_by"] = summary["ended_by"] or "client closed"
                    return
                self.requests += 1
                self.note(down, describe_request(request))
                limit = self.config["proxy.max_request_bytes"]
                if limit and (content_length(request) or 0) > limit:  # before the body, as Envoy's buffer filter
                    await self._respond(down, dconn, 413, TOO_LARGE_BODY, (), "made (max_request_bytes)", summary)
                    return
                if dconn.they_are_waiting_for_100_continue:  # as Envoy does by default: answer it here
                    await down.sendall(continue_bytes(dconn))
                if not await self._exchange(down, dconn, request, summary):
                    return
                dconn.start_next_cycle()
        except (OSError, h11.ProtocolError) as exc:
            self.gave_up(down, summary, exc)
        finally:
            self.conclude(down, summary)

    async def _exchange(self, down: TracedSocket, dconn: h11.Connection, request: h11.Request,
                        summary: dict[str, Any]) -> bool:
        """One request through the proxy; True if the downstream connection stays open.

        Its record: ``status``; ``flag`` (``UC``, ``UF`` or ``-``, as in Envoy's access log);
        ``attempts``; ``written_retried`` (a request that had been written upstream was sent
        again); ``upstreams`` (each attempt's connection and how the pool gave it); ``idle_ms``
        (how long the first attempt's connection had been idle in the pool; None if new)."""
        record: dict[str, Any] = {"method": request.method.decode(), "status": 0, "flag": "-", "attempts": 0,
                                  "written_retried": False, "upstreams": [], "idle_ms": None}
        answer = await self._ask_upstream(down, dconn, request, summary, record)
        if answer is None:
            return False  # the client went away mid-upload
        status, body, headers, how, length = answer
        record["status"] = status
        try:
            return await self._respond(down, dconn, status, body, headers, how, summary, length=length)
        finally:
            rid = dict(request.headers).get(b"x-request-id")
            if rid:
                self.exchanges.publish(rid.decode(errors="replace"), record)
            if self.access_log is not None:
                self.access_log(access_line(request, record))

    async def _ask_upstream(self, down: TracedSocket, dconn: h11.Connection, request: h11.Request,
                            summary: dict[str, Any], record: dict[str, Any],
                            ) -> tuple[int, bytes, list[tuple[bytes, bytes]], str, bool] | None:
        """Send the request upstream and read the response, retrying as ``proxy.retry_on``
        says; the response to send downstream (status, body, headers, how it was made, whether
        it had a Content-Length), or None if the client went away. Each upstream connection
        used is back in the pool, or closed, before this returns."""
        cfg = self.config
        headers = forwardable(request.headers)
        if not any(name == b"host" for name, _ in headers):  # HTTP/1.0 may leave it out; HTTP/1.1 needs it
            headers.insert(0, (b"host", DEFAULT_HOST))
        head = h11.Request(method=request.method, target=request.target, headers=headers)
        # the request body as read, kept only when a retry may need it
        body: list[bytes] | None = [] if cfg["proxy.retry_on"] != "none" else None
        first = True
        while True:
            try:
                up, how = await self.pool.acquire()
            except OSError as exc:
                summary["upstream_error"] = errno_name(exc)
                record["flag"] = "UF"
                return 503, UF_BODY, [], "made (UF)", True
            record["attempts"] += 1
            record["upstreams"].append(f"{up.conn} ({how})")
            if record["attempts"] == 1:
                record["idle_ms"] = up.picked_idle_ms
            self.trace.record(self.actor, "relay", conn=down.conn, detail=up.conn)
            self.note(up, f"request {up.served + 1} on this connection ({how})")
            sent_before = up.sock.bytes_sent
            try:
                if first:
                    first = False
                    write_error = await self._send_body(down, dconn, up, up.h11.send(head) or b"",
                                                        cfg["proxy.buffer_request"], body)
                    if write_error is None and dconn.their_state is h11.ERROR:
                        self.pool.discard(up, "the client went away mid-upload")
                        return None
                else:
                    write_error = await _resend(up, head, body or [])
                response, response_body, error = None, b"", write_error
                if write_error:
                    summary["upstream_error"] = write_error
                    self.note(up, f"upstream write failed: {write_error}")
                if not write_error or cfg["proxy.read_response_on_write_error"]:
                    response, response_body, read_error = await _read_response(up)
                    error = error or read_error
            except BaseException:  # the client's socket failed, or the proxy is stopping
                self.pool.discard(up, "the request was abandoned")
                raise
            written = up.sock.bytes_sent > sent_before
            if response is not None:
                self.pool.release(up)
                return (response.status_code, response_body, forwardable(response.headers), "forwarded",
                        has_length(response))
            self.pool.discard(up, f"no response ({error})")
            summary["upstream_error"] = summary["upstream_error"] or error
            record["flag"] = "UC"
            retries = record["attempts"] - 1
            if dconn.their_state is not h11.DONE or not upstream_retry(
                    cfg["proxy.retry_on"], request_sent=written, retries_done=retries,
                    num_retries=cfg["proxy.num_retries"]):
                return 503, UC_BODY, [], "made (UC)", True
            record["written_retried"] = record["written_retried"] or written
            wait = retry_backoff(retries, cfg["proxy.retry_backoff"], self._rng)
            self.note(down, f"retry_on {cfg['proxy.retry_on']}: sending it again in {wait * 1000:.1f} ms"
                      + (" (it had been written)" if written else ""))
            await asyncio.sleep(wait)

    async def _send_body(self, down: TracedSocket, dconn: h11.Connection, up: Upstream, pending: bytes,
                         buffer_all: bool, kept: list[bytes] | None) -> str | None:
        """Stream (or buffer, then send) the request body upstream, keeping a copy in
        ``kept`` if given; the errno name of a failed upstream write, or None. Never reads the
        upstream socket."""
        while True:
            event = dconn.next_event()
            while isinstance(event, h11.Data):
                if kept is not None:
                    kept.append(bytes(event.data))
                pending += up.h11.send(h11.Data(data=event.data)) or b""
                event = dconn.next_event()
            done = isinstance(event, h11.EndOfMessage)
            if done:
                pending += up.h11.send(h11.EndOfMessage()) or b""
            if pending and (done or not buffer_all):
                try:
                    await up.sock.sendall(pending)
                except OSError as exc:
                    return errno_name(exc)
                pending = b""
            if done:
                return None
            if event is h11.NEED_DATA:
                dconn.receive_data(await down.recv(CHUNK))
            elif not isinstance(event, h11.Data):  # the client closed mid-request
                return None

    async def _respond(self, down: TracedSocket, dconn: h11.Connection, status: int, body: bytes,
                       headers: Any, how: str, summary: dict[str, Any], length: bool = True) -> bool:
        """Send a response downstream (framed by Content-Length if ``length``, else as h11
        frames it for the client: chunked, or by the close for HTTP/1.0). Then close the
        connection if it must close (its request was not read in full, or the client asked
        for it, or spoke HTTP/1.0), by :func:`close_choice`. True if it stays open."""
        cfg = self.config
        finished = dconn.their_state in (h11.DONE, h11.MUST_CLOSE)  # MUST_CLOSE: read, and no keep-alive
        await down.sendall(response_bytes(dconn, status, body, close=not finished, headers=tuple(headers),
                                          length=length))
        summary["responses"].append(f"{status} {how}")
        if finished and dconn.our_state is h11.DONE:
            self.note(down, f"{status} {how}")
            return True
        http10 = dconn.their_http_version == b"1.0"
        mode = close_choice(cfg["proxy.close_mode"], cfg["proxy.skip_delay_close"], request_complete=finished,
                            close_framed=not length and http10)
        why = "request unread" if not finished else "HTTP/1.0" if http10 else "Connection: close"
        self.note(down, f"{status} {how}; {why}, closing by {mode}"
                  + (" (skip_delay_close)" if mode != cfg["proxy.close_mode"] else ""))
        answered = time.monotonic()
        how_ended, discarded = await end_connection(down, mode, cfg["proxy.delayed_close_timeout"])
        summary.update(held_ms=round((time.monotonic() - answered) * 1000, 3), discarded=discarded,
                       ended_by=how_ended, closed_by=mode)
        return False


def access_line(request: h11.Request, record: dict[str, Any]) -> str:
    """One access-log line for a request's record (see ``HttpProxy._exchange``).

    >>> access_line(h11.Request(method="GET", target="/", headers=[("host", "x")]),
    ...             {"status": 503, "flag": "UC", "attempts": 1, "upstreams": ["40211>8080 (new)"]})
    'GET / 503 UC attempts=1 upstream 40211>8080 (new)'
    """
    flag = f" {record['flag']}" if record.get("flag", "-") != "-" else ""
    return (f"{request.method.decode()} {request.target.decode()} {record['status']}{flag} "
            f"attempts={record['attempts']} upstream " + ", ".join(record["upstreams"] or ["-"]))


def close_choice(mode: str, skip: str, *, request_complete: bool, close_framed: bool) -> str:
    """How the proxy ends a downstream connection it has decided to close: ``close`` (at once)
    where ``proxy.skip_delay_close`` says the delay is not needed, else ``mode``.

    Envoy's rule since 1.22 (``ConnectionManagerImpl::doEndStream``): no delay when the
    request was read to the end (nothing unread, so close() sends FIN, never RST), or when the
    response to an HTTP/1.0 client has no Content-Length (the close is its end: delaying it
    delays the response). ``always`` skips it in every case, also with request bytes unread:
    the unsafe setting that brings back the RST of envoy#2929.

    Not covered: Envoy's other exemption, upgrades and CONNECT tunnels.

    >>> close_choice("delayed", "on", request_complete=False, close_framed=False)
    'delayed'
    >>> close_choice("delayed", "on", request_complete=True, close_framed=False)
    'close'
    """
    if skip not in SKIP_DELAY_CLOSE:
        raise ValueError(f"skip_delay_close {skip!r}: choose one of {', '.join(SKIP_DELAY_CLOSE)}")
    if skip == "always" or (skip == "on" and (request_complete or close_framed)):
        return "close"
    return mode


async def _next_event(s: TracedSocket, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return None if isinstance(event, h11.ConnectionClosed) else event
        conn.receive_data(await s.recv(CHUNK))


async def _resend(up: Upstream, head: h11.Request, body: list[bytes]) -> str | None:
    """Send a whole request again (a retry); the errno name of a failed write, or None."""
    data = (up.h11.send(head) or b"") + b"".join(up.h11.send(h11.Data(data=part)) or b"" for part in body)
    try:
        await up.sock.sendall(data + (up.h11.send(h11.EndOfMessage()) or b""))
    except OSError as exc:
        return errno_name(exc)
    return None


async def _read_response(up: Upstream) -> tuple[h11.Response | None, bytes, str]:
    """The upstream's response, read to its end; (None, b"", why) unless it arrived complete."""
    response: h11.Response | None = None
    body: list[bytes] = []
    while True:
        try:
            event = up.h11.next_event()
            if event is h11.NEED_DATA:
                data = await up.sock.recv(CHUNK)
                if not data and response is None:
                    return None, b"", "EOF before any response"
                up.h11.receive_data(data)
                continue
        except OSError as exc:
            return None, b"", errno_name(exc)
        except h11.ProtocolError as exc:
            return None, b"", f"protocol error: {exc}"
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return response, b"".join(body), ""
        elif isinstance(event, h11.ConnectionClosed):
            return None, b"", "EOF before a response" if response is None else "EOF mid-response"
