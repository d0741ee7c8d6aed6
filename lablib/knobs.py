"""Knobs: the named, validated settings of a scenario or role.

A knob carries the name of the real-world option it models (Envoy, nginx, Go, urllib3) and
that option's real default, so what a learner sets in a lab transfers to their config.
Values come in as Python values (from notebooks and widgets) or as text (from the command
line, ``--set server.close_timeout=250ms``); both go through :meth:`Knob.parse`.

Every error is a :class:`KnobError` whose message is one line naming the knob, the bad value
and the valid choices, so the command line can print it as is.

Not covered: knobs that depend on each other (a scenario checks those in its own
``validate``), and units other than seconds and bytes.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

__all__ = ["Knob", "KnobError", "Config", "choice", "flag", "seconds", "nbytes", "integer", "number",
           "address"]


class KnobError(ValueError):
    """A knob name or value that is not valid; the message is one line."""


_TIME_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "": 1.0}
_BYTE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_NUMBER_WITH_UNIT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*([a-zµ]*)\s*$", re.I)
_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


@dataclass(frozen=True)
class Knob:
    """One setting: its name, kind, default and bounds, and the real option it models.

    ``kind`` is one of ``choice``, ``bool``, ``int``, ``number`` (a float: a rate, a share),
    ``seconds`` (a float in seconds), ``bytes`` (an int) and ``address`` (``host:port`` of an
    IPv4 address or ``localhost``, returned as a (host, port) tuple; ``""`` means unset). ``low``/``high`` bound numbers
    inclusively; ``None`` means unbounded.
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    models: str = ""
    real_default: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("choice", "bool", "int", "number", "seconds", "bytes", "address"):
            raise ValueError(f"knob {self.name}: unknown kind {self.kind!r}")
        self.parse(self.default)  # a knob's own default must be valid

    def parse(self, value: Any) -> Any:
        """Turn ``value`` (a Python value or command-line text) into a valid value, or raise."""
        text = value.strip() if isinstance(value, str) else value
        if self.kind == "choice":
            if text in self.choices:
                return text
            raise KnobError(f"{self.name}={value!r}: choose one of {', '.join(self.choices)}")
        if self.kind == "bool":
            if isinstance(text, bool):
                return text
            if isinstance(text, str) and text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            if text in (0, 1):
                return bool(text)
            raise KnobError(f"{self.name}={value!r}: choose on or off")
        if self.kind == "address":
            return _address(self.name, value)
        number = self._number(text, value)
        if self.kind in ("int", "bytes"):
            if number != int(number):
                raise KnobError(f"{self.name}={value!r}: must be a whole number{self._range_text()}")
            number = int(number)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise KnobError(f"{self.name}={value!r}: out of range, must be{self._range_text()}")
        return number

    def format(self, value: Any) -> str:
        """A value as a person would write it on the command line (``250ms``, ``8MiB``, ``on``)."""
        if self.kind == "bool":
            return "on" if value else "off"
        if self.kind == "seconds":
            return _format_seconds(value)
        if self.kind == "bytes":
            return _format_bytes(value)
        if self.kind == "address":
            return f"{value[0]}:{value[1]}" if value else "unset"
        if self.kind == "number":
            return f"{value:.4g}"
        return str(value)

    def _number(self, text: Any, original: Any) -> float:
        if isinstance(text, bool):
            raise KnobError(f"{self.name}={original!r}: must be a number{self._range_text()}")
        if isinstance(text, (int, float)):
            number = float(text)
        else:
            match = _NUMBER_WITH_UNIT.match(str(text))
            units = _TIME_UNITS if self.kind == "seconds" else _BYTE_UNITS if self.kind == "bytes" else {"": 1}
            unit = match.group(2).lower() if match else None
            if not match or unit not in units:
                names = {"seconds": " (a number of seconds, or with a unit: 250ms, 1.5s)",
                         "bytes": " (a number of bytes, or with a unit: 64KiB, 8MiB)"}.get(self.kind, "")
                raise KnobError(f"{self.name}={original!r}: not a number{names}")
            number = float(match.group(1)) * units[unit]
        if not math.isfinite(number):
            raise KnobError(f"{self.name}={original!r}: must be a finite number{self._range_text()}")
        return number

    def _range_text(self) -> str:
        fmt = self.format if self.kind in ("seconds", "bytes") else str
        if self.low is not None and self.high is not None:
            return f" between {fmt(self.low)} and {fmt(self.high)}"
        if self.low is not None:
            return f" at least {fmt(self.low)}"
        if self.high is not None:
            return f" at most {fmt(self.high)}"
        return ""


def choice(name: str, default: str, choices: Iterable[str], help: str, **kw: Any) -> Knob:
    return Knob(name, "choice", default, help, choices=tuple(choices), **kw)


def flag(name: str, default: bool, help: str, **kw: Any) -> Knob:
    return Knob(name, "bool", default, help, **kw)


def number(name: str, default: float, help: str, low: float | None = 0.0, high: float | None = None,
           **kw: Any) -> Knob:
    return Knob(name, "number", default, help, low=low, high=high, **kw)


def seconds(name: str, default: float, help: str, low: float = 0.0, high: float = 60.0, **kw: Any) -> Knob:
    return Knob(name, "seconds", default, help, low=low, high=high, **kw)


def nbytes(name: str, default: int, help: str, low: int = 0, high: int = 1024**3, **kw: Any) -> Knob:
    return Knob(name, "bytes", default, help, low=low, high=high, **kw)


def integer(name: str, default: int, help: str, low: int | None = 0, high: int | None = None, **kw: Any) -> Knob:
    return Knob(name, "int", default, help, low=low, high=high, **kw)


def _address(name: str, value: Any) -> tuple[str, int] | str:
    if value in ("", None):
        return ""
    if isinstance(value, tuple) and len(value) == 2:
        value = f"{value[0]}:{value[1]}"
    host, sep, port = str(value).strip().rpartition(":")
    host = "127.0.0.1" if host == "localhost" else host
    try:
        ipaddress.IPv4Address(host)
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 1 <= number <= 65535:
        raise KnobError(f"{name}={value!r}: expected HOST:PORT with an IPv4 address or localhost, "
                        f"for example 127.0.0.1:8080")
    return (host, number)


def address(name: str, help: str, **kw: Any) -> Knob:
    return Knob(name, "address", "", help, **kw)


def _format_seconds(value: float) -> str:
    if value == 0:
        return "0s"
    if abs(value) < 1:
        ms = value * 1000
        return f"{ms:g}ms"
    return f"{value:g}s"


def _format_bytes(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


@dataclass(frozen=True)
class Config(Mapping[str, Any]):
    """A complete, validated set of knob values: every knob of ``knobs``, defaults filled in.

    ``Config(knobs, {"close.mode": "unread"})`` raises :class:`KnobError` for an unknown
    name or a bad value. It behaves as a read-only mapping from knob name to value.
    """

    knobs: tuple[Knob, ...]
    values: Mapping[str, Any] = field(default_factory=dict)
    owner: str = "this scenario"

    def __post_init__(self) -> None:
        by_name = {k.name: k for k in self.knobs}
        resolved = {k.name: k.default for k in self.knobs}
        for name, value in dict(self.values).items():
            if name not in by_name:
                raise KnobError(unknown_name_message(name, by_name, self.owner))
            resolved[name] = by_name[name].parse(value)
        object.__setattr__(self, "values", resolved)

    def __getitem__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise KnobError(unknown_name_message(name, {k.name: k for k in self.knobs}, self.owner)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def replace(self, **changes: Any) -> "Config":
        """A copy with some knobs changed; names use ``__`` for ``.`` (``close__mode="unread"``)
        or pass a dict via ``replace(**{"close.mode": "unread"})``."""
        values = dict(self.values)
        values.update({k.replace("__", "."): v for k, v in changes.items()})
        return Config(self.knobs, values, self.owner)

    def subset(self, knobs: tuple[Knob, ...], owner: str | None = None,
               fixed: Mapping[str, Any] | None = None) -> "Config":
        """A Config of ``knobs`` with this config's values for those it has (a role's share of a
        scenario's settings), and the ``fixed`` values a scenario sets for knobs it does not
        offer."""
        values = {k.name: self.values[k.name] for k in knobs if k.name in self.values}
        return Config(knobs, {**(fixed or {}), **values}, owner or self.owner)

    def changed(self) -> dict[str, Any]:
        """The knobs whose value differs from their default."""
        return {k.name: self.values[k.name] for k in self.knobs if self.values[k.name] != k.default}

    def formatted(self) -> dict[str, str]:
        return {k.name: k.format(self.values[k.name]) for k in self.knobs}

    def describe(self) -> str:
        """The changed knobs as ``close.mode=unread, wire.delay=5ms``, or ``defaults``."""
        text = self.formatted()
        return ", ".join(f"{name}={text[name]}" for name in self.changed()) or "defaults"


def unknown_name_message(name: str, by_name: Mapping[str, Knob], owner: str) -> str:
    close = difflib.get_close_matches(name, list(by_name), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown knob {name!r} for {owner}{hint}; valid knobs: {', '.join(by_name)}"


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["a.b=1", "c=on"]`` -> ``{"a.b": "1", "c": "on"}``; raises KnobError on a missing ``=``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise KnobError(f"--set {item!r}: expected KNOB=VALUE, for example close.mode=unread")
        out[name.strip()] = value
    return out


def markdown_table(groups: Iterable[tuple[str, Iterable[Knob]]]) -> str:
    """The knob map as a Markdown table: one row per knob, with where it applies (``groups``
    is (where, knobs) pairs) and its default there, what it models and the real default."""
    order: list[str] = []
    found: dict[str, tuple[Knob, list[tuple[str, str]]]] = {}
    for where, knobs in groups:
        for k in knobs:
            if k.name not in found:
                order.append(k.name)
                found[k.name] = (k, [])
            found[k.name][1].append((where, k.format(k.default)))
    rows = ["| knob | where | default | what it does | models | real default |", "|---|---|---|---|---|---|"]
    for name in order:
        knob, places = found[name]
        defaults = {d for _, d in places}
        default = places[0][1] if len(defaults) == 1 else "; ".join(f"{d} ({w})" for w, d in places)
        rows.append(f"| `{name}` | {', '.join(w for w, _ in places)} | {default} | {knob.help} | "
                    f"{knob.models or '-'} | {knob.real_default or '-'} |")
    return "\n".join(rows)
