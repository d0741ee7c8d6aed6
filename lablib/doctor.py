"""doctor: what this machine allows the labs to do, in a few lines.

Checks packet capture (and why not), the kernel counters and TCP_INFO, the sock_diag state
lookup, the optional programs the labs can drive (curl, nginx, haproxy, tshark) and the
versions of the pinned Python packages.

Not covered: whether a remote proxy is reachable (the labs bind loopback only).
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import socket
import subprocess
from typing import Any

from . import capture, kernel
from .tcpinfo import TCP_INFO_BUFFER

__all__ = ["diagnose", "format_report"]

TOOLS = ("curl", "nginx", "haproxy", "tshark")
PACKAGES = ("jupyterlab", "ipywidgets", "pandas", "matplotlib", "scapy", "h11", "nbval")


def _tool_version(path: str) -> str:
    for flag in ("--version", "-v"):
        try:
            out = subprocess.run([path, flag], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (out.stdout or out.stderr).strip().splitlines()
        if text:
            return text[0][:80]
    return "present"


def diagnose() -> dict[str, Any]:
    report: dict[str, Any] = {"kernel": platform.release(), "python": platform.python_version()}
    support = capture.probe()
    report["capture"] = {"available": support.available, "reason": support.reason, **capture.privileges()}
    try:
        report["counters"] = {"readable": True, "values": kernel.read_counters()}
    except OSError as exc:
        report["counters"] = {"readable": False, "reason": str(exc)}
    with socket.socket() as s:
        raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BUFFER)
        report["tcp_info_bytes"] = len(raw)
    try:  # look up a real connection: its client end must be ESTABLISHED
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            with socket.create_connection(listener.getsockname(), timeout=5) as client:
                found = kernel.socket_state(client.getsockname(), listener.getsockname())
            report["sock_diag"] = found == "ESTABLISHED" or f"not working (found {found})"
    except OSError as exc:
        report["sock_diag"] = f"not available ({exc})"
    report["tools"] = {t: (_tool_version(p) if (p := shutil.which(t)) else None) for t in TOOLS}
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    report["packages"] = packages
    return report


def format_report(report: dict[str, Any]) -> str:
    cap = report["capture"]
    lines = [f"kernel {report['kernel']}, Python {report['python']}",
             f"packet capture: {cap['reason']}"]
    counters = report["counters"]
    lines.append("kernel counters: " + ("readable from /proc/net/snmp and /proc/net/netstat without root"
                                        if counters["readable"] else f"NOT readable: {counters['reason']}"))
    lines.append(f"TCP_INFO: {report['tcp_info_bytes']} bytes from this kernel (parsed by offset)")
    diag = report["sock_diag"]
    lines.append("socket states of closed sockets (sock_diag): " + ("yes" if diag is True else str(diag)))
    for tool, version in report["tools"].items():
        lines.append(f"{tool}: {version or 'not installed (optional)'}")
    missing = [n for n, v in report["packages"].items() if v is None]
    lines.append("packages: " + ", ".join(f"{n} {v}" for n, v in report["packages"].items() if v)
                 + (f"; missing: {', '.join(missing)}" if missing else ""))
    return "\n".join(lines)
