"""Lab 04, upstream reuse: the proxy hands a pooled upstream connection to a request while the
server's FIN is on its way, and answers 503 UC (envoy#2715, #6815, #23625; PR #2871).

Client -> proxy -> delay line (``wire.delay`` each way; none at 0) -> server. The client is an
open-loop workload (:mod:`lablib.workload`): requests arrive at ``workload.rate`` per second
for ``workload.duration``, each on a keep-alive connection to the proxy, GETs and a share
of POSTs. The proxy keeps a pool of keep-alive connections to the server
(:mod:`lablib.roles.upstream_pool`); the server closes a connection idle for
``server.keepalive_timeout`` (Node's 5 s behind Envoy's 1 h in the wild; tens of
milliseconds here, so that a run takes seconds).

The server's timer starts when it writes a response, which reaches the proxy d later (d =
``wire.delay``). A request that takes the connection g after that (g: its idle time in the
pool) reaches the server at 2d + g after the timer started: after the server closed if
g > K - 2d, where K is the keep-alive timeout. Once the FIN reaches the proxy, at K + d, the
pool drops the connection. So a request that takes the connection idle for g with
K - 2d < g < K meets a closed socket: a window one round trip wide, just below the timeout.
:func:`theory_rate` turns that into a failure rate for Poisson arrivals on one connection; it
peaks at a rate near 1/K, and falls on both sides: at high rates connections never idle that
long, at low rates the FIN arrives first (the "502 when traffic drops" of #13388).

The second case (#2715): with ``server.max_requests_per_connection`` and
``server.connection_close_header`` off, the server closes right after a response without
saying so. A request waiting for a connection gets that one at once unless
``proxy.attach_on_next_iteration`` lets the loop read the FIN first.

Outcomes per request: ``200``; ``200 after retry`` (the proxy sent it again after the
upstream reset); ``503 UC`` (upstream connection termination, no retry or retries spent);
``503 UF`` (no upstream connection could be made); ``failed`` (the client's own connection
failed, which the lab's proxy never causes). Each row says whether a written POST was sent
again (``written_retried``), how long the connection had been idle in the pool
(``idle_ms``), and the connections used.

Not covered: HTTP/2 upstreams (GOAWAY announces the close), several proxy workers (Envoy's
--concurrency, one pool each), health checking and outlier detection.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .. import clients
from ..knobs import Config, KnobError, seconds
from ..roles.delayline import DelayLine
from ..roles.proxy import POOL_KNOBS, PROXY_KNOBS, HttpProxy
from ..roles.server import SERVER_KNOBS, HttpServer
from ..trace import Event
from ..workload import WORKLOAD_KNOBS, plan
from .base import Lab, Scenario

__all__ = ["UpstreamReuse", "KNOBS", "theory_rate", "worst_rate", "request_events", "check_idle_timeout",
           "POST_BODY"]

POST_BODY = b"x" * 100
_SERVER_NAMES = ("server.keepalive_timeout", "server.max_requests_per_connection", "server.connection_close_header")
_LAB_DEFAULTS: dict[str, Any] = {
    # Node's 5 s, scaled down: far enough above the milliseconds by which this interpreter's
    # loops can be late (at 20 ms, stray 503s crept past an idle timeout half the keep-alive)
    "server.keepalive_timeout": 0.03,
    "workload.rate": 50.0,
    "workload.duration": 20.0,
}


def _with_lab_defaults(knobs: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(dataclasses.replace(k, default=_LAB_DEFAULTS[k.name]) if k.name in _LAB_DEFAULTS else k
                 for k in knobs)


KNOBS = (
    *_with_lab_defaults(WORKLOAD_KNOBS),
    *(k for k in PROXY_KNOBS if k.name in POOL_KNOBS),
    *_with_lab_defaults(tuple(k for k in SERVER_KNOBS if k.name in _SERVER_NAMES)),
    seconds("wire.delay", 0.003, "One-way delay between proxy and server, added by a delay line (0: direct)",
            high=1.0, models="the network between the proxy and its upstream"),
)


def theory_rate(rate: float, keepalive: float, rtt: float, idle_timeout: float = 0.0) -> float:
    """The share of requests that meet a closed connection, for Poisson arrivals at ``rate``
    that one pooled connection serves one after another (a low rate: requests rarely
    overlap), with the server's keep-alive timeout ``keepalive``, the round trip ``rtt`` and the
    proxy's idle timeout ``idle_timeout`` (0: none).

    A request fails when the connection's idle time g falls in (K - rtt, K) and the proxy has
    not closed it first (g < idle_timeout). With exponential gaps:
    P = exp(-rate * (K - rtt)) - exp(-rate * min(K, idle_timeout)).

    Not covered: overlapping requests (several pooled connections) and the time the proxy and
    server take per request; measured rates sit a little off the curve at high rates.

    >>> round(theory_rate(37.2, 0.03, 0.006), 3)
    0.082
    >>> theory_rate(37.2, 0.03, 0.006, idle_timeout=0.01)
    0.0
    """
    low = max(0.0, keepalive - rtt)
    high = min(keepalive, idle_timeout) if idle_timeout else keepalive
    if high <= low:
        return 0.0
    return math.exp(-rate * low) - math.exp(-rate * high)


def worst_rate(keepalive: float, rtt: float) -> float:
    """The rate at which :func:`theory_rate` (no idle timeout) peaks: ln(K / (K - rtt)) / rtt.

    >>> round(worst_rate(0.03, 0.006), 1)
    37.2
    """
    if not 0 < rtt < keepalive:
        raise ValueError(f"rtt {rtt} must be above 0 and below the keep-alive timeout {keepalive}")
    return math.log(keepalive / (keepalive - rtt)) / rtt


class UpstreamReuse(Scenario):
    name = "upstream-reuse"
    title = "The proxy's upstream pool and 503 UC"
    knobs = KNOBS
    outcomes = ("200", "200 after retry", "503 UC", "503 UF", "failed")
    default_deadline = 5.0
    parallel_ok = True
    open_loop = True
    notebook = "04_upstream_pool.ipynb"

    def schedule(self, config: Config) -> list[float]:
        return [a.at for a in _plan(config)]

    def validate(self, config: Config) -> None:
        try:
            _plan(config)
        except ValueError as exc:
            raise KnobError(str(exc)) from None

    async def setup(self, lab: Lab) -> None:
        cfg = lab.config
        server = await lab.start("server", HttpServer(lab.trace, cfg.subset(SERVER_KNOBS, "the server")))
        upstream = server.address
        if cfg["wire.delay"] > 0:
            upstream = (await lab.start("wire", DelayLine(lab.trace, server.address, cfg["wire.delay"]))).address
        await lab.start("proxy", HttpProxy(lab.trace, cfg.subset(PROXY_KNOBS, "the proxy"), upstream=upstream,
                                           seed=cfg["workload.seed"]))
        lab.state["plan"] = _plan(cfg)
        lab.state["client"] = clients.KeepAliveClient(lab.roles["proxy"].address, lab.trace)

    async def trial(self, lab: Lab, index: int) -> dict[str, Any]:
        arrival = lab.state["plan"][index]
        proxy: HttpProxy = lab.roles["proxy"]
        client: clients.KeepAliveClient = lab.state["client"]
        rid = str(index)
        reply = await client.request(arrival.method, body=POST_BODY if arrival.method == "POST" else b"",
                                     headers=((b"x-request-id", rid.encode()),))
        record: dict[str, Any] = {}
        if reply.status is not None:
            record = await proxy.exchanges.wait(rid, lab.deadline)
        if reply.status == 200:
            outcome = "200" if record.get("attempts", 1) == 1 else "200 after retry"
        elif reply.status == 503 and record.get("flag") in ("UC", "UF"):
            outcome = f"503 {record['flag']}"
        else:
            outcome = "failed"
        idle_ms = record.get("idle_ms")
        return {
            "outcome": outcome,
            "method": arrival.method,
            "arrival_s": round(arrival.at, 6),
            "latency_ms": round((reply.latency_s or 0.0) * 1000, 3),
            "attempts": record.get("attempts", 0),
            "written_retried": bool(record.get("written_retried", False)),
            "idle_ms": float("nan") if idle_ms is None else round(idle_ms, 3),
            "upstreams": "; ".join(record.get("upstreams", [])) or "-",
            "client_error": reply.error or "-",
        }


def _plan(config: Config | dict[str, Any]) -> list[Any]:
    return plan(config["workload.rate"], config["workload.duration"], config["workload.post_share"],
                config["workload.seed"])


def request_events(result: Any, trial: int, margin_ms: float = 5.0) -> list[Event]:
    """The events of one request of an ``upstream-reuse`` run, for a ladder: the client's
    calls of that trial, and the proxy's, delay line's and server's on the upstream
    connections it used, from the end of the request before it on that connection (its idle
    time, and ``margin_ms``, before the request) until ``margin_ms`` after its last call (a
    pooled connection carries other requests before and after it), plus each connection's
    connect and accept, which may be much earlier (draw it with ``scale="order"``)."""
    row = result.trials.set_index("trial").loc[trial]
    mine = [e for e in result.trace.events() if e.actor == "client" and e.trial == trial]
    if not mine:
        return []
    idle = 0.0 if math.isnan(row["idle_ms"]) else float(row["idle_ms"])
    start = mine[0].t_ns - int((idle + margin_ms) * 1e6)
    end = mine[-1].t_ns + int(margin_ms * 1e6)
    conns = {e.conn for e in mine if e.conn}
    conns |= {part.split(" ")[0] for part in str(row["upstreams"]).split("; ") if part != "-"}
    everything = result.trace.events()
    linked = {e.detail for e in everything if e.op == "relay" and e.actor == "wire" and e.conn in conns}
    conns |= linked
    return [e for e in everything if e.conn in conns and not (e.actor == "client" and e.trial != trial)
            and (start <= e.t_ns <= end or e.op in ("connect", "accept"))]


#: the room the exercise asks for below K - 2d: the path's jitter in this lab, where a hop of
#: the delay line leaves up to a few milliseconds late when the interpreter is busy (a real
#: network's jitter plays the same part, at its own size)
TIMER_SLACK = 0.005


def check_idle_timeout(answer: dict[str, object], keepalive: float = 0.04, delay: float = 0.005,
                       duration: float = 6.0) -> tuple[bool, str]:
    """Grade an ``upstream_idle_timeout_ms`` for an upstream whose keep-alive timeout is
    ``keepalive`` behind a one-way ``delay``: the proxy must drop an idle connection before a
    request sent on it could reach the server after its close, that is below K - 2d (less
    :data:`TIMER_SLACK`), and above 0 (0 means never). Then it runs the lab at the worst rate
    for ``duration`` seconds with that setting and without one: the first must lose at most
    one request (a stall of the whole machine can delay a response past any margin), and
    fewer than the second.
    """
    raw = str(answer.get("upstream_idle_timeout_ms", "")).strip().lower().removesuffix("ms").strip()
    if raw in ("", "?", "???"):
        return False, "Fill in upstream_idle_timeout_ms first; then this cell checks it."
    try:
        chosen = float(raw) / 1000
    except ValueError:
        return False, "Write upstream_idle_timeout_ms as a number of milliseconds, for example 12."
    limit = keepalive - 2 * delay - TIMER_SLACK
    safe = 0 < chosen <= limit
    lines = [f"{'right' if safe else 'not quite'}: the pool must drop an idle connection by K - 2d - slack = "
             f"{limit * 1000:g} ms, and 0 means never (you said {chosen * 1000:g} ms)"]
    from ..runner import run

    base = {"server.keepalive_timeout": keepalive, "wire.delay": delay, "workload.duration": duration,
            "workload.rate": worst_rate(keepalive, 2 * delay)}
    without = run("upstream-reuse", config=base)
    mine = run("upstream-reuse", config={**base, "proxy.upstream_idle_timeout": chosen})
    reused = mine.trials["idle_ms"].notna().mean()
    lines.append(f"measured at {base['workload.rate']:.0f} requests/s: without an idle timeout "
                 f"{without.count('503 UC')} of {without.n} got 503 UC; with yours {mine.count('503 UC')} of "
                 f"{mine.n}, and {reused:.0%} of requests still reused a pooled connection")
    # one stray 503 is allowed: a stall of the machine can delay a response past any margin
    lost = mine.count("503 UC")
    return safe and lost <= 1 and lost < without.count("503 UC"), "\n".join(lines)
