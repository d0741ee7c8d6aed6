"""Pictures: the ladder timeline of one connection, outcome bars and latencies over many.

Figures are :class:`LabFigure`, a ``matplotlib.figure.Figure`` made without pyplot that
renders itself as PNG in a notebook: each shows exactly once, whether or not pyplot's inline
backend is active, and no global figure state leaks between cells. Save one with ``savefig``.

Not covered: interactive zoom (use ``scale="time"`` and ``ax.set_ylim`` for a close look).
"""

from __future__ import annotations

import io
from typing import Any, Iterable, Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .ladder import Mark, Segment, infer_segments, lane_order, marks, merge_data
from .trace import Event

__all__ = ["ladder", "ladders", "outcome_bars", "latencies", "sweep", "OUTCOME_COLORS", "LabFigure"]


class LabFigure(Figure):
    """A Figure that a notebook displays as a PNG image."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()

SEGMENT_STYLE = {
    "handshake": dict(color="#9e9e9e", lw=1.0),
    "data": dict(color="#37474f", lw=1.2),
    "FIN": dict(color="#1565c0", lw=1.8),
    "RST": dict(color="#c62828", lw=2.0),
    "ACK": dict(color="#b0bec5", lw=0.8),
}

#: fixed colours so the same outcome looks the same in every chart of every lab
OUTCOME_COLORS = {
    "eof": "#2e7d32", "ok": "#2e7d32", "complete": "#2e7d32", "413": "#2e7d32", "retried-ok": "#9ccc65",
    "econnreset": "#c62828", "reset": "#c62828", "503": "#ad1457", "stale": "#ef6c00",
    "epipe": "#ef6c00", "truncated": "#8d6e63", "timeout": "#757575", "error": "#000000",
}
_FALLBACK = ["#5e35b1", "#00838f", "#f9a825", "#6d4c41", "#3949ab", "#00897b"]


def ladder(events: Sequence[Event], *, scale: str = "order", title: str | None = None,
           observed: Iterable[Segment] = (), ax: object = None) -> Figure:
    """Draw one trial as a ladder: a lane per actor, time downwards, arrows for segments.

    ``scale="order"`` gives every distinct instant a row (readable when things happen
    microseconds apart, like Wireshark's flow graph; the left column keeps the real times);
    ``scale="time"`` spaces rows by real time (to see delays). Inferred segments are dashed,
    ``observed`` (captured) ones solid.
    """
    if scale not in ("order", "time"):
        raise ValueError(f"scale={scale!r}: choose order or time")
    events = [e for e in events if e.op != "listen"]
    observed = list(observed)
    if not events:
        raise ValueError("no events to draw: was the trial run, and is the trial number right?")
    lanes = lane_order(events)
    x = {actor: i for i, actor in enumerate(lanes)}
    segments = merge_data(infer_segments(events)) + list(observed)
    segments = [s for s in segments if s.src in x and s.dst in x]
    labels = [m for m in marks(events) if m.actor in x]
    instants = sorted({m.t_ns for m in labels} | {s.t_sent_ns for s in segments}
                      | {s.t_seen_ns for s in segments if s.t_seen_ns is not None})
    t0 = instants[0]
    if scale == "order":
        row, gaps = _rows(instants)

        def y(t: int) -> float:
            return row[t]
        height = max(3.0, 0.34 * (max(row.values()) + 1) + 1.6)
    else:
        def y(t: int) -> float:
            return (t - t0) / 1e6
        height = 6.0
    width = 2.6 * max(len(lanes), 2) + 2.5
    if ax is None:
        fig = LabFigure(figsize=(width, height))
        ax = fig.add_subplot()
    else:
        fig = ax.figure  # type: ignore[attr-defined]

    for actor, xi in x.items():
        ax.axvline(xi, color="#cfd8dc", lw=6, zorder=0)
        ax.text(xi, 1.0, actor, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=11, fontweight="bold")  # on top, where reading starts (and clear of the legend)
    for s in segments:
        _arrow(ax, x[s.src], y(s.t_sent_ns), x[s.dst], y(s.t_seen_ns if s.t_seen_ns is not None else s.t_sent_ns), s)
    for m in labels:
        _mark(ax, x[m.actor], y(m.t_ns), m, right=x[m.actor] > 0 or len(lanes) == 1)

    ax.set_xlim(-1.5, len(lanes) + 0.7)
    ax.set_xticks([])
    if scale == "order":
        ax.set_ylim(max(row.values()) + 0.7, -0.8)
        ax.set_yticks([row[t] for t in instants])
        ax.set_yticklabels([f"{(t - t0) / 1e6:.3f}" for t in instants], fontsize=7)
        for at, gap_ms in gaps:
            ax.text(-1.45, at, f"{gap_ms:.1f} ms pass", fontsize=7, color="#78909c", va="center", style="italic")
        ax.set_ylabel("ms since the first call or packet (a row per instant)")
    else:
        ax.invert_yaxis()
        ax.set_ylabel("ms since the first call or packet")
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.legend(handles=_legend(bool(observed)), loc="upper center", bbox_to_anchor=(0.5, -0.01),
              ncol=6, fontsize=8, frameon=False)
    if title:
        ax.set_title(title, pad=24)
    fig.tight_layout()
    return fig


#: where along an arrow (from its left end) its label sits
LABEL_AT = 0.7
#: in "order" scale, a pause longer than this between two instants opens a visible gap
GAP_NS = 1_000_000


def ladders(results: Mapping[str, object], trial: int = 0, *, columns: int = 2) -> Figure:
    """The ladder of one trial of each Result in ``results`` ({title: Result}), in a grid."""
    items = list(results.items())
    rows = -(-len(items) // columns)
    fig = LabFigure(figsize=(6.2 * columns, 5.6 * rows))
    for i, (title, result) in enumerate(items):
        ax = fig.add_subplot(rows, columns, i + 1)
        ladder(result.trace.events(trial), title=title, ax=ax)  # type: ignore[attr-defined]
    fig.tight_layout()
    return fig


def _rows(instants: list[int]) -> tuple[dict[int, float], list[tuple[float, float]]]:
    """Row of each instant: one apart, 1.8 apart across a pause (listed with its length)."""
    rows: dict[int, float] = {}
    gaps: list[tuple[float, float]] = []
    y = 0.0
    for i, t in enumerate(instants):
        if i:
            pause = t - instants[i - 1]
            step = 1.8 if pause > GAP_NS else 1.0
            if pause > GAP_NS:
                gaps.append((y + step / 2, pause / 1e6))
            y += step
        rows[t] = y
    return rows, gaps


def _arrow(ax: object, x0: float, y0: float, x1: float, y1: float, s: Segment) -> None:
    style = SEGMENT_STYLE[s.kind]
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=3,  # type: ignore[attr-defined]
                arrowprops=dict(arrowstyle="-|>", color=style["color"], lw=style["lw"],
                                linestyle="--" if s.inferred else "-", shrinkA=2, shrinkB=2))
    text = s.label + (" (inferred)" if s.inferred and s.kind in ("FIN", "RST") else "")
    if not s.inferred:
        text = f"[{s.label}]"  # captured: the TCP flags as Wireshark shows them
    # labels sit right of the middle: call labels of a middle lane are written to its right
    f = LABEL_AT if x1 >= x0 else 1 - LABEL_AT
    ax.text(x0 + f * (x1 - x0), y0 + f * (y1 - y0), text, ha="center", va="bottom", fontsize=7.5,  # type: ignore[attr-defined]
            color=style["color"], zorder=4, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))


def _mark(ax: object, x: float, y: float, m: Mark, right: bool) -> None:
    color = "#c62828" if m.error else ("#78909c" if m.minor else "#263238")
    ax.plot([x], [y], marker="o" if not m.minor else ".", ms=5, color=color, zorder=5)  # type: ignore[attr-defined]
    ax.text(x + (0.06 if right else -0.06), y, m.text, ha="left" if right else "right", va="center",  # type: ignore[attr-defined]
            fontsize=7 if m.minor else 8, color=color, style="italic" if m.minor else "normal", zorder=6,
            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.75))


def _legend(observed: bool) -> list[Line2D]:
    handles = [Line2D([], [], color=v["color"], lw=v["lw"], label=k) for k, v in SEGMENT_STYLE.items()
               if k != "ACK"]
    handles.append(Line2D([], [], color="#555", lw=1, linestyle="--", label="inferred from calls"))
    if observed:
        handles.append(Line2D([], [], color="#555", lw=1, label="[captured]"))
    return handles


def outcome_bars(results: Mapping[str, object] | Sequence[object] | object, *, title: str | None = None,
                 ax: object = None) -> Figure:
    """One stacked bar per run: the share of each outcome, with counts written in.

    ``results`` is a Result, a list of them (labelled by their changed knobs) or a dict
    {label: Result}.
    """
    from .result import Result

    if isinstance(results, Result):
        results = [results]
    if not isinstance(results, Mapping):
        results = {r.config.describe(): r for r in results}  # type: ignore[union-attr]
    runs: dict[str, Result] = dict(results)  # type: ignore[arg-type]
    names: list[str] = []
    for r in runs.values():
        for name, count in r.outcomes.items():
            if count and name not in names:
                names.append(name)
    if ax is None:
        fig = LabFigure(figsize=(min(15.0, max(5.0, 1.1 * len(runs) + 2.5)), 3.8))
        ax = fig.add_subplot()
    else:
        fig = ax.figure  # type: ignore[attr-defined]
    labels = list(runs)
    bottoms = [0.0] * len(labels)
    spare = iter(_FALLBACK)
    for name in names:
        color = OUTCOME_COLORS.get(name) or next(spare, "#999999")
        shares = [runs[lbl].rate(name) for lbl in labels]
        bars = ax.bar(labels, shares, bottom=bottoms, color=color, label=name, edgecolor="white")  # type: ignore[attr-defined]
        for bar, lbl, share, base in zip(bars, labels, shares, bottoms):
            if share >= 0.06:
                ax.text(bar.get_x() + bar.get_width() / 2, base + share / 2, str(runs[lbl].count(name)),  # type: ignore[attr-defined]
                        ha="center", va="center", color="white", fontsize=9, fontweight="bold")
        bottoms = [b + s for b, s in zip(bottoms, shares)]
    ax.set_ylim(0, 1)  # type: ignore[attr-defined]
    ax.set_ylabel("share of trials")  # type: ignore[attr-defined]
    ax.yaxis.set_major_formatter(lambda v, _: f"{v * 100:g}%")  # type: ignore[attr-defined]
    ax.legend(title="outcome", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=9)  # type: ignore[attr-defined]
    ax.tick_params(axis="x", labelsize=9)  # type: ignore[attr-defined]
    if len(labels) > 3:
        for tick in ax.get_xticklabels():  # type: ignore[attr-defined]
            tick.set_rotation(20)
            tick.set_ha("right")
    n = {r.n for r in runs.values()}
    ax.set_title(title or (f"outcomes over {n.pop()} trials each" if len(n) == 1 else "outcomes"))  # type: ignore[attr-defined]
    fig.tight_layout()
    return fig


def sweep(x: Sequence[float], series: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str = "share of trials",
          title: str | None = None, log_x: bool = False, markers: Iterable[tuple[float, str]] = (),
          percent: bool = True, y_max: float = 1.0, shapes: bool = False, x_format: Any = None,
          theory: Mapping[str, Sequence[float]] | None = None, ax: Any = None) -> Figure:
    """Curves over a swept knob: ``series`` maps a label to one y per x (rates, by default
    drawn as percentages from 0 to ``y_max``); ``theory`` curves are drawn dashed; ``markers``
    are vertical lines with a label, e.g. a buffer size. ``shapes`` gives each measured curve
    its own marker shape and a thinner line than the one before, so that curves lying on each
    other stay visible. With ``ax``, draws there (one panel of a larger figure)."""
    if ax is None:
        fig = LabFigure(figsize=(8.5, 4.2))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    palette = iter(["#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037"])
    colors: dict[str, str] = {}
    for i, (label, ys) in enumerate(series.items()):
        known = [OUTCOME_COLORS[w] for w in label.split() if w in OUTCOME_COLORS]
        colors[label] = known[0] if known else next(palette)
        marker, lw, size = ("osD^v"[i % 5], max(0.8, 3.0 - 0.7 * i), max(4.0, 10.0 - 2.0 * i)) if shapes else ("o", 2, 6.0)
        ax.plot(x, ys, marker=marker, ms=size, lw=lw, color=colors[label], label=label)
    for label, ys in (theory or {}).items():
        # a theory curve takes the colour of the measured series whose name it contains
        twin = max((s for s in colors if s in label), key=len, default=None)
        ax.plot(x, ys, lw=1.5, ls="--", drawstyle="steps-mid", color=colors.get(twin, "#455a64"), label=label)
    for at, text in markers:
        ax.axvline(at, color="#90a4ae", lw=1, ls=":")
        ax.text(at, 0.5, text, rotation=90, va="center", ha="center", fontsize=8, color="#546e7a",
                transform=ax.get_xaxis_transform(), bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none"))
    if log_x:
        ax.set_xscale("log", base=2)
    if x_format is not None:
        ax.xaxis.set_major_formatter(x_format)
    if percent:
        ax.set_ylim(-0.03 * y_max, 1.03 * y_max)
        ax.yaxis.set_major_formatter(lambda v, _: f"{v * 100:g}%")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def latencies(results: Mapping[str, object] | Sequence[object], *, title: str | None = None,
              markers: Iterable[tuple[float, str]] = (), ax: Any = None) -> Figure:
    """Each request's latency as a dot, one row per run, on a log scale from 0.1 ms: a
    plateau shows as a column of dots. The bar is the median, written beside it. ``results``
    is a list of Results (labelled by their changed knobs) or {label: Result}; ``markers``
    are vertical lines at a time in seconds with a label (a timeout, say). Requests without a
    latency (no whole response) are counted in the row's label."""
    import numpy as np

    if not isinstance(results, Mapping):
        results = {r.config.describe(): r for r in results}  # type: ignore[attr-defined]
    runs = dict(results)
    if ax is None:
        fig = LabFigure(figsize=(9.0, 0.75 * len(runs) + 1.6))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    rng = np.random.default_rng(0)  # the same jitter on every run of the notebook
    labels = []
    for row, (label, result) in enumerate(runs.items()):
        seconds = result.trials["latency_s"].astype(float)  # type: ignore[attr-defined]
        ms = seconds.dropna().to_numpy() * 1000
        missing = len(seconds) - len(ms)
        labels.append(label + (f"\n({missing} without a whole response)" if missing else ""))
        y = row + rng.uniform(-0.18, 0.18, len(ms))
        ax.scatter(np.maximum(ms, 0.1), y, s=14, alpha=0.6, color=OUTCOME_COLORS["complete"], edgecolors="none")
        if len(ms):
            median = float(np.median(ms))
            ax.plot([median, median], [row - 0.3, row + 0.3], color="#212121", lw=2)
            ax.text(median * 1.12, row - 0.24, f"median {median:.1f} ms" if median < 100 else f"median {median:.0f} ms",
                    ha="left", va="center", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    for at, text in markers:
        ax.axvline(at * 1000, color="#90a4ae", lw=1, ls=":")
        ax.text(at * 1000, 1.0, text, ha="center", va="bottom", fontsize=8, color="#546e7a",
                transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_xlim(0.1, max(5000.0, *(at * 5000 for at, _ in markers)))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g} ms" if v < 1000 else f"{v / 1000:g} s")
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.set_ylim(len(labels) - 0.4, -0.6)
    ax.set_xlabel("latency: connect() until the client knows the response is complete (log scale)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, pad=14)
    fig.tight_layout()
    return fig
