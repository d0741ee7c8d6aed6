"""Lab 03, close framing: an HTTP/1.0 response ended by the close meets Envoy's delayed close
(envoy#19821, fixed by PR #19863 in Envoy 1.22).

A client makes one request on a fresh connection to the Envoy-like proxy, which forwards it
to the server. The server's response has no Content-Length (``server.response_framing``,
chunked by default, as from a streaming backend). The proxy sends it on as it must: chunked
to an HTTP/1.1 client, and to an HTTP/1.0 client with no framing at all, so that the end of
the response is the end of the connection. Then the proxy closes the connection:

* ``proxy.close_mode=delayed`` (Envoy's FlushWriteAndDelay): it keeps reading and sends the
  FIN only when the client closes or ``proxy.delayed_close_timeout`` fires. An HTTP/1.0
  client waits for that FIN to know it has the whole response, so it waits the whole timeout.
* ``proxy.close_mode=lingering`` (nginx, RFC 9112 section 9.6): FIN at once, then it reads
  and discards until the client closes. Nothing waits.
* ``proxy.skip_delay_close=on`` (Envoy 1.22): no delay where none is needed (see
  :func:`lablib.roles.proxy.close_choice`); ``always`` also where it is, which the second
  half of the lab shows: ``proxy.max_request_bytes`` makes the proxy refuse a large upload
  with its own 413 before reading the body; the delay is what keeps that 413 from becoming the
  reset of lab 01.

A trial's outcome is what the client saw: ``complete`` (the whole 200, with ``latency_s``,
from before connect() until the client knew the response was complete), ``413`` (the proxy's
refusal, read whole), ``truncated`` (a response began but did not arrive whole), ``reset``,
``closed`` or ``timeout``. Its row also says how the proxy closed (``proxy_closed_by``), how
long it held the connection after its response and how that ended (``eof``: the client
closed; ``deadline``: the timeout fired), and the FIN or RST it sent.

Trials run one at a time (each reads the kernel counters, and a trial finds its connection as
the next one the proxy accepts), so a run of the delayed close takes about
``proxy.delayed_close_timeout`` per trial.

Not covered: TLS (#19821 had Envoy terminating TLS; close_notify changes nothing here),
and keep-alive HTTP/1.0.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
from typing import Any

from .. import clients
from ..exercises import grade
from ..knobs import Config, KnobError, choice, nbytes
from ..roles.proxy import ONE_REQUEST_PER_CONNECTION, PROXY_KNOBS, HttpProxy
from ..roles.server import RESPONSE_KNOBS, SERVER_KNOBS, HttpServer
from .base import Lab, Scenario

__all__ = ["CloseFraming", "KNOBS", "check_prediction", "theory_latency"]

_LAB_DEFAULTS = {
    # the Envoy of envoy#19821 (1.18.3): before 1.22 nothing skipped the delay
    "proxy.skip_delay_close": "off",
    # a streaming backend: no Content-Length
    "server.response_framing": "chunked",
    "server.response_bytes": 1024,
}
_PROXY_NAMES = ("proxy.close_mode", "proxy.delayed_close_timeout", "proxy.skip_delay_close", "proxy.max_request_bytes")


def _lab_knobs(knobs: tuple[Any, ...], names: tuple[str, ...]) -> tuple[Any, ...]:
    by_name = {k.name: k for k in knobs}
    return tuple(dataclasses.replace(by_name[n], default=_LAB_DEFAULTS[n]) if n in _LAB_DEFAULTS else by_name[n]
                 for n in names)


KNOBS = (
    choice("client.kind", "raw", clients.FETCH_KINDS, "The client that makes the request",
           models="your application's HTTP client; PHP < 8.0 file_get_contents and ab speak HTTP/1.0"),
    choice("client.http_version", "1.0", clients.HTTP_VERSIONS,
           "1.0: the end of a response without Content-Length is the FIN; 1.1: sent with Connection: close",
           models="Envoy accept_http_10; curl --http1.0", real_default="PHP < 8.0, ab: 1.0"),
    nbytes("client.body_bytes", 0, "0: a GET; else a POST of this many bytes", high=64 * 1024**2,
           models="an upload (the early-413 case)"),
    *_lab_knobs(PROXY_KNOBS, _PROXY_NAMES),
    *_lab_knobs(SERVER_KNOBS, RESPONSE_KNOBS),
)


def theory_latency(config: Config | dict[str, Any]) -> float:
    """The wait the proxy's close adds to a request that gets a 200, in seconds: the delayed
    close timeout when the client needs the FIN to see the end of the response (HTTP/1.0, no
    Content-Length, delayed close not skipped), else 0.

    >>> theory_latency({"client.http_version": "1.0", "server.response_framing": "chunked",
    ...                 "proxy.close_mode": "delayed", "proxy.skip_delay_close": "off",
    ...                 "proxy.delayed_close_timeout": 0.5})
    0.5
    """
    needs_fin = config["client.http_version"] == "1.0" and config["server.response_framing"] == "chunked"
    held = config["proxy.close_mode"] == "delayed" and config["proxy.skip_delay_close"] == "off"
    return float(config["proxy.delayed_close_timeout"]) if needs_fin and held else 0.0


class CloseFraming(Scenario):
    name = "close-framing"
    title = "HTTP/1.0 close framing meets delayed close"
    knobs = KNOBS
    outcomes = ("complete", "413", "truncated", "reset", "closed")
    default_trials = 10
    default_deadline = 15.0
    parallel_ok = False
    notebook = "03_close_framing.ipynb"

    def validate(self, config: Config) -> None:
        if config["client.kind"] == "curl" and clients.curl_path() is None:
            raise KnobError("client.kind=curl: curl is not installed here; choose raw or http.client")

    async def setup(self, lab: Lab) -> None:
        cfg = lab.config
        server = await lab.start("server", HttpServer(lab.trace, cfg.subset(SERVER_KNOBS, "the server")))
        await lab.start("proxy", HttpProxy(lab.trace, cfg.subset(
                PROXY_KNOBS, "the proxy", fixed=ONE_REQUEST_PER_CONNECTION), upstream=server.address))
        lab.state["body"] = body = b"x" * cfg["client.body_bytes"]
        if body and cfg["client.kind"] == "curl":
            fd, path = tempfile.mkstemp(prefix="lablib-body-")
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            lab.state["body_file"] = path
            lab.cleanups.append(lambda: os.unlink(path))

    async def trial(self, lab: Lab, index: int) -> dict[str, Any]:
        cfg = lab.config
        proxy: HttpProxy = lab.roles["proxy"]
        hop_index = proxy.accepted_count  # this trial's connection is the next one accepted (trials run alone)
        reply = await clients.fetch(cfg["client.kind"], proxy.address, http_version=cfg["client.http_version"],
                                    body=lab.state["body"], expected=cfg["server.response_bytes"], trace=lab.trace,
                                    timeout=lab.deadline - 2, body_file=lab.state.get("body_file"))
        hop = await proxy.summary_of(hop_index, lab.deadline)
        lab.trace.record("client", "note", conn=hop["conn"], result=reply.error or "ok",
                         detail=f"{cfg['client.kind']} HTTP/{cfg['client.http_version']}: {reply.outcome}"
                                + (f" after {reply.latency_s * 1000:.1f} ms" if reply.latency_s is not None else "")
                                + (f" ({reply.error})" if reply.error else ""))
        whole = reply.outcome in ("complete", "413")
        return {
            "outcome": reply.outcome,
            "latency_s": round(reply.latency_s, 6) if whole and reply.latency_s is not None else float("nan"),
            "received": -1 if reply.received is None else reply.received,
            "client_error": reply.error or "-",
            "proxy_response": ", ".join(hop["responses"]) or "-",
            "proxy_closed_by": hop.get("closed_by", "-"),
            "proxy_held_ms": hop["held_ms"],
            "proxy_ended_by": hop["ended_by"] or "-",
            "proxy_discarded": hop["discarded"],
            "proxy_sent": hop["sent"],
        }


def check_prediction(prediction: dict[str, Any], timeout: float = 0.3, trials: int = 5) -> tuple[bool, str]:
    """Grade a prediction of the median latency, in milliseconds, of a GET through a proxy
    with the delayed close (``delayed_close_timeout`` = ``timeout``, skip off) and a streaming
    backend, for ``http10_ms`` (HTTP/1.0) and ``http11_ms`` (HTTP/1.1, Connection: close).
    An answer within 50 ms of the measurement is right."""
    from ..runner import run

    def measure() -> dict[str, str]:
        medians = {}
        for item, version in (("http10_ms", "1.0"), ("http11_ms", "1.1")):
            result = run("close-framing", trials, {"client.http_version": version,
                                                   "proxy.delayed_close_timeout": timeout})
            latencies = result.trials["latency_s"].dropna()
            medians[item] = f"{statistics.median(latencies) * 1000:.0f}" if len(latencies) else "nan"
        return medians

    return grade(prediction, {"http10_ms": _milliseconds, "http11_ms": _milliseconds}, measure,
                 within={"http10_ms": 50.0, "http11_ms": 50.0})


def _milliseconds(text: str) -> str:
    """A number of milliseconds as written by a learner ("300", "300 ms", "0.3 s")."""
    t = text.lower().replace(" ", "")
    try:
        if t.endswith("ms"):
            return f"{float(t[:-2]):.0f}"
        if t.endswith("s"):
            return f"{float(t[:-1]) * 1000:.0f}"
        return f"{float(t):.0f}"
    except ValueError:
        return text
