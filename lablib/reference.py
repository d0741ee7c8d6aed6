"""Reference runs: real runs with a packet capture, kept in data/ for machines that cannot
capture (Binder, most notebook servers).

``load("close-basics/unread")`` gives back the Result of such a run, its captured packets
included, so ``ladder()`` draws the observed segments beside the inferred ones. Each archive
has a ``.pcap`` twin to open in Wireshark (Statistics > Flow Graph). data/make_reference.py
remakes them all (it needs CAP_NET_RAW).

Not covered: installs that leave data/ out (the labs install the package in editable mode,
from a clone, which keeps it).
"""

from __future__ import annotations

import json
from pathlib import Path

from .result import Result

__all__ = ["DATA_DIR", "names", "load", "note", "pcap"]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def names() -> list[str]:
    """The reference runs there are, as ``scenario/variant``."""
    return sorted(str(p.relative_to(DATA_DIR).with_suffix("")) for p in DATA_DIR.glob("*/*.json"))


def _path(name: str) -> Path:
    path = DATA_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no reference run {name!r} in {DATA_DIR}; there are: {', '.join(names()) or 'none'}")
    return path


def load(name: str) -> Result:
    return Result.load(_path(name))


def note(name: str) -> str:
    """Where and how the run was made."""
    return str(json.loads(_path(name).read_text()).get("note", ""))


def pcap(name: str) -> Path:
    return _path(name).with_suffix(".pcap")
