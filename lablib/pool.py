"""Connection-pool decisions a keep-alive client makes, as pure functions: reuse, or not;
retry a failed request, or not. The raw client of lab 02 follows them on real sockets, and
the proxy's upstream pool of lab 04 (:mod:`lablib.roles.upstream_pool`) the ones at the end.

Reuse, in the order a pool asks:

1. the last response said ``Connection: close``: never (the server announced its close);
2. idle longer than the pool's idle timeout (Go's IdleConnTimeout): drop it;
3. check before reuse (urllib3's ``is_connection_dropped``: a zero-timeout readability poll):
   a socket that is readable while idle has an EOF (a FIN) or an error waiting, so drop it.
   This catches a FIN that has arrived, not one still on its way.

Retry, after a request on a connection failed before any response:

* ``none``: never (requests' default: ``Retry(0, read=False)``);
* ``idempotent``: when the method is idempotent (RFC 9110 section 9.2.2: GET, HEAD, PUT,
  DELETE, OPTIONS, TRACE), what urllib3's ``Retry`` does with its default
  ``allowed_methods``;
* ``go``: Go's ``shouldRetryRequest``: never on a fresh connection; if nothing of the request
  was written, always; otherwise only an idempotent request whose reused connection failed
  before the first response byte.

A proxy (Envoy's router) retries by its route's ``retry_on`` (:func:`upstream_retry`):

* ``none``: never (no retry policy: Envoy's default);
* ``reset``: whenever the upstream reset or closed before responding, whether or not the
  request was written: a POST the upstream may have acted on is sent again (envoy#10007);
* ``reset-before-request``: only when none of the request was written (Envoy 1.31): safe for
  every method, and so no help against a stale pooled connection, where the request was
  written before the connection was found dead.

Not covered: Retry-After, retry budgets, and (clients) retrying more than once.
"""

from __future__ import annotations

import random

__all__ = ["IDEMPOTENT", "RETRY_POLICIES", "RETRY_ON", "reuse_decision", "should_retry", "upstream_retry",
           "retry_backoff", "keep_upstream"]

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
RETRY_POLICIES = ("none", "idempotent", "go")
RETRY_ON = ("none", "reset", "reset-before-request")


def reuse_decision(*, server_said_close: bool, idle_s: float, idle_timeout: float,
                   checked: bool, readable: bool) -> tuple[bool, str]:
    """Whether to reuse an idle pooled connection, and why (a short phrase for the trace).

    ``idle_timeout`` 0 means none; ``readable`` is the zero-timeout poll's answer and only
    counts when ``checked``.
    """
    if server_said_close:
        return False, "new: the last response said Connection: close"
    if idle_timeout and idle_s > idle_timeout:
        return False, "new: idle longer than the pool's idle timeout"
    if checked and readable:
        return False, "new: the check before reuse saw the FIN"
    return True, "reused" + (" (checked: nothing pending)" if checked else "")


def should_retry(policy: str, *, method: str, reused: bool, nothing_written: bool) -> bool:
    """Whether a request that failed before any response is sent again on a new connection."""
    if policy == "none":
        return False
    if policy == "idempotent":
        return method in IDEMPOTENT
    if policy == "go":
        if not reused:
            return False
        return nothing_written or method in IDEMPOTENT
    raise ValueError(f"retry policy {policy!r}: choose one of {', '.join(RETRY_POLICIES)}")


def upstream_retry(retry_on: str, *, request_sent: bool, retries_done: int, num_retries: int) -> bool:
    """Whether a proxy sends a request again after its upstream connection reset or closed
    before any response (Envoy's ``RetryStateImpl::wouldRetryFromReset``).

    ``request_sent``: some of the request reached the upstream socket. The method does not
    matter: Envoy's ``reset`` retries a POST too, which is why ``reset-before-request`` exists.

    >>> upstream_retry("reset", request_sent=True, retries_done=0, num_retries=1)
    True
    >>> upstream_retry("reset-before-request", request_sent=True, retries_done=0, num_retries=1)
    False
    """
    if retry_on not in RETRY_ON:
        raise ValueError(f"retry_on {retry_on!r}: choose one of {', '.join(RETRY_ON)}")
    if retry_on == "none" or retries_done >= num_retries:
        return False
    return retry_on == "reset" or not request_sent


def retry_backoff(retries_done: int, base: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retries_done + 1``: Envoy's fully jittered
    exponential back-off, a random time below ``base`` x 2^retries_done, capped at 10 x base
    (Envoy's defaults: 25 ms and 250 ms)."""
    return rng.uniform(0.0, min(base * 2**retries_done, 10 * base))


def keep_upstream(*, protocol_allows: bool, served: int, max_requests: int) -> bool:
    """Whether a proxy puts an upstream connection back in its pool after a response:
    ``protocol_allows`` (both messages complete, no Connection: close, not HTTP/1.0 without
    keep-alive: what h11 says) and fewer than ``max_requests`` served on it (0: no limit;
    Envoy's upstream max_requests_per_connection)."""
    return protocol_allows and not (max_requests and served >= max_requests)
