"""Parse Linux ``struct tcp_info`` (getsockopt TCP_INFO) by field offset.

The struct grows with the kernel (104 bytes on 2.6, 248 up to 6.17, 280 on 6.18), so each
field is read only if the returned buffer is long enough to hold it: any kernel's size works.
Offsets follow include/uapi/linux/tcp.h; state numbers follow include/net/tcp_states.h.

Not covered: the bit fields packed in bytes 6 and 7 (window scales, app-limited), and fields
after ``total_rto_time``.
"""

from __future__ import annotations

import struct

__all__ = ["TCP_STATES", "parse_tcp_info", "state_name"]

#: tcpi_state / sk_state numbers; 7 CLOSE is also what a closed-by-RST socket reports, and
#: a socket whose kernel side went to TIME_WAIT (held by a separate timewait socket).
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
    11: "CLOSING", 12: "NEW_SYN_RECV",
}

# name -> (offset, struct format); native byte order, as the kernel writes it.
_FIELDS = {
    "state": (0, "B"), "ca_state": (1, "B"), "retransmits": (2, "B"), "probes": (3, "B"),
    "backoff": (4, "B"), "options": (5, "B"),
    "rto_us": (8, "I"), "ato_us": (12, "I"), "snd_mss": (16, "I"), "rcv_mss": (20, "I"),
    "unacked": (24, "I"), "sacked": (28, "I"), "lost": (32, "I"), "retrans": (36, "I"),
    "last_data_sent_ms": (44, "I"), "last_ack_sent_ms": (48, "I"),
    "last_data_recv_ms": (52, "I"), "last_ack_recv_ms": (56, "I"),
    "pmtu": (60, "I"), "rcv_ssthresh": (64, "I"), "rtt_us": (68, "I"), "rttvar_us": (72, "I"),
    "snd_ssthresh": (76, "I"), "snd_cwnd": (80, "I"), "advmss": (84, "I"),
    "reordering": (88, "I"), "rcv_rtt_us": (92, "I"), "rcv_space": (96, "I"),
    "total_retrans": (100, "I"),
    "pacing_rate": (104, "Q"), "max_pacing_rate": (112, "Q"),
    "bytes_acked": (120, "Q"), "bytes_received": (128, "Q"),
    "segs_out": (136, "I"), "segs_in": (140, "I"), "notsent_bytes": (144, "I"),
    "min_rtt_us": (148, "I"), "data_segs_in": (152, "I"), "data_segs_out": (156, "I"),
    "delivery_rate": (160, "Q"), "busy_time_us": (168, "Q"), "rwnd_limited_us": (176, "Q"),
    "sndbuf_limited_us": (184, "Q"), "delivered": (192, "I"), "delivered_ce": (196, "I"),
    "bytes_sent": (200, "Q"), "bytes_retrans": (208, "Q"), "dsack_dups": (216, "I"),
    "reord_seen": (220, "I"), "rcv_ooopack": (224, "I"), "snd_wnd": (228, "I"),
    "rcv_wnd": (232, "I"), "rehash": (236, "I"), "total_rto": (240, "H"),
    "total_rto_recoveries": (242, "H"), "total_rto_time_ms": (244, "I"),
}

#: getsockopt buffer size to ask for; the kernel returns min(this, its struct size).
TCP_INFO_BUFFER = 512


def state_name(number: int) -> str:
    return TCP_STATES.get(number, f"UNKNOWN({number})")


def parse_tcp_info(raw: bytes) -> dict[str, int | str]:
    """Every field that fits in ``raw``, plus ``state_name`` and ``struct_size``."""
    out: dict[str, int | str] = {"struct_size": len(raw)}
    for name, (offset, fmt) in _FIELDS.items():
        if offset + struct.calcsize("=" + fmt) <= len(raw):
            out[name] = struct.unpack_from("=" + fmt, raw, offset)[0]
    if "state" in out:
        out["state_name"] = state_name(int(out["state"]))
    return out
