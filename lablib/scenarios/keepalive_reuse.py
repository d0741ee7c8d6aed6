"""Lab 02, keep-alive reuse: a request sent into a connection the server is closing
(envoy#13388: an ALB's 502 when traffic drops; Python's RemoteDisconnected).

A client sends a request, gets the response, stays idle for ``client.idle_gap``, then reuses
the connection for a second request. The server closes a connection that has been idle for
``server.keepalive_timeout``; its timer starts when it has written the response. Between
them, ``wire.delay`` each way (a delay line; none when 0).

The server closes at K after its response; the response reaches the client d later; the
client sends at d + gap; the request reaches the server at 2d + gap. So with no check the
request meets a closed socket once gap > K - 2d (offset = gap - K > -RTT). A check before
reuse sees the FIN once it has arrived, at K + d, so only reuses with -RTT < offset < 0 fail:
the FIN is on its way while the request is on its way the other way. :func:`theory_failure`
is that rule.

Outcomes: ``ok``; ``retried-ok`` (the request failed and was retried on a new connection,
which worked); ``stale`` (EOF before any response: Python's RemoteDisconnected); ``reset``
(ECONNRESET); ``timeout``.

Each trial also says how far its timing strayed from the plan (``late_ms``): how late the
client sent its second request or the server's keep-alive timer fired, whichever is later. The
plan counts from when the server wrote its response: the client should send at that moment +
d + gap, so a response relayed late or read late by a busy thread counts too. On two busy
cores a thread now and then wakes tens of milliseconds late; such a trial did not test the
offset it was meant to, and :func:`ran_to_plan` leaves it out of exact claims.

Trials run side by side, each on its own connections, their starts 10 ms apart (30 ms for the
clients that run in threads) so that the interpreter all roles share never falls behind (see
``START_SPACING``).

Not covered: pipelining, HTTP/2 GOAWAY (the protocol fix HTTP/1.1 lacks), curl (its reuse
interval can only be set in whole requests per second; it checks before reuse, like urllib3).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import http.client
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11

from ..knobs import Config, KnobError, choice, seconds
from ..loops import sleep_until
from ..pool import RETRY_POLICIES, reuse_decision, should_retry
from ..roles.delayline import DelayLine
from ..roles.server import SERVER_KNOBS, HttpServer
from ..sockets import TracedSocket, conn_name, errno_name
from ..trace import Trace
from .base import Lab, Scenario

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["KeepaliveReuse", "theory_failure", "window_width", "ran_to_plan", "LATE_MS", "KNOBS"]

KINDS = ("raw", "http.client", "requests")
#: how far apart trial starts are spread: 200 trials then take about two seconds. Closer (2 to
#: 5 ms) keeps the one interpreter busy enough that loops wake milliseconds late and the race
#: window smears (measured); 10 ms keeps the window's edges within about a millisecond.
START_SPACING = 0.01
#: the same for http.client and requests, which run in threads and spend milliseconds of the
#: shared interpreter on every request: at 10 ms, 40 requests trials kept a dozen threads busy
#: and the server's keep-alive timer fired over 20 ms late now and then (measured)
THREAD_START_SPACING = 0.03
#: threads for the blocking clients: enough for trials side by side, few enough that they do
#: not crowd the server's loop off the interpreter (its keep-alive timer must fire on time)
CLIENT_THREADS = 12
TARGET = "/"
POST_BODY = b"x" * 100
#: how late (ms) a trial's client may send, or its server close, and still count as run to plan
#: for a claim 30 ms or more from a window's edge: it still lands on the same side of the edge
LATE_MS = 20.0

#: the server's knobs that matter here; a 100 ms keep-alive keeps the lab quick
_SERVER = tuple(dataclasses.replace(k, default=0.1) if k.name == "server.keepalive_timeout" else k
                for k in SERVER_KNOBS if k.name in ("server.keepalive_timeout", "server.max_requests_per_connection"))


KNOBS = (
    choice("client.kind", "raw", KINDS, "The client that reuses the connection",
           models="your HTTP client's connection pool"),
    choice("client.method", "GET", ("GET", "POST"), "The method of both requests (POST is not idempotent)"),
    seconds("client.idle_gap", 0.11, "How long the client stays idle between the response and its next request",
            high=10.0, models="time between two requests that share a pooled connection"),
    seconds("client.idle_timeout", 0.0, "raw: drop a pooled connection idle longer than this (0: never)",
            high=3600.0, models="Go IdleConnTimeout; Envoy cluster idle_timeout; ALB idle timeout",
            real_default="Go 90 s; Envoy 1 h; ALB 60 s"),
    choice("client.check_before_reuse", "auto", ("auto", "on", "off"),
           "Poll an idle connection before reusing it (auto: what the client does: raw off, http.client off, "
           "requests on)", models="urllib3 is_connection_dropped", real_default="on in urllib3"),
    choice("client.retry", "none", RETRY_POLICIES,
           "Retry a request that failed before any response: never, if idempotent, or by Go's rules",
           models="requests with a mounted urllib3 Retry; RFC 9110 section 9.2.2; Go shouldRetryRequest",
           real_default="none in requests"),
    *_SERVER,
    seconds("wire.delay", 0.0, "One-way delay between client and server, added by a delay line (0: direct)",
            high=1.0, models="the network's one-way latency"),
)


def theory_failure(offset: float, rtt: float, *, check_before_reuse: bool, retry: str = "none",
                   method: str = "GET", idle_timeout: float = 0.0, keepalive: float = 0.1,
                   max_requests: int = 0) -> bool:
    """Whether the second request fails, by the timeline in this module's docstring.

    ``offset`` is idle_gap - keepalive_timeout and ``rtt`` twice the one-way delay."""
    gap = keepalive + offset
    if max_requests == 1 or (idle_timeout and gap > idle_timeout):
        return False  # the client never reuses this connection
    fails = -rtt < offset < 0 if check_before_reuse else offset > -rtt
    if fails and retry != "none" and should_retry(retry, method=method, reused=True, nothing_written=False):
        return False  # retried on a new connection, which works
    return fails


def ran_to_plan(trials: pd.DataFrame, late_ms: float = LATE_MS) -> pd.DataFrame:
    """The trials (rows of a result's ``trials``) whose client and server both kept to the
    plan within ``late_ms``: for an offset more than ``late_ms`` from a window's edge, the ones
    whose outcome the theory predicts. Nearer an edge, pass a smaller ``late_ms``.

    Not covered: a delay line late with the request (toward the server) or with the FIN
    (toward the client). Either can only make a reuse fail, never spare one, so the claims
    the lab makes as certain with a delay line (a FIN in flight is always lost without a
    retry) are safe from it."""
    return trials[trials["late_ms"] <= late_ms]


def window_width(offsets: list[float], lost: list[float]) -> float:
    """The width of the race window measured by a sweep: the number of ``offsets`` (evenly
    spaced, in order) at which at least half the reuses were ``lost`` (shares, 0 to 1), times
    their spacing. A point where a few reuses failed (a loop woken late on a busy machine)
    does not count, so an outlier far from the window does not widen it.

    Not covered: uneven spacing; a window narrower than one step reads as 0 or one step.

    >>> window_width([-0.006, -0.004, -0.002, 0.0, 0.002], [0.1, 0.9, 1.0, 0.6, 0.0])
    0.006
    """
    if len(offsets) != len(lost) or len(offsets) < 2:
        raise ValueError("window_width needs two or more offsets, each with its share of lost reuses")
    step = (offsets[-1] - offsets[0]) / (len(offsets) - 1)
    return round(sum(share >= 0.5 for share in lost) * step, 9)


class KeepaliveReuse(Scenario):
    name = "keepalive-reuse"
    title = "Keep-alive reuse against the idle timeout"
    knobs = KNOBS
    outcomes = ("ok", "retried-ok", "stale", "reset")
    default_trials = 50
    default_deadline = 30.0
    parallel_ok = True
    notebook = "02_keepalive_reuse.ipynb"

    def validate(self, config: Config) -> None:
        kind = config["client.kind"]
        check = config["client.check_before_reuse"]
        if kind == "http.client":
            if check == "on":
                raise KnobError("client.check_before_reuse=on: http.client does not check before reuse; "
                                "use client.kind=raw or requests")
            if config["client.retry"] != "none":
                raise KnobError("client.retry: http.client does not retry; use client.kind=raw or requests")
        if kind == "requests":
            if check == "off":
                raise KnobError("client.check_before_reuse=off: requests (urllib3) always checks before reuse; "
                                "use client.kind=raw to turn it off")
            if config["client.retry"] == "go":
                raise KnobError("client.retry=go: requests retries as urllib3's Retry does (idempotent); "
                                "use client.kind=raw for Go's rules")
        if kind != "raw" and config["client.idle_timeout"]:
            raise KnobError(f"client.idle_timeout: {kind} has no idle timeout for pooled connections; "
                            "use client.kind=raw")

    async def setup(self, lab: Lab) -> None:
        cfg = lab.config
        server = await lab.start("server", HttpServer(lab.trace, cfg.subset(SERVER_KNOBS, "the server")))
        if cfg["wire.delay"] > 0:
            await lab.start("wire", DelayLine(lab.trace, server.address, cfg["wire.delay"]))
        if cfg["client.kind"] != "raw":  # blocking clients run in threads
            asyncio.get_running_loop().set_default_executor(
                concurrent.futures.ThreadPoolExecutor(max_workers=CLIENT_THREADS, thread_name_prefix="lablib-client"))

    async def trial(self, lab: Lab, index: int) -> dict[str, Any]:
        cfg = lab.config
        kind = cfg["client.kind"]
        spacing = START_SPACING if kind == "raw" else THREAD_START_SPACING
        await asyncio.sleep(index * spacing)  # spread the load, not a synchronisation
        target = (lab.roles.get("wire") or lab.roles["server"]).address
        if kind == "raw":
            result = await _raw(target, cfg, lab.trace)
            wire: DelayLine | None = lab.roles.get("wire")
            for conn in result.conns if wire else ():
                await wire.relayed(conn, lab.deadline)
        elif kind == "http.client":
            result = await asyncio.to_thread(_http_client, target, cfg, lab.deadline)
        else:
            result = await asyncio.to_thread(_requests, target, cfg, lab.deadline)
        late_ms = await _late_ms(lab, result)
        return {"outcome": result.outcome, "second_connection": result.second_connection,
                "idle_ms": round(result.idle_s * 1000, 2),
                "offset_ms": round((cfg["client.idle_gap"] - cfg["server.keepalive_timeout"]) * 1000, 2),
                "late_ms": round(late_ms, 2),
                "client_error": result.error or "-"}


async def _late_ms(lab: Lab, result: Second) -> float:
    """How late (ms, 0 at best) the trial ran against its plan: the client's second request
    against the server's first response + d + gap, the server's close against its keep-alive
    timeout. The server's side of the connection is found by name (through the delay line's
    links if there is one); if the name is unknown the client's own idle gap stands in."""
    cfg = lab.config
    summary: dict[str, Any] = {}
    if result.reused_conn:
        wire: DelayLine | None = lab.roles.get("wire")
        name = await wire.links.wait(result.reused_conn, lab.deadline) if wire else result.reused_conn
        summary = await lab.roles["server"].finished.wait(name, lab.deadline)
    if "first_response_at" in summary:
        planned = summary["first_response_at"] + cfg["wire.delay"] + cfg["client.idle_gap"]
        client_late = result.sent_at - planned
    else:
        client_late = result.idle_s - cfg["client.idle_gap"]
    return max(client_late * 1000, summary.get("keepalive_late_ms", 0.0), 0.0)


@dataclass
class Second:
    """How the second request went."""

    outcome: str
    second_connection: str
    idle_s: float
    error: str = ""
    #: raw client only: the names of the connections it used
    conns: tuple[str, ...] = ()
    #: the name of the connection the first request went on (empty if unknown)
    reused_conn: str = ""
    #: when (monotonic seconds) the idle gap ended and the second request went on its way
    sent_at: float = 0.0


class _Failed(Exception):
    def __init__(self, kind: str, error: str, nothing_written: bool) -> None:
        super().__init__(f"{kind}: {error}")
        self.kind, self.error, self.nothing_written = kind, error, nothing_written


class _RawConnection:
    """One HTTP/1.1 client connection on a TracedSocket, framed by h11."""

    def __init__(self, sock: TracedSocket) -> None:
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT)
        self.server_said_close = False

    @classmethod
    async def open(cls, address: tuple[str, int], trace: Trace) -> "_RawConnection":
        sock = await TracedSocket.connect(address, trace, "client")
        sock.stamp_arrivals()  # the idle gap starts when the response arrived, not when it was read
        return cls(sock)

    async def request(self, method: str) -> int:
        """Send one request and read its response; the status, or _Failed."""
        body = POST_BODY if method == "POST" else b""
        headers = [(b"host", b"lab"), (b"content-length", str(len(body)).encode())]
        data = self.h11.send(h11.Request(method=method, target=TARGET, headers=headers)) or b""
        data += (self.h11.send(h11.Data(data=body)) or b"") if body else b""
        data += self.h11.send(h11.EndOfMessage()) or b""
        try:
            await self.sock.sendall(data)
        except OSError as exc:
            raise _Failed("reset", errno_name(exc), nothing_written=self.sock.bytes_sent == 0) from None
        status = None
        try:
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    self.h11.receive_data(await self.sock.recv())
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    self.server_said_close = any(n == b"connection" and b"close" in v.lower()
                                                 for n, v in event.headers)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise _Failed("stale", "EOF before any response", nothing_written=False)
        except h11.RemoteProtocolError:
            raise _Failed("stale", "EOF before any response", nothing_written=False) from None
        except OSError as exc:
            raise _Failed("reset", errno_name(exc), nothing_written=False) from None
        if status is None:
            raise _Failed("stale", "EOF before any response", nothing_written=False)
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        return status


async def _raw(address: tuple[str, int], cfg: Config, trace: Trace) -> Second:
    method = cfg["client.method"]
    used: list[str] = []

    async def open_() -> _RawConnection:
        opened = await _RawConnection.open(address, trace)
        used.append(opened.sock.conn)
        return opened

    conn = await open_()
    first = conn.sock.conn
    try:
        await conn.request(method)
        answered = conn.sock.last_arrival_ns / 1e9  # the kernel's stamp (or the read's time)
        await sleep_until(answered + cfg["client.idle_gap"])  # the knob under study: the client is idle
        sent_at = time.monotonic()
        idle = sent_at - answered
        checked = cfg["client.check_before_reuse"] == "on"
        readable = conn.sock.readable_now() if checked else False
        reuse, why = reuse_decision(server_said_close=conn.server_said_close, idle_s=idle,
                                    idle_timeout=cfg["client.idle_timeout"], checked=checked, readable=readable)
        trace.record("client", "note", conn=conn.sock.conn, detail=why)
        second = functools.partial(Second, second_connection=why, idle_s=idle, reused_conn=first, sent_at=sent_at)
        if not reuse:
            conn.sock.close()
            conn = await open_()
        try:
            await conn.request(method)
            return second("ok", conns=tuple(used))
        except _Failed as failed:
            trace.record("client", "note", conn=conn.sock.conn, result=failed.error,
                         detail=f"request failed: {failed.kind}")
            if not should_retry(cfg["client.retry"], method=method, reused=reuse,
                                nothing_written=failed.nothing_written):
                return second(failed.kind, error=failed.error, conns=tuple(used))
            conn.sock.close()
            conn = await open_()
            await conn.request(method)
            return second("retried-ok", error=failed.error, conns=tuple(used))
    finally:
        conn.sock.close()


def _http_client(address: tuple[str, int], cfg: Config, deadline: float) -> Second:
    method, body = cfg["client.method"], POST_BODY if cfg["client.method"] == "POST" else None
    conn = http.client.HTTPConnection(*address, timeout=deadline)
    try:
        conn.request(method, TARGET, body=body)
        first = conn_name(conn.sock.getsockname()[1], address[1])
        conn.getresponse().read()
        answered = time.monotonic()
        time.sleep(cfg["client.idle_gap"])  # the knob under study: the client is idle
        sent_at = time.monotonic()
        reused = "reused" if conn.sock is not None else "new: the last response said Connection: close"
        second = functools.partial(Second, second_connection=reused, idle_s=sent_at - answered, reused_conn=first,
                                   sent_at=sent_at)
        try:
            conn.request(method, TARGET, body=body)
            conn.getresponse().read()
            return second("ok")
        except http.client.RemoteDisconnected as exc:
            return second("stale", error=str(exc))
        except OSError as exc:
            return second("reset", error=errno_name(exc))
    finally:
        conn.close()


def _requests(address: tuple[str, int], cfg: Config, deadline: float) -> Second:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util import Retry

    from ..clients import _socket_error

    url = f"http://{address[0]}:{address[1]}{TARGET}"
    method, body = cfg["client.method"], POST_BODY if cfg["client.method"] == "POST" else None
    with requests.Session() as session:
        if cfg["client.retry"] == "idempotent":  # urllib3's default allowed_methods: the idempotent ones
            session.mount("http://", HTTPAdapter(max_retries=Retry(total=1, backoff_factor=0)))
        session.request(method, url, data=body, timeout=deadline)
        first = _pooled_connection(session, url, address[1])
        answered = time.monotonic()
        time.sleep(cfg["client.idle_gap"])  # the knob under study: the client is idle
        sent_at = time.monotonic()
        second = functools.partial(Second, second_connection="pooled (urllib3 checks before reuse)",
                                   idle_s=sent_at - answered, reused_conn=first, sent_at=sent_at)
        try:
            response = session.request(method, url, data=body, timeout=deadline)
        except requests.ConnectionError as exc:
            cause = _socket_error(exc)
            kind = "stale" if isinstance(cause, http.client.RemoteDisconnected) else "reset"
            return second(kind, error=type(cause).__name__)
        retried = bool(getattr(response.raw, "retries", None) and response.raw.retries.history)
        return second("retried-ok" if retried else "ok")


def _pooled_connection(session: Any, url: str, port: int) -> str:
    """The name of the connection a requests ``session`` keeps pooled for ``url``, from urllib3's
    pool (not a public interface: "" if it has changed)."""
    try:
        pools = session.get_adapter(url).poolmanager.pools  # (one pool: the session has one host)
        for pooled in (c for key in pools.keys() for c in pools[key].pool.queue if c is not None):
            if pooled.sock is not None:
                return conn_name(pooled.sock.getsockname()[1], port)
    except (AttributeError, OSError):
        pass
    return ""


#: the chain of the exercise: who opens connections to whom, and the one timeout that is given
ALB_IDLE_TIMEOUT = 60.0
#: how much earlier the client side of a hop must give up an idle connection than the server side
MARGIN = 1.0
#: the Envoy -> Node hop is run at this scale (seconds become 20 ms)
SCALE = 0.02
CHAIN_ITEMS = ("go_idle_conn_timeout", "envoy_downstream_idle_timeout", "envoy_cluster_idle_timeout",
               "node_keepalive_timeout", "node_headers_timeout")


def check_chain(answer: dict[str, object], trials: int = 40) -> tuple[bool, str]:
    """Grade timeouts (in seconds) for the chain  Go client -> ALB (60 s idle) -> Envoy -> Node.

    On every hop the side that opens connections must drop an idle one at least ``MARGIN``
    before the side that accepts them closes it; Node's headersTimeout must exceed its
    keepAliveTimeout (nodejs/node#27363). Then the Envoy -> Node hop is run at 1/50 scale with
    traffic that leaves each connection idle between the two timeouts: it must lose nothing.
    """
    blank = [k for k in CHAIN_ITEMS if str(answer.get(k, "")).strip() in ("", "?", "???")]
    if blank:
        return False, f"Fill in {', '.join(blank)} (seconds) first; then this cell checks them."
    try:
        v = {k: float(answer[k]) for k in CHAIN_ITEMS}  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False, "Every answer is a number of seconds, for example 55."
    rules = [
        ("client -> ALB: Go's IdleConnTimeout below the ALB's 60 s idle timeout",
         v["go_idle_conn_timeout"] <= ALB_IDLE_TIMEOUT - MARGIN),
        ("ALB -> Envoy: Envoy's downstream idle_timeout above the ALB's 60 s",
         v["envoy_downstream_idle_timeout"] >= ALB_IDLE_TIMEOUT + MARGIN),
        ("Envoy -> Node: Envoy's cluster idle_timeout below Node's keepAliveTimeout",
         v["envoy_cluster_idle_timeout"] <= v["node_keepalive_timeout"] - MARGIN),
        ("Node: headersTimeout above keepAliveTimeout",
         v["node_headers_timeout"] > v["node_keepalive_timeout"]),
    ]
    lines = [f"{'right' if ok else 'not quite'}: {text}" for text, ok in rules]
    from ..runner import run

    keepalive, idle_timeout = v["node_keepalive_timeout"], v["envoy_cluster_idle_timeout"]
    # traffic that leaves a connection idle a little past the server's timeout (and still within
    # the pool's, if the pool keeps connections longer): the reuse that goes wrong, if any can
    gap = min((keepalive + idle_timeout) / 2, keepalive * 1.5) if idle_timeout > keepalive else keepalive * 1.1
    result = run("keepalive-reuse", trials, {"server.keepalive_timeout": keepalive * SCALE,
                                             "client.idle_timeout": idle_timeout * SCALE,
                                             "client.idle_gap": gap * SCALE})
    lost = result.n - result.count("ok")
    lines.append(f"measured: Envoy -> Node at 1/50 scale, reuses after {gap:g} s idle: "
                 f"{lost} of {result.n} requests lost")
    return all(ok for _, ok in rules) and lost == 0, "\n".join(lines)
