"""Lab 01, early close: the 413 that becomes a reset (envoy#2929, fixed by PR #4382).

A client POSTs ``client.body_bytes``. The server reads the request head, sees a
Content-Length above ``server.max_request_bytes``, answers ``413`` at once without reading
the body, and ends the connection by ``server.close_mode``. With ``close`` the kernel finds
body bytes unread and sends RST instead of FIN, while the client may still be uploading.

``topology=direct`` is client -> server. ``topology=proxy`` puts the Envoy-like proxy in
between (the two listeners of #2929): the race then happens between the proxy and the
server, and the proxy's ``proxy.read_response_on_write_error`` decides whether the client
gets the server's 413 or the proxy's own 503.

A trial's outcome is what the client reported: the status it got (``413``, ``503``, ``200``),
``reset`` (ECONNRESET or EPIPE before any response), ``closed`` (EOF before any response) or
``timeout``. Its row also says what the server (and the proxy) did: bytes unread at close,
FIN or RST, how long it held the connection after its response and how much it read and
discarded meanwhile.

Trials run one at a time, each on a fresh connection: the n-th connection the server (and
the proxy) accepts belongs to the n-th trial, which is how a trial finds its own, also for
clients whose sockets lablib cannot see.

Not covered: Expect: 100-continue through the proxy end to end (the proxy answers it itself,
as Envoy does by default), chunked uploads, and delay lines (loopback is fast enough here).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

from .. import clients
from ..exercises import grade
from ..knobs import Config, KnobError, choice, flag, nbytes
from ..roles.proxy import CLOSE_FRAMING_KNOBS, ONE_REQUEST_PER_CONNECTION, POOL_KNOBS, PROXY_KNOBS, HttpProxy
from ..roles.server import RESPONSE_KNOBS, SERVER_KNOBS, HttpServer
from .base import Lab, Scenario

__all__ = ["EarlyClose", "KNOBS", "check_prediction"]

#: the server knobs, with envoy#2929's limit (its buffer filter allowed 512 bytes)
_SERVER = tuple(dataclasses.replace(k, default=512) if k.name == "server.max_request_bytes" else k
                for k in SERVER_KNOBS if k.name not in (*RESPONSE_KNOBS, "server.connection_close_header"))
#: the proxy knobs of this lab (it wires proxy.upstream; lab 03 has the close-framing ones)
_PROXY = tuple(k for k in PROXY_KNOBS if k.name not in ("proxy.upstream", *CLOSE_FRAMING_KNOBS, *POOL_KNOBS))

KNOBS = (
    choice("topology", "direct", ("direct", "proxy"),
           "client -> server, or client -> proxy -> server (the two listeners of envoy#2929)"),
    choice("client.kind", "raw", clients.KINDS, "The client that posts the body",
           models="your application's HTTP client"),
    nbytes("client.body_bytes", 8 * 1024**2, "Size of the request body", high=64 * 1024**2,
           models="an upload; envoy#2929 posted 28 MB"),
    flag("client.expect_continue", False,
         "raw and curl: send Expect: 100-continue and wait up to 1 s for the go-ahead before the body",
         models="RFC 9110 section 10.1.1", real_default="curl: on for bodies above 1 MiB"),
    flag("client.read_after_write_error", False,
         "raw: when the upload fails, read the response anyway (as curl and urllib3 2 do)",
         models="curl, urllib3 2 (requests): on; http.client: off"),
    *_SERVER,
    *_PROXY,
)


class EarlyClose(Scenario):
    name = "early-close"
    title = "Early close: the 413 that becomes a reset"
    knobs = KNOBS
    outcomes = ("413", "503", "reset", "closed", "200")
    default_trials = 20
    default_deadline = 15.0
    parallel_ok = False
    notebook = "01_early_close.ipynb"

    def validate(self, config: Config) -> None:
        kind = config["client.kind"]
        if config["topology"] == "direct":
            changed = [k for k in config.changed() if k.startswith("proxy.")]
            if changed:
                raise KnobError(f"{changed[0]} is a proxy knob: it needs topology=proxy")
        if kind == "curl" and clients.curl_path() is None:
            raise KnobError("client.kind=curl: curl is not installed here; choose raw, http.client or requests")
        if config["client.expect_continue"] and kind not in ("raw", "curl"):
            raise KnobError(f"client.expect_continue=on: {kind} cannot send Expect: 100-continue; "
                            "use client.kind=raw or curl")
        if config["client.read_after_write_error"] and kind != "raw":
            raise KnobError(f"client.read_after_write_error is the raw client's choice; {kind} behaves as it "
                            "does (http.client gives up, requests and curl read on)")

    async def setup(self, lab: Lab) -> None:
        cfg = lab.config
        server = await lab.start("server", HttpServer(lab.trace, cfg.subset(SERVER_KNOBS, "the server")))
        if cfg["topology"] == "proxy":
            await lab.start("proxy", HttpProxy(lab.trace, cfg.subset(
                PROXY_KNOBS, "the proxy", fixed=ONE_REQUEST_PER_CONNECTION), upstream=server.address))
        lab.state["body"] = body = b"x" * cfg["client.body_bytes"]
        if cfg["client.kind"] == "curl":
            fd, path = tempfile.mkstemp(prefix="lablib-body-")
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            lab.state["body_file"] = path
            lab.cleanups.append(lambda: os.unlink(path))

    async def trial(self, lab: Lab, index: int) -> dict[str, Any]:
        cfg = lab.config
        server: HttpServer = lab.roles["server"]
        proxy: HttpProxy | None = lab.roles.get("proxy")
        first_hop = proxy or server
        # this trial's connections are the next ones each role accepts (trials run alone)
        server_index, hop_index = server.accepted_count, first_hop.accepted_count
        reply = await clients.post(cfg["client.kind"], first_hop.address, lab.state["body"], trace=lab.trace,
                                   timeout=lab.deadline - 2, expect_continue=cfg["client.expect_continue"],
                                   read_after_write_error=cfg["client.read_after_write_error"],
                                   body_file=lab.state.get("body_file"))
        hop = await first_hop.summary_of(hop_index, lab.deadline)
        # the client's result, on the connection it used (for the ladder and the trial's events)
        lab.trace.record("client", "note", conn=hop["conn"], result=reply.error or "ok",
                         detail=f"{cfg['client.kind']}: {reply.outcome}" + (f" ({reply.error})" if reply.error else ""))
        upstream = await server.summary_of(server_index, lab.deadline) if proxy else hop
        row: dict[str, Any] = {
            "outcome": reply.outcome,
            "client_error": reply.error or "-",
            "client_bytes_sent": -1 if reply.bytes_sent is None else reply.bytes_sent,
            "server_unread": upstream["unread"],
            "server_sent": upstream["sent"],
            "server_held_ms": upstream["held_ms"],
            "server_discarded": upstream["discarded"],
        }
        if proxy:
            row.update(proxy_response=", ".join(hop["responses"]) or "-",
                       proxy_upstream_error=hop["upstream_error"] or "-",
                       proxy_sent=hop["sent"], proxy_held_ms=hop["held_ms"])
        return row


def check_prediction(prediction: dict[str, str], config: dict[str, Any], trials: int = 10) -> tuple[bool, str]:
    """Run ``config`` and grade a prediction of ``client_gets`` (the usual outcome: 413, 503,
    reset, closed) and ``server_rsts`` (yes if the kernel sent an RST in most trials, else no)."""
    from ..runner import run

    def measure() -> dict[str, str]:
        result = run("early-close", trials, config)
        return {"client_gets": str(result.trials["outcome"].mode().iloc[0]),
                "server_rsts": "yes" if (result.trials["OutRsts"] > 0).mean() > 0.5 else "no"}

    return grade(prediction, {"client_gets": str.lower, "server_rsts": str.lower}, measure)
