"""The course: every lab, the race it teaches and where that race was met in the wild.

labs/index.ipynb is the table of contents a learner reads; tests check that it links every
lab whose notebook exists, and that every notebook in labs/ is listed here.

Not covered: labs contributed outside this repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["LabEntry", "LABS", "available"]

LABS_DIR = Path(__file__).resolve().parent.parent / "labs"


@dataclass(frozen=True)
class LabEntry:
    number: str
    notebook: str
    scenario: str
    title: str
    seen_as: str
    sources: str


LABS = (
    LabEntry("00", "00_close_basics.ipynb", "close-basics", "Close basics: FIN or RST?",
             "EOF, ECONNRESET, EPIPE", "RFC 2525 section 2.17; Linux tcp_close()"),
    LabEntry("01", "01_early_close.ipynb", "early-close", "Early close: the 413 that becomes a reset",
             "503 instead of 413; requests' ConnectionError", "envoy#2929, PR #4382"),
    LabEntry("02", "02_keepalive_reuse.ipynb", "keepalive-reuse", "Keep-alive reuse against the idle timeout",
             "ALB 502 when traffic drops; RemoteDisconnected", "envoy#13388"),
    LabEntry("03", "03_close_framing.ipynb", "close-framing", "HTTP/1.0 close framing meets delayed close",
             "every request pays delayed_close_timeout", "envoy#19821, PR #19863"),
    LabEntry("04", "04_upstream_pool.ipynb", "upstream-reuse", "The proxy's upstream pool and 503 UC",
             "503 UC", "envoy#2715, #6815, #23625, PR #2871"),
)


def available() -> list[LabEntry]:
    """Labs whose scenario is registered and whose notebook is in labs/."""
    from .scenarios import names

    return [lab for lab in LABS if lab.scenario in names() and (LABS_DIR / lab.notebook).exists()]
