"""Lab 00, close basics: four ways to end a TCP connection, and what the peer sees.

A client connects to a server and sends a request of ``client.request_bytes``. The server
waits until the whole request sits in its receive queue, sends ``server.reply_bytes``, and
ends the connection by ``close.mode``:

=========== =========================================== =============================
mode        server does                                 on the wire (Linux)
=========== =========================================== =============================
drained     read the request, ``close()``               FIN
unread      ``close()`` without reading the request     RST (TCPAbortOnClose)
shutdown    ``shutdown(SHUT_WR)``, read until the       FIN; the server can still read
            client closes (or close.linger_timeout),
            ``close()``
linger0     read the request, SO_LINGER 0, ``close()``  RST (TCPAbortOnData)
=========== =========================================== =============================

The client plays the peer: it reads until the stream ends (EOF after a FIN, ECONNRESET after
a RST; on Linux the reply bytes that arrived before the RST are still read first), notes both
sides' TCP states, then writes ``client.writes_after_end`` times, waiting after each write
until the kernel has acknowledged it or the connection was reset. A trial's outcome is what
the client saw last: how its read ended (``eof``, ``econnreset``), or the error of the first
write that failed after it (``epipe``, ``econnreset``).

With ``wire.delay`` above 0 the connection passes through a delay line, which relays data,
FIN and RST each that much later (and, being a relay, adds its own RST when it relays one).

Not covered: what other operating systems do (Windows and some BSDs discard received but
unread data when an RST arrives; the lab notebook explains it, this scenario measures Linux).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .. import kernel
from ..closing import end_connection
from ..exercises import grade
from ..knobs import Config, KnobError, choice, integer, nbytes, seconds
from ..loops import Completions
from ..roles.base import ListeningRole
from ..roles.delayline import DelayLine
from ..sockets import TracedSocket, errno_name
from ..trace import Trace
from .base import Lab, Scenario

__all__ = ["CloseBasics", "Closer", "MODES", "check_prediction"]

MODES = ("drained", "unread", "shutdown", "linger0")
#: how each lab-00 mode ends the connection, in the vocabulary of lablib.closing
_END = {"drained": "close", "unread": "close", "shutdown": "lingering", "linger0": "abort"}

KNOBS = (
    choice("close.mode", "drained", MODES, "How the server ends the connection after its reply",
           models="close(); close() with unread data; shutdown(SHUT_WR) then close(); SO_LINGER 0 then close()",
           real_default="close() in most servers"),
    seconds("close.linger_timeout", 1.0, "shutdown mode: how long the server keeps reading after its FIN",
            low=0.0, high=30.0, models="nginx lingering_timeout; Go rstAvoidanceDelay", real_default="5 s; 500 ms"),
    nbytes("client.request_bytes", 1000, "Bytes the client sends before the server ends the connection",
           high=1024**2),
    nbytes("server.reply_bytes", 100, "Bytes the server sends before it ends the connection", high=1024**2),
    integer("client.writes_after_end", 0, "Writes the client makes after its read saw the end", low=0, high=3),
    seconds("wire.delay", 0.0, "One-way delay added by a delay line between client and server (0: direct)",
            low=0.0, high=1.0, models="the network's one-way latency"),
)


class Closer(ListeningRole):
    """The lab-00 server: per connection, wait for the request, reply, end by ``mode``.

    Publishes each connection's addresses when accepted (``accepted_at``) and a summary when it
    is done (``finished``): bytes unread at the final close and the FIN and RST it sent.
    """

    def __init__(self, trace: Trace, config: Config, deadline: float) -> None:
        super().__init__(trace)
        self.config, self.deadline = config, deadline
        self.accepted_at = Completions()

    def accepted(self, conn: TracedSocket) -> None:
        self.accepted_at.publish(conn.conn, (conn.local, conn.remote))

    async def serve(self, s: TracedSocket) -> None:
        summary: dict[str, Any] = {"ended_by": "deadline"}
        try:
            summary = await asyncio.wait_for(self._end(s), self.deadline)
        except TimeoutError:
            pass
        except OSError as exc:
            summary = {"ended_by": errno_name(exc)}
        finally:
            if not s.closed:
                s.close(detail="server deadline")
            summary.update(unread=s.close_unread, sent="+".join(s.ends_sent))
            self.finish(s, summary)

    async def _end(self, s: TracedSocket) -> dict[str, Any]:
        cfg = self.config
        mode = cfg["close.mode"]
        want = cfg["client.request_bytes"]
        if want:
            await s.wait_readable(low_water=want)  # the whole request is in the receive queue
        if mode in ("drained", "linger0"):
            got = 0
            while got < want:
                data = await s.recv(want - got)
                if not data:
                    break
                got += len(data)
        if cfg["server.reply_bytes"]:
            await s.sendall(b"r" * cfg["server.reply_bytes"])
        how, _discarded = await end_connection(s, _END[mode], cfg["close.linger_timeout"])
        return {"ended_by": how}


class CloseBasics(Scenario):
    name = "close-basics"
    title = "Close basics: FIN or RST, EOF, ECONNRESET or EPIPE"
    knobs = KNOBS
    outcomes = ("eof", "econnreset", "epipe")
    default_trials = 20
    default_deadline = 5.0
    parallel_ok = False
    notebook = "00_close_basics.ipynb"

    def validate(self, config: Config) -> None:
        if config["close.mode"] == "shutdown" and config["close.linger_timeout"] == 0:
            raise KnobError("close.linger_timeout=0s with close.mode=shutdown: the server would close at once; "
                            "give it more than 0s")

    async def setup(self, lab: Lab) -> None:
        server = await lab.start("server", Closer(lab.trace, lab.config, lab.deadline))
        if lab.config["wire.delay"] > 0:
            await lab.start("wire", DelayLine(lab.trace, server.address, lab.config["wire.delay"]))

    async def trial(self, lab: Lab, index: int) -> dict[str, Any]:
        cfg = lab.config
        server: Closer = lab.roles["server"]
        wire: DelayLine | None = lab.roles.get("wire")
        c = await TracedSocket.connect((wire or server).address, lab.trace, "client")
        writes: list[str] = []
        try:
            server_conn = await wire.upstream_of(c.conn) if wire else c.conn
            server_local, server_remote = await server.accepted_at.wait(server_conn, lab.deadline)
            if cfg["client.request_bytes"]:
                await c.sendall(b"q" * cfg["client.request_bytes"])
            received, read_end = 0, "eof"
            try:
                while data := await c.recv():
                    received += len(data)
            except OSError as exc:
                read_end = errno_name(exc).lower()
            client_state = c.note_state("after the end")
            server_state = kernel.socket_state(server_local, server_remote)
            lab.trace.record("server", "state", conn=server_conn, state=server_state,
                             detail="via sock_diag, as the client saw the end")
            for _ in range(cfg["client.writes_after_end"]):
                try:
                    await c.send(b"w" * 16)
                    writes.append("ok")
                except OSError as exc:
                    writes.append(errno_name(exc))
                    continue
                await c.wait_acked(timeout=1.0)
        finally:
            c.close()
        summary = await server.finished.wait(server_conn, lab.deadline)
        if wire:
            await wire.relayed(c.conn, lab.deadline)
        failed = next((w for w in writes if w != "ok"), None)
        return {
            "outcome": failed.lower() if failed else read_end,
            "read_end": read_end,
            "bytes_before_end": received,
            "client_state": client_state,
            "server_state": server_state,
            "server_unread": summary["unread"],
            "server_sent": summary["sent"] or "-",
            "writes": " ".join(writes) or "-",
        }


def check_prediction(prediction: dict[str, str], config: dict[str, Any], trials: int = 10) -> tuple[bool, str]:
    """Run ``config`` and grade a learner's prediction of ``server_sends`` (FIN or RST: what the
    server's own calls sent) and ``client_sees`` (the trial outcome: eof, econnreset, epipe).

    Returns (all right, one line per item). A blank or ``???`` answer runs nothing.
    """
    from ..runner import run

    def measure() -> dict[str, str]:
        result = run("close-basics", trials, config)
        return {"server_sends": result.trials["server_sent"].mode().iloc[0],
                "client_sees": result.trials["outcome"].mode().iloc[0]}

    return grade(prediction, {"server_sends": str.upper, "client_sees": str.lower}, measure)
