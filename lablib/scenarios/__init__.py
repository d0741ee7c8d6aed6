"""The registry of scenarios: one per lab, looked up by the name the command line uses."""

from __future__ import annotations

from ..knobs import KnobError
from .base import Lab, Scenario
from .close_basics import CloseBasics
from .close_framing import CloseFraming
from .early_close import EarlyClose
from .keepalive_reuse import KeepaliveReuse
from .upstream_reuse import UpstreamReuse

__all__ = ["Scenario", "Lab", "get", "names", "all_scenarios"]

_REGISTRY: dict[str, Scenario] = {s.name: s for s in (CloseBasics(), EarlyClose(), KeepaliveReuse(), CloseFraming(),
                                                   UpstreamReuse())}


def names() -> list[str]:
    return list(_REGISTRY)


def all_scenarios() -> list[Scenario]:
    return list(_REGISTRY.values())


def get(name: str) -> Scenario:
    """The scenario called ``name``; KnobError (one line, the valid names) if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KnobError(f"unknown scenario {name!r}; choose one of {', '.join(_REGISTRY)}") from None
