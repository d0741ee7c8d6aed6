"""HttpServer: an HTTP/1.1 origin server whose connection endings are the knobs.

It answers every request with ``200 ok`` (``server.response_bytes`` of it, framed by
Content-Length or, with ``server.response_framing=chunked``, left to the transfer: chunked to
an HTTP/1.1 peer, ended by the close to an HTTP/1.0 one), keeps connections alive between requests, and ends
them the way the settings say:

* idle for ``server.keepalive_timeout`` between requests: ``close()`` (a FIN; nothing is
  unread), the race of lab 02: the idle timer starts when the response has been written (a
  new connection waits for its first request without it);
* a request whose Content-Length exceeds ``server.max_request_bytes``: ``413`` with
  Connection: close at once, without reading the body (even when the client sent
  ``Expect: 100-continue`` and waits), then ``server.close_mode`` (see :mod:`lablib.closing`),
  the race of lab 01; a request within the limit that expects it gets ``100 Continue``;
* the ``server.max_requests_per_connection``-th response carries Connection: close, and
  the server closes after it; with ``server.connection_close_header`` off it closes all the
  same but does not say so (a FIN right behind the response, the case of envoy#2715 and of
  the Express upstream of #23625).

Each connection's summary (see :class:`~lablib.roles.base.ListeningRole`) gives the statuses
sent, the bytes unread at the final close, the FIN/RST its calls sent, and, after an early
response, how long the connection was held open and how many bytes were read and discarded:
the price of the delayed and lingering modes. It also says when the first 200 was
sent (``first_response_at``, monotonic seconds) and, when the keep-alive timer ended the
connection, says so (``ended_by``) and how late the timer fired (``keepalive_late_ms``).

Not covered: pipelining beyond what h11 buffers, request bodies that are neither
Content-Length nor chunked framed, TLS.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import h11

from ..closing import CLOSE_MODES, end_connection
from ..http import content_length, continue_bytes, describe_request, response_bytes
from ..knobs import Config, choice, flag, integer, nbytes, seconds
from ..sockets import TracedSocket
from ..trace import Trace
from .base import ListeningRole

__all__ = ["HttpServer", "SERVER_KNOBS", "RESPONSE_KNOBS"]

SERVER_KNOBS = (
    choice("server.close_mode", "close", CLOSE_MODES,
           "How the server ends a connection after an early response, with the request body unread",
           models="close(fd); SO_LINGER 0 (nginx reset_timedout_connection); Envoy FlushWriteAndDelay; "
                  "nginx lingering_close, Go closeWriteAndWait",
           real_default="nginx: lingering"),
    seconds("server.close_timeout", 1.0, "delayed and lingering modes: how long to read and discard before close()",
            high=60.0, models="Envoy delayed_close_timeout; nginx lingering_timeout; Go rstAvoidanceDelay",
            real_default="1 s; 5 s; 0.5 s"),
    seconds("server.keepalive_timeout", 5.0, "Close a keep-alive connection idle this long (0: no keep-alive)",
            high=3600.0, models="nginx keepalive_timeout; Node server.keepAliveTimeout", real_default="75 s; 5 s"),
    nbytes("server.max_request_bytes", 1024**2, "Answer 413 without reading the body above this request size",
           models="Envoy buffer filter max_request_bytes; nginx client_max_body_size", real_default="nginx 1 MiB"),
    integer("server.max_requests_per_connection", 0,
            "Announce Connection: close on this response number and close after it (0: no limit)",
            models="nginx keepalive_requests; Envoy max_requests_per_connection", real_default="1000; unlimited"),
    flag("server.connection_close_header", True,
         "Say Connection: close on the response after which the server closes (max_requests_per_connection); "
         "off: close without saying so", models="what nginx and Go do (on); Node/Express closing silently (off)",
         real_default="on"),
    nbytes("server.response_bytes", 3, "Size of the body of a 200 response", low=0, high=64 * 1024**2),
    choice("server.response_framing", "length", ("length", "chunked"),
           "How a 200 response's end is marked: Content-Length, or chunked (no length, as a streaming backend)",
           models="a backend that streams (PHP, a generated page)"),
)

BODY = b"ok\n"

#: the knobs that shape a 200 response (labs that only refuse requests leave them out)
RESPONSE_KNOBS = ("server.response_bytes", "server.response_framing")


class HttpServer(ListeningRole):
    """An HTTP/1.1 server on 127.0.0.1 (port 0 unless ``port`` is given) with ``SERVER_KNOBS``."""

    def __init__(self, trace: Trace, config: Config, actor: str = "server", port: int = 0) -> None:
        super().__init__(trace, actor, port)
        self.config = config
        self.requests = 0
        size = config["server.response_bytes"]
        #: the body of every 200: "ok\n" repeated to server.response_bytes
        self.body = (BODY * (size // len(BODY) + 1))[:size]

    async def serve(self, s: TracedSocket) -> None:
        cfg = self.config
        conn = h11.Connection(h11.SERVER)
        summary: dict[str, Any] = {"statuses": [], "held_ms": 0.0, "discarded": 0, "ended_by": ""}
        served = 0
        try:
            while True:
                # the keep-alive timer runs between requests, not before the first (servers
                # give that one a longer header timeout: nginx client_header_timeout, Node headersTimeout)
                request = await self._next_event(s, conn, idle=served > 0, summary=summary)
                if not isinstance(request, h11.Request):
                    summary["ended_by"] = summary["ended_by"] or "client closed"
                    return
                self.note(s, describe_request(request))
                length = content_length(request)
                if length is not None and length > cfg["server.max_request_bytes"]:
                    await self._refuse(s, conn, summary)
                    return
                if conn.they_are_waiting_for_100_continue:
                    await s.sendall(continue_bytes(conn))
                    self.note(s, "100 Continue")
                body = 0
                while True:
                    event = await self._next_event(s, conn, idle=False)
                    if isinstance(event, h11.Data):
                        body += len(event.data)
                        if body > cfg["server.max_request_bytes"]:  # chunked, no Content-Length
                            await self._refuse(s, conn, summary)
                            return
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        summary["ended_by"] = "client closed mid-request"
                        return
                served += 1
                self.requests += 1
                limit = cfg["server.max_requests_per_connection"]
                last = bool(limit and served >= limit) or cfg["server.keepalive_timeout"] == 0
                said = last and cfg["server.connection_close_header"]
                chunked = cfg["server.response_framing"] == "chunked"
                sending = time.monotonic()  # (the kernel delivers on loopback before send() returns)
                await s.sendall(response_bytes(conn, 200, self.body, close=said, length=not chunked))
                summary.setdefault("first_response_at", sending)
                summary["statuses"].append(200)
                self.note(s, "200 OK" + (" (no length)" if chunked else "") + (", Connection: close" if said else ""))
                if last or conn.our_state is h11.MUST_CLOSE:
                    s.close()
                    summary["ended_by"] = "Connection: close" if said else "closed without Connection: close"
                    return
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError) as exc:
            self.gave_up(s, summary, exc)
        finally:
            self.conclude(s, summary)

    async def _refuse(self, s: TracedSocket, conn: h11.Connection, summary: dict[str, Any]) -> None:
        """413 at once, without reading the body, then end the connection by close_mode."""
        cfg = self.config
        await s.sendall(response_bytes(conn, 413, b"request body too large\n", close=True))
        summary["statuses"].append(413)
        self.note(s, f"413 before reading the body; ending by {cfg['server.close_mode']}")
        answered = time.monotonic()
        how, discarded = await end_connection(s, cfg["server.close_mode"], cfg["server.close_timeout"])
        summary.update(held_ms=round((time.monotonic() - answered) * 1000, 3), discarded=discarded, ended_by=how)

    async def _next_event(self, s: TracedSocket, conn: h11.Connection, idle: bool,
                          summary: dict[str, Any] | None = None) -> Any:
        """The next h11 event; None when the client went away or the idle timeout closed it.

        When the keep-alive timer closes the connection, ``summary`` says so (``ended_by``) and
        how late the timer fired (``keepalive_late_ms``: a loop woken late closes late)."""
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return None if isinstance(event, h11.ConnectionClosed) else event
            if idle and not conn.trailing_data[0]:
                timeout = self.config["server.keepalive_timeout"] or None
                idle_from = time.monotonic()
                try:
                    await asyncio.wait_for(s.wait_readable(), timeout)
                except TimeoutError:
                    self.trace.record(self.actor, "timer", conn=s.conn, detail=f"keep-alive timeout ({timeout:g} s) expired")
                    s.close()
                    if summary is not None:
                        late = time.monotonic() - idle_from - timeout
                        summary.update(ended_by="keep-alive timeout", keepalive_late_ms=round(late * 1000, 3))
                    return None
                idle = False
            data = await s.recv()
            conn.receive_data(data)
            if not data and conn.their_state is h11.IDLE:
                return None
