"""Connection-pool decisions a keep-alive client makes, as pure functions: reuse, or not;
retry a failed request, or not. The raw client of lab 02 follows them on real sockets.

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

Not covered: Retry-After, back-off, retry budgets, and retrying more than once.
"""

from __future__ import annotations

__all__ = ["IDEMPOTENT", "RETRY_POLICIES", "reuse_decision", "should_retry"]

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
RETRY_POLICIES = ("none", "idempotent", "go")


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
