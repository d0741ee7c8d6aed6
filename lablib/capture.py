"""Packet capture on loopback, where the machine allows it, and the reason where it does not.

Capturing needs a raw AF_PACKET socket, hence CAP_NET_RAW. Binder pods, and most notebook
servers, run as an unprivileged user with no_new_privs set, where even a capability on the
interpreter file is ignored: capture is impossible there, and every lab works without it
(the timeline is inferred from the traced calls and confirmed by kernel counters).

:func:`probe` tries the same socket scapy would open, without importing scapy (which is slow
to import and hides this PermissionError inside AsyncSniffer's thread until ``stop()``).

Where it is possible, :class:`Capture` records the TCP segments to and from a run's ports, so
the ladder can draw observed packets beside the inferred ones.

Not covered: capture on interfaces other than ``lo``, and IPv6.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd

__all__ = ["CaptureSupport", "CaptureError", "Capture", "probe", "PACKET_COLUMNS", "write_pcap"]

PACKET_COLUMNS = ["t_ns", "sport", "dport", "flags", "seq", "ack", "nbytes"]
#: what a capture keeps of each packet: Ethernet, IP and TCP headers with options fit in 128
SNAPLEN = 128
_PCAP_MAGIC = 0xA1B2C3D4
_BPF_RET_K = 0x06
_SO_ATTACH_FILTER = 26
_SO_RCVBUFFORCE = 33


class CaptureError(RuntimeError):
    """Capture was asked for where it is not possible; the message says why, in one line."""

_ETH_P_ALL = 0x0003
_CAP_NET_RAW = 13


@dataclass(frozen=True)
class CaptureSupport:
    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


def _status_field(name: str) -> str:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def privileges() -> dict[str, object]:
    """uid, no_new_privs and whether CAP_NET_RAW is in the effective set."""
    caps = _status_field("CapEff")
    try:
        net_raw = bool(int(caps, 16) >> _CAP_NET_RAW & 1)
    except ValueError:
        net_raw = False
    return {"uid": os.getuid(), "no_new_privs": _status_field("NoNewPrivs") == "1", "cap_net_raw": net_raw}


def probe() -> CaptureSupport:
    """Whether this process can capture on ``lo``, and why (one sentence either way)."""
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    except PermissionError:
        p = privileges()
        why = f"no CAP_NET_RAW (uid {p['uid']}" + (", no_new_privs set" if p["no_new_privs"] else "") + ")"
        return CaptureSupport(False, f"not available: {why}; labs use traced calls and kernel counters instead")
    except (OSError, AttributeError) as exc:
        return CaptureSupport(False, f"not available: raw sockets fail here ({exc})")
    s.close()
    try:
        import scapy  # noqa: F401
    except ImportError:
        return CaptureSupport(False, "not available: raw sockets work but scapy is not installed")
    return CaptureSupport(True, "available: raw sockets on lo work (CAP_NET_RAW)")


class Capture:
    """Record TCP segments on ``lo`` to or from ``ports`` between :meth:`start` and :meth:`stop`.

    Uses scapy's L2Socket, which drops the outgoing copy of each loopback packet (a plain
    sniffer sees every packet twice). A one-instruction classic BPF program on the socket keeps
    only the first ``snaplen`` bytes of each packet, in the kernel: loopback carries segments of
    up to 64 KiB, and a whole upload of them would overflow the capture's socket buffer while
    Python dissects. Payload lengths come from the IP header. Times are converted to the
    monotonic clock of the trace. :meth:`stop` sends a marker datagram through ``lo`` and waits
    for the sniffer to see it, so every packet sent before it has been processed.
    """

    def __init__(self, ports: Iterable[int], snaplen: int = SNAPLEN) -> None:
        self.ports = set(ports)
        self.snaplen = snaplen
        self.packets: Any = None  # scapy PacketList after stop()
        self._sniffer: Any = None
        self._socket: Any = None
        self._marker: socket.socket | None = None
        self._marked = threading.Event()
        self._offset_ns = 0

    def start(self) -> "Capture":
        support = probe()
        if not support:
            raise CaptureError(f"capture={True}: {support.reason}")
        from scapy.all import TCP, UDP, AsyncSniffer, conf

        self._marker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._marker.bind(("127.0.0.1", 0))
        marker_port = self._marker.getsockname()[1]
        ports = self.ports

        def wanted(p: Any) -> bool:
            if UDP in p and p[UDP].dport == marker_port:
                self._marked.set()
                return False
            return TCP in p and (p[TCP].sport in ports or p[TCP].dport in ports)

        started = threading.Event()
        self._offset_ns = time.time_ns() - time.monotonic_ns()
        self._socket = conf.L2socket(iface="lo")
        _keep_first_bytes(self._socket.ins, self.snaplen)
        self._sniffer = AsyncSniffer(opened_socket=self._socket, lfilter=wanted, store=True,
                                     started_callback=started.set)
        self._sniffer.start()
        if not started.wait(5) or self._sniffer.exception is not None:
            error = self._sniffer.exception
            self._close_marker()
            self._socket.close()
            raise CaptureError(f"capture did not start: {error or 'the sniffer thread did not report'}")
        return self

    def stop(self) -> pd.DataFrame:
        """End the capture; the segments as a DataFrame with :data:`PACKET_COLUMNS`."""
        if self._sniffer is None:
            return pd.DataFrame(columns=PACKET_COLUMNS)
        try:
            assert self._marker is not None
            self._marker.sendto(b"end of capture", self._marker.getsockname())
            self._marked.wait(5)
        finally:
            self.packets = self._sniffer.stop()
            self._sniffer = None
            self._socket.close()
            self._close_marker()
        return packets_frame(self.packets, self._offset_ns)

    def _close_marker(self) -> None:
        if self._marker is not None:
            self._marker.close()
            self._marker = None


def _keep_first_bytes(sock: socket.socket, snaplen: int) -> None:
    """Attach the classic BPF program ``ret #snaplen`` (accept every packet, cut to snaplen)
    and ask for a large receive buffer (SO_RCVBUFFORCE needs CAP_NET_ADMIN; else capped)."""
    insn = ctypes.create_string_buffer(struct.pack("=HBBI", _BPF_RET_K, 0, 0, snaplen))
    program = struct.pack("@HP", 1, ctypes.addressof(insn))  # struct sock_fprog, native layout
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
    for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 32 * 1024 * 1024)
            break
        except OSError:
            continue


def packets_frame(packets: Iterable[Any], offset_ns: int = 0) -> pd.DataFrame:
    """scapy packets -> one row per TCP segment; ``offset_ns`` turns capture (wall-clock)
    times into the monotonic clock (subtract it). Payload sizes come from the IP header, so
    packets cut short by the capture still count their whole payload."""
    from scapy.all import IP, TCP

    rows = [{"t_ns": int(round(float(p.time) * 1e9)) - offset_ns, "sport": p[TCP].sport, "dport": p[TCP].dport,
             "flags": str(p[TCP].flags), "seq": p[TCP].seq, "ack": p[TCP].ack,
             "nbytes": p[IP].len - 4 * p[IP].ihl - 4 * p[TCP].dataofs}
            for p in packets if TCP in p and IP in p]
    return pd.DataFrame(rows, columns=PACKET_COLUMNS)


_LINKTYPE_ETHERNET = 1


def write_pcap(path: str, packets: Iterable[Any], snaplen: int = 65535) -> None:
    """Write captured packets as a classic pcap file (Ethernet, as captured on ``lo``), each cut
    to ``snaplen`` bytes; Wireshark shows a cut packet's real length and marks the rest as not
    captured. Reference captures keep only the headers this way (a few MB of upload otherwise)."""
    with open(path, "wb") as f:
        f.write(struct.pack("=IHHiIII", _PCAP_MAGIC, 2, 4, 0, 0, snaplen, _LINKTYPE_ETHERNET))
        for p in packets:
            data = bytes(p)
            seconds = float(p.time)
            whole = int(seconds)
            f.write(struct.pack("=IIII", whole, int(round((seconds - whole) * 1e6)) % 1_000_000,
                                min(len(data), snaplen), len(data)))
            f.write(data[:snaplen])
