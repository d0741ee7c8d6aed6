"""Run a scenario's trials: blocking from plain Python or a notebook cell, awaitable from a
running loop (widgets), with a deadline per trial and teardown whatever happens.

``run("close-basics", 20, {"close.mode": "unread"})`` returns a :class:`~lablib.result.Result`.
Every trial runs under ``asyncio.wait_for(deadline)``; one that passes it becomes a
``timeout`` outcome. When trials run one at a time, each row also carries the kernel counter
deltas of its own trial. A KeyboardInterrupt (Jupyter's stop button) stops the run, tears the
topology down and propagates; :func:`arun`'s task can be cancelled the same way.

Not covered: running a scenario against a remote host (everything binds 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import queue
import sys
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import pandas as pd

from . import kernel
from .capture import Capture, CaptureError, probe
from .knobs import Config, KnobError
from .loops import sleep_until
from .result import Result
from .scenarios import get as get_scenario
from .scenarios.base import Lab, Scenario
from .topology import START_TIMEOUT, Topology
from .trace import Trace, current_trial

__all__ = ["run", "arun", "Progress", "MAX_TRIALS"]

MAX_TRIALS = 100_000
MAX_PARALLEL = 256
#: how long after the run is ready an open-loop workload's clock starts
START_LEAD = 0.05
#: seconds a run may take beyond its trials' deadlines before it is declared stuck
SLACK = 15.0

#: on_progress(done, total, row) after each trial, in the caller's thread
Progress = Callable[[int, int, dict[str, Any]], None]

_DONE = object()
_CANCEL = object()


class _Run:
    def __init__(self, scenario: Scenario, config: Config, trials: int, deadline: float, parallel: int,
                 on_progress: Progress | None, capture: bool = False, starts: list[float] | None = None) -> None:
        self.scenario, self.config, self.trials = scenario, config, trials
        self.starts = starts
        self.deadline, self.parallel, self.on_progress = deadline, parallel, on_progress
        self.capture = capture
        self.inbox: queue.Queue[Any] = queue.Queue()

    def cancel(self) -> None:
        """Stop after the trials under way (thread-safe)."""
        self.inbox.put(_CANCEL)

    def execute(self) -> Result:
        cleanups: list[Callable[[], None]] = []
        try:
            with _steady_timing():
                return self._in_topology(Trace(), cleanups)
        finally:  # after the roles stopped and the clients' threads were joined
            for cleanup in cleanups:
                cleanup()

    def _in_topology(self, trace: Trace, cleanups: list[Callable[[], None]]) -> Result:
        rows: list[dict[str, Any]] = []
        cancelled = False
        started = time.perf_counter()
        sniffer: Capture | None = None
        with Topology(trace) as topo:
            client = topo.loop("client")
            lab = Lab(self.config, trace, topo, self.deadline, cleanups=cleanups)
            client.call(self.scenario.setup(lab), START_TIMEOUT)
            future = None
            try:
                if self.capture:
                    sniffer = Capture(_listening_ports(lab)).start()
                before = kernel.read_counters()
                future = client.submit(self._all_trials(lab))
                budget = math.ceil(self.trials / self.parallel) * (self.deadline + 1.0) + SLACK
                if self.starts:
                    budget += self.starts[-1]
                stop_at = time.monotonic() + budget
                while True:
                    try:
                        item = self.inbox.get(timeout=max(0.0, stop_at - time.monotonic()))
                    except queue.Empty:
                        raise TimeoutError(f"{self.scenario.name}: run exceeded {budget:.0f} s; "
                                           "trials are stuck") from None
                    if item is _DONE:
                        break
                    if item is _CANCEL:
                        cancelled = True
                        break
                    rows.append(item)
                    if self.on_progress:
                        self.on_progress(len(rows), self.trials, item)
            finally:
                if future is not None:
                    future.cancel()
                packets = sniffer.stop() if sniffer is not None else None
            after = kernel.read_counters()
        elapsed = time.perf_counter() - started
        frame = pd.DataFrame(rows).sort_values("trial", ignore_index=True) if rows else pd.DataFrame(
            columns=["trial", "outcome"])
        result = Result(self.scenario.name, self.config, frame, kernel.delta(before, after), elapsed, trace,
                        self.scenario.outcomes, self.deadline, self.parallel, cancelled, packets)
        result.raw_packets = sniffer.packets if sniffer is not None else None
        return result

    async def _all_trials(self, lab: Lab) -> None:
        begin = time.monotonic() + START_LEAD

        async def on_time(index: int) -> None:
            if self.starts is not None:  # an open-loop workload: each trial on its own clock
                await sleep_until(begin + self.starts[index])

        if self.parallel == 1:
            for index in range(self.trials):
                await on_time(index)
                await self._one(lab, index, counters=True)
        else:
            gate = asyncio.Semaphore(self.parallel)

            async def gated(index: int) -> None:
                await on_time(index)
                async with gate:
                    await self._one(lab, index, counters=False)

            await asyncio.gather(*(gated(i) for i in range(self.trials)))
        self.inbox.put(_DONE)

    async def _one(self, lab: Lab, index: int, counters: bool) -> None:
        token = current_trial.set(index)
        before = kernel.read_counters() if counters else None
        started = time.perf_counter()
        row: dict[str, Any]
        try:
            row = dict(await asyncio.wait_for(self.scenario.trial(lab, index), self.deadline))
        except TimeoutError:
            row = {"outcome": "timeout"}
        except Exception as exc:  # a bug in the lab, not a network outcome: keep it visible
            row = {"outcome": "error", "error": f"{type(exc).__name__}: {exc}"}
        finally:
            try:
                current_trial.reset(token)
            except ValueError:  # closed by teardown outside its task's context: nothing to undo
                pass
        row = {"trial": index, "outcome": row.pop("outcome"),
               "duration_ms": round((time.perf_counter() - started) * 1000, 3), **row}
        if before is not None:
            row.update(kernel.delta(before, kernel.read_counters()))
        self.inbox.put(row)


_timing_lock = threading.Lock()
_timing_depth = 0
_saved_switch_interval = 0.005
_saved_threshold = (700, 10, 10)
#: how long a thread may hold the GIL while another waits (CPython's default is 5 ms)
SWITCH_INTERVAL = 0.0005


@contextlib.contextmanager
def _steady_timing() -> Iterator[None]:
    """Keep the interpreter from stalling the roles' loops during a run.

    Roles share one interpreter, so a pause of it is a pause of every role: a timer fires
    late, a race window shifts. Two pauses are large enough to matter: a full (generation 2)
    garbage collection, which walks every object in the process (27 ms was measured in a
    notebook-sized heap), and the 5 ms a thread may wait for another to hand over the GIL.
    So the run starts with one collection and freezes what exists (later collections skip it),
    runs no automatic full collection while it lasts (one came every 15 s or so in a run of
    thousands of requests, 17 ms of every role's time: the young generations are still
    collected, in a millisecond or two), and hands the GIL over every 0.5 ms. All is undone
    when the last run in flight ends.
    """
    global _timing_depth, _saved_switch_interval, _saved_threshold
    with _timing_lock:
        if _timing_depth == 0:
            gc.collect()
            gc.freeze()
            _saved_threshold = gc.get_threshold()
            gc.set_threshold(_saved_threshold[0], _saved_threshold[1], 1_000_000)
            _saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(SWITCH_INTERVAL)
        _timing_depth += 1
    try:
        yield
    finally:
        with _timing_lock:
            _timing_depth -= 1
            if _timing_depth == 0:
                sys.setswitchinterval(_saved_switch_interval)
                gc.set_threshold(*_saved_threshold)
                gc.unfreeze()


def _listening_ports(lab: Lab) -> set[int]:
    """The ports the run's roles listen on: every connection of the run has one at an end."""
    return {role.address[1] for role in lab.roles.values() if getattr(role, "address", None)}


def _prepare(scenario: str | Scenario, trials: int | None, config: Mapping[str, Any] | Config | None,
             deadline: float | None, parallel: int | None, on_progress: Progress | None,
             capture: bool = False) -> _Run:
    sc = get_scenario(scenario) if isinstance(scenario, str) else scenario
    cfg = sc.configure(config)
    starts = sc.schedule(cfg) if sc.open_loop else None
    if starts is not None:
        if trials is not None:
            raise KnobError(f"trials={trials!r}: {sc.name} makes its requests from workload.rate and "
                            f"workload.duration ({len(starts)} with these settings); leave trials out")
        if not starts:
            raise KnobError(f"{sc.name}: no request arrives within workload.duration at workload.rate; "
                            "raise either")
    n = (sc.default_trials if trials is None else trials) if starts is None else len(starts)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TRIALS:
        raise KnobError(f"trials={n!r}: must be a whole number between 1 and {MAX_TRIALS}")
    limit = sc.default_deadline if deadline is None else deadline
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit <= 600:
        raise KnobError(f"deadline={limit!r}: must be a number of seconds above 0 and at most 600")
    width = (MAX_PARALLEL if sc.parallel_ok else 1) if parallel is None else parallel
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise KnobError(f"parallel={width!r}: must be a whole number, 1 or more")
    if width > 1 and not sc.parallel_ok:
        raise KnobError(f"parallel={width}: {sc.name} runs its trials one at a time (each reads the kernel "
                        f"counters); use parallel=1")
    if capture:
        support = probe()
        if not support:
            raise CaptureError(f"capture: {support.reason}")
    return _Run(sc, cfg, n, float(limit), min(width, n, MAX_PARALLEL), on_progress, bool(capture), starts)


def run(scenario: str | Scenario, trials: int | None = None, config: Mapping[str, Any] | Config | None = None,
        *, deadline: float | None = None, parallel: int | None = None,
        on_progress: Progress | None = None, capture: bool = False) -> Result:
    """Run ``trials`` trials of ``scenario`` with knob values ``config``; block until done.
    An open-loop scenario (lab 04) sets its own trials from its workload knobs: leave
    ``trials`` out.

    ``deadline`` is seconds per trial; ``parallel`` how many trials may run side by side
    (scenarios that read counters per trial allow only 1). ``capture=True`` also records the
    packets on loopback (where the machine allows it; see ``python -m lablib doctor``), for
    ``result.packets`` and the ladder. Raises KnobError for a bad setting, CaptureError when
    capture is asked for but impossible, before anything starts.
    """
    return _prepare(scenario, trials, config, deadline, parallel, on_progress, capture).execute()


async def arun(scenario: str | Scenario, trials: int | None = None,
               config: Mapping[str, Any] | Config | None = None, *, deadline: float | None = None,
               parallel: int | None = None, on_progress: Progress | None = None, capture: bool = False) -> Result:
    """:func:`run` for a running event loop (a notebook, a widget callback): awaits the run
    without blocking the loop; ``on_progress`` is called on this loop. Cancelling the task
    stops the run after the trials under way, and tears it down."""
    loop = asyncio.get_running_loop()

    def relay(done: int, total: int, row: dict[str, Any]) -> None:
        if on_progress is not None:
            loop.call_soon_threadsafe(on_progress, done, total, row)

    job = _prepare(scenario, trials, config, deadline, parallel, relay, capture)
    future: asyncio.Future[Result] = loop.create_future()

    def settle(outcome: Result | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(outcome)  # type: ignore[arg-type]

    def work() -> None:  # a thread of its own that ends with the run (no pool left behind)
        try:
            outcome = job.execute()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, outcome, None)

    worker = threading.Thread(target=work, name="lablib-run", daemon=True)
    worker.start()
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        job.cancel()
        await asyncio.wait([future])
        raise
    finally:
        # the run has ended (its result or error is in): the worker only has to return, so
        # this join takes microseconds, and no thread outlives the call
        worker.join(timeout=5)
