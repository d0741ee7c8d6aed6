"""The form is thin wiring over run(): it works without a kernel, a click is a run."""

import asyncio

import ipywidgets as w
import pytest

from lablib.knobs import KnobError
from lablib.scenarios import get
from lablib.widgets import control_for, form


def test_each_knob_kind_gets_a_fitting_control():
    knobs = {k.name: k for k in get("close-basics").knobs}
    assert isinstance(control_for(knobs["close.mode"]), w.Dropdown)
    assert isinstance(control_for(knobs["client.writes_after_end"]), w.BoundedIntText)
    delay = control_for(knobs["wire.delay"])
    assert isinstance(delay, w.Text) and delay.value == "0s"


def test_a_click_without_a_running_loop_runs_and_shows_the_result():
    f = form("close-basics", trials=4, values={"close.mode": "unread"})
    f.button.click()
    assert f.result.outcomes["econnreset"] == 4
    assert f.progress.value == 4 and "4 trials" in f.status.value
    kinds = [set(o["data"]) for o in f.output.outputs]
    assert "text/html" in kinds[0] and "image/png" in kinds[1] and "image/png" in kinds[2]


def test_runs_accumulate_for_comparison():
    f = form("close-basics", trials=2, ladder=False)
    for mode in ("drained", "unread", "linger0"):
        f.controls["close.mode"].value = mode
        f.run()
    assert [r.config["close.mode"] for r in f.results] == ["drained", "unread", "linger0"]


def test_a_bad_value_is_reported_on_the_status_line_and_nothing_runs():
    f = form("close-basics", trials=2)
    f.controls["wire.delay"].value = "-5ms"
    assert f.run() is None and f.result is None
    assert "wire.delay" in f.status.value and "out of range" in f.status.value


def test_units_typed_in_text_boxes_are_understood():
    f = form("close-basics", trials=2)
    f.controls["wire.delay"].value = "5ms"
    f.controls["client.request_bytes"].value = "2KiB"
    assert f.values()["wire.delay"] == 0.005 and f.values()["client.request_bytes"] == 2048


def test_in_a_running_loop_a_click_starts_a_task_and_a_second_click_stops_it():
    async def main():
        f = form("close-basics", trials=10_000, values={"wire.delay": 0.01})
        f.button.click()
        assert f.task is not None and f.button.description == "Stop"
        await asyncio.sleep(0.3)
        f.button.click()
        with pytest.raises(asyncio.CancelledError):
            await f.task
        assert f.status.value == "stopped" and f.button.description == "Run"

    asyncio.run(main())


def test_a_form_for_an_unknown_knob_fails_with_the_knob_error():
    with pytest.raises(KnobError, match="unknown knob 'close.mod'"):
        form("close-basics", knobs=["close.mod"])


def test_an_open_loop_lab_has_no_trials_box_its_workload_sets_the_requests():
    f = form("upstream-reuse", ladder=False, values={"workload.duration": 0.5, "workload.rate": 40})
    assert f.trials.layout.display == "none"
    assert isinstance(f.controls["workload.rate"], w.Text)  # a number knob: typed, checked on Run
    f.run()
    assert f.progress.max == f.result.n == f.progress.value > 0
