"""bench: how fast the labs run, measured, next to bare sockets doing the same work.

For close-basics, each mode runs N trials through lablib (three event-loop threads, traced
calls, per-trial kernel counters) and N trials of the same syscalls on bare blocking sockets in
one thread: connect, accept, send, recv, close as the mode says, the client's TCP_INFO, the
server's state by sock_diag, and the four counter reads. The ratio is the price of lablib's
machinery, not of the kernel work. Memory is the tracemalloc peak of a run divided by its
trials (the trace keeps every event of every trial).

For early-close, the raw client posts an 8 MiB body (the lab's default) and a 1 KiB one,
direct and through the proxy, with a plain close (the race) and a lingering close (the fix);
the figure is trials per second, each trial a fresh connection, a whole upload and the
server's (and proxy's) close.

For keepalive-reuse, the figure is the wall time of one sweep point: 200 trials side by
side on separate connections (their starts 10 ms apart), each a request, an idle gap of about
the server's 100 ms keep-alive timeout, and a reuse, through a 5 ms delay line.

For close-framing, the raw client GETs 1 KiB (chunked from the server) through the proxy over
HTTP/1.0, one request at a time as ``ab -c 1`` does, with each close setting at Envoy's
1 s delayed_close_timeout; the figure is requests per second, each a fresh connection.
With the delay kept, a request lasts the timeout, so that row runs only a few.

For upstream-reuse, the figure is requests per second through the proxy against the same
requests sent straight to the server, in the same run, on keep-alive connections with 3-byte
bodies: one client sending one request at a time, and eight side by side. Both paths share
the client's and the server's loops, so the difference is the proxy's hop (its loop, two more
socket calls each way, its pool).

Not covered: the work rate of an open-loop run (the lab's own figure is its 503 rate, not
its speed), and HTTP/2.
"""

from __future__ import annotations

import asyncio
import gc
import select
import socket
import struct
import time
import tracemalloc
from typing import Any

from . import kernel
from .clients import KeepAliveClient
from .knobs import Config
from .roles.proxy import PROXY_KNOBS, HttpProxy
from .roles.server import SERVER_KNOBS, HttpServer
from .runner import run
from .scenarios.close_basics import MODES
from .tcpinfo import TCP_INFO_BUFFER
from .topology import Topology
from .trace import Trace

__all__ = ["bare_trial", "bench_close_basics", "bench_early_close", "bench_keepalive_reuse",
           "bench_close_framing", "bench_upstream_reuse", "format_bench", "format_early_close",
           "format_keepalive_reuse", "format_close_framing", "format_upstream_reuse"]

REQUEST = b"q" * 1000
REPLY = b"r" * 100


def bare_trial(listener: socket.socket, mode: str) -> str:
    """One close-basics trial on blocking sockets, no tracing; returns what the client saw."""
    before = kernel.read_counters()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        client.sendall(REQUEST)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, len(REQUEST))
        select.select([server], [], [], 5)
        if mode in ("drained", "linger0"):
            server.recv(len(REQUEST))
        server.sendall(REPLY)
        if mode == "linger0":
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if mode == "shutdown":
            server.shutdown(socket.SHUT_WR)
        else:
            server.close()
        seen = "eof"
        try:
            while client.recv(65536):
                pass
        except ConnectionResetError:
            seen = "econnreset"
        client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BUFFER)
        kernel.socket_state(listener.getsockname(), client.getsockname())
    finally:
        client.close()
        if mode == "shutdown":
            while server.recv(65536):
                pass
        server.close()
    kernel.delta(before, kernel.read_counters())
    return seen


def _bare_rate(mode: str, trials: int) -> float:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        started = time.perf_counter()
        for _ in range(trials):
            bare_trial(listener, mode)
        return trials / (time.perf_counter() - started)


def bench_close_basics(trials: int = 1000) -> dict[str, Any]:
    rows = []
    for mode in MODES:
        result = run("close-basics", trials, {"close.mode": mode})
        lab_rate = trials / result.elapsed_s
        bare = _bare_rate(mode, trials)
        rows.append({"mode": mode, "lablib_trials_per_s": round(lab_rate), "bare_trials_per_s": round(bare),
                     "bare_over_lablib": round(bare / lab_rate, 1), "outcomes": result.outcomes})
    gc.collect()
    tracemalloc.start()
    result = run("close-basics", trials, {"close.mode": "unread"})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    memory = {"trials": trials, "events_per_trial": round(len(result.trace) / trials, 1),
              "peak_bytes": peak, "bytes_per_trial": round(peak / trials)}
    return {"scenario": "close-basics", "trials_per_mode": trials, "modes": rows, "memory": memory}


def format_bench(report: dict[str, Any]) -> str:
    lines = [f"close-basics: {report['trials_per_mode']} sequential trials per mode "
             f"(lablib: client, server on own event loops, every call traced; bare: same syscalls, one thread)",
             f"  {'mode':<9} {'lablib/s':>9} {'bare/s':>9} {'bare÷lablib':>12}"]
    for r in report["modes"]:
        lines.append(f"  {r['mode']:<9} {r['lablib_trials_per_s']:>9} {r['bare_trials_per_s']:>9} "
                     f"{r['bare_over_lablib']:>11}x")
    m = report["memory"]
    lines.append(f"  memory: {m['events_per_trial']} events per trial; tracemalloc peak {m['peak_bytes'] / 1024**2:.1f} MiB "
                 f"over {m['trials']} trials = {m['bytes_per_trial'] / 1024:.1f} KiB per trial")
    return "\n".join(lines)


EARLY_CLOSE_CASES = (
    ("direct", "close"), ("direct", "lingering"), ("proxy", "close"), ("proxy", "lingering"),
)


def bench_early_close(trials: int = 100) -> dict[str, Any]:
    rows = []
    for body in (8 * 1024**2, 1024):
        for topology, mode in EARLY_CLOSE_CASES:
            result = run("early-close", trials, {"topology": topology, "server.close_mode": mode,
                                                 "client.body_bytes": body})
            rows.append({"topology": topology, "server.close_mode": mode, "body_bytes": body,
                         "trials_per_s": round(trials / result.elapsed_s), "outcomes": result.outcomes})
    return {"scenario": "early-close", "trials": trials, "client": "raw", "rows": rows}


def format_early_close(report: dict[str, Any]) -> str:
    lines = [f"early-close: {report['trials']} sequential trials per row, raw client, a fresh connection each",
             f"  {'topology':<8} {'close mode':<10} {'body':>7} {'trials/s':>9}  outcomes"]
    for r in report["rows"]:
        body = "8 MiB" if r["body_bytes"] == 8 * 1024**2 else "1 KiB"
        outcomes = ", ".join(f"{k} {v}" for k, v in r["outcomes"].items() if v)
        lines.append(f"  {r['topology']:<8} {r['server.close_mode']:<10} {body:>7} {r['trials_per_s']:>9}  {outcomes}")
    return "\n".join(lines)


def bench_keepalive_reuse(trials: int = 200) -> dict[str, Any]:
    rows = []
    for offset in (-0.010, 0.0, 0.010):
        result = run("keepalive-reuse", trials, {"client.idle_gap": 0.1 + offset, "wire.delay": 0.005,
                                                 "client.check_before_reuse": "on"})
        rows.append({"offset_ms": round(offset * 1000), "wall_s": round(result.elapsed_s, 2),
                     "outcomes": result.outcomes})
    return {"scenario": "keepalive-reuse", "trials": trials, "rows": rows}


def format_keepalive_reuse(report: dict[str, Any]) -> str:
    lines = [f"keepalive-reuse: one sweep point = {report['trials']} trials side by side, raw client checking "
             "before reuse, 5 ms each way, keep-alive 100 ms"]
    for r in report["rows"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in r["outcomes"].items() if v)
        lines.append(f"  offset {r['offset_ms']:+d} ms: {r['wall_s']:.2f} s  ({outcomes})")
    return "\n".join(lines)


CLOSE_FRAMING_CASES = (
    ("delayed close, skip off", {}),
    ("delayed close, skip on", {"proxy.skip_delay_close": "on"}),
    ("lingering close", {"proxy.close_mode": "lingering"}),
    ("HTTP/1.1 + Connection: close", {"client.http_version": "1.1"}),
)


def bench_close_framing(trials: int = 200) -> dict[str, Any]:
    rows = []
    for label, knobs in CLOSE_FRAMING_CASES:
        n = max(3, trials // 50) if not knobs else trials
        result = run("close-framing", n, {"proxy.delayed_close_timeout": 1.0, **knobs})
        latency = result.latency() or {}
        rows.append({"setting": label, "trials": n, "requests_per_s": round(n / result.elapsed_s, 1),
                     "median_ms": round((latency.get("median") or 0) * 1000, 2), "outcomes": result.outcomes})
    return {"scenario": "close-framing", "client": "raw, HTTP/1.0 unless said", "rows": rows}


def format_close_framing(report: dict[str, Any]) -> str:
    lines = ["close-framing: raw client, one request at a time through the proxy, 1 KiB chunked from the server, "
             "delayed_close_timeout 1 s",
             f"  {'setting':<29} {'requests':>8} {'req/s':>8} {'median':>10}"]
    for r in report["rows"]:
        lines.append(f"  {r['setting']:<29} {r['trials']:>8} {r['requests_per_s']:>8} {r['median_ms']:>7.1f} ms")
    return "\n".join(lines)


UPSTREAM_CONCURRENCY = (1, 8)


def bench_upstream_reuse(requests: int = 1000) -> dict[str, Any]:
    rows = []
    with Topology(Trace(keep=50_000)) as topo:
        server = topo.start_now(HttpServer(topo.trace, Config(SERVER_KNOBS, {"server.keepalive_timeout": 60.0})),
                                "server")
        proxy = topo.start_now(HttpProxy(topo.trace, Config(PROXY_KNOBS, {}), server.address), "proxy")
        client = topo.loop("client")
        for concurrency in UPSTREAM_CONCURRENCY:
            for path, address in (("direct", server.address), ("through the proxy", proxy.address)):
                seconds, statuses = client.call(_keepalive_gets(address, topo.trace, requests, concurrency), 300)
                rows.append({"path": path, "concurrency": concurrency, "requests": requests,
                             "requests_per_s": round(requests / seconds, 1), "ok": statuses.count(200)})
    return {"scenario": "upstream-reuse", "requests": requests, "rows": rows}


async def _keepalive_gets(address: tuple[str, int], trace: Trace, requests: int,
                          concurrency: int) -> tuple[float, list[int | None]]:
    """``requests`` GETs over ``concurrency`` keep-alive connections, each sending one request
    at a time; the seconds they took and the statuses."""
    users = [KeepAliveClient(address, trace) for _ in range(concurrency)]
    share = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]

    async def user(c: KeepAliveClient, n: int) -> list[int | None]:
        return [(await c.request("GET")).status for _ in range(n)]

    started = time.perf_counter()
    try:
        done = await asyncio.gather(*(user(c, n) for c, n in zip(users, share, strict=True)))
    finally:
        for c in users:
            c.close()
    return time.perf_counter() - started, [s for statuses in done for s in statuses]


def format_upstream_reuse(report: dict[str, Any]) -> str:
    lines = [f"upstream-reuse: {report['requests']} keep-alive GETs (3-byte bodies) per row",
             f"  {'path':<18} {'side by side':>12} {'req/s':>8}"]
    for r in report["rows"]:
        failed = f"  ({r['requests'] - r['ok']} not 200)" if r["ok"] != r["requests"] else ""
        lines.append(f"  {r['path']:<18} {r['concurrency']:>12} {r['requests_per_s']:>8}{failed}")
    return "\n".join(lines)
