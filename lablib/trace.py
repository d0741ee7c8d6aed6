"""Trace: the timestamped record of every socket call the lab's actors make.

An :class:`Event` is one call: monotonic time in ns, the actor that made it
(``client``, ``wire``, ``server``...), the connection it was on, the operation, the bytes it
moved and its result (``ok``, ``eof`` or an errno name such as ``ECONNRESET``). A close also
says how many received bytes were still unread, and which segment that makes the kernel send.

Connections are named ``"CPORT>LPORT"``: the connecting side's port, then the listening
port. Both ends compute the same name, so their events pair up. A relay (the delay line)
records a ``relay`` event naming the two connections it joins, which lets a trial's events be
followed across hops.

The trial number comes from a context variable that the runner sets for each trial's task;
actors that serve many trials (a server) get it through the connection name.

Not covered: events of programs that are not ours (curl, requests); the lab records what they
report instead (status, exception) in the trial's row.
"""

from __future__ import annotations

import collections
import contextvars
import time
from dataclasses import asdict, dataclass, fields
from typing import Iterable, Iterator

import pandas as pd

__all__ = ["Event", "Trace", "current_trial", "OPS"]

#: Operation names an event may carry.
OPS = ("listen", "connect", "accept", "send", "recv", "shutdown", "close", "abort",
       "state", "timer", "relay", "http", "note")

#: The trial a task works for; set by the runner, read when an event is recorded.
current_trial: contextvars.ContextVar[int] = contextvars.ContextVar("lablib_trial", default=-1)


@dataclass(frozen=True, slots=True)
class Event:
    t_ns: int
    actor: str
    op: str
    conn: str = ""
    nbytes: int = 0
    result: str = "ok"
    unread: int = -1
    state: str = ""
    wire: str = ""
    detail: str = ""
    trial: int = -1


_COLUMNS = [f.name for f in fields(Event)]


class Trace:
    """A thread-safe, append-only list of events shared by every actor of one run."""

    def __init__(self, keep: int | None = None) -> None:
        """``keep``: hold only the most recent ``keep`` events (for long-running servers)."""
        self.t0_ns = time.monotonic_ns()
        self._events: collections.deque[Event] = collections.deque(maxlen=keep)

    def record(self, actor: str, op: str, *, t_ns: int | None = None, trial: int | None = None,
               **fields: object) -> Event:
        """Append one event; ``t_ns`` defaults to now (monotonic)."""
        event = Event(time.monotonic_ns() if t_ns is None else t_ns, actor, op,
                      trial=current_trial.get() if trial is None else trial, **fields)  # type: ignore[arg-type]
        # No lock: deque.append is one C call under the GIL, atomic. A lock here made a
        # convoy: a thread told to hand over the GIL while holding it stalled every role.
        self._events.append(event)
        return event

    @classmethod
    def from_events(cls, events: Iterable[Event], t0_ns: int | None = None) -> "Trace":
        """A trace holding ``events`` (read back from an archive)."""
        trace = cls()
        trace._events.extend(events)
        if t0_ns is not None:
            trace.t0_ns = t0_ns
        return trace

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self._events))  # list() of a deque runs in C, under the GIL: a snapshot

    def events(self, trial: int | None = None) -> list[Event]:
        """All events, in time order, with trial numbers filled in through connections;
        with ``trial``, only that trial's."""
        events = sorted(self._events, key=lambda e: e.t_ns)  # copies the deque in C first: a snapshot
        trials = _trial_of_connections(events)
        filled = [e if e.trial >= 0 or e.conn not in trials else _with_trial(e, trials[e.conn]) for e in events]
        if trial is None:
            return filled
        return [e for e in filled if e.trial == trial]

    def frame(self, trial: int | None = None) -> pd.DataFrame:
        """The events as a DataFrame; ``t_ms`` counts from the run's start, or from the
        trial's first event when ``trial`` is given."""
        return events_frame(self.events(trial), self.t0_ns if trial is None else None)


def events_frame(events: Iterable[Event], t0_ns: int | None = None) -> pd.DataFrame:
    rows = [asdict(e) for e in events]
    df = pd.DataFrame(rows, columns=_COLUMNS)
    if df.empty:
        df.insert(0, "t_ms", pd.Series(dtype="float64"))
        return df
    origin = t0_ns if t0_ns is not None else int(df["t_ns"].min())
    df.insert(0, "t_ms", (df["t_ns"] - origin) / 1e6)
    return df


def _with_trial(event: Event, trial: int) -> Event:
    values = asdict(event)
    values["trial"] = trial
    return Event(**values)


def _trial_of_connections(events: list[Event]) -> dict[str, int]:
    """Connection -> trial, from events that know their trial, spread across relay links."""
    links: dict[str, set[str]] = {}
    for e in events:
        if e.op == "relay" and e.conn and e.detail:
            links.setdefault(e.conn, set()).add(e.detail)
            links.setdefault(e.detail, set()).add(e.conn)
    known: dict[str, int] = {}
    for e in events:
        if e.conn and e.trial >= 0:
            known.setdefault(e.conn, e.trial)
    pending = list(known)
    while pending:
        conn = pending.pop()
        for other in links.get(conn, ()):
            if other not in known:
                known[other] = known[conn]
                pending.append(other)
    return known
