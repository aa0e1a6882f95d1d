"""Running the campaign's tasks on the executors of an engine, with retries and draining.

The driver hands every piece of work (a trajectory, a label, a member's
training) to :class:`Scheduler` as a top-level function, a picklable task and
a role (``oracle``, ``sampler``, ``training``); the engine
(:mod:`mlip_md.active.engines`) maps each role to a
``concurrent.futures.Executor``. Results come back through callbacks that run
in the driver's thread, as each task finishes, so labelling can start while
trajectories still run.

A task whose worker the engine lost (killed, out of memory, node failure) is
submitted again, up to ``executor.task_retries`` times. When a drain is
requested (SIGTERM, SIGINT or the walltime, see :class:`DrainRequest`) the
scheduler submits nothing more, cancels the trajectories and trainings, waits
up to ``executor.grace`` s for the labels in flight and raises
:class:`Drained`; the campaign resumes them all from its store.
"""

from __future__ import annotations

import concurrent.futures as futures
import signal
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

from mlip_md.active.engines import Engine

# s between checks of the drain request while the driver waits for tasks.
POLL_INTERVAL = 0.5


class Drained(Exception):
    """The driver stopped early on request (signal or walltime); everything finished is recorded."""


class DrainRequest:
    """Whether the driver should stop: a signal arrived, or the walltime (less ``margin`` s) is reached.

    ``walltime``: s from construction the driver may run (None: no limit).
    :meth:`catch_signals` installs SIGTERM and SIGINT handlers that request a
    drain (process-wide, so only when the caller owns the process: the CLI);
    they are restored by :meth:`restore_signals`.
    """

    def __init__(self, walltime: Optional[float] = None, margin: float = 0.0):
        self.deadline = None if walltime is None else time.monotonic() + walltime - margin
        self.reason: Optional[str] = None
        self._previous: Dict[int, object] = {}

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def requested(self) -> bool:
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "the walltime (executor.walltime less executor.drain_margin) is reached"
        return self.reason is not None

    def seconds_left(self) -> Optional[float]:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def catch_signals(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            self._previous[number] = signal.signal(number, self._on_signal)

    def restore_signals(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _on_signal(self, number: int, frame) -> None:
        self.request(f"received {signal.Signals(number).name}")


@dataclass
class _Submission:
    role: str
    function: Callable
    task: object
    on_result: Callable[[object, object], None]
    on_error: Optional[Callable[[object, BaseException], None]]
    executor: futures.Executor
    retries: int = 0


class Scheduler:
    """Tasks in flight on an :class:`Engine`'s executors, their callbacks, retries and draining."""

    def __init__(self, engine: Engine, task_retries: int, drain: DrainRequest, grace: float,
                 log: Callable[[str], None] = print):
        self.engine, self.task_retries, self.drain, self.grace, self.log = engine, task_retries, drain, grace, log
        self._flight: Dict[futures.Future, _Submission] = {}
        self.waited = 0.0  # s the driver spent waiting for tasks and for the engine to start its pools

    def in_flight(self, role: Optional[str] = None) -> int:
        return sum(role is None or s.role == role for s in self._flight.values())

    def submit(self, role: str, function: Callable, task, on_result: Callable[[object, object], None],
               on_error: Optional[Callable[[object, BaseException], None]] = None) -> None:
        """Runs ``function(task)`` on ``role``'s executor; ``on_result(task, result)`` when it returns, or
        ``on_error(task, error)`` when it raises (without ``on_error`` the error propagates from
        :meth:`wait`). Raises :class:`Drained` instead once a drain was requested."""
        self.stop_if_draining()
        began = time.perf_counter()
        executor = self.engine.executor(role)
        # Waiting for the engine: a pool starts on its first use (a local pool's processes start in the
        # background and are waited for in wait(), a Dask cluster or Parsl interchange here).
        self.waited += time.perf_counter() - began
        self._flight[executor.submit(function, task)] = _Submission(role, function, task, on_result, on_error,
                                                                     executor)

    def run(self, role: str, function: Callable, tasks, on_result, on_error=None) -> None:
        """Submits every task and waits for all of them."""
        for task in tasks:
            self.submit(role, function, task, on_result, on_error)
        self.wait_until(lambda: self.in_flight(role) == 0)

    def wait_until(self, done: Callable[[], bool]) -> None:
        """Handles finished tasks until ``done()`` holds (checked after each)."""
        while not done():
            if not self._flight:  # nothing could ever make done() hold: a bug, not a hang
                self.stop_if_draining()
                raise RuntimeError("the campaign waits for tasks, but none is in flight")
            self.wait()

    def wait(self) -> None:
        """Waits for at least one task to finish (or the next drain check) and handles what finished."""
        self.stop_if_draining()
        if not self._flight:
            return
        began, left = time.perf_counter(), self.drain.seconds_left()
        timeout = POLL_INTERVAL if left is None else min(POLL_INTERVAL, left + 0.01)
        finished, _ = futures.wait(list(self._flight), timeout=timeout, return_when=futures.FIRST_COMPLETED)
        self.waited += time.perf_counter() - began
        for future in finished:
            self._finish(future)

    def _finish(self, future: futures.Future) -> None:
        submission = self._flight.pop(future)
        error = future.exception() if not future.cancelled() else futures.CancelledError()
        if error is not None and self.engine.is_lost_worker(error) and submission.retries < self.task_retries:
            self._resubmit(submission, error)
        elif error is None:
            submission.on_result(submission.task, future.result())
        elif submission.on_error is not None:
            submission.on_error(submission.task, error)
        else:
            raise error

    def _resubmit(self, submission: _Submission, error: BaseException) -> None:
        if self.engine.executor(submission.role) is submission.executor:
            self.engine.replace(submission.role)  # once per broken pool: later failures of it find the new one
        self.log(f"a {submission.role} worker was lost ({type(error).__name__}: {error}); running its task again "
                 f"(retry {submission.retries + 1} of {self.task_retries})")
        executor = self.engine.executor(submission.role)
        submission.executor, submission.retries = executor, submission.retries + 1
        self._flight[executor.submit(submission.function, submission.task)] = submission

    def stop_if_draining(self) -> None:
        """Drains (and raises :class:`Drained`) if a drain was requested; else returns."""
        if self.drain.requested():
            self._drain()

    def _drain(self) -> None:
        """Cancels all but the labels, waits up to ``grace`` s for those, then raises :class:`Drained`."""
        reason = self.drain.reason
        for future, submission in list(self._flight.items()):
            if submission.role != "oracle":
                future.cancel()
                del self._flight[future]
        labels = self.in_flight("oracle")
        if labels:
            self.log(f"draining ({reason}): waiting up to {self.grace:g} s for {labels} label(s) in flight")
        deadline = time.monotonic() + self.grace
        while self._flight and time.monotonic() < deadline:
            finished, _ = futures.wait(list(self._flight), timeout=min(POLL_INTERVAL, deadline - time.monotonic()),
                                       return_when=futures.FIRST_COMPLETED)
            for future in finished:
                submission = self._flight.pop(future)
                if not future.cancelled() and future.exception() is None:
                    submission.on_result(submission.task, future.result())
        unfinished = len(self._flight)
        for future in self._flight:
            future.cancel()
        self._flight.clear()
        raise Drained(f"{reason}; {labels - unfinished} of {labels} label(s) in flight finished within the grace "
                      f"period, {unfinished} stay pending for the next run")
