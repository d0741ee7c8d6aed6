"""LabForm: a scenario's knobs as a form with a Run button, a progress bar and an output area.

The form is thin wiring over :func:`lablib.run` and :func:`lablib.arun`: it reads the knob
values from its controls, runs, and shows the result (the outcome table, the outcome bars
of every run made with this form so far, side by side, and the ladder of the first trial).
In a notebook the Run button starts the run as a task on the kernel's event loop, so the
notebook stays responsive and the button turns into Stop; where no loop runs (a test, a
script) a click runs to the end. ``form.run()`` does what a click does, and returns the result.

Bad values (``-1`` in a time box) are reported on the status line in the knob's own one-line
error; nothing runs.

Not covered: knobs that only make sense together (the scenario's validate() still applies
and reports on the status line).
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

import ipywidgets as w
from IPython.display import HTML, Image

from .knobs import Knob, KnobError, unknown_name_message
from .result import Result
from .runner import arun, run
from .scenarios import Scenario, get

__all__ = ["LabForm", "form", "control_for"]

HISTORY = 6


def control_for(knob: Knob, value: Any = None) -> w.Widget:
    """The widget for one knob: a dropdown, a checkbox, a number box or a text box."""
    value = knob.default if value is None else value
    style = {"description_width": "190px"}
    layout = w.Layout(width="420px")
    tip = knob.help + (f" (models {knob.models})" if knob.models else "")
    if knob.kind == "choice":
        return w.Dropdown(options=list(knob.choices), value=value, description=knob.name, style=style,
                          layout=layout, tooltip=tip)
    if knob.kind == "bool":
        return w.Checkbox(value=bool(value), description=knob.name, style=style, layout=layout, tooltip=tip,
                          indent=False)
    if knob.kind == "int":
        return w.BoundedIntText(value=value, min=int(knob.low if knob.low is not None else -10**9),
                                max=int(knob.high if knob.high is not None else 10**9),
                                description=knob.name, style=style, layout=layout, tooltip=tip)
    # numbers, seconds and bytes: text, so units (250ms, 8MiB) work and bad input gets the knob's message
    return w.Text(value=knob.format(value), description=knob.name, style=style, layout=layout, tooltip=tip)


class LabForm:
    """The form of one scenario.

    ``knobs`` picks which knobs get a control (default: all); ``values`` presets knobs, and
    those without a control keep their preset value in every run; ``trials`` presets the
    trial count; ``ladder=False`` leaves the ladder out of the output.
    """

    def __init__(self, scenario: str | Scenario, *, trials: int | None = None, knobs: Iterable[str] | None = None,
                 values: dict[str, Any] | None = None, ladder: bool = True) -> None:
        self.scenario = get(scenario) if isinstance(scenario, str) else scenario
        chosen = list(knobs) if knobs is not None else [k.name for k in self.scenario.knobs]
        by_name = {k.name: k for k in self.scenario.knobs}
        for name in chosen:
            if name not in by_name:
                raise KnobError(unknown_name_message(name, by_name, self.scenario.name))
        preset = self.scenario.configure(values or {})
        self.knobs = [by_name[n] for n in chosen]
        self.controls = {k.name: control_for(k, preset[k.name]) for k in self.knobs}
        self.fixed = {k: v for k, v in (values or {}).items() if k not in self.controls}
        self.trials = w.BoundedIntText(value=trials or self.scenario.default_trials, min=1, max=100_000,
                                       description="trials", style={"description_width": "190px"},
                                       layout=w.Layout(width="420px"))
        if self.scenario.open_loop:  # its workload knobs make its trials
            self.trials.layout.display = "none"
        self.button = w.Button(description="Run", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="300px"))
        self.status = w.HTML(value="")
        self.output = w.Output()
        self.show_ladder = ladder
        self.results: list[Result] = []
        self.task: asyncio.Task[Result] | None = None
        self.button.on_click(self._clicked)
        self.widget = w.VBox([*self.controls.values(), self.trials,
                              w.HBox([self.button, self.progress, self.status]), self.output])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    @property
    def result(self) -> Result | None:
        return self.results[-1] if self.results else None

    def values(self) -> dict[str, Any]:
        """The knob values in the controls, checked; KnobError names the first bad one."""
        out = dict(self.fixed)
        for knob in self.knobs:
            out[knob.name] = knob.parse(self.controls[knob.name].value)
        self.scenario.configure(out)
        return out

    # --- running ----------------------------------------------------------------------------

    def run(self) -> Result | None:
        """Run with the form's values and show the result; None if a value was bad."""
        values = self._checked_values()
        if values is None:
            return None
        self._begin(values)
        try:
            result = run(self.scenario, self._trial_count(), values, on_progress=self._progress)
        finally:
            self._end()
        self._show(result)
        return result

    async def arun(self) -> Result | None:
        """:meth:`run` for a running loop (this is what the Run button does in a notebook)."""
        values = self._checked_values()
        if values is None:
            return None
        self._begin(values)
        return await self._execute(values)

    async def _execute(self, values: dict[str, Any]) -> Result:
        try:
            result = await arun(self.scenario, self._trial_count(), values, on_progress=self._progress)
        except asyncio.CancelledError:
            self.status.value = "stopped"
            raise
        except Exception as exc:
            self.status.value = f"<span style='color:#c62828'>failed: {_escape(f'{type(exc).__name__}: {exc}')}</span>"
            raise
        finally:
            self._end()
        self._show(result)
        return result

    def _clicked(self, _button: w.Button) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.run()
            return
        values = self._checked_values()
        if values is None:
            return
        self._begin(values)  # the button says Stop at once, before the task first runs
        self.task = loop.create_task(self._execute(values))
        self.task.add_done_callback(_retrieve)

    def _checked_values(self) -> dict[str, Any] | None:
        try:
            return self.values()
        except KnobError as exc:
            self.status.value = f"<span style='color:#c62828'>{_escape(str(exc))}</span>"
            return None

    def _trial_count(self) -> int | None:
        return None if self.scenario.open_loop else self.trials.value

    def _begin(self, values: dict[str, Any]) -> None:
        planned = self.scenario.schedule(self.scenario.configure(values)) if self.scenario.open_loop else None
        self.progress.max = max(1, len(planned)) if planned is not None else self.trials.value
        self.progress.value = 0
        self.status.value = "running..."
        self.button.description, self.button.icon, self.button.button_style = "Stop", "stop", "warning"

    def _end(self) -> None:
        self.button.description, self.button.icon, self.button.button_style = "Run", "play", "primary"

    def _progress(self, done: int, total: int, _row: dict[str, Any]) -> None:
        self.progress.value = done

    def _show(self, result: Result) -> None:
        from .plot import outcome_bars

        self.results = (self.results + [result])[-HISTORY:]
        self.status.value = f"{result.n} trials in {result.elapsed_s:.2f} s" + (" (stopped)" if result.cancelled else "")
        labelled = {f"#{i + 1}: {r.config.describe()}": r for i, r in enumerate(self.results)}
        self.output.outputs = ()  # clear_output() would print escape codes outside a kernel
        self.output.append_display_data(HTML(result._repr_html_()))
        self.output.append_display_data(_png(outcome_bars(labelled, title="this form's runs, newest last")))
        if self.show_ladder and result.n:
            self.output.append_display_data(_png(result.ladder()))


def form(scenario: str | Scenario, **kw: Any) -> LabForm:
    """``form("close-basics")`` in a notebook cell shows the scenario's form."""
    return LabForm(scenario, **kw)


def _png(fig: Any) -> Image:
    return Image(data=fig._repr_png_(), format="png")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a failed click task's exception as seen: arun already put it on the status line."""
    if not task.cancelled():
        task.exception()
