"""Remake the reference runs in data/: real runs of each lab with a packet capture.

    sudo .venv/bin/python data/make_reference.py [SCENARIO ...]   # needs CAP_NET_RAW (see: doctor)

Each variant is written as data/<scenario>/<variant>.json (a lablib Result archive: settings,
trials, kernel counter deltas, every traced call, every captured segment) and .pcap (the same
packets, as captured: cut to their first 128 bytes, the headers, for Wireshark). Labs draw them where live capture is
impossible.
"""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path

import lablib
from lablib.capture import probe

DATA = Path(__file__).resolve().parent

#: scenario -> variant -> (trials, knobs)
VARIANTS = {
    "close-basics": {
        "drained": (3, {"close.mode": "drained"}),
        "unread": (3, {"close.mode": "unread"}),
        "shutdown": (3, {"close.mode": "shutdown"}),
        "linger0": (3, {"close.mode": "linger0"}),
        "drained-writes": (3, {"close.mode": "drained", "client.writes_after_end": 2}),
        "unread-delay": (3, {"close.mode": "unread", "wire.delay": 0.01}),
    },
    "early-close": {
        "close": (2, {}),
        "lingering": (2, {"server.close_mode": "lingering"}),
        "proxy-close": (2, {"topology": "proxy"}),
        "proxy-lingering": (2, {"topology": "proxy", "server.close_mode": "lingering"}),
    },
    "keepalive-reuse": {
        "fin-in-flight": (3, {"client.check_before_reuse": "on", "wire.delay": 0.01, "client.idle_gap": 0.09}),
        "late-reuse": (3, {"client.idle_gap": 0.11}),
    },
    "close-framing": {
        "delayed": (1, {}),
        "skip": (1, {"proxy.skip_delay_close": "on"}),
    },
}



def main(argv: list[str]) -> int:
    unknown = [a for a in argv if a not in VARIANTS]
    if unknown:
        print(f"make_reference: unknown scenario {unknown[0]!r}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    support = probe()
    if not support:
        print(f"make_reference: packet capture is {support.reason}", file=sys.stderr)
        return 2
    from lablib.capture import write_pcap

    stamp = datetime.date.today().isoformat()
    for scenario, variants in VARIANTS.items():
        if argv and scenario not in argv:
            continue
        (DATA / scenario).mkdir(exist_ok=True)
        for variant, (trials, knobs) in variants.items():
            result = lablib.run(scenario, trials, knobs, capture=True)
            note = (f"captured {stamp} with data/make_reference.py on Linux {platform.release()}, "
                    f"Python {platform.python_version()}, lablib {lablib.__version__}")
            result.save(DATA / scenario / f"{variant}.json", note=note)
            write_pcap(str(DATA / scenario / f"{variant}.pcap"), result.raw_packets)
            print(f"{scenario}/{variant}: {result.n} trials, {len(result.packets)} segments, {result.outcomes}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
