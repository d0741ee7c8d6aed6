"""HttpProxy: an Envoy-like HTTP/1.1 reverse proxy whose failure handling is the knobs.

For each request it accepts, it opens a connection to ``proxy.upstream`` and forwards the
request head at once and the body as it streams in, one chunk at a time (a chunk read from
the client is written upstream before the next is read, so at most one chunk is held).
Then it reads the upstream response and forwards it.

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

``proxy.buffer_request`` turns it into a buffering middlebox: the whole request is read
first, then sent. A downstream connection the proxy must close (its request was not read to
the end) ends by ``proxy.close_mode``; Envoy's default is the delayed close
(``delayed_close_timeout``, 1 s), which reads and discards the rest of the upload so that the
client gets its response instead of an RST. A client waiting on ``Expect: 100-continue`` gets
``100 Continue`` from the proxy itself, as from Envoy by default; the header is not forwarded.

Not covered (yet): a pool of upstream connections (lab 04: one connection per request here),
HTTP/1.0 close-delimited responses and skip_delay_close (lab 03), retries, and forwarding a
response before the request has been sent in full.
"""

from __future__ import annotations

import time
from typing import Any

import h11

from ..closing import CLOSE_MODES, end_connection
from ..http import continue_bytes, describe_request, forwardable, response_bytes
from ..knobs import Config, address, choice, flag, seconds
from ..sockets import TracedSocket, errno_name
from ..trace import Trace
from .base import ListeningRole

__all__ = ["HttpProxy", "PROXY_KNOBS", "UC_BODY"]

#: the body of Envoy's 503 for an upstream that reset or closed before it responded
UC_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
UF_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
CHUNK = 65536

PROXY_KNOBS = (
    address("proxy.upstream", "Where the proxy sends requests (HOST:PORT; serve proxy needs it)",
            models="Envoy cluster endpoint"),
    flag("proxy.read_response_on_write_error", False,
         "When writing the request upstream fails, first read and forward a response that already arrived",
         models="Envoy in envoy#2929 (off: 503 at once); the same shape in envoy#38697", real_default="off"),
    flag("proxy.buffer_request", False, "Read the whole request before sending any of it upstream",
         models="a buffering middlebox (toxiproxy#72); Envoy's buffer filter", real_default="off"),
    choice("proxy.close_mode", "delayed", CLOSE_MODES,
           "How the proxy ends a downstream connection whose request it did not read to the end",
           models="Envoy HCM close: FlushWriteAndDelay (delayed), or close(fd) with delayed_close_timeout 0",
           real_default="Envoy: delayed"),
    seconds("proxy.delayed_close_timeout", 1.0, "delayed and lingering modes: how long to read and discard",
            high=60.0, models="Envoy HCM delayed_close_timeout (0: close at once)", real_default="1 s"),
)


class HttpProxy(ListeningRole):
    """The proxy on 127.0.0.1 (port 0 unless ``port``), sending to ``upstream``."""

    actor = "proxy"

    def __init__(self, trace: Trace, config: Config, upstream: tuple[str, int] | None = None,
                 actor: str = "proxy", port: int = 0) -> None:
        super().__init__(trace, actor, port)
        self.config = config
        self.upstream = upstream or config["proxy.upstream"]
        if not self.upstream:
            raise ValueError("proxy.upstream is not set: give HOST:PORT, for example --set proxy.upstream=127.0.0.1:8080")
        self.requests = 0

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
        """One request through the proxy; True if the downstream connection stays open."""
        cfg = self.config
        try:
            up = await TracedSocket.connect(self.upstream, self.trace, self.actor)
        except OSError as exc:
            summary["upstream_error"] = errno_name(exc)
            return await self._respond(down, dconn, 503, UF_BODY, (), "made (UF)", summary)
        self.trace.record(self.actor, "relay", conn=down.conn, detail=up.conn)
        try:
            uconn = h11.Connection(h11.CLIENT)
            head = uconn.send(h11.Request(method=request.method, target=request.target,
                                          headers=forwardable(request.headers))) or b""
            write_error = await self._send_body(down, dconn, up, uconn, head, cfg["proxy.buffer_request"])
            if write_error is None and dconn.their_state is h11.ERROR:
                return False  # the client went away mid-upload
            if write_error:
                summary["upstream_error"] = write_error
                self.note(up, f"upstream write failed: {write_error}")
                if not cfg["proxy.read_response_on_write_error"]:
                    return await self._respond(down, dconn, 503, UC_BODY, (), "made (UC)", summary)
            response, body = await _read_response(up, uconn)
            if response is None:
                summary["upstream_error"] = summary["upstream_error"] or "no response"
                return await self._respond(down, dconn, 503, UC_BODY, (), "made (UC)", summary)
            return await self._respond(down, dconn, response.status_code, body, forwardable(response.headers),
                                       "forwarded", summary)
        finally:
            up.close()

    async def _send_body(self, down: TracedSocket, dconn: h11.Connection, up: TracedSocket,
                         uconn: h11.Connection, pending: bytes, buffer_all: bool) -> str | None:
        """Stream (or buffer, then send) the request body upstream; the errno name of a failed
        upstream write, or None. Never reads the upstream socket."""
        while True:
            event = dconn.next_event()
            while isinstance(event, h11.Data):
                pending += uconn.send(h11.Data(data=event.data)) or b""
                event = dconn.next_event()
            done = isinstance(event, h11.EndOfMessage)
            if done:
                pending += uconn.send(h11.EndOfMessage()) or b""
            if pending and (done or not buffer_all):
                try:
                    await up.sendall(pending)
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
                       headers: Any, how: str, summary: dict[str, Any]) -> bool:
        """Send a response downstream; close the connection if its request was not read in
        full (by proxy.close_mode). True if the connection stays open."""
        finished = dconn.their_state is h11.DONE
        await down.sendall(response_bytes(dconn, status, body, close=not finished, headers=tuple(headers)))
        summary["responses"].append(f"{status} {how}")
        self.note(down, f"{status} {how}" + ("" if finished else f"; closing by {self.config['proxy.close_mode']}"))
        if finished and dconn.our_state is h11.DONE:
            return True
        answered = time.monotonic()
        how_ended, discarded = await end_connection(down, self.config["proxy.close_mode"],
                                                    self.config["proxy.delayed_close_timeout"])
        summary.update(held_ms=round((time.monotonic() - answered) * 1000, 3), discarded=discarded,
                       ended_by=how_ended)
        return False


async def _next_event(s: TracedSocket, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return None if isinstance(event, h11.ConnectionClosed) else event
        conn.receive_data(await s.recv(CHUNK))


async def _read_response(up: TracedSocket, uconn: h11.Connection) -> tuple[h11.Response | None, bytes]:
    """The upstream's response, read to its end; (None, b"") unless it arrived complete."""
    response: h11.Response | None = None
    body: list[bytes] = []
    while True:
        try:
            event = uconn.next_event()
            if event is h11.NEED_DATA:
                uconn.receive_data(await up.recv(CHUNK))
                continue
        except (OSError, h11.ProtocolError):
            return None, b""
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return response, b"".join(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""
