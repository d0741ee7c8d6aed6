"""lablib: live HTTP/1.x connection-close races on the real Linux TCP stack, for notebooks.

    >>> import lablib
    >>> result = lablib.run("close-basics", 20, {"close.mode": "unread"})
    >>> result.outcomes
    {'eof': 0, 'econnreset': 20, 'epipe': 0}

See README.md for the labs, the command line and the knob map.
"""

from .knobs import Config, Knob, KnobError
from .result import Result
from .runner import arun, run
from .scenarios import get as scenario
from .scenarios import names as scenario_names

__all__ = ["run", "arun", "Result", "Config", "Knob", "KnobError", "scenario", "scenario_names"]
__version__ = "0.1.0"
