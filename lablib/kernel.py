"""Kernel evidence, read without root: TCP counters and the state of any socket.

Counters come from /proc/net/snmp (``Tcp:``) and /proc/net/netstat (``TcpExt:``). They are
per network namespace, so a delta counts every RST the kernel sent in this namespace during
the run, including any sent for other programs' connections (a busy machine adds noise; a lab
machine or a Binder pod adds almost none).

The state of a socket we no longer hold (a closed, orphaned socket in FIN_WAIT2, or its
TIME_WAIT successor) comes from the kernel's sock_diag netlink interface with an exact
4-tuple lookup, which needs no privilege and takes microseconds. /proc/net/tcp would do the
same but costs milliseconds per read once thousands of sockets sit in TIME_WAIT.

Not covered: IPv6 sockets, and counters of other protocols.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from typing import Mapping

from .tcpinfo import state_name

__all__ = ["COUNTERS", "read_counters", "parse_counter_table", "delta", "socket_state", "Counters",
           "tcp_buffer_limits"]

#: The counters every run reports, as (file section, name).
COUNTERS = ("OutRsts", "EstabResets", "TCPAbortOnClose", "TCPAbortOnData")

#: What each counter means, for tables and notebooks.
COUNTER_HELP = {
    "OutRsts": "RST segments the kernel sent",
    "EstabResets": "connections that went from ESTABLISHED or CLOSE_WAIT straight to CLOSE",
    "TCPAbortOnClose": "close() with unread received data: RST instead of FIN",
    "TCPAbortOnData": "RST on close with SO_LINGER 0, or data arriving for a closed socket",
}

_SOURCES = (("/proc/net/snmp", "Tcp"), ("/proc/net/netstat", "TcpExt"))


def parse_counter_table(text: str, section: str) -> dict[str, int]:
    """Parse the two-line ``Section: names`` / ``Section: values`` format of /proc/net/*."""
    lines = text.splitlines()
    for header, values in zip(lines, lines[1:]):
        if header.startswith(section + ":") and values.startswith(section + ":"):
            names = header.split()[1:]
            numbers = values.split()[1:]
            return {n: int(v) for n, v in zip(names, numbers)}
    return {}


def read_counters(names: tuple[str, ...] = COUNTERS) -> dict[str, int]:
    """Current values of ``names``; raises OSError if /proc/net is not readable."""
    found: dict[str, int] = {}
    for path, section in _SOURCES:
        with open(path) as f:
            found.update(parse_counter_table(f.read(), section))
    missing = [n for n in names if n not in found]
    if missing:
        raise OSError(f"kernel counters not found in /proc/net: {', '.join(missing)}")
    return {n: found[n] for n in names}


def delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {n: after[n] - before[n] for n in before}


@dataclass
class Counters:
    """``with Counters() as c: ...`` then ``c.delta`` holds the change of every counter."""

    before: dict[str, int] | None = None
    delta: dict[str, int] | None = None

    def __enter__(self) -> "Counters":
        self.before = read_counters()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.before is not None
        self.delta = delta(self.before, read_counters())


def tcp_buffer_limits() -> dict[str, tuple[int, int, int]]:
    """net.ipv4.tcp_rmem and tcp_wmem (min, default, max bytes): how big a receive queue and a
    send buffer of a new TCP socket start, and how far the kernel lets them grow."""
    out = {}
    for name in ("tcp_rmem", "tcp_wmem"):
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            low, default, high = (int(v) for v in f.read().split())
        out[name] = (low, default, high)
    return out


# --- sock_diag exact lookup ------------------------------------------------------------------

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_INET_DIAG_NOCOOKIE = 0xFFFFFFFF


def _diag_request(local: tuple[str, int], remote: tuple[str, int]) -> bytes:
    sockid = struct.pack("!HH16s16s", local[1], remote[1],
                         socket.inet_aton(local[0]) + bytes(12), socket.inet_aton(remote[0]) + bytes(12))
    sockid += struct.pack("=III", 0, _INET_DIAG_NOCOOKIE, _INET_DIAG_NOCOOKIE)
    req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    return struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + req


def parse_diag_reply(data: bytes, remote_port: int) -> str:
    """State name from a sock_diag reply; ``GONE`` when the kernel holds no such connection.

    The kernel's exact lookup falls back to the listening socket of the local port once the
    connection itself is gone; a reply whose remote port is not ``remote_port`` means that.
    """
    _length, kind = struct.unpack_from("=IH", data)
    if kind == _NLMSG_ERROR:
        code = -struct.unpack_from("=i", data, 16)[0]
        if code == errno.ENOENT:
            return "GONE"
        raise OSError(code, f"sock_diag lookup failed: {errno.errorcode.get(code, code)}")
    _family, state = struct.unpack_from("=BB", data, 16)
    (dport,) = struct.unpack_from("!H", data, 22)  # inet_diag_msg.id.idiag_dport
    if dport != remote_port:
        return "GONE"
    return state_name(state)


def socket_state(local: tuple[str, int], remote: tuple[str, int]) -> str:
    """The kernel's state for the TCP socket ``local``->``remote`` (IPv4), seen from ``local``.

    Returns a name from :data:`lablib.tcpinfo.TCP_STATES`, or ``GONE`` once the kernel has
    freed the socket (after an RST, or after TIME_WAIT ends). Works for sockets no process
    holds any more (orphans in FIN_WAIT2, LAST_ACK, TIME_WAIT).
    """
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.send(_diag_request(local, remote))
        return parse_diag_reply(nl.recv(8192), remote[1])
