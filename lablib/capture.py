"""Packet capture on loopback, where the machine allows it, and the reason where it does not.

Capturing needs a raw AF_PACKET socket, hence CAP_NET_RAW. Binder pods, and most notebook
servers, run as an unprivileged user with no_new_privs set, where even a capability on the
interpreter file is ignored: capture is impossible there, and every lab works without it
(the timeline is inferred from the traced calls and confirmed by kernel counters).

:func:`probe` tries the same socket scapy would open, without importing scapy (which is slow
to import and hides this PermissionError inside AsyncSniffer's thread until ``stop()``).

Not covered: capture on interfaces other than ``lo``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

__all__ = ["CaptureSupport", "probe"]

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
