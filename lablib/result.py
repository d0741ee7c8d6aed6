"""Result: what one run measured: a row per trial, kernel counter deltas, the event trace.

A trial's ``outcome`` is a short name for what the client saw (``eof``, ``econnreset``,
``413``...), ``timeout`` when the trial passed its deadline, or ``error`` when the lab itself
failed (the row's ``error`` column says how; the run's summary says so too).

Not covered: comparing results of different scenarios (put them side by side with
:func:`lablib.plot.outcome_bars`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .capture import PACKET_COLUMNS
from .kernel import COUNTER_HELP
from .knobs import Config
from .trace import Event, Trace

__all__ = ["Result", "ARCHIVE_FORMAT"]

ARCHIVE_FORMAT = 1

SPECIAL_OUTCOMES = ("timeout", "error")


@dataclass
class Result:
    scenario: str
    config: Config
    trials: pd.DataFrame
    kernel: dict[str, int]
    elapsed_s: float
    trace: Trace = field(repr=False)
    outcome_names: tuple[str, ...] = ()
    deadline_s: float = 0.0
    parallel: int = 1
    cancelled: bool = False
    #: captured TCP segments (see lablib.capture.PACKET_COLUMNS), or None without capture
    packets: pd.DataFrame | None = field(default=None, repr=False)
    #: the same as scapy packets, for writing a pcap (not kept in archives)
    raw_packets: Any = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return len(self.trials)

    @property
    def outcomes(self) -> dict[str, int]:
        """Count of every outcome: the scenario's own names first (zeros included), then any
        ``timeout`` or ``error``."""
        counts = self.trials["outcome"].value_counts().to_dict() if self.n else {}
        ordered = {name: int(counts.get(name, 0)) for name in self.outcome_names}
        for name in sorted(counts):
            if name not in ordered:
                ordered[name] = int(counts[name])
        return ordered

    def count(self, outcome: str) -> int:
        return self.outcomes.get(outcome, 0)

    def rate(self, outcome: str) -> float:
        return self.count(outcome) / self.n if self.n else 0.0

    @property
    def errors(self) -> list[str]:
        if "error" not in self.trials:
            return []
        return [e for e in self.trials["error"].dropna().tolist() if e]

    def latency(self) -> dict[str, float] | None:
        """Median, 90th percentile and maximum of the ``latency_s`` column (seconds; only
        requests that got a whole response have one), with their count ``n``; None for
        scenarios that do not time requests."""
        if "latency_s" not in self.trials:
            return None
        values = pd.to_numeric(self.trials["latency_s"], errors="coerce").dropna()
        if values.empty:
            return {"n": 0, "median": None, "p90": None, "max": None}  # type: ignore[dict-item]
        return {"n": int(len(values)), "median": round(float(values.median()), 6),
                "p90": round(float(values.quantile(0.9)), 6), "max": round(float(values.max()), 6)}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: scenario, config, trials, outcomes, rates, kernel, elapsed_s, ...,
        and ``latency_s`` (median, p90, max) for scenarios that time requests."""
        extra = {} if self.latency() is None else {"latency_s": self.latency()}
        return {
            "scenario": self.scenario,
            "config": {k: _plain(v) for k, v in self.config.items()},
            "trials": self.n,
            "outcomes": self.outcomes,
            "rates": {k: round(v / self.n, 4) if self.n else 0.0 for k, v in self.outcomes.items()},
            "kernel": dict(self.kernel),
            "elapsed_s": round(self.elapsed_s, 4),
            "trials_per_s": round(self.n / self.elapsed_s, 1) if self.elapsed_s > 0 else None,
            "deadline_s": self.deadline_s,
            "parallel": self.parallel,
            "cancelled": self.cancelled,
            "errors": self.errors[:5],
            **extra,
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    # --- archives: a run kept whole (trials, events, packets), to draw it again elsewhere ------

    def to_archive(self, note: str = "") -> dict[str, Any]:
        """Everything needed to rebuild this Result: settings, trials, kernel deltas, every
        event and captured segment. ``note`` says where and how it was made."""
        return {
            "format": ARCHIVE_FORMAT,
            "scenario": self.scenario,
            "config": {k: _plain(v) for k, v in self.config.changed().items()},
            "note": note,
            "elapsed_s": self.elapsed_s, "deadline_s": self.deadline_s, "parallel": self.parallel,
            "cancelled": self.cancelled, "kernel": dict(self.kernel),
            "trials": json.loads(self.trials.to_json(orient="records")),
            "t0_ns": self.trace.t0_ns,
            "events": [asdict(e) for e in self.trace.events()],
            "packets": None if self.packets is None else json.loads(self.packets.to_json(orient="records")),
        }

    @classmethod
    def from_archive(cls, data: dict[str, Any]) -> "Result":
        from .scenarios import get

        if data.get("format") != ARCHIVE_FORMAT:
            raise ValueError(f"archive format {data.get('format')!r}: this lablib reads format {ARCHIVE_FORMAT}")
        scenario = get(data["scenario"])
        packets = data.get("packets")
        return cls(scenario.name, scenario.configure(data["config"]), pd.DataFrame(data["trials"]),
                   dict(data["kernel"]), data["elapsed_s"],
                   Trace.from_events([Event(**e) for e in data["events"]], data["t0_ns"]), scenario.outcomes,
                   data["deadline_s"], data["parallel"], data["cancelled"],
                   None if packets is None else pd.DataFrame(packets, columns=PACKET_COLUMNS))

    def save(self, path: str | Path, note: str = "") -> None:
        Path(path).write_text(json.dumps(self.to_archive(note), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Result":
        return cls.from_archive(json.loads(Path(path).read_text()))

    def summary(self) -> str:
        """A few lines of text: settings, outcome counts and rates, kernel deltas, time."""
        lines = [f"{self.scenario}: {self.n} trials ({self.config.describe()})"]
        width = max((len(k) for k in self.outcomes), default=7)
        for name, count in self.outcomes.items():
            lines.append(f"  {name:<{width}}  {count:>6}  {count / self.n:6.1%}" if self.n else f"  {name}")
        latency = self.latency()
        if latency and latency["n"]:
            lines.append(f"  latency: median {latency['median'] * 1000:.1f} ms, p90 {latency['p90'] * 1000:.1f} ms, "
                         f"max {latency['max'] * 1000:.1f} ms (over {latency['n']} whole responses)")
        kernel = ", ".join(f"{k} {v:+d}" for k, v in self.kernel.items())
        lines.append(f"  kernel: {kernel}")
        lines.append(f"  elapsed: {self.elapsed_s:.2f} s" + (" (cancelled)" if self.cancelled else ""))
        for error in self.errors[:3]:
            lines.append(f"  error: {error}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        outcome_rows = "".join(
            f"<tr><td>{k}</td><td style='text-align:right'>{v}</td><td style='text-align:right'>{v / self.n:.1%}</td></tr>"
            for k, v in self.outcomes.items()) if self.n else ""
        kernel_rows = "".join(
            f"<tr><td title='{COUNTER_HELP.get(k, '')}'>{k}</td><td style='text-align:right'>{v:+d}</td></tr>"
            for k, v in self.kernel.items())
        return (f"<div><b>{self.scenario}</b>: {self.n} trials, {self.config.describe()}, {self.elapsed_s:.2f} s"
                f"<table><tr><th>outcome</th><th>trials</th><th>rate</th></tr>{outcome_rows}</table>"
                f"<table><tr><th>kernel counter</th><th>change</th></tr>{kernel_rows}</table></div>")

    def events(self, trial: int | None = None) -> pd.DataFrame:
        """The traced socket calls, of one trial (times from its first event) or of all."""
        return self.trace.frame(trial)

    def ladder(self, trial: int | None = None, **kw: Any) -> Any:
        """The ladder timeline of one trial (the first by default); see :func:`lablib.plot.ladder`.
        With a capture, the captured segments are drawn too (solid)."""
        from .ladder import observed_segments
        from .plot import ladder

        if trial is None:
            trial = int(self.trials["trial"].iloc[0])
        events = self.trace.events(trial)
        if self.packets is not None and "observed" not in kw:
            kw["observed"] = observed_segments(events, self.packets)
        return ladder(events, title=f"{self.scenario}, trial {trial}", **kw)


def _plain(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)

