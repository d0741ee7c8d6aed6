"""HTTP/1.x framing through h11: the small helpers the roles share. No sockets here.

Not covered: HTTP/2, trailers, 100-continue (the labs' clients do not send Expect).
"""

from __future__ import annotations

from typing import Any

import h11

__all__ = ["REASONS", "content_length", "response_bytes", "describe_request", "forwardable", "continue_bytes"]

REASONS = {100: b"Continue", 200: b"OK", 400: b"Bad Request", 413: b"Payload Too Large",
           503: b"Service Unavailable"}

#: headers that describe one hop, not the message: a proxy does not forward them (RFC 9110
#: section 7.6.1); Expect is answered by the proxy itself, as Envoy does by default
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
              b"upgrade", b"expect"}


def content_length(request: h11.Request) -> int | None:
    """The request's Content-Length, or None (chunked, or no body)."""
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)
    return None


def response_bytes(conn: h11.Connection, status: int, body: bytes, *, close: bool = False,
                   headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A whole response (head, body, end) as bytes to write. ``headers`` (forwarded ones, say)
    keep their Content-Type; Content-Length is always that of ``body``; ``close`` adds
    Connection: close."""
    head = [(n, v) for n, v in headers if n.lower() != b"content-length"]
    if not any(n.lower() == b"content-type" for n, _ in head):
        head.insert(0, (b"content-type", b"text/plain"))
    head.append((b"content-length", str(len(body)).encode()))
    if close:
        head.append((b"connection", b"close"))
    return b"".join([
        conn.send(h11.Response(status_code=status, headers=head, reason=REASONS.get(status, b""))) or b"",
        conn.send(h11.Data(data=body)) or b"" if body else b"",
        conn.send(h11.EndOfMessage()) or b"",
    ])


def continue_bytes(conn: h11.Connection) -> bytes:
    """``100 Continue``, for a client that sent Expect: 100-continue and waits before its body."""
    return conn.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")) or b""


def forwardable(headers: Any) -> list[tuple[bytes, bytes]]:
    """``headers`` without the hop-by-hop ones, and without those the Connection header names."""
    named = {token.strip().lower() for n, v in headers if n.lower() == b"connection" for token in v.split(b",")}
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


def describe_request(request: h11.Request) -> str:
    length = content_length(request)
    size = f", {length} B body" if length else ""
    return f"{request.method.decode()} {request.target.decode()} HTTP/{request.http_version.decode()}{size}"
