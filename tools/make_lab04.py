"""Write labs/04_upstream_pool.ipynb (unexecuted); then run tools/run_notebooks.py on it.

The notebook's text lives here so that a change to it is a reviewable diff of prose, not of
JSON. Not covered: the other labs' notebooks (edited in place).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

KERNEL = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
          "language_info": {"name": "python"}}
OUT = Path(__file__).resolve().parent.parent / "labs" / "04_upstream_pool.ipynb"


def md(text):
    return new_markdown_cell(text.strip("\n"))


def code(text, hidden=False):
    cell = new_code_cell(text.strip("\n"))
    if hidden:
        cell.metadata["jupyter"] = {"source_hidden": True}
    return cell


NAV = ("[Contents](index.ipynb) · previous: [Lab 03, close framing](03_close_framing.ipynb) · **Lab 04** · "
       "next: back to the [contents](index.ipynb)")

cells = [
md(NAV + """

# Lab 04 · The proxy's upstream pool and 503 UC

Lab 02 put a client in front of a server that closes idle keep-alive connections. Now the
client is a proxy: Envoy keeps a pool of HTTP/1.1 connections to each upstream and hands them
from request to request. When the upstream closes a pooled connection just as the proxy gives it
to a new request, the request goes into a dead socket and the proxy answers
`503` with the access-log flag `UC`, *upstream connection termination*. Users see it as a rare
503 that no log on the upstream explains.

You will make the race happen at a controlled rate, find the traffic rate where it is worst,
and switch on each fix that Envoy and Istio offer: an idle timeout, retries, the deferred
hand-over of PR #2871, and `Connection: close`.

*About 15 minutes. Every table and figure below is measured in this run, on this machine;
the few numbers quoted from other runs say so.*
"""),
md("""
## The story: envoy#2715, #6815, #23625

**2018, #2715.** Envoy's HTTP/1 pool, when a response completed and another request was
waiting, attached the waiting request to the freed connection at once, in the same callback.
If the upstream had closed right behind its response, its FIN was already in the kernel, but
Envoy had not read it yet. The maintainers' view: this is a timing problem inherent to
HTTP/1.1, which no proxy can fully avoid; the answers are an upstream that says
`Connection: close` before it closes, an idle timeout on the proxy's side, and retries. One
mitigation went in anyway: **PR #2871** attaches a waiting request only on the *next* iteration
of the event loop, so a FIN that came with the response is read first.

**2019, #6815.** Envoy reused a connection after the upstream's FIN. The maintainers found no
sign that Envoy had read the FIN before it sent the request: whenever the upstream times idle
connections out before the proxy does, the race is there, and the fix is the timeouts. A
follow-up, **PR #7159** (from Istio, which had measured about 0.012% of requests failing),
wanted to hold a freed connection back for two loop turns because libevent does not promise
the order of events in one turn. It was not merged.

**2022, #23625.** An Express upstream behind Envoy closed connections without
`Connection: close`; under load Envoy handed them out before the FIN was processed. The
reporter's reproduction found that retries helped only sometimes and that adding
`Connection: close` made the 503s go away. The issue was closed as not an Envoy bug.
"""),
md("""
## The race on a timeline

Take the upstream's keep-alive timeout K (Node's default is 5 s) and a one-way delay d between
proxy and upstream.

1. The upstream writes a response and starts its idle timer. The response reaches the proxy d
   later, and the connection goes back into the pool.
2. A new request takes the connection after it has been idle for g, and writes into it. The
   request reaches the upstream at 2d + g after the timer started.
3. At K the upstream closes. Its FIN reaches the proxy at K + d; from then on the pool knows,
   and drops the connection.

So the request meets a closed socket when **K − 2d < g < K**: a window one round trip wide,
just below the timeout. The upstream's kernel answers the request with RST, the proxy reads EOF
or ECONNRESET instead of a response: `503 UC`.

With requests arriving at random (a Poisson stream at rate λ) on one connection, the idle time
is exponential, and the share of requests that fall in the window is
**exp(−λ(K − 2d)) − exp(−λK)**. It is zero at very low rates (the FIN always arrives first)
and at very high rates (no connection idles that long), and peaks at
λ\\* = ln(K / (K − 2d)) / 2d, near 1/K. A service whose traffic *drops* into that range starts
to see 503s: the shape of envoy#13388's "502 when traffic rate drops".
"""),
code("""
import pandas as pd

import lablib
from lablib.plot import ladder, outcome_bars, sweep
from lablib.scenarios.upstream_reuse import check_idle_timeout, request_events, theory_rate, worst_rate
from lablib.widgets import form

K, D = 0.030, 0.003  # the lab's keep-alive timeout and one-way delay: Node's 5 s and a wide network, scaled
WORST = worst_rate(K, 2 * D)
print(f"K = {K * 1000:g} ms, round trip {2 * D * 1000:g} ms: worst rate {WORST:.1f} requests/s, "
      f"where theory expects {theory_rate(WORST, K, 2 * D):.1%} of requests to fail")


def uc(result, method=None):
    rows = result.trials if method is None else result.trials[result.trials["method"] == method]
    return int((rows["outcome"] == "503 UC").sum())
"""),
md("""
## The experiment

The scenario `upstream-reuse` runs client → proxy → delay line → server on loopback. The
client is an *open-loop* workload: requests arrive at random at `workload.rate` per second for
`workload.duration`, whatever the responses do, as real users do. Each trial is one request.

| knob | lab default | what it does |
|---|---|---|
| `workload.rate`, `workload.duration` | 50/s, 20 s | the Poisson stream of requests |
| `workload.post_share`, `workload.seed` | 0, 1 | share of POSTs; the same seed gives the same requests |
| `server.keepalive_timeout` | 30 ms | the upstream closes a connection idle this long |
| `wire.delay` | 3 ms | one-way delay between proxy and server |
| `proxy.upstream_idle_timeout` | 1 h | Envoy's cluster `idle_timeout` |
| `proxy.retry_on`, `proxy.num_retries`, `proxy.retry_backoff` | none, 1, 25 ms | Envoy's route retry policy |
| `proxy.attach_on_next_iteration` | on | PR #2871 |
| `proxy.max_connections` | 1024 | Envoy's circuit breaker: more requests wait for a connection |
| `server.max_requests_per_connection`, `server.connection_close_header` | 0, on | close after N responses, saying so or not |

Eight seconds at the worst rate, no mitigation, with a third of the requests POSTs:
"""),
code("""
BASE = {"workload.rate": WORST, "workload.duration": 8.0, "workload.post_share": 0.3, "workload.seed": 4}
none = lablib.run("upstream-reuse", config=BASE)
print(none.summary())
none.trials[none.trials["outcome"] == "503 UC"].head(3)[["method", "arrival_s", "idle_ms", "upstreams"]]
"""),
md("""
Each failing request took a connection that had been idle for about K = 30 ms (`idle_ms`): a
little less, or with this path's jitter a little more (the next section counts them). The ladder of the first one shows the crossing. Read it from the top: the
connection's handshake, then the response to the request before this one, which starts the
server's keep-alive timer, and the idle time. The client's request reaches the proxy, the
proxy writes it into the pooled connection. On the server's lane the keep-alive timer fires
and the server closes: its FIN and the request pass each other in the delay line. The server's kernel answers the request with RST (the delay
line relays it as an abort); the proxy reads EOF, closes the dead connection and answers
the client with its own 503. The rows are in order of time, not to scale: the left column
gives the times.
"""),
code("""
first = int(none.trials.loc[none.trials["outcome"] == "503 UC", "trial"].iloc[0])
ladder(request_events(none, first), title=f"request {first}: 503 UC")
"""),
md("""
## Where in the idle time the failures fall

Every request that took a pooled connection, by how long that connection had been idle
(counted from when the response's last byte reached the proxy's kernel: its receive stamp).
The theory says failures live in the window from K − 2d = 24 ms to K = 30 ms. The measured
window sits a little later and reaches past K, because this lab's path has jitter, as a real
one does: the server's keep-alive timer fires a millisecond or two late when its loop is busy,
which moves both edges, and now and then the FIN reaches the pool a few milliseconds late (the
delay line relays a FIN when its loop gets to it; the kernel stamps no FIN), which stretches
the top edge. Now and then a response relayed late puts a failure below K − 2d: for that
connection, d was larger than 3 ms.
"""),
code("""
reused = none.trials.dropna(subset=["idle_ms"])
bins = list(range(0, 40, 3))
table = pd.crosstab(pd.cut(reused["idle_ms"], bins), reused["outcome"] == "503 UC")
table.columns = ["200", "503 UC"]
table.index = [f"{int(b.left)}-{int(b.right)} ms" for b in table.index]
table.T
"""),
md("""
## The rate that hurts most

Now the same proxy at rates from 9 to 75 requests/s, about 100 requests per point (36 at the
lowest rate, in four seconds; more would smooth the curves; runs of 1000 are the test
suite's job), one curve per setting: no mitigation; the proxy's idle timeout at 10 ms; two
retries on reset; `reset-before-request` (the next section says what each does). The dashed
line is the theory for one connection. Below the peak the measurement follows it down: at 9
requests/s most gaps are far longer than K, and the FIN arrives first. With so few requests
a point is uncertain by two to four percentage points (one standard deviation; four at the
lowest rate): the two upper curves differ by chance. Past the peak the pool is no longer one
connection: requests that overlap make it open a second, which then sits idle until the next
burst takes it, at whatever idle time it has reached, so the theory is only a guide there.
The idle timeout, below K − 2d, and the retries keep every point at or near zero (those two
curves lie on each other; the shapes tell them apart); `reset-before-request` fails like no
mitigation at all. (The scale stops at 20%.)

Why stop at 75? Every role of the lab shares one Python interpreter on two cores, and from
about 150 requests/s on it falls behind: each hop waits its turn, and the effective round trip
grows from 6 ms to tens of milliseconds, and with it the window (K − 2d with a much larger d).
A real proxy has the same rule, at its own latencies.
"""),
code("""
RATES = [9, 18, WORST, 75]


def sweep_rate(extra):
    shares = []
    for rate in RATES:
        r = lablib.run("upstream-reuse", config={"workload.rate": rate, "workload.seed": 5,
                                                 "workload.duration": min(4.0, max(1.5, 100 / rate)), **extra})
        shares.append(uc(r) / r.n)
    return shares


curves = {
    "no mitigation": sweep_rate({}),
    "upstream_idle_timeout 10 ms": sweep_rate({"proxy.upstream_idle_timeout": 0.010}),
    "retry_on reset, 2 retries": sweep_rate({"proxy.retry_on": "reset", "proxy.num_retries": 2,
                                             "proxy.retry_backoff": 0.010}),
    "retry_on reset-before-request": sweep_rate({"proxy.retry_on": "reset-before-request"}),
}
sweep(RATES, curves, xlabel="requests per second", ylabel="share of requests: 503 UC",
      theory={"no mitigation, theory for one connection": [theory_rate(r, K, 2 * D) for r in RATES]},
      log_x=True, x_format=lambda v, _: f"{v:g}", y_max=0.2, shapes=True,
      title=f"503 UC against the request rate (K = {K * 1000:g} ms, round trip {2 * D * 1000:g} ms)")
"""),
md("""
## Each mitigation, on the same workload

The same eight seconds of requests (same seed, same arrival times, same methods) with each
setting:

* **an idle timeout below the upstream's**: Envoy's cluster `idle_timeout`, Istio's
  `DestinationRule ... connectionPool.http.idleTimeout`. The proxy closes first, so nothing it
  reuses can be closing. It must be below K − 2d, not just below K: its timer starts when the
  response arrives, d after the upstream's.
* **`retry_on: reset`**: the proxy sends the request again on another connection. With one
  retry (Envoy's default when a policy is set) a few can still fail: the retry waits its
  back-off and can take another pooled connection that went stale meanwhile (none or one in
  1100 requests, measured). Two retries with a 10 ms back-off (the Istio example below) left
  none in the test suite's runs of 1100.
* **`retry_on: reset-before-request`** (Envoy 1.31): retries only if nothing of the request was
  written. A stale pooled connection is found dead *after* the write, so it never applies here.
"""),
code("""
MITIGATIONS = {
    "none": {},
    "idle_timeout 10 ms": {"proxy.upstream_idle_timeout": 0.010},
    "retry_on reset, 1 retry": {"proxy.retry_on": "reset"},
    "retry_on reset, 2 retries, 10 ms": {"proxy.retry_on": "reset", "proxy.num_retries": 2,
                                         "proxy.retry_backoff": 0.010},
    "reset-before-request": {"proxy.retry_on": "reset-before-request"},
}
mitigated = {"none": none, **{label: lablib.run("upstream-reuse", config={**BASE, **extra})
                               for label, extra in list(MITIGATIONS.items())[1:]}}
outcome_bars(mitigated, title=f"the same {none.n} requests at {WORST:.0f}/s")
"""),
code("""
pd.DataFrame({label: {"requests": r.n, "GETs 503 UC": uc(r, "GET"), "POSTs 503 UC": uc(r, "POST"),
                      "200 after retry": r.count("200 after retry"),
                      "written POSTs sent again": int(r.trials.loc[r.trials["method"] == "POST",
                                                                   "written_retried"].sum())}
              for label, r in mitigated.items()}).T
"""),
md("""
Read the last column: `retry_on: reset` sent POSTs again that had already been written to the
upstream. In this race the upstream had closed and never read them, but the proxy cannot know
that: in general a reset after the write may come after the upstream acted on the request
(RFC 9110, section 9.2.2: only idempotent requests may be repeated automatically). That is why
`reset-before-request` exists (#10007) — and why it does nothing for this race.

One of these results is certain by design, and checked when this notebook is tested:
"""),
code("""
# NBVAL_CHECK_OUTPUT
print("reset-before-request, written requests sent again:",
      int(mitigated["reset-before-request"].trials["written_retried"].sum()))
"""),
md("""
The idle timeout's zero is certain as long as the path's delay stays within the room the
timeout leaves. At 10 ms it sits 14 ms below K − 2d, room for the jitter of this lab's path
(a few milliseconds here, now and then ten). Just under K − 2d it is not enough: at 22 ms,
two runs of 1100 requests at the worst rate met 0 and 1 stray 503s, and 2 and 8 while other
programs kept both cores busy; at 15 ms, none in any of them (measured while this lab was
written). A real network's jitter asks the same of a real proxy.
"""),
md("""
## The hand-over: PR #2871 in an event loop

The second case needs no idle time at all. An upstream that closes a connection after N
requests *without* saying `Connection: close` (the Express of #23625) sends its FIN right
behind the N-th response. If another request is waiting for a connection at that moment, the
pool gives it the one just freed, and everything depends on whether the loop reads the FIN
first.

`proxy.attach_on_next_iteration` does what PR #2871 does, in asyncio. It takes care: a
callback queued with `call_soon` runs *before* the reader callbacks of the next poll (they are
queued behind it), so deferring by one `call_soon` would still hand the connection over before
the FIN is read. The pool defers by two steps, so the poll and its reader callbacks come
between. (`tests/test_upstream_pool.py` checks that ordering on real sockets.)

Here the server closes after every 3rd response, never for idleness; the proxy may open one
connection, so requests queue; no delay line; 300 requests/s for 4 s:
"""),
code("""
SILENT = {"wire.delay": 0.0, "server.max_requests_per_connection": 3, "server.connection_close_header": False,
          "server.keepalive_timeout": 5.0, "proxy.max_connections": 1, "workload.rate": 300.0,
          "workload.duration": 4.0, "workload.seed": 3}
handover = {
    "attach at once (before PR #2871)": lablib.run("upstream-reuse", config={**SILENT,
                                                   "proxy.attach_on_next_iteration": False}),
    "attach after the next poll": lablib.run("upstream-reuse", config=SILENT),
    "server says Connection: close": lablib.run("upstream-reuse", config={**SILENT,
                                                "server.connection_close_header": True,
                                                "proxy.attach_on_next_iteration": False}),
}


def how(r):
    t = r.trials
    handed = t["upstreams"].str.contains(r"^\\S+ \\(handed over\\)")
    return {"requests": r.n, "503 UC": uc(r), "handed over": int(handed.sum()),
            "of those 503 UC": int((handed & (t["outcome"] == "503 UC")).sum())}


pd.DataFrame({label: how(r) for label, r in handover.items()}).T
"""),
md("""
Handed over at once, about a third of the hand-overs fail: every connection's 3rd response is
followed by the FIN, and the request waiting for it gets a dead socket. Deferred past the next
poll, the pool has read the FIN and opens a new connection instead; a few hand-overs in a
hundred fail, against a third.
The 503s that remain are the same race met by a request that *arrived* in the loop turn the
FIN did, and took the idle connection before the reader callback ran: the part of #2715 that
the maintainers said no proxy can remove. `Connection: close` on the last response removes all
of it: the proxy never pools a connection the upstream announced it would close.
"""),
code("""
# NBVAL_CHECK_OUTPUT
print("with Connection: close, 503 UC:", uc(handover["server says Connection: close"]))
"""),
md("""
## What to set

| where | setting | what it does here |
|---|---|---|
| Envoy cluster | `typed_extension_protocol_options` → `common_http_protocol_options.idle_timeout` (default 1 h) | set it below the upstream's keep-alive timeout minus a round trip |
| Envoy route | `retry_policy: {retry_on: reset, num_retries: 2}` | resends requests the upstream reset, POSTs too |
| Envoy route | `retry_on: reset-before-request` (1.31+) | safe for POSTs, no help against a stale connection |
| Envoy cluster | `max_requests_per_connection` | the proxy closes first after N requests |
| Istio | `DestinationRule` `trafficPolicy.connectionPool.http.idleTimeout` | becomes the cluster `idle_timeout` above |
| Istio | `VirtualService` `retries` or an `EnvoyFilter` on the route | becomes the route `retry_policy` |
| the upstream | Node `server.keepAliveTimeout` (5 s; 65 s from Node 26, nodejs/node#62782) above the proxy's idle timeout; send `Connection: close` before closing | removes the race at its source |
| nginx as the proxy | `keepalive_timeout` in the `upstream` block (60 s), `proxy_next_upstream error` | nginx retries a failed cached connection without counting it as a try, and never a sent POST unless `non_idempotent` |

In Istio, the two settings of the write-up this project started from look like this:
a `DestinationRule` that closes idle upstream connections after 3 s (below Node's 5 s):

```yaml
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: backend}
spec:
  host: backend.default.svc.cluster.local
  trafficPolicy:
    connectionPool:
      http:
        idleTimeout: 3s
```

and an `EnvoyFilter` that merges a retry policy into the sidecar's inbound route:
`retry_on: reset`, `num_retries: 2`, `retry_back_off: {base_interval: 10ms}`. Envoy receives them
as the cluster's `common_http_protocol_options: {idle_timeout: 3s}` and the route's
`retry_policy`. Prefer the idle timeout: it removes the race, where a retry only repairs it,
and only for requests that may be repeated.
"""),
md("""
## Try it

The form runs the lab with your settings (keep `workload.duration` short: a run takes that
long). Try the worst rate with `proxy.upstream_idle_timeout` at 20ms, 24ms and 28ms: where does
it stop protecting, and why there? Or `server.max_requests_per_connection` 3 with
`server.connection_close_header` off and `proxy.max_requests_per_connection` 3.
"""),
code("""
form("upstream-reuse", ladder=False, values={"workload.duration": 3.0})
"""),
md("""
## Exercise: pick the idle timeout

An upstream closes idle keep-alive connections after 40 ms (think 40 s), and the network
between proxy and upstream takes 5 ms each way. Choose `proxy.upstream_idle_timeout` in
milliseconds: as long as possible (every reuse saves a handshake), but safe. The cell checks
your value against the rule and then runs the lab at the worst rate for this upstream, with and
without it.
"""),
code("""
# NBVAL_CHECK_OUTPUT
answer = {"upstream_idle_timeout_ms": "???"}
right, feedback = check_idle_timeout(answer, keepalive=0.040, delay=0.005)
print(feedback)
"""),
md("""
### Solution

The proxy's timer starts when the response arrives, 5 ms after the upstream's, and a request it
sends on the connection takes another 5 ms to arrive. So the proxy must give up a connection
by K − 2d = 30 ms, less room for the path's jitter (the cell asks for 5 ms): 20 to 25 ms is a
good answer, and the cell below checks 20. (For an upstream at 40 s in the real world: 30 to
35 s on the proxy; the common advice "a few seconds below the upstream's" is this rule with
room for slow networks.)
"""),
code("""
# NBVAL_CHECK_OUTPUT
right, _ = check_idle_timeout({"upstream_idle_timeout_ms": 20}, keepalive=0.040, delay=0.005)
print("this solution, run now, is graded right:", "yes" if right else "no")
""", hidden=True),
md("""
## What to take away

* A pooled HTTP/1.1 connection can be closing while the proxy hands it out. The window is one
  round trip wide, just below the upstream's keep-alive timeout; traffic slow enough to idle
  connections that long meets it most.
* Only the side that opens connections can remove it: close idle ones before the other side
  does, by at least a round trip. An upstream that says `Connection: close` before closing
  removes the hand-over case too.
* Retries repair what is left, but only for requests that may be repeated; a retry policy that
  resends a written POST trades a 503 for a possible double write.

""" + NAV),
]

nb = new_notebook(cells=cells, metadata=KERNEL)
nbformat.write(nb, OUT)
print(f"wrote {OUT}")
