"""The pool's decisions, as pure functions: when to reuse, when to retry."""

import pytest

from lablib.pool import reuse_decision, should_retry


@pytest.mark.parametrize("kwargs, reuse, why", [
    (dict(server_said_close=True, idle_s=0.01, idle_timeout=0, checked=False, readable=False), False, "Connection: close"),
    (dict(server_said_close=False, idle_s=0.2, idle_timeout=0.1, checked=False, readable=False), False, "idle timeout"),
    (dict(server_said_close=False, idle_s=0.2, idle_timeout=0, checked=True, readable=True), False, "saw the FIN"),
    (dict(server_said_close=False, idle_s=0.2, idle_timeout=0, checked=False, readable=True), True, "reused"),
    (dict(server_said_close=False, idle_s=0.05, idle_timeout=0.1, checked=True, readable=False), True, "checked"),
])
def test_reuse_decisions(kwargs, reuse, why):
    decided, reason = reuse_decision(**kwargs)
    assert decided is reuse and why in reason


@pytest.mark.parametrize("policy, method, reused, nothing_written, retry", [
    ("none", "GET", True, False, False),
    ("idempotent", "GET", True, False, True),
    ("idempotent", "PUT", False, False, True),
    ("idempotent", "POST", True, False, False),    # RFC 9110 9.2.2: a proxy MUST NOT, a client SHOULD NOT
    ("go", "GET", True, False, True),
    ("go", "GET", False, False, False),            # Go never retries on a fresh connection
    ("go", "POST", True, False, False),
    ("go", "POST", True, True, True),              # nothing of it was written: safe to send again
])
def test_retry_rules(policy, method, reused, nothing_written, retry):
    assert should_retry(policy, method=method, reused=reused, nothing_written=nothing_written) is retry


def test_an_unknown_policy_is_an_error():
    with pytest.raises(ValueError, match="choose one of none, idempotent, go"):
        should_retry("always", method="GET", reused=True, nothing_written=False)
