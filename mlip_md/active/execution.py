"""Running the campaign's tasks on a ``concurrent.futures.Executor``.

The driver hands every piece of work (a trajectory, a label, a member's
training) to :func:`run_tasks` as a top-level function and a picklable
task, which is all a cluster engine (mpi4py.futures, Parsl, Dask) needs to
take it. The default engine is a local process pool (:func:`local_executor`)
whose workers each use ``threads_per_worker`` threads. When the pool breaks
because a worker died (killed, out of memory), :class:`TaskRunner` starts a
new one and submits the unfinished tasks again.
"""

from __future__ import annotations

import concurrent.futures as futures
import ctypes
import multiprocessing
import os
import signal
import time
from typing import Callable, Optional, Sequence, TypeVar

Task = TypeVar("Task")
PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>
# Pools started again after a worker died, per run_tasks call, before the campaign gives up.
MAX_POOL_RESTARTS = 3


def _die_with_parent(parent: int) -> None:
    """On Linux, asks the kernel to kill this process when the driver ``parent`` dies (even by kill -9),
    and exits at once if it already has: an orphaned worker must not label a configuration that the
    resumed driver submits again, nor wait forever on its own end of the task queue."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):  # not Linux: orphans finish their task and exit
        pass
    if os.getppid() != parent:
        os._exit(1)


def worker_setup(parent: int, threads: int) -> None:
    """Initialiser of a pool worker (a process the campaign owns): death with the driver ``parent``,
    ``threads`` torch and OpenMP threads."""
    _die_with_parent(parent)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by tblite and other OpenMP oracles when they load
    import torch

    torch.set_num_threads(threads)


def local_executor(workers: int, threads_per_worker: int = 1) -> futures.ProcessPoolExecutor:
    """A process pool of ``workers`` processes, started with spawn (no state forked from the driver)."""
    return futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=worker_setup, initargs=(os.getpid(), threads_per_worker))


class TaskRunner:
    """Submits tasks to an executor and restarts a local pool whose worker died.

    ``executor``: an engine the caller owns (left running), or None for a
    local pool made by ``make_pool`` (started lazily, restarted when broken,
    shut down by :meth:`close`).
    """

    def __init__(self, executor: Optional[futures.Executor], make_pool: Callable[[], futures.Executor]):
        self._given, self._make_pool = executor, make_pool
        self._pool: Optional[futures.Executor] = None
        self.waited = 0.0  # s the driver spent waiting for tasks (what run() took, less its callbacks)

    @property
    def executor(self) -> futures.Executor:
        if self._given is not None:
            return self._given
        if self._pool is None:
            self._pool = self._make_pool()
        return self._pool

    def _restart(self) -> None:
        if self._given is not None:
            raise RuntimeError("a worker of the campaign's executor died and it cannot be restarted from here; "
                               "run the campaign again to resume")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def run(self, function: Callable, tasks: Sequence[Task], on_result: Callable[[Task, object], None],
            on_error: Optional[Callable[[Task, BaseException], None]] = None) -> None:
        """Runs ``function(task)`` for every task; ``on_result(task, result)`` as each finishes, in the
        driver's thread. A task that raises goes to ``on_error`` (or the exception propagates)."""
        remaining, restarts, start, in_callbacks = set(range(len(tasks))), 0, time.perf_counter(), 0.0
        while remaining:
            pending = {self.executor.submit(function, tasks[index]): index for index in sorted(remaining)}
            try:
                for future in futures.as_completed(pending):
                    index = pending[future]
                    error = future.exception()
                    if isinstance(error, futures.BrokenExecutor):
                        raise error
                    remaining.discard(index)
                    called = time.perf_counter()
                    if error is None:
                        on_result(tasks[index], future.result())
                    elif on_error is not None:
                        on_error(tasks[index], error)
                    else:
                        raise error
                    in_callbacks += time.perf_counter() - called
            except futures.BrokenExecutor:
                restarts += 1
                if restarts > MAX_POOL_RESTARTS:
                    raise
                self._restart()
        self.waited += time.perf_counter() - start - in_callbacks

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
