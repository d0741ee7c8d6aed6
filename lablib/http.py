"""HTTP/1.x framing through h11: the small helpers the roles share. No sockets here.

Not covered: HTTP/2, trailers, 100-continue (the labs' clients do not send Expect).
"""

from __future__ import annotations

import h11

__all__ = ["REASONS", "content_length", "response_bytes", "describe_request"]

REASONS = {200: b"OK", 400: b"Bad Request", 413: b"Payload Too Large", 503: b"Service Unavailable"}


def content_length(request: h11.Request) -> int | None:
    """The request's Content-Length, or None (chunked, or no body)."""
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)
    return None


def response_bytes(conn: h11.Connection, status: int, body: bytes, *, close: bool = False,
                   headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A whole response (head, body, end) as bytes to write; ``close`` adds Connection: close."""
    head = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()), *headers]
    if close:
        head.append((b"connection", b"close"))
    return b"".join([
        conn.send(h11.Response(status_code=status, headers=head, reason=REASONS.get(status, b""))) or b"",
        conn.send(h11.Data(data=body)) or b"" if body else b"",
        conn.send(h11.EndOfMessage()) or b"",
    ])


def describe_request(request: h11.Request) -> str:
    length = content_length(request)
    size = f", {length} B body" if length else ""
    return f"{request.method.decode()} {request.target.decode()} HTTP/{request.http_version.decode()}{size}"
