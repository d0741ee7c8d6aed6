"""The ways a server ends a connection after its last response, as real servers do.

========== ====================================================== ==========================
mode       what it does                                           models
========== ====================================================== ==========================
close      ``close()`` at once; with request bytes unread, the    a plain ``close(fd)``
           kernel sends RST instead of FIN
abort      SO_LINGER 0 then ``close()``: RST always               nginx reset_timedout_connection
delayed    keep reading and discarding, send nothing, until the   Envoy FlushWriteAndDelay,
           peer closes or the timeout fires; then ``close()``.    delayed_close_timeout
           The FIN leaves only at the end.
lingering  ``shutdown(SHUT_WR)`` (FIN now), then read and discard  nginx lingering_close,
           until EOF or the timeout; then ``close()``             RFC 9112 section 9.6, Go
                                                                  closeWriteAndWait
========== ====================================================== ==========================

The response must already be written (``sendall`` returned) when one of these is called.
Not covered: nginx's separate per-read ``lingering_timeout`` and total ``lingering_time``
(one total timeout here), and Envoy re-arming its timer on write progress (PR #6437).
"""

from __future__ import annotations

import time

from .sockets import TracedSocket, errno_name

__all__ = ["CLOSE_MODES", "end_connection"]

CLOSE_MODES = ("close", "abort", "delayed", "lingering")


async def end_connection(sock: TracedSocket, mode: str, timeout: float) -> tuple[str, int]:
    """End ``sock`` by ``mode``. Returns how it ended (for the waiting modes ``eof``,
    ``deadline`` or an errno name; else the mode itself) and how many bytes it read and
    discarded on the way (the price of the waiting modes)."""
    if mode == "close":
        sock.close()
        return "close", 0
    if mode == "abort":
        sock.abort()
        return "abort", 0
    if mode not in ("delayed", "lingering"):
        raise ValueError(f"close mode {mode!r}: choose one of {', '.join(CLOSE_MODES)}")
    if mode == "lingering":
        try:
            sock.shutdown()
        except OSError as exc:  # the peer reset first: nothing left to linger for
            sock.close()
            return errno_name(exc), 0
    discarded, how = await sock.drain(deadline=time.monotonic() + timeout)
    sock.close(detail=f"{mode} close ended by {how} after discarding {discarded} B")
    return how, discarded
