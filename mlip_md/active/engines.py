"""Where the campaign's tasks run: thin adapters from ``executor.kind`` to real engines.

The driver asks an :class:`Engine` for the executor of a role (``oracle``,
``sampler``, ``training``) and submits top-level functions to it; every future
it gets back is a ``concurrent.futures.Future`` (``wait`` and ``as_completed``
work, ``cancel`` returns a bool). Roles whose pool settings are equal
(``ExecutorConfig.pool(role)``: ``workers``, ``threads_per_worker``,
``options``, after the role's overrides) share one pool and one executor;
roles whose settings differ get pools of their own, named by their roles
(``oracle``, ``sampler+training``). A pool starts on the first
:meth:`Engine.executor` call of one of its roles; :func:`open_engine` only
checks the options and imports, so a bad setting fails before any work.
:meth:`Engine.close` shuts down what the engine started, and nothing else.

Every worker that an engine starts belongs to the campaign and runs one task
at a time as a serial process: ``threads_per_worker`` torch threads and
``OMP_NUM_THREADS`` (for OpenMP oracles such as tblite), and ASE's MPI
``world`` made a single process (:func:`serial_ase`). The last matters in
MPI pools, where ASE's ``world`` is mpi4py's ``COMM_WORLD``: the pool's
spawned workers, or the driver and every worker (static). ASE's Langevin and
Maxwell–Boltzmann draw their random numbers on rank 0 of ``world`` and
broadcast them, and ``ase.io``/``ase.db`` read and write collectively unless
told ``parallel=False``/``serial=True``: trajectories would get each other's
noise (measured: a worker's Langevin step failed on another worker's array
shape), or hang.

A worker the engine loses while it runs a task (killed, out of memory, node
gone) is reported by :meth:`Engine.is_lost_worker`; the driver then submits
the task again, up to ``executor.task_retries`` times. That is the one retry
mechanism under every engine: Parsl runs with ``retries=0`` (its retries would
also rerun tasks that raised) and the Dask clusters started here with
``distributed.scheduler.allowed-failures`` 0.

Kinds and their ``options`` (per role through ``executor.<role>.options``;
unknown keys are refused)
----------------------------------------------------------------------------

``local`` (default): no options. A process pool (spawn context) of
``workers`` processes on this machine. Each worker also keeps freed memory for
reuse (:func:`mlip_md.tuning.keep_freed_memory`) and dies with the driver
(Linux). Lost worker: the pool breaks (``BrokenProcessPool`` for every task in
flight on it); :meth:`Engine.replace` drops it and the next task starts a
fresh pool.

``mpi``: ``mpi4py.futures.MPIPoolExecutor`` (``pip install 'mlip_md[mpi]'``,
or mpi4py built against the cluster's MPI). Two ways to start the driver:

* as usual (``mlip-md campaign ...``): each pool spawns ``workers`` MPI
  processes (``MPI_Comm_spawn``). MPICH's singleton start runs ``mpiexec``,
  so it must be on ``PATH`` (activate the venv that has the mpich wheel, or
  ``module load`` the MPI that mpi4py was built with).
* ``mpiexec -n N+1 python -m mpi4py.futures -m mlip_md campaign ...``: the
  driver is rank 0 and the other N ranks are one shared pool of workers,
  which every role uses. Separate pools are not possible there: every role
  must have the same settings, and ``workers`` is not used (N is). ASE's
  ``world`` of the driver is made a single process too (the other ranks never
  take part in its collectives: a plain ``ase.io.read`` would hang), until
  :meth:`Engine.close`.

  ``executor_options``: keyword arguments of ``MPIPoolExecutor``
  (``python_exe``, ``python_args``, ``mpi_info``, ``path``, ``wdir``,
  ``env``, ``use_pkl5``, ...); not ``max_workers``, ``initializer``,
  ``initargs``, which the engine sets. ``main`` is false unless given: the
  workers do not run the driver's ``__main__`` (a script without an
  ``if __name__ == "__main__"`` guard would start a campaign in every worker).

Lost worker: an MPI process that dies makes the process manager abort the
whole job, the driver included (measured with the mpich wheel: the driver is
killed by SIGKILL within a second, spawned or static, and with spawned pools
so is every process of the driver's process group, e.g. the shell script
that started it; mpi4py raises nothing the driver could see).
:meth:`Engine.is_lost_worker` is always False; run the campaign again, it
resumes from its store.

``parsl`` (``pip install 'mlip_md[parsl]'``): one ``HighThroughputExecutor``
per pool, labelled by its roles, with ``max_workers_per_node = workers``, in
one ``DataFlowKernel`` of the engine's own (``parsl.load``'s process-wide
kernel is left alone) whose run directory is ``ENGINE_DIR/parsl``. Parsl's
``interchange.py`` (and, with the local provider, ``process_worker_pool.py``)
must be on ``PATH``: activate the venv. Options:

* ``provider``: ``local`` (default, ``LocalProvider``: this machine),
  ``slurm`` (``SlurmProvider``), ``pbspro`` (``PBSProProvider``), or
  ``module:Class`` for any Parsl provider.
* ``provider_options``: keyword arguments of the provider, checked against
  its signature: ``partition``, ``account``, ``queue``, ``nodes_per_block``,
  ``init_blocks``, ``min_blocks``, ``max_blocks``, ``walltime``
  (``"HH:MM:SS"``), ``scheduler_options`` (extra ``#SBATCH``/``#PBS``
  lines), ``worker_init`` (shell lines run before the workers start: activate
  the venv there), ``launcher``, ... ``launcher`` is a name (``single_node``,
  ``simple``, ``srun``, ``srun_mpi``, ``aprun``, ``jsrun``, ``mpiexec``,
  ``mpirun``, ``gnu_parallel``), ``module:Class``, or a mapping with ``name``
  and the launcher's keyword arguments (``{name: srun, overrides:
  "--cpu-bind=cores"}``).
* ``executor_options``: keyword arguments of ``HighThroughputExecutor``
  (``cores_per_worker``, ``mem_per_worker`` (GB), ``heartbeat_period``,
  ``heartbeat_threshold`` (s), ``address``, ``cpu_affinity``,
  ``available_accelerators``, ``worker_logdir_root``, ...); not ``label``,
  ``provider``, ``max_workers_per_node``, which the engine sets.

Lost worker: ``WorkerLost`` (a worker process died: reported within
``heartbeat_period`` s, 30 by default, and its manager starts a new one) or
``ManagerLost`` (a node's manager missed heartbeats for
``heartbeat_threshold`` s, 120 by default). Parsl cannot cancel a task: a
cancelled future's task still runs to its end and its result is dropped.

``dask`` (``pip install 'mlip_md[dask]'``): one ``distributed.Client`` per
pool (never the process's default client); tasks are submitted ``pure=False``.
Options:

* ``address``: the scheduler of a running Dask cluster
  (``tcp://host:8786``); the engine closes only its client, and that
  scheduler's own ``allowed-failures`` applies (KilledWorker after them).
  Its workers get the pool's threads and serial ASE like the others.
* ``cluster``: ``local`` (default: ``LocalCluster(n_workers=workers,
  threads_per_worker=1, processes=True)``, spill files in
  ``ENGINE_DIR/dask``) or ``module:Class`` of a cluster manager
  (``dask_jobqueue:SLURMCluster``, ``dask_jobqueue:PBSCluster``, ...).
* ``cluster_options``: keyword arguments of the cluster class (for
  ``local``: not ``n_workers``, ``threads_per_worker``, ``processes``).
* ``scale``: keyword arguments of ``cluster.scale`` (``{jobs: 2}``,
  ``{n: 64}``); default ``{n: workers}`` for a ``module:Class`` cluster.
* ``adapt``: keyword arguments of ``cluster.adapt`` (``{minimum_jobs: 0,
  maximum_jobs: 8}``), instead of ``scale``.

``threads_per_worker`` is the torch/OpenMP thread count of a task; a Dask
worker runs one task at a time only with one Dask thread per worker (the
local cluster's setting; for a jobqueue cluster give ``processes`` equal to
``cores``). Freed memory is returned to the system as Dask expects (its
memory manager restarts workers by resident size). Lost worker:
``KilledWorker`` (the worker died while running the task; the nanny starts a
new one).

``ENGINE_DIR`` is the ``run_directory`` given to :func:`open_engine` (the
campaign's ``DIR/engine``).

Examples
--------

Parsl on Slurm: labels on one partition, MD and training on another::

    executor:
      kind: parsl
      workers: 32                  # worker processes per node
      threads_per_worker: 1
      options:
        provider: slurm
        provider_options:
          partition: cpu
          account: my_account
          nodes_per_block: 1
          init_blocks: 0
          max_blocks: 4
          walltime: "04:00:00"
          launcher: srun
          worker_init: "source $HOME/mlip_md/.venv/bin/activate"
      oracle:
        workers: 4
        threads_per_worker: 8
        options: {provider_options: {partition: dft, max_blocks: 16}}

Parsl on PBS Pro::

    executor:
      kind: parsl
      workers: 64
      options:
        provider: pbspro
        provider_options:
          account: my_account
          queue: workq
          cpus_per_node: 64
          select_options: "mpiprocs=64"
          nodes_per_block: 1
          max_blocks: 8
          walltime: "02:00:00"
          launcher: mpiexec
          worker_init: "cd $PBS_O_WORKDIR; source .venv/bin/activate"

Dask with dask-jobqueue on Slurm (one single-threaded worker per core)::

    executor:
      kind: dask
      options:
        cluster: dask_jobqueue:SLURMCluster
        cluster_options:
          queue: cpu
          account: my_account
          cores: 32
          processes: 32
          memory: "128GB"
          walltime: "04:00:00"
          job_script_prologue: ["source $HOME/mlip_md/.venv/bin/activate"]
        adapt: {minimum_jobs: 0, maximum_jobs: 8}
"""

from __future__ import annotations

import atexit
import concurrent.futures as futures
import ctypes
import importlib
import inspect
import json
import multiprocessing
import os
import shutil
import signal
import sys
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from mlip_md.active.config import ROLES, ExecutorConfig
from mlip_md.tuning import keep_freed_memory

PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>

# The options each kind takes (see the module docstring).
OPTIONS = {
    "local": (),
    "mpi": ("executor_options",),
    "parsl": ("provider", "provider_options", "executor_options"),
    "dask": ("address", "cluster", "cluster_options", "scale", "adapt"),
}
EXTRAS = {"mpi": ("mpi4py", "mpi"), "parsl": ("parsl", "parsl"), "dask": ("distributed", "dask")}
PARSL_PROVIDERS = {"local": "parsl.providers:LocalProvider", "slurm": "parsl.providers:SlurmProvider",
                   "pbspro": "parsl.providers:PBSProProvider"}
PARSL_LAUNCHERS = {"single_node": "SingleNodeLauncher", "simple": "SimpleLauncher", "srun": "SrunLauncher",
                   "srun_mpi": "SrunMPILauncher", "aprun": "AprunLauncher", "jsrun": "JsrunLauncher",
                   "mpiexec": "MpiExecLauncher", "mpirun": "MpiRunLauncher", "gnu_parallel": "GnuParallelLauncher"}
# Keyword arguments that the engine sets itself, per engine class.
MPI_RESERVED = ("max_workers", "initializer", "initargs")
HTEX_RESERVED = ("label", "provider", "max_workers_per_node")
LOCAL_CLUSTER_RESERVED = ("n_workers", "threads_per_worker", "processes")


class EngineError(RuntimeError):
    """An engine that cannot run as configured: a missing optional package, a bad option, a missing program."""


# -- in the workers ------------------------------------------------------------------------------------------

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


def serial_ase() -> None:
    """Makes ASE's MPI ``world`` in this process a single process (``ase.parallel.DummyMPI``).

    Every ASE default that names ``world`` (Langevin's and Maxwell–Boltzmann's
    broadcast of random numbers, collective ``ase.io`` and ``ase.db``) then
    stays inside this process, whatever mpi4py's ``COMM_WORLD`` is. For
    processes the campaign owns: a worker runs a task alone.
    """
    import ase.parallel

    ase.parallel.world.comm = ase.parallel.DummyMPI()  # the object that `from ase.parallel import world` gave


def _set_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by tblite and other OpenMP oracles when they load
    import torch

    torch.set_num_threads(threads)


def worker_setup(parent: int, threads: int) -> None:
    """Initialiser of a local pool worker (a process the campaign owns): death with the driver ``parent``,
    SIGINT ignored, ``threads`` torch and OpenMP threads, freed memory kept for reuse, ASE serial."""
    _die_with_parent(parent)
    # Ctrl-C reaches the whole process group: the driver drains, and its workers must finish their labels.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_threads(threads)
    keep_freed_memory()
    serial_ase()


def local_executor(workers: int, threads_per_worker: int = 1) -> futures.ProcessPoolExecutor:
    """A process pool of ``workers`` processes, started with spawn (no state forked from the driver)."""
    return futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=worker_setup, initargs=(os.getpid(), threads_per_worker))


@dataclass(frozen=True)
class WorkerSettings:
    """How :func:`run_task` sets up a worker process of a cluster engine."""

    threads: int  # torch and OpenMP threads
    keep_freed_memory: bool  # mlip_md.tuning.keep_freed_memory (not under Dask: its memory manager reads RSS)


_applied: Optional[WorkerSettings] = None  # this worker process's settings, once a task applied them


def run_task(settings: WorkerSettings, function: Callable, *args, **kwargs):
    """``function(*args, **kwargs)`` in a worker of a cluster engine, set up by ``settings`` first (once
    per worker process: again only if a task brings other settings): threads, ASE serial, memory."""
    global _applied
    if _applied != settings:
        _set_threads(settings.threads)
        serial_ase()
        if settings.keep_freed_memory:
            keep_freed_memory()
        _applied = settings
    return function(*args, **kwargs)


# -- in the driver -------------------------------------------------------------------------------------------

class SetUpExecutor(futures.Executor):
    """Submits ``run_task(settings, fn, ...)`` to ``pool`` (an executor whose futures are
    ``concurrent.futures`` ones); :meth:`shutdown` shuts ``pool`` down."""

    def __init__(self, pool: futures.Executor, settings: WorkerSettings):
        self.pool, self.settings = pool, settings

    def submit(self, fn, /, *args, **kwargs) -> futures.Future:
        return self.pool.submit(run_task, self.settings, fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if "cancel_futures" in inspect.signature(self.pool.shutdown).parameters:
            self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        else:  # Dask's ClientExecutor, whose shutdown(wait=False) cancels
            self.pool.shutdown(wait=wait)


def _chained(source: futures.Future) -> futures.Future:
    """A plain future that takes ``source``'s outcome; cancelling it leaves ``source`` running."""
    target: futures.Future = futures.Future()

    def transfer(done: futures.Future) -> None:
        if not target.set_running_or_notify_cancel():  # cancelled by the driver: drop the outcome
            return
        error = done.exception()
        if error is None:
            target.set_result(done.result())
        else:
            target.set_exception(error)

    source.add_done_callback(transfer)
    return target


class ParslExecutor(futures.Executor):
    """The ``concurrent.futures`` face of one Parsl executor (``label``) of ``dfk``.

    ``submit`` returns a plain future chained to Parsl's ``AppFuture`` (whose
    ``cancel`` raises NotImplementedError): cancelling it drops the result.
    """

    def __init__(self, dfk, label: str, settings: WorkerSettings):
        from parsl.app.python import PythonApp

        self._app = PythonApp(run_task, data_flow_kernel=dfk, executors=[label])
        self.settings = settings
        self._futures: "weakref.WeakSet[futures.Future]" = weakref.WeakSet()

    def submit(self, fn, /, *args, **kwargs) -> futures.Future:
        future = _chained(self._app(self.settings, fn, *args, **kwargs))
        self._futures.add(future)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancels (``cancel_futures``) or waits for (``wait``) this executor's futures; the Parsl
        executor itself stops with its engine."""
        unfinished = [future for future in list(self._futures) if not future.done()]
        if cancel_futures:
            for future in unfinished:
                future.cancel()
        if wait:
            futures.wait(unfinished)


def _pool_labels(config: ExecutorConfig) -> Dict[str, str]:
    """role → the label of its pool: the roles with equal settings joined by '+' (``sampler+training``)."""
    groups: Dict[str, list] = {}
    for role in ROLES:
        groups.setdefault(json.dumps(config.pool(role), sort_keys=True, default=repr), []).append(role)
    return {role: "+".join(roles) for roles in groups.values() for role in roles}


class Engine:
    """Executors for the campaign's roles (see the module docstring); made by :func:`open_engine`."""

    kind = ""

    def __init__(self, config: ExecutorConfig, run_directory: str):
        self.config, self.run_directory = config, run_directory
        self.labels = _pool_labels(config)  # role → pool label
        self.settings = {label: config.pool(role) for role, label in self.labels.items()}  # pool label → settings
        self._pools: Dict[str, futures.Executor] = {}  # pool label → its executor, once started
        self._closed = False

    def executor(self, role: str) -> futures.Executor:
        """The executor of ``role``'s pool, started on first use."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if self._closed:
            raise EngineError(f"the {self.kind} engine is closed")
        label = self.labels[role]
        if label not in self._pools:
            self._pools[label] = self._start(label, self.settings[label])
        return self._pools[label]

    def is_lost_worker(self, error: BaseException) -> bool:
        """Whether ``error`` (a task's exception) says the engine lost the worker that ran the task."""
        return False

    def replace(self, role: str) -> None:
        """Drops ``role``'s pool if a lost worker broke it, so that the next :meth:`executor` starts a new
        one; nothing where the engine recovers by itself."""

    def close(self, wait: bool = True) -> None:
        """Shuts down what the engine started; ``wait``: for the tasks in flight (else they are cancelled)."""
        pools, self._pools, self._closed = self._pools, {}, True
        for label, executor in pools.items():
            self._stop(label, executor, wait)
        self._finish(wait)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exception) -> None:
        self.close()

    def _start(self, label: str, settings: Dict[str, Any]) -> futures.Executor:
        raise NotImplementedError

    def _stop(self, label: str, executor: futures.Executor, wait: bool) -> None:
        executor.shutdown(wait=wait, cancel_futures=not wait)

    def _finish(self, wait: bool) -> None:
        """Shuts down what the pools share (after every pool's :meth:`_stop`)."""


class LocalEngine(Engine):
    kind = "local"

    def _start(self, label: str, settings: Dict[str, Any]) -> futures.Executor:
        return local_executor(settings["workers"], settings["threads_per_worker"])

    def is_lost_worker(self, error: BaseException) -> bool:
        return isinstance(error, futures.BrokenExecutor)

    def replace(self, role: str) -> None:
        pool = self._pools.pop(self.labels[role], None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _stop(self, label: str, executor: futures.Executor, wait: bool) -> None:
        processes = list((getattr(executor, "_processes", None) or {}).values())  # shutdown forgets them
        executor.shutdown(wait=wait, cancel_futures=not wait)
        if not wait:
            # Running tasks would otherwise hold the driver's exit until they end (the pool joins its
            # workers at exit); what they were doing is resumed from the store.
            for process in processes:
                process.terminate()


class MPIEngine(Engine):
    kind = "mpi"

    def __init__(self, config: ExecutorConfig, run_directory: str):
        super().__init__(config, run_directory)
        from mpi4py import MPI

        self.static = MPI.COMM_WORLD.Get_size() > 1  # under `python -m mpi4py.futures`
        self._driver_world = None  # ASE's world object of the driver before serial_ase(), static only
        if self.static:
            if len(set(self.labels.values())) > 1:
                raise EngineError(
                    "executor.kind mpi under `python -m mpi4py.futures` has one shared pool of workers (the world's "
                    f"ranks but 0): every role must have the same settings, but the pools differ ({_describe(self)}); "
                    "drop the per-role overrides, or start the driver without mpiexec so that each pool is spawned")
            import ase.parallel

            self._driver_world = ase.parallel.world.comm
            serial_ase()
        elif shutil.which("mpiexec") is None:
            raise EngineError("executor.kind mpi spawns its workers through mpiexec, which is not on PATH: activate "
                              "the virtual environment that has the mpich wheel (source .venv/bin/activate), or "
                              "`module load` the MPI that mpi4py was built with")

    def _start(self, label: str, settings: Dict[str, Any]) -> futures.Executor:
        from mpi4py.futures import MPIPoolExecutor

        options = {"main": False, **settings["options"].get("executor_options", {})}
        if not self.static:
            options["max_workers"] = settings["workers"]
        return SetUpExecutor(MPIPoolExecutor(**options), WorkerSettings(settings["threads_per_worker"], True))

    def _finish(self, wait: bool) -> None:
        if self._driver_world is not None:
            import ase.parallel

            ase.parallel.world.comm, self._driver_world = self._driver_world, None


class ParslEngine(Engine):
    kind = "parsl"

    def __init__(self, config: ExecutorConfig, run_directory: str):
        super().__init__(config, run_directory)
        self._dfk = None
        for settings in self.settings.values():  # everything Parsl would refuse, before it starts anything
            options = settings["options"]
            _parsl_provider(options)
            _check_keywords(_load("parsl.executors:HighThroughputExecutor", "parsl"),
                            options.get("executor_options", {}), "executor.options.executor_options",
                            HTEX_RESERVED)
            programs = ["interchange.py"] + (["process_worker_pool.py"]
                                             if options.get("provider", "local") == "local" else [])
            missing = [program for program in programs if shutil.which(program) is None]
            if missing:
                raise EngineError(f"executor.kind parsl needs Parsl's {' and '.join(missing)} on PATH: activate the "
                                  "virtual environment that has parsl (source .venv/bin/activate)")

    def _start(self, label: str, settings: Dict[str, Any]) -> futures.Executor:
        from parsl.config import Config
        from parsl.dataflow.dflow import DataFlowKernel
        from parsl.executors import HighThroughputExecutor

        options = settings["options"]
        executor = HighThroughputExecutor(label=label, provider=_parsl_provider(options),
                                          max_workers_per_node=settings["workers"],
                                          **options.get("executor_options", {}))
        if self._dfk is None:
            os.makedirs(self.run_directory, exist_ok=True)
            self._dfk = DataFlowKernel(Config(executors=[executor], retries=0,
                                              run_dir=os.path.join(self.run_directory, "parsl")))
            # Parsl only warns at exit: a driver that ends without close() would leave the
            # interchanges and workers running, and wait on them.
            atexit.register(self.close, False)
        else:
            self._dfk.add_executors([executor])
        return ParslExecutor(self._dfk, label, WorkerSettings(settings["threads_per_worker"], True))

    def is_lost_worker(self, error: BaseException) -> bool:
        from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

        return isinstance(error, (WorkerLost, ManagerLost))

    def _finish(self, wait: bool) -> None:
        if self._dfk is not None:
            self._dfk.cleanup()  # stops the interchanges and the workers' blocks (jobs)
            self._dfk = None
            atexit.unregister(self.close)


class DaskEngine(Engine):
    kind = "dask"

    def __init__(self, config: ExecutorConfig, run_directory: str):
        super().__init__(config, run_directory)
        self._clients: Dict[str, Tuple[Any, Any]] = {}  # pool label → (client, the cluster started here or None)
        for settings in self.settings.values():
            _dask_cluster_class(settings["options"])

    def _start(self, label: str, settings: Dict[str, Any]) -> futures.Executor:
        import dask
        from distributed import Client

        options, cluster = settings["options"], None
        if "address" in options:
            client = Client(options["address"], set_as_default=False)
        else:
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # the driver retries
                cluster = self._cluster(options, settings["workers"])
            client = Client(cluster, set_as_default=False)
        self._clients[label] = (client, cluster)
        return SetUpExecutor(client.get_executor(pure=False), WorkerSettings(settings["threads_per_worker"], False))

    def _cluster(self, options: Dict[str, Any], workers: int):
        cls, keywords = _dask_cluster_class(options), dict(options.get("cluster_options", {}))
        try:
            if options.get("cluster", "local") == "local":
                keywords.setdefault("local_directory", os.path.join(self.run_directory, "dask"))
                cluster = cls(n_workers=workers, threads_per_worker=1, processes=True, **keywords)
            else:
                cluster = cls(**keywords)
        except TypeError as error:
            raise EngineError(f"executor.options.cluster_options: {cls.__name__} refused them: {error}") from error
        if "adapt" in options:
            cluster.adapt(**options["adapt"])
        elif "scale" in options or options.get("cluster", "local") != "local":
            cluster.scale(**options.get("scale", {"n": workers}))
        return cluster

    def is_lost_worker(self, error: BaseException) -> bool:
        from distributed import KilledWorker

        return isinstance(error, KilledWorker)

    def _stop(self, label: str, executor: futures.Executor, wait: bool) -> None:
        super()._stop(label, executor, wait)  # the ClientExecutor: waits for, or cancels, its futures
        client, cluster = self._clients.pop(label)
        client.close()
        if cluster is not None:
            cluster.close()


class GivenEngine(Engine):
    """Every role on an executor that the caller owns (never shut down here)."""

    kind = "given"

    def __init__(self, executor: futures.Executor):
        self.given, self._closed = executor, False
        self.labels, self.settings = {role: "given" for role in ROLES}, {}

    def executor(self, role: str) -> futures.Executor:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        return self.given

    def is_lost_worker(self, error: BaseException) -> bool:
        """Parsl's and Dask's lost workers, if the caller's executor is theirs (a broken process pool is
        not: it cannot be restarted from here)."""
        lost = []
        if "parsl.executors.high_throughput.errors" in sys.modules:
            from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

            lost += [WorkerLost, ManagerLost]
        if "distributed" in sys.modules:
            from distributed import KilledWorker

            lost.append(KilledWorker)
        return isinstance(error, tuple(lost))

    def close(self, wait: bool = True) -> None:
        self._closed = True


ENGINES = {"local": LocalEngine, "mpi": MPIEngine, "parsl": ParslEngine, "dask": DaskEngine}


def _describe(engine: Engine) -> str:
    return "; ".join(f"{label}: {json.dumps(settings, sort_keys=True, default=repr)}"
                     for label, settings in sorted(engine.settings.items()))


def _load(name: str, kind: str, key: Optional[str] = None):
    """The object ``module:attribute``; EngineError naming ``key`` (or the extra of ``kind``) if it fails."""
    module, _, attribute = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        hint = " (pip install 'mlip_md[dask]')" if module.split(".")[0] == "dask_jobqueue" else ""
        where = f"{key}: " if key else ""
        raise EngineError(f"{where}cannot import {name} for executor.kind {kind}: {error}{hint}") from error


def _check_reserved(keywords: Any, key: str, reserved: Tuple[str, ...]) -> None:
    """EngineError unless ``keywords`` is a mapping that names none of ``reserved``."""
    if not isinstance(keywords, dict):
        raise EngineError(f"{key} must be a mapping of keyword arguments, got {keywords!r}")
    taken = sorted(set(keywords) & set(reserved))
    if taken:
        raise EngineError(f"{key}: {', '.join(taken)} are set by the engine (executor.workers, "
                          "executor.threads_per_worker and the pool's label); remove them")


def _check_keywords(function: Callable, keywords: Any, key: str, reserved: Tuple[str, ...] = ()) -> None:
    """EngineError unless ``keywords`` is a mapping that ``function`` accepts (and names none of ``reserved``)."""
    _check_reserved(keywords, key, reserved)
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(keywords) - set(parameters))
    if unknown:
        known = sorted(name for name, p in parameters.items()
                       if p.kind is not inspect.Parameter.VAR_POSITIONAL and name not in reserved)
        raise EngineError(f"{key}: unknown key(s) {', '.join(unknown)} for {getattr(function, '__name__', function)}; "
                          f"known: {', '.join(known)}")


def _parsl_launcher(value: Any):
    """A Parsl launcher from a name, ``module:Class`` or ``{name: ..., keyword arguments}``."""
    key = "executor.options.provider_options.launcher"
    keywords: Dict[str, Any] = {}
    if isinstance(value, dict):
        keywords = {k: v for k, v in value.items() if k != "name"}
        value = value.get("name")
    if not isinstance(value, str) or (value not in PARSL_LAUNCHERS and ":" not in value):
        raise EngineError(f"{key} must be one of {', '.join(PARSL_LAUNCHERS)}, or module:Class, optionally as "
                          f"{{name: ..., <keyword arguments>}}; got {value!r}")
    cls = _load(value if ":" in value else f"parsl.launchers:{PARSL_LAUNCHERS[value]}", "parsl", key)
    _check_keywords(cls, keywords, key)
    return cls(**keywords)


def _parsl_provider(options: Dict[str, Any]):
    """The Parsl provider of a pool's ``options`` (checked; constructing one starts nothing)."""
    name = options.get("provider", "local")
    if not isinstance(name, str) or (name not in PARSL_PROVIDERS and ":" not in name):
        raise EngineError(f"executor.options.provider must be one of {', '.join(PARSL_PROVIDERS)} or "
                          f"module:Class (a Parsl provider), got {name!r}")
    cls = _load(PARSL_PROVIDERS.get(name, name), "parsl", "executor.options.provider")
    keywords = dict(options.get("provider_options", {}) or {})
    _check_keywords(cls, keywords, "executor.options.provider_options")
    if "launcher" in keywords:
        keywords["launcher"] = _parsl_launcher(keywords["launcher"])
    return cls(**keywords)


def _dask_cluster_class(options: Dict[str, Any]):
    """The cluster class of a pool's ``options`` (None with ``address``), its options checked."""
    given = sorted(set(options) & {"cluster", "cluster_options", "scale", "adapt"})
    if "address" in options:
        if given:
            raise EngineError(f"executor.options.address connects to a running Dask cluster; "
                              f"{', '.join(given)} would start one: give one or the other")
        if not isinstance(options["address"], str):
            raise EngineError(f"executor.options.address must be a scheduler address such as tcp://host:8786, "
                              f"got {options['address']!r}")
        return None
    if "scale" in options and "adapt" in options:
        raise EngineError("executor.options: give scale or adapt, not both")
    for key in ("cluster_options", "scale", "adapt"):
        if not isinstance(options.get(key, {}), dict):
            raise EngineError(f"executor.options.{key} must be a mapping of keyword arguments, got {options[key]!r}")
    name = options.get("cluster", "local")
    if not isinstance(name, str) or (name != "local" and ":" not in name):
        raise EngineError(f"executor.options.cluster must be local or module:Class (e.g. "
                          f"dask_jobqueue:SLURMCluster), got {name!r}")
    cls = _load("distributed:LocalCluster" if name == "local" else name, "dask", "executor.options.cluster")
    _check_keywords(cls, options.get("cluster_options", {}), "executor.options.cluster_options",
                    LOCAL_CLUSTER_RESERVED if name == "local" else ())
    return cls


def _check_options(config: ExecutorConfig) -> None:
    """EngineError for options that ``config.kind`` does not know, per pool."""
    known = OPTIONS[config.kind]
    for role in ROLES:
        options = config.pool(role)["options"]
        if not isinstance(options, dict):
            raise EngineError(f"executor.options (for the {role} pool) must be a mapping, got {options!r}")
        unknown = sorted(set(options) - set(known))
        if unknown:
            where = "executor.options" + (f" or executor.{role}.options" if getattr(config, role) else "")
            raise EngineError(f"{where}: unknown key(s) {', '.join(unknown)} for executor.kind {config.kind}; "
                              + (f"known: {', '.join(known)}" if known else "it takes no options"))
    if config.kind == "mpi":  # MPIPoolExecutor takes **kwargs: only the reserved names can be checked
        for role in ROLES:
            _check_reserved(config.pool(role)["options"].get("executor_options", {}),
                            "executor.options.executor_options", MPI_RESERVED)


def open_engine(config: ExecutorConfig, run_directory: str) -> Engine:
    """The engine of ``config.kind`` (options checked and its package imported now; pools start on first
    use). ``run_directory``: where the engine keeps its files (Parsl's run directory, Dask's spill files)."""
    if config.kind not in ENGINES:
        raise EngineError(f"executor.kind must be one of {', '.join(ENGINES)}, got {config.kind!r}")
    _check_options(config)
    if config.kind in EXTRAS:
        package, extra = EXTRAS[config.kind]
        try:
            importlib.import_module(package)
        except ImportError as error:
            raise EngineError(f"executor.kind {config.kind} needs {package}: pip install 'mlip_md[{extra}]' "
                              f"({error})") from error
    return ENGINES[config.kind](config, os.path.abspath(run_directory))


def given_engine(executor: futures.Executor) -> Engine:
    """Every role on ``executor``, which the caller owns and shuts down."""
    return GivenEngine(executor)
