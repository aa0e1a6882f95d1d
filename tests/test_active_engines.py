"""The campaign's engines started for real: a local process pool, Parsl (LocalProvider), Dask
(LocalCluster) in this process, and mpi4py.futures in child processes (spawned pools, and the static
pool of ``mpiexec -n 3 python -m mpi4py.futures``): an MPI worker that dies takes its job down.

Every pool has the settings of ``CONFIG``: the oracle pool one worker of two threads, sampler and
training one shared pool of two single-threaded workers.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from mlip_md.active import engines
from mlip_md.active.config import ExecutorConfig
from mlip_md.active.engines import EngineError, given_engine, open_engine

TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # parsl's interchange.py, the mpich wheel's mpiexec
CONFIG = {"workers": 2, "threads_per_worker": 1, "oracle": {"workers": 1, "threads_per_worker": 2}}
OPTIONS = {
    "local": {},
    # WorkerLost is reported at the manager's next heartbeat_period (30 s by default)
    "parsl": {"executor_options": {"heartbeat_period": 1, "heartbeat_threshold": 10}},
    "dask": {"cluster_options": {"dashboard_address": ":0"}},  # any free port
}
LOST_WORKER = {"local": "BrokenProcessPool", "parsl": "WorkerLost", "dask": "KilledWorker"}
PIDS: dict = {}  # kind → pids of the workers that ran tasks, all gone once the engine is closed


# -- tasks (imported by the workers from this module: PYTHONPATH holds tests/) ---------------------------------

def worker_state() -> dict:
    import torch

    return {"pid": os.getpid(), "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}


def die_once(marker: str) -> int:
    """Kills its worker with SIGKILL the first time (``marker`` is created), returns the pid the next."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def pause(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def langevin_energy(repeat: int) -> float:
    """Energy (eV) after 20 Langevin steps of EMT aluminium: ASE draws the noise on ``world``'s rank 0."""
    import numpy as np
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = bulk("Al", cubic=True).repeat((repeat, 1, 1))
    atoms.calc = EMT()
    rng = np.random.default_rng(0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=rng)
    Langevin(atoms, units.fs, temperature_K=300, friction=0.01, fixcm=False, rng=rng).run(20)
    return float(atoms.get_potential_energy())


# -- helpers -------------------------------------------------------------------------------------------------

def _alive(pids) -> list:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _children() -> set:
    """Live descendants of this process but multiprocessing's resource tracker (it outlives pools)."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def _gone(pids, timeout: float = 15.0) -> list:
    """``pids`` still alive after waiting up to ``timeout`` s for them to exit."""
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


def _states(engine, role: str, count: int) -> list:
    submitted = [engine.executor(role).submit(worker_state) for _ in range(count)]
    assert all(isinstance(future, futures.Future) for future in submitted)
    done, pending = futures.wait(submitted, timeout=120)
    assert not pending, f"{len(pending)} {role} task(s) did not finish in 120 s"
    states = [future.result() for future in submitted]
    PIDS.setdefault(engine.kind, set()).update(state["pid"] for state in states)
    return states


@pytest.fixture(scope="module", autouse=True)
def environment():
    """Workers import this module's tasks; one OpenMP thread; the venv's programs on PATH."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        patch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        yield


@pytest.fixture(scope="module", params=sorted(LOST_WORKER))
def engine(request, tmp_path_factory):
    """An engine of each kind that runs in this process, closed (and its processes gone) at the end."""
    kind, before = request.param, _children()
    engine = open_engine(ExecutorConfig(kind=kind, options=OPTIONS[kind], **CONFIG),
                         str(tmp_path_factory.mktemp(f"engine_{kind}")))
    yield engine
    engine.close()
    assert not _gone(PIDS.get(kind, ())), f"{kind} workers left running after close()"
    leftover = _gone(_children() - before)
    assert not leftover, [psutil.Process(pid).cmdline() for pid in leftover]


# -- engines in this process ---------------------------------------------------------------------------------

def test_tasks_run_on_pools_with_their_settings(engine):
    sampler = engine.executor("sampler")
    assert engine.executor("training") is sampler, "equal settings share one pool"
    assert engine.executor("oracle") is not sampler
    states = {"sampler": _states(engine, "sampler", 6), "oracle": _states(engine, "oracle", 3)}
    assert {(s["threads"], s["omp"]) for s in states["sampler"]} == {(1, "1")}
    assert {(s["threads"], s["omp"]) for s in states["oracle"]} == {(2, "2")}
    pids = {role: {s["pid"] for s in values} for role, values in states.items()}
    assert len(pids["oracle"]) == 1 and 1 <= len(pids["sampler"]) <= 2
    assert not pids["oracle"] & pids["sampler"], "separate pools have workers of their own"
    assert os.getpid() not in pids["oracle"] | pids["sampler"]


def test_a_worker_killed_during_a_task_is_a_lost_worker(engine, tmp_path):
    marker = str(tmp_path / "killed")
    error = engine.executor("sampler").submit(die_once, marker).exception(timeout=90)
    assert os.path.exists(marker)
    assert type(error).__name__ == LOST_WORKER[engine.kind] and engine.is_lost_worker(error), repr(error)
    engine.replace("sampler")  # what the driver does before it submits the task again
    pid = engine.executor("sampler").submit(die_once, marker).result(timeout=90)
    PIDS[engine.kind].add(pid)
    assert engine.executor("training") is engine.executor("sampler")
    raised = engine.executor("sampler").submit(fail, "the oracle diverged").exception(timeout=60)
    assert isinstance(raised, ValueError) and not engine.is_lost_worker(raised)
    assert _states(engine, "training", 2)[0]["threads"] == 1


def test_futures_wait_and_cancel_like_concurrent_futures(engine):
    executor = engine.executor("oracle")  # one worker: the second task waits behind the first
    first, second = executor.submit(pause, 0.5), executor.submit(pause, 0.0)
    cancelled = second.cancel()  # Parsl's own AppFuture.cancel raises NotImplementedError
    assert cancelled in (True, False) and second.cancelled() == cancelled
    done, _ = futures.wait([first, second], timeout=60)
    assert first in done and isinstance(first.result(), int)
    assert [future.result() for future in futures.as_completed([executor.submit(pause, 0.0)], timeout=60)]


# -- mpi4py.futures in child processes -----------------------------------------------------------------------

MPI_DRIVER = """
import json, os, sys
from test_active_engines import CONFIG, die_once, langevin_energy, worker_state
from mlip_md.active.config import ExecutorConfig
from mlip_md.active.engines import EngineError, open_engine

static, directory = sys.argv[1] == "static", sys.argv[2]
out = {}
if static:  # one shared pool: roles with their own settings are refused
    try:
        open_engine(ExecutorConfig(kind="mpi", **CONFIG), directory)
    except EngineError as error:
        out["refused"] = str(error)
    engine = open_engine(ExecutorConfig(kind="mpi", workers=2, threads_per_worker=2), directory)
else:
    path = os.environ["PATH"]
    os.environ["PATH"] = "/nonexistent"
    try:
        open_engine(ExecutorConfig(kind="mpi", **CONFIG), directory)
    except EngineError as error:
        out["refused"] = str(error)
    os.environ["PATH"] = path
    engine = open_engine(ExecutorConfig(kind="mpi", **CONFIG), directory)
out["static"] = engine.static
out["shared"] = [engine.executor("training") is engine.executor("sampler"),
                 engine.executor("oracle") is engine.executor("sampler")]
for role in ("sampler", "oracle"):
    out[role] = [f.result(timeout=60) for f in [engine.executor(role).submit(worker_state) for _ in range(4)]]
out["langevin"] = [f.result(timeout=60) for f in [engine.executor("sampler").submit(langevin_energy, n)
                                                  for n in (1, 2, 3)]]
out["in_driver"] = [langevin_energy(n) for n in (1, 2, 3)]
print(json.dumps(out), flush=True)
engine.executor("sampler").submit(die_once, os.path.join(directory, "killed")).result(timeout=60)
print("the driver survived its worker", flush=True)
engine.close()
"""


@pytest.mark.parametrize("mode", ["spawn", "static"])
def test_mpi_pools(mode, tmp_path):
    script = tmp_path / "mpi_driver.py"
    script.write_text(MPI_DRIVER)
    command = [sys.executable, str(script), mode, str(tmp_path)]
    if mode == "static":
        command = [str(BIN / "mpiexec"), "-n", "3", sys.executable, "-m", "mpi4py.futures"] + command[1:]
    # a session of its own: MPICH's process manager kills the whole process group of a failed job
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, start_new_session=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"exit status {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    out = json.loads(lines[-1])
    pids = {role: {state["pid"] for state in out[role]} for role in ("sampler", "oracle")}
    if mode == "static":
        assert out["static"] and out["shared"] == [True, True]
        assert "one shared pool" in out["refused"]
        assert {(s["threads"], s["omp"]) for s in out["sampler"] + out["oracle"]} == {(2, "2")}
        assert len(pids["sampler"] | pids["oracle"]) <= 2  # the world's ranks 1 and 2
    else:
        assert not out["static"] and out["shared"] == [True, False]
        assert "mpiexec, which is not on PATH" in out["refused"]
        assert {(s["threads"], s["omp"]) for s in out["sampler"]} == {(1, "1")}
        assert {(s["threads"], s["omp"]) for s in out["oracle"]} == {(2, "2")}
        assert len(pids["oracle"]) == 1 and not pids["oracle"] & pids["sampler"]
    # ASE's Langevin broadcasts its noise on world: in the workers it must be their own process
    assert out["langevin"] == pytest.approx(out["in_driver"], rel=0, abs=0)
    # a dead MPI worker aborts the job, the driver included
    assert "survived" not in result.stdout and result.returncode != 0
    assert not _gone(pids["sampler"] | pids["oracle"], timeout=10)


# -- errors before anything starts ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind, package, extra", [("parsl", "parsl", "parsl"), ("dask", "distributed", "dask"),
                                                  ("mpi", "mpi4py", "mpi")])
def test_a_missing_package_names_its_extra(kind, package, extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    with pytest.raises(EngineError, match=rf"executor.kind {kind} needs {package}: pip install 'mlip_md\[{extra}\]'"):
        open_engine(ExecutorConfig(kind=kind), str(tmp_path))


@pytest.mark.parametrize("kind, executor, message", [
    ("local", {"options": {"provider": "slurm"}}, "unknown key.*provider for executor.kind local; it takes no options"),
    ("parsl", {"options": {"cluster": "local"}},
     "unknown key.*cluster for executor.kind parsl; known: provider, provider_options, executor_options"),
    ("parsl", {"oracle": {"options": {"walltime": 60}}}, r"executor.options or executor.oracle.options: unknown"),
    ("parsl", {"options": {"provider": "slurm", "provider_options": {"partion": "cpu"}}},
     "provider_options: unknown key.*partion for SlurmProvider; known: .*partition"),
    ("parsl", {"options": {"provider": "lsf"}}, "provider must be one of local, slurm, pbspro or module:Class"),
    ("parsl", {"options": {"provider_options": {"launcher": "srunn"}}}, "launcher must be one of single_node"),
    ("parsl", {"options": {"executor_options": {"max_workers_per_node": 4}}}, "max_workers_per_node are set by"),
    ("dask", {"options": {"address": "tcp://127.0.0.1:8786", "scale": {"jobs": 2}}}, "give one or the other"),
    ("dask", {"options": {"cluster": "dask_jobqueue:NoCluster"}}, "cannot import dask_jobqueue:NoCluster"),
    ("dask", {"options": {"cluster_options": {"n_workers": 4}}}, "n_workers are set by the engine"),
    ("dask", {"options": {"scale": {"jobs": 1}, "adapt": {"maximum_jobs": 2}}}, "scale or adapt, not both"),
    ("mpi", {"options": {"executor_options": {"max_workers": 4}}}, "max_workers are set by the engine"),
    ("mpi", {"options": {"workers": 4}}, "unknown key.*workers for executor.kind mpi; known: executor_options"),
])
def test_bad_options_are_refused_before_anything_starts(kind, executor, message, tmp_path):
    before = _children()
    with pytest.raises(EngineError, match=message):
        open_engine(ExecutorConfig(kind=kind, **executor), str(tmp_path))
    assert not _children() - before


def test_the_documented_examples_are_accepted(tmp_path):
    """The Parsl (Slurm, PBS) and dask-jobqueue examples of the module docstring open (nothing starts)."""
    blocks = re.findall(r"::\n\n((?:    .*\n|\n)+)", engines.__doc__)
    kinds = []
    for block in blocks:
        engine = open_engine(ExecutorConfig(**yaml.safe_load(textwrap.dedent(block))["executor"]), str(tmp_path))
        kinds.append(engine.kind)
        engine.close()
    assert kinds == ["parsl", "parsl", "dask"]


def test_parsl_needs_its_programs_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EngineError, match="interchange.py and process_worker_pool.py on PATH: activate"):
        open_engine(ExecutorConfig(kind="parsl"), str(tmp_path))


def test_a_given_executor_serves_every_role_and_stays_open():
    with futures.ThreadPoolExecutor(max_workers=1) as executor:
        engine = given_engine(executor)
        assert {engine.executor(role) for role in ("oracle", "sampler", "training")} == {executor}
        assert not engine.is_lost_worker(futures.BrokenExecutor("gone"))  # it cannot be restarted from here
        engine.close()
        assert executor.submit(pow, 2, 3).result() == 8
