"""The shape every lab's scenario takes, and the context its trials run in.

A scenario declares its knobs and outcome names, starts its roles in :meth:`Scenario.setup`
and runs one trial in :meth:`Scenario.trial`, which returns the trial's row (a dict with at
least ``outcome``). Both run on the client's event loop; roles run on loops of their own.
The runner (:mod:`lablib.runner`) adds the trial number, deadline, timing and kernel deltas.

Not covered: scenarios whose trials need a loop other than the client's to drive them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..knobs import Config, Knob
from ..topology import Topology
from ..trace import Trace

__all__ = ["Scenario", "Lab"]


@dataclass
class Lab:
    """Everything one run's trials share: the settings, the trace, the started roles."""

    config: Config
    trace: Trace
    topology: Topology
    deadline: float
    roles: dict[str, Any] = field(default_factory=dict)
    #: whatever the scenario keeps for its trials (a body to send, a file for curl)
    state: dict[str, Any] = field(default_factory=dict)
    #: called when the run ends, whatever happened (remove a temporary file, ...)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    async def start(self, name: str, role: Any, loop: str | None = None) -> Any:
        """Start ``role`` on its own loop (named ``loop``, default ``name``) and keep it as
        ``lab.roles[name]``."""
        self.roles[name] = await self.topology.start(role, loop or name)
        return role


class Scenario:
    #: the name used on the command line and in ``lablib.run``
    name: str = ""
    #: a one-line title for tables of contents
    title: str = ""
    #: the settings a user may change
    knobs: tuple[Knob, ...] = ()
    #: outcome names in the order tables and charts show them
    outcomes: tuple[str, ...] = ()
    default_trials: int = 20
    default_deadline: float = 5.0
    #: whether trials may run side by side (False when a trial reads the kernel counters)
    parallel_ok: bool = False
    #: the lab notebook that teaches this scenario
    notebook: str = ""
    #: True when the knobs set the trials and when each starts (:meth:`schedule`): an
    #: open-loop workload, whose trials are requests that arrive on their own clock
    open_loop: bool = False

    def configure(self, values: Mapping[str, Any] | Config | None = None) -> Config:
        """A validated :class:`Config`; raises KnobError naming a bad knob or value."""
        if isinstance(values, Config):
            values = values.changed() if values.knobs == self.knobs else dict(values)
        config = Config(self.knobs, dict(values or {}), owner=self.name)
        self.validate(config)
        return config

    def schedule(self, config: Config) -> list[float] | None:
        """For an :attr:`open_loop` scenario, when each trial starts, in seconds after the
        first may; their number is the number of trials. None: the caller says how many, and
        they start as soon as they may."""
        return None

    def validate(self, config: Config) -> None:
        """Check knobs that depend on each other; raise KnobError. Default: nothing to check."""

    async def setup(self, lab: Lab) -> None:
        raise NotImplementedError

    async def trial(self, lab: Lab, index: int) -> dict[str, Any]:
        raise NotImplementedError
