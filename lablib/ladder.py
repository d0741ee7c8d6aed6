"""The ladder model: which segments a trial's socket calls imply, and the marks to draw.

Pure functions from a trial's events (see :mod:`lablib.trace`) to :class:`Segment` arrows and
:class:`Mark` labels; :func:`lablib.plot.ladder` draws them. Each segment is *inferred* from
the calls, and says from which:

* a handshake from ``connect()`` to the peer's ``accept()``;
* data from each ``send()`` to the first ``recv()`` that returned its first byte;
* a FIN from ``shutdown()`` or a ``close()`` with nothing unread, to the peer's ``recv() -> EOF``;
* a RST from a ``close()`` with unread bytes or an abort, to the peer's first ECONNRESET/EPIPE;
* a RST from the kernel of a side that already closed, when the peer's write after the close
  fails although nothing of ours sent a RST (data for a closed socket is answered with RST).

A segment whose arrival no call proves is drawn arriving when it was sent. Captured packets,
where a capture exists, are :class:`Segment` objects with ``inferred=False``.

Not covered: retransmissions, window updates and pure ACKs (no call reveals them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .trace import Event

__all__ = ["Segment", "Mark", "infer_segments", "observed_segments", "marks", "merge_data", "lane_order",
           "describe"]

_RESET_ERRORS = ("ECONNRESET", "EPIPE")
#: errors that show a connection was reset, also where no RST of ours explains it
_RESET_EVIDENCE = _RESET_ERRORS + ("ENOTCONN",)
#: lanes left to right: the client, then hops toward the server
_LANE_RANK = {"client": 0, "wire": 1, "proxy": 2, "wire2": 3, "server": 4}


@dataclass(frozen=True)
class Segment:
    kind: str  # "handshake", "data", "FIN", "RST"
    src: str
    dst: str
    t_sent_ns: int
    t_seen_ns: int | None
    label: str
    conn: str = ""
    inferred: bool = True
    nbytes: int = 0
    cause: str = ""  # the call (or kernel rule) that sent it, e.g. "close() with 1000 B unread"


@dataclass(frozen=True)
class Mark:
    t_ns: int
    actor: str
    text: str
    error: bool = False
    minor: bool = False  # states and notes: drawn small and grey


def lane_order(events: Iterable[Event]) -> list[str]:
    seen: dict[str, int] = {}
    for e in events:
        seen.setdefault(e.actor, len(seen))
    return sorted(seen, key=lambda a: (_LANE_RANK.get(a, 10), seen[a]))


def _ends(events: Sequence[Event]) -> tuple[str, str] | None:
    connector = next((e.actor for e in events if e.op == "connect" and e.result == "ok"), None)
    acceptor = next((e.actor for e in events if e.op == "accept"), None)
    if connector and acceptor and connector != acceptor:
        return connector, acceptor
    return None


def infer_segments(events: Sequence[Event]) -> list[Segment]:
    """The segments the calls in ``events`` imply, in the order they were sent."""
    by_conn: dict[str, list[Event]] = {}
    for e in events:
        if e.conn:
            by_conn.setdefault(e.conn, []).append(e)
    out: list[Segment] = []
    for conn, evs in by_conn.items():
        evs.sort(key=lambda e: e.t_ns)
        ends = _ends(evs)
        if ends is None:
            continue
        a, b = ends
        connect = next(e for e in evs if e.op == "connect" and e.actor == a)
        accept = next(e for e in evs if e.op == "accept" and e.actor == b)
        out.append(Segment("handshake", a, b, connect.t_ns, max(accept.t_ns, connect.t_ns),
                           "SYN, SYN-ACK, ACK", conn))
        for src, dst in ((a, b), (b, a)):
            out.extend(_direction(conn, evs, src, dst))
    out.sort(key=lambda s: s.t_sent_ns)
    return out


def observed_segments(events: Sequence[Event], packets: Any, acks: bool = False) -> list[Segment]:
    """Captured segments (a DataFrame with lablib.capture.PACKET_COLUMNS) of the connections
    in ``events``, as Segments with ``inferred=False``; pure ACKs only with ``acks``."""
    ends: dict[tuple[int, int], tuple[str, str, str]] = {}
    by_conn: dict[str, list[Event]] = {}
    for e in events:
        if e.conn and ">" in e.conn:
            by_conn.setdefault(e.conn, []).append(e)
    for conn, evs in by_conn.items():
        pair = _ends(evs)
        if pair is None:
            continue
        a_port, b_port = (int(p) for p in conn.split(">"))
        ends[(a_port, b_port)] = (pair[0], pair[1], conn)
        ends[(b_port, a_port)] = (pair[1], pair[0], conn)
    out = []
    for row in packets.itertuples(index=False):
        key = (int(row.sport), int(row.dport))
        if key not in ends:
            continue
        src, dst, conn = ends[key]
        flags = str(row.flags)
        kind = ("RST" if "R" in flags else "FIN" if "F" in flags else "handshake" if "S" in flags
                else "data" if row.nbytes else "ACK")
        if kind == "ACK" and not acks:
            continue
        label = flags + (f" {row.nbytes} B" if row.nbytes else "")
        out.append(Segment(kind, src, dst, int(row.t_ns), int(row.t_ns), label, conn, inferred=False,
                           nbytes=int(row.nbytes), cause="captured"))
    return out


def _direction(conn: str, evs: list[Event], src: str, dst: str) -> list[Segment]:
    mine = [e for e in evs if e.actor == src and e.op != "state"]
    theirs = [e for e in evs if e.actor == dst and e.op != "state"]
    out: list[Segment] = []
    # data: match each send's first byte to the recv that returned it
    received: list[tuple[int, int]] = []  # (stream offset after this recv, time)
    offset = 0
    for e in theirs:
        if e.op == "recv" and e.result == "ok" and e.nbytes > 0:
            offset += e.nbytes
            received.append((offset, e.t_ns))
    sent_offset = 0
    for e in mine:
        if e.op == "send" and e.result == "ok" and e.nbytes > 0:
            first_byte = sent_offset
            sent_offset += e.nbytes
            seen = next((t for end, t in received if end > first_byte), None)
            label = f"{e.nbytes} B" + ("" if seen is not None else " (not read)")
            out.append(Segment("data", src, dst, e.t_ns, seen, label, conn, nbytes=e.nbytes))
    # FIN and RST that src's own calls sent
    rst_sent = False
    for e in mine:
        if e.wire == "FIN":
            seen = next((x.t_ns for x in theirs if x.t_ns >= e.t_ns and x.op == "recv" and x.result == "eof"), None)
            out.append(Segment("FIN", src, dst, e.t_ns, seen, "FIN", conn, cause=_call(e)))
        elif e.wire == "RST":
            rst_sent = True
            seen = next((x.t_ns for x in theirs if x.t_ns >= e.t_ns and x.result in _RESET_ERRORS), None)
            why = f"close() with {e.unread} B unread" if e.op == "close" and e.unread > 0 else _call(e)
            out.append(Segment("RST", src, dst, e.t_ns, seen, "RST", conn, cause=why))
    # a reset dst met that none of src's calls sent: src's kernel answered data for a closed socket
    if not rst_sent:
        failed = next((x for x in theirs if x.result in _RESET_EVIDENCE), None)
        closed = next((e for e in mine if e.op in ("close", "abort")), None)
        if failed is not None and closed is not None and closed.t_ns <= failed.t_ns:
            sent = [x for x in theirs if x.op == "send" and x.result == "ok"]
            in_flight = sum(x.nbytes for x in sent if x.t_ns < closed.t_ns) > sum(
                e.nbytes for e in mine if e.op == "recv" and e.result == "ok")
            after = [x.t_ns for x in sent if closed.t_ns <= x.t_ns <= failed.t_ns]
            # bytes still on their way at the close draw the RST as soon as they arrive; else the
            # first write after the close does
            start = closed.t_ns if in_flight else after[0] if after else failed.t_ns
            out.append(Segment("RST", src, dst, start, failed.t_ns, f"RST from {src}'s kernel", conn,
                               cause=f"{src}'s kernel: data for a closed socket"))
    return out


def _call(e: Event) -> str:
    if e.op == "shutdown":
        return "shutdown(SHUT_WR)"
    if e.op == "abort":
        return "close() with SO_LINGER 0"
    return f"{e.op}()"


def describe(e: Event) -> str:
    """A short label for one call: ``recv() -> ECONNRESET``, ``close(): 1000 B unread``."""
    if e.op == "state":
        return f"{e.state}" + (f" ({e.detail})" if e.detail else "")
    if e.op in ("note", "timer", "http"):
        return e.detail or e.op
    if e.op == "relay":
        return "relay to the next hop"
    name = _call(e)
    if e.result not in ("ok",):
        return f"{name} -> {e.result.upper() if e.result == 'eof' else e.result}"
    if e.op in ("send", "recv"):
        return f"{name} {e.nbytes} B"
    if e.op in ("close", "abort") and e.unread > 0:
        return f"{name}, {e.unread} B unread"
    return name


def marks(events: Sequence[Event], merge_after: int = 3) -> list[Mark]:
    """One mark per call; a run of more than ``merge_after`` successful sends (or recvs) by one
    actor on one connection becomes a single mark with their count and total bytes."""
    out: list[Mark] = []
    run: list[Event] = []

    def flush() -> None:
        if len(run) > merge_after:
            total = sum(e.nbytes for e in run)
            out.append(Mark(run[0].t_ns, run[0].actor, f"{run[0].op}() x{len(run)}, {total} B"))
        else:
            out.extend(Mark(e.t_ns, e.actor, describe(e)) for e in run)
        run.clear()

    for e in events:
        if e.op in ("listen",):
            continue
        same = run and e.op == run[-1].op and e.actor == run[-1].actor and e.conn == run[-1].conn
        if e.op in ("send", "recv") and e.result == "ok" and e.nbytes > 0:
            if run and not same:
                flush()
            run.append(e)
            continue
        flush()
        error = e.result not in ("ok", "eof")
        out.append(Mark(e.t_ns, e.actor, describe(e), error=error, minor=e.op in ("state", "note", "relay", "http")))
    flush()
    return out


def merge_data(segments: list[Segment], merge_after: int = 3) -> list[Segment]:
    """Runs of more than ``merge_after`` data segments one way on one connection, with nothing
    else between, become one segment from the first sent to the last seen."""
    out: list[Segment] = []
    run: list[Segment] = []

    def flush() -> None:
        if len(run) > merge_after:
            seen = [s.t_seen_ns for s in run if s.t_seen_ns is not None]
            total = sum(s.nbytes for s in run)
            out.append(Segment("data", run[0].src, run[0].dst, run[0].t_sent_ns, max(seen) if seen else None,
                               f"{len(run)} sends, {total} B", run[0].conn, nbytes=total))
        else:
            out.extend(run)
        run.clear()

    for s in segments:
        if s.kind == "data" and (not run or (s.src, s.dst, s.conn) == (run[-1].src, run[-1].dst, run[-1].conn)):
            run.append(s)
            continue
        flush()
        if s.kind == "data":
            run.append(s)
        else:
            out.append(s)
    flush()
    return out
