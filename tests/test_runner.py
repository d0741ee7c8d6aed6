"""The runner: every trial has a deadline, a bug is visible, an interrupt tears everything down."""

import asyncio
import subprocess
import sys
import textwrap

import pytest

import lablib
from lablib.knobs import KnobError, choice
from lablib.scenarios.base import Scenario


class Stuck(Scenario):
    """A scenario whose trials can hang, fail, or return at once."""

    name = "stuck"
    knobs = (choice("trial.does", "hang", ("hang", "fail", "return"), "what each trial does"),)
    outcomes = ("done",)
    parallel_ok = True

    async def setup(self, lab):
        pass

    async def trial(self, lab, index):
        does = lab.config["trial.does"]
        if does == "hang":
            await asyncio.Event().wait()
        if does == "fail":
            raise RuntimeError("the lab itself broke")
        return {"outcome": "done"}


def test_a_trial_that_passes_its_deadline_is_a_timeout_outcome_not_a_hung_cell():
    result = lablib.run(Stuck(), 3, deadline=0.2, parallel=1)
    assert result.outcomes == {"done": 0, "timeout": 3}
    assert result.elapsed_s < 3


def test_parallel_trials_share_the_deadline_budget():
    result = lablib.run(Stuck(), 20, deadline=0.3, parallel=20)
    assert result.count("timeout") == 20 and result.elapsed_s < 3


def test_a_bug_in_a_trial_is_an_error_outcome_with_its_message():
    result = lablib.run(Stuck(), 2, {"trial.does": "fail"})
    assert result.outcomes["error"] == 2
    assert result.errors == ["RuntimeError: the lab itself broke"] * 2
    assert "error: RuntimeError" in result.summary()


def test_json_has_the_documented_keys():
    data = lablib.run(Stuck(), 4, {"trial.does": "return"}).to_dict()
    for key in ("scenario", "config", "trials", "outcomes", "kernel", "elapsed_s"):
        assert key in data
    assert data["trials"] == 4 and data["outcomes"] == {"done": 4}
    assert set(data["kernel"]) == {"OutRsts", "EstabResets", "TCPAbortOnClose", "TCPAbortOnData"}


@pytest.mark.parametrize("kwargs, words", [
    ({"trials": 0}, "trials=0"), ({"trials": 1.5}, "trials=1.5"), ({"deadline": -1}, "deadline=-1"),
    ({"parallel": 0}, "parallel=0"), ({"config": {"nope": 1}}, "unknown knob 'nope'"),
])
def test_bad_settings_fail_before_anything_starts(kwargs, words):
    with pytest.raises(KnobError, match=words):
        lablib.run("close-basics", **{"trials": 1, **kwargs})


def test_unknown_scenario_lists_the_valid_ones():
    with pytest.raises(KnobError, match="unknown scenario 'nope'; choose one of close-basics"):
        lablib.run("nope")


def test_keyboard_interrupt_mid_run_tears_everything_down():
    def interrupt(done, total, row):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lablib.run("close-basics", 50, {"close.mode": "unread"}, on_progress=interrupt)
    # the autouse fixture checks that no topology, loop thread or socket is left


def test_ctrl_c_in_a_plain_python_program_stops_cleanly():
    script = textwrap.dedent("""
        import os, signal, threading, lablib
        from lablib import sockets
        # as in a terminal (a shell starts a background job with SIGINT ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        def interrupt(done, total, row):
            if done == 2:
                os.kill(os.getpid(), signal.SIGINT)
        try:
            lablib.run("close-basics", 10_000, {"wire.delay": 0.01}, on_progress=interrupt)
        except KeyboardInterrupt:
            left = [t.name for t in threading.enumerate() if t.name.startswith("lablib")]
            print("interrupted; threads left:", left, "sockets left:", len(sockets._open))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "interrupted; threads left: [] sockets left: 0", out.stderr


def test_arun_can_be_cancelled_and_stops_the_run():
    async def main():
        task = asyncio.ensure_future(lablib.arun("close-basics", 10_000, {"wire.delay": 0.01}))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_arun_reports_progress_on_the_callers_loop():
    seen = []

    async def main():
        loop = asyncio.get_running_loop()

        def progress(done, total, row):
            assert asyncio.get_running_loop() is loop
            seen.append(done)

        result = await lablib.arun("close-basics", 5, on_progress=progress)
        await asyncio.sleep(0)
        return result

    result = asyncio.run(main())
    assert result.n == 5 and seen == [1, 2, 3, 4, 5]
