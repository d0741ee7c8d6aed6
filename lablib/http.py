"""HTTP/1.x framing through h11: the small helpers the roles share. No sockets here.

Not covered: HTTP/2, trailers, requests in HTTP/1.0 (h11 writes HTTP/1.1 only; the clients
that speak 1.0 write their request line themselves).
"""

from __future__ import annotations

from typing import Any

import h11

__all__ = ["REASONS", "content_length", "has_length", "response_bytes", "describe_request", "forwardable",
           "continue_bytes"]

REASONS = {100: b"Continue", 200: b"OK", 400: b"Bad Request", 413: b"Payload Too Large",
           503: b"Service Unavailable"}

#: headers that describe one hop, not the message: a proxy does not forward them (RFC 9110
#: section 7.6.1); Expect is answered by the proxy itself, as Envoy does by default
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
              b"upgrade", b"expect"}


def content_length(message: h11.Request | h11.Response) -> int | None:
    """The message's Content-Length, or None (chunked, no body, or ended by the close)."""
    for name, value in message.headers:
        if name == b"content-length":
            return int(value)
    return None


def has_length(message: h11.Request | h11.Response) -> bool:
    """Whether ``message`` carries a Content-Length (else it is chunked, or ends at the close)."""
    return any(name == b"content-length" for name, _ in message.headers)


def response_bytes(conn: h11.Connection, status: int, body: bytes, *, close: bool = False,
                   headers: tuple[tuple[bytes, bytes], ...] = (), length: bool = True) -> bytes:
    """A whole response (head, body, end) as bytes to write. ``headers`` (forwarded ones, say)
    keep their Content-Type; ``close`` adds Connection: close. With ``length`` the body is
    framed by Content-Length; without, h11 frames it as the peer allows: chunked for an
    HTTP/1.1 client, by closing the connection for an HTTP/1.0 one (then the client knows the
    response is complete only when the FIN arrives)."""
    head = [(n, v) for n, v in headers if n.lower() != b"content-length"]
    if not any(n.lower() == b"content-type" for n, _ in head):
        head.insert(0, (b"content-type", b"text/plain"))
    if length:
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
