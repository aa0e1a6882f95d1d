"""The campaign loop: train the ensemble → sample with it → label where it disagrees → repeat.

Iteration k: (train) every member on all done labels, export
``iterations/k/model.pt`` and update ``DIR/model.pt``; stop if a stop rule
holds; (sample) ``sampler.n_trajectories`` temperature-ramped trajectories
with that ensemble, whose flagged frames go to the oracle as they finish
when the iteration's label limit cannot thin them
(:class:`~mlip_md.active.selection.StreamingSelection`); (label) the other
selected frames and every label still in flight; then iteration k + 1. The
campaign ends with a training on every label, so ``DIR/model.pt`` has seen
all of them. Tasks run on the executors of :mod:`mlip_md.active.engines`
(per role: oracle, sampler, training) through
:class:`~mlip_md.active.execution.Scheduler`, which also drains the driver on
SIGTERM, SIGINT or the walltime.

The store's state table holds ``(iteration, phase)``; each phase's results
are committed in the transaction that moves to the next phase, so a driver
killed at any moment resumes the phase it was in with nothing lost: finished
trajectories are kept, results of finished labels are picked up from their
files in ``DIR/results`` (never recomputed), pending labels are submitted
again, and members resume from their checkpoints.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import dataclasses
import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols

from mlip_md.active import report
from mlip_md.active.config import CampaignConfig
from mlip_md.active.engines import given_engine, open_engine
from mlip_md.active.execution import Drained, DrainRequest, Scheduler
from mlip_md.active.oracle import LabelResult, LabelTask, label_configuration, make_calculator, read_result
from mlip_md.active.lammps_sampler import run_lammps_trajectory
from mlip_md.active.sampler import Candidate, Schedule, TrajectoryResult, TrajectoryTask, run_trajectory, start_structure
from mlip_md.active.selection import StreamingSelection
from mlip_md.active.store import LabelStore, label_id, split_of
from mlip_md.active.training import ExportTask, export_task, member_tasks, train_member_task
from mlip_md.atomic import write_atomically
from mlip_md.data.dataset import Configuration, configuration_from_atoms, read_configurations

STORE_FILE = "labels.db"
MODEL_FILE = "model.pt"
ENGINE_DIRECTORY = "engine"  # the engine's own logs (parsl run directories, ...)
# Settings a resumed campaign may change: how long it runs, how it runs, and how patient its oracle is.
RESUMABLE = ("stop.", "executor.", "oracle.timeout", "oracle.retries")


class CampaignError(RuntimeError):
    """A campaign that cannot go on (failure budget spent, settings changed, directory in use); the message says why."""


def _flatten(values: dict, prefix: str = "") -> Dict[str, object]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "parameters" and key != "composition":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def config_changes(saved: dict, config: CampaignConfig) -> List[str]:
    """Differences, as ``"key: old -> new"``, between a stored campaign's settings and ``config`` that a
    resume may not make (see :data:`RESUMABLE`)."""
    old, new = _flatten(saved), _flatten(config.to_dict())
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if not key.startswith(RESUMABLE) and old.get(key) != new.get(key)]


@contextmanager
def _exclusive(out: str) -> Iterator[None]:
    """Holds ``out/.campaign.lock`` (released by the OS even after kill -9)."""
    handle = open(os.path.join(out, ".campaign.lock"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CampaignError(f"another campaign driver is running in {out}; wait for it or stop it first") from None
    try:
        yield
    finally:
        handle.close()


def _configuration(row) -> Configuration:
    """A training configuration from a done row (labels in its calculator results and ``data``)."""
    return configuration_from_atoms(row.toatoms(), f"labels.db[{row.label_id}]", extra=dict(row.data))


def _max_force_error(predicted: np.ndarray, labelled: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(predicted) - labelled, axis=1).max())


def _add_totals(wall: Dict[str, float]) -> None:
    """The iteration's total and the driver's own share of it (the rest is waiting for tasks), in s."""
    wall["total"] = wall["training"] + wall["sampling"] + wall["labelling"]
    wall["driver"] = wall["total"] - wall["tasks"]


class Campaign:
    """One campaign in its output directory (see the module docstring); :meth:`run` runs or resumes it."""

    def __init__(self, config: CampaignConfig, out: str, executor: Optional[futures.Executor] = None,
                 log: Callable[[str], None] = print, catch_signals: bool = False):
        self.config, self.out, self.log = config, os.path.abspath(out), log
        self.oracle_hash = config.oracle.identity()
        self.engine = given_engine(executor) if executor is not None else \
            open_engine(config.executor, os.path.join(self.out, ENGINE_DIRECTORY))
        self.drain = DrainRequest(config.executor.walltime_seconds(), config.executor.drain_margin)
        self.catch_signals = catch_signals
        self.scheduler = Scheduler(self.engine, config.executor.task_retries, self.drain, config.executor.grace, log)
        self.store: Optional[LabelStore] = None
        self.drained: Optional[str] = None  # why the driver stopped early, when it did
        self._labelling: set = set()  # label ids queued or in flight at the oracle pool
        self._waiting: collections.deque = collections.deque()  # their tasks not yet submitted

    # -- set-up and state ------------------------------------------------------------------------------------
    def _open(self) -> None:
        make_calculator(self.config.oracle)  # fails now, naming the problem, rather than in every worker
        self.store = LabelStore(os.path.join(self.out, STORE_FILE))
        saved = self.store.state("config")
        if saved is None:
            with self.store.transaction() as connection:
                self.store.set_state(connection, config=self.config.to_dict(), iteration=0, phase="initial")
            return
        changes = config_changes(saved, self.config)
        if changes:
            raise CampaignError(f"{self.out} holds a campaign with other settings ({'; '.join(changes)}); only "
                                "stop.*, executor.*, oracle.timeout and oracle.retries may change on resume; "
                                "use a new output directory")
        with self.store.transaction() as connection:
            self.store.set_state(connection, config=self.config.to_dict())

    def _phase(self) -> tuple:
        return self.store.state("iteration"), self.store.state("phase")

    def _iteration_directory(self, iteration: int) -> str:
        return os.path.join(self.out, "iterations", f"{iteration:03d}")

    def _result_path(self, identifier: str) -> str:
        return os.path.join(self.out, "results", f"{identifier}.json")

    # -- labelling -------------------------------------------------------------------------------------------
    def _label_task(self, row) -> LabelTask:
        return LabelTask(row.label_id, row.toatoms(), self.config.oracle, self.config.seed,
                         self._result_path(row.label_id))

    def _record(self, result: LabelResult) -> None:
        """Stores a label result (one transaction), then removes its result file."""
        row = self.store.row(result.label_id)
        with self.store.transaction():
            if result.status == "done":
                data = {}
                if result.hvp_probes is not None:
                    data = {"hvp_probes": result.hvp_probes, "hvp_products": result.hvp_products}
                predicted = row.data.get("predicted_forces")
                error = None if predicted is None else _max_force_error(predicted, result.atoms.get_forces())
                self.store.update(result.label_id, "done", atoms=result.atoms, data=data, attempts=result.attempts,
                                  wall_time=result.wall_time, true_forces_error=error)
            else:
                self.store.update(result.label_id, "failed", error=result.error or "unknown error",
                                  attempts=result.attempts, wall_time=result.wall_time)
        path = self._result_path(result.label_id)
        if os.path.exists(path):
            os.remove(path)

    def _queue_labels(self, rows) -> int:
        """Queues pending ``rows`` for the oracle (results already on disk are recorded instead; rows
        queued before are skipped); returns how many were queued."""
        queued = 0
        for row in rows:
            if row.label_id in self._labelling:
                continue
            path = self._result_path(row.label_id)
            if os.path.exists(path):
                self._record(read_result(path))
                continue
            self._labelling.add(row.label_id)
            self._waiting.append(self._label_task(row))
            queued += 1
        self._feed_oracle()
        return queued

    def _feed_oracle(self) -> None:
        """Submits queued labels while fewer than ``executor.max_queued_labels`` are in flight."""
        bound = self.config.executor.max_queued_labels
        while self._waiting and self.scheduler.in_flight("oracle") < bound and not self.drain.requested():
            self.scheduler.submit("oracle", label_configuration, self._waiting.popleft(), self._labelled,
                                  self._label_lost)

    def _labelled(self, task: LabelTask, result: LabelResult) -> None:
        self._record(result)
        self._labelling.discard(task.label_id)
        self._feed_oracle()

    def _label_lost(self, task: LabelTask, error: BaseException) -> None:
        self._labelled(task, LabelResult(task.label_id, "failed", None, None, None,
                                         f"the labelling task raised {type(error).__name__}: {error}", 1, 0.0))

    def _label_pending(self) -> None:
        """Labels every pending row and waits for all labels in flight."""
        queued = self._queue_labels(self.store.rows(status="pending"))
        if queued:
            self.log(f"labelling {queued} configuration(s) with the {self.config.oracle.name} oracle")
        self.scheduler.wait_until(lambda: not self._labelling)

    def _check_failures(self) -> None:
        counts, stop = self.store.counts(), self.config.stop
        labelled = [row for row in self.store.rows() if row.get("source") != "initial.data"]
        failed = sorted((row for row in labelled if row.status == "failed"), key=lambda row: row.mtime)
        finished = sum(row.status in ("done", "failed") for row in labelled)
        if len(failed) >= stop.min_failures and len(failed) > stop.max_failure_fraction * finished:
            last = "; ".join(f"{row.label_id[:8]}: {row.error}" for row in failed[-3:])
            reason = (f"{len(failed)} of {finished} oracle labels failed, more than stop.max_failure_fraction = "
                      f"{stop.max_failure_fraction:g}; last errors: {last}")
            with self.store.transaction() as connection:
                self.store.set_state(connection, stop_reason=reason)
            raise CampaignError(f"campaign stopped: {reason} (labels so far: {counts})")

    # -- the initial data ------------------------------------------------------------------------------------
    def _initial(self) -> None:
        start, waited = time.perf_counter(), self.scheduler.waited
        initial = self.config.initial
        with self.store.transaction():
            if initial.data:
                for configuration in read_configurations(initial.data, require_forces=False):
                    self._add_file_label(configuration)
            rng = np.random.default_rng([self.config.seed, 0, 2**20])
            for index in range(initial.n_configurations):
                atoms = start_structure(self._initial_sampler(), rng, ())
                atoms.positions += rng.normal(0.0, initial.rattle, atoms.positions.shape)
                self._add_pending(atoms, {"iteration": 0, "trajectory": -1, "source": "initial"})
        self._label_pending()
        self._check_failures()
        with self.store.transaction() as connection:
            self.store.set_state(connection, phase="train", initial_wall_time={
                "labelling": time.perf_counter() - start, "tasks": self.scheduler.waited - waited})

    def _initial_sampler(self):
        sampler = self.config.sampler
        if sampler.start == "store":  # nothing is stored yet: generated starts are disordered
            return dataclasses.replace(sampler, start="disordered")
        return sampler

    def _add_file_label(self, configuration: Configuration) -> None:
        atoms = configuration.to_atoms()
        labels = {"energy": configuration.energy}
        if configuration.forces is not None:
            labels["forces"] = configuration.forces
        atoms.calc = SinglePointCalculator(atoms, **labels)
        identifier = label_id(atoms, self.oracle_hash)
        data = {key: getattr(configuration, key) for key in ("hessian", "hvp_probes", "hvp_products")
                if getattr(configuration, key) is not None}
        self.store.add(atoms, identifier, "done", {
            "iteration": 0, "trajectory": -1, "source": "initial.data", "oracle": "file",
            "oracle_hash": self.oracle_hash, "split": split_of(identifier, self.config.retrain.valid_fraction),
        }, data)

    def _add_pending(self, atoms: Atoms, provenance: dict, data: Optional[dict] = None) -> bool:
        identifier = label_id(atoms, self.oracle_hash)
        return self.store.add(atoms, identifier, "pending", {
            **provenance, "oracle": self.config.oracle.name, "oracle_hash": self.oracle_hash,
            "split": split_of(identifier, self.config.retrain.valid_fraction),
        }, data)

    # -- training --------------------------------------------------------------------------------------------
    def _training_sets(self) -> tuple:
        rows = self.store.rows(status="done")
        train = [_configuration(row) for row in rows if row.split == "train"]
        valid = [_configuration(row) for row in rows if row.split == "valid"]
        if not train:
            raise CampaignError(f"no done labels in the training split ({len(valid)} in validation); "
                                "add initial data or initial.n_configurations")
        return train, valid

    def _species(self, train: Sequence[Configuration]) -> List[str]:
        species = self.store.state("species")
        if species is None:
            species = self.config.model.species or sorted(
                {chemical_symbols[z] for c in train for z in np.unique(c.numbers)})
            with self.store.transaction() as connection:
                self.store.set_state(connection, species=species)
        return species

    def _train(self, iteration: int) -> None:
        start, waited = time.perf_counter(), self.scheduler.waited
        train, valid = self._training_sets()
        species = self._species(train)
        config = self.config.training_config(os.path.join(self.out, STORE_FILE), species)
        directory = self._iteration_directory(iteration)
        previous = self._iteration_directory(iteration - 1) if self.config.retrain.warm_start and iteration else None
        tasks = member_tasks(config, train, valid, species, directory, previous)
        self.log(f"iteration {iteration}: training {len(tasks)} members on {len(train)} labels "
                 f"({len(valid)} for validation)")
        states: Dict[int, dict] = {}
        self.scheduler.run("training", train_member_task, tasks,
                           lambda task, state: states.__setitem__(task.member, state))
        export = ExportTask(config, tuple(states[m] for m in range(len(tasks))), tuple(train), tuple(valid),
                            tuple(species), os.path.join(directory, MODEL_FILE),
                            {"campaign": {"iteration": iteration, "n_train_labels": len(train)}}, self.config.test)
        exported: Dict[str, object] = {}
        self.scheduler.run("training", export_task, [export], lambda task, result: exported.update(result))
        write_atomically(os.path.join(self.out, MODEL_FILE),
                         lambda partial: shutil.copyfile(exported["model"], partial))
        entry = self._training_entry(iteration, exported, len(train))
        entry["wall_time"].update(training=time.perf_counter() - start, tasks=self.scheduler.waited - waited)
        if iteration == 0:  # the initial labels count as iteration 0's labelling
            for key, seconds in self.store.state("initial_wall_time", {}).items():
                entry["wall_time"][key] += seconds
        _add_totals(entry["wall_time"])
        reason = self._stop_reason(iteration, self.store.entries())
        entry["stop_reason"] = reason
        with self.store.transaction() as connection:
            self.store.save_entry(connection, iteration, entry)
            # The next iteration's label limit is fixed now: labels finishing while it samples must not move it.
            self.store.set_state(connection, phase="finished" if reason else "sample", stop_reason=reason,
                                 label_limit=self._label_limit())

    def _label_limit(self) -> int:
        """Labels the next sampling may add: max_labels_per_iteration, or less near stop.max_labels."""
        room = self.config.stop.max_labels - self.store.counts()["done"]
        return max(0, min(self.config.selection.max_labels_per_iteration, room))

    def _training_entry(self, iteration: int, exported: dict, n_train: int) -> dict:
        return {
            "iteration": iteration, "n_train_labels": n_train, **exported,
            "trajectories": None, "flags": [], "new_labels": [], "spearman": None,
            "n_new": 0, "n_failed": 0, "n_labels": self.store.counts()["done"], "labelled_while_sampling": 0,
            "wall_time": {"training": 0.0, "sampling": 0.0, "labelling": 0.0, "total": 0.0, "tasks": 0.0,
                          "driver": 0.0},
            "stop_reason": None,
        }

    def _stop_reason(self, iteration: int, entries: Sequence[dict]) -> Optional[str]:
        stop, done = self.config.stop, self.store.counts()["done"]
        if iteration >= stop.max_iterations:
            return f"reached stop.max_iterations = {stop.max_iterations}"
        if done >= stop.max_labels:
            return f"reached stop.max_labels = {stop.max_labels} ({done} done labels)"
        fractions = [e["trajectories"]["accurate_fraction"] for e in entries if e.get("trajectories")]
        if len(fractions) >= 2 and min(fractions[-2:]) >= stop.accurate_fraction:
            return (f"converged: {fractions[-2]:.0%} and {fractions[-1]:.0%} of trajectories reached t_max "
                    f"unflagged, >= stop.accurate_fraction = {stop.accurate_fraction:g}")
        return None

    # -- sampling and selection ------------------------------------------------------------------------------
    def _trajectory_tasks(self, iteration: int, finished: Sequence[int]) -> List[TrajectoryTask]:
        sampler, model = self.config.sampler, os.path.join(self._iteration_directory(iteration), MODEL_FILE)
        pool = [row.toatoms() for row in self.store.rows(status="done")] if sampler.start == "store" else ()
        species, tasks = tuple(self.store.state("species")), []
        for trajectory in range(sampler.n_trajectories):
            seed = int(np.random.SeedSequence([self.config.seed, iteration + 1, trajectory]).generate_state(1)[0])
            start = start_structure(sampler, np.random.default_rng(seed + 1), pool)
            if trajectory not in finished:
                tasks.append(TrajectoryTask(model, sampler, self.config.selection, start, seed, iteration, trajectory,
                                            species, self.config.model.cutoff))
        return tasks

    def _sample(self, iteration: int) -> None:
        """Runs the iteration's trajectories; admitted candidates go to the oracle as trajectories finish."""
        start, waited = time.perf_counter(), self.scheduler.waited
        results = {index: TrajectoryResult.from_dict(value)
                   for index, value in self.store.trajectories(iteration).items()}
        tasks = self._trajectory_tasks(iteration, list(results))
        admitted = sum(row.get("source") == "sampler" for row in self.store.rows(iteration=iteration))
        limit = self.store.state("label_limit", self._label_limit())  # (absent from older stores)
        selection = StreamingSelection(self.config.sampler.n_trajectories, self.config.selection.max_per_trajectory,
                                       limit, self._known, admitted)
        model_hash = self.store.entries()[-1]["model_sha256"]
        for index in sorted(results):  # a resumed iteration: what the finished trajectories admit
            self._add_candidates(iteration, selection.add(results[index].candidates), results, model_hash)
        self._queue_labels(self.store.rows(status="pending"))
        total, step = self.config.sampler.n_trajectories, max(1, self.config.sampler.n_trajectories // 4)

        def keep(task: TrajectoryTask, result: TrajectoryResult) -> None:
            results[task.trajectory] = result
            with self.store.transaction() as connection:
                self.store.save_trajectory(connection, iteration, task.trajectory, result.to_dict())
                rows = self._add_candidates(iteration, selection.add(result.candidates), results, model_hash)
            self._queue_labels(rows)
            if len(results) % step == 0 or len(results) == total:
                outcomes = [r.outcome for r in results.values()]
                self.log(report.progress_line(iteration, len(results), total, outcomes.count("accurate"),
                                              outcomes.count("flagged"), outcomes.count("discarded"),
                                              time.perf_counter() - start))

        sample = run_lammps_trajectory if self.config.sampler.engine == "lammps" else run_trajectory
        for task in tasks:
            self.scheduler.submit("sampler", sample, task, keep)
        self.scheduler.wait_until(lambda: self.scheduler.in_flight("sampler") == 0)
        ordered = [results[t] for t in sorted(results)]
        streamed = [row for row in self.store.rows(iteration=iteration) if row.get("source") == "sampler"]
        with self.store.transaction() as connection:
            self._add_candidates(iteration, selection.finish(), results, model_hash)
            entry = self._sampling_entry(iteration, ordered, {"sampling": time.perf_counter() - start,
                                                              "tasks": self.scheduler.waited - waited})
            entry["labelled_while_sampling"] = sum(row.status != "pending" for row in streamed)
            self.store.save_entry(connection, iteration, entry)
            self.store.set_state(connection, phase="label")

    def _known(self, candidate: Candidate) -> bool:
        return self.store.known(label_id(candidate.atoms, self.oracle_hash))

    def _add_candidates(self, iteration: int, candidates: Sequence[Candidate], results: Dict[int, TrajectoryResult],
                        model_hash: str) -> list:
        """Pending rows, with their provenance, for admitted ``candidates``; the new rows."""
        for candidate in candidates:
            schedule: Schedule = results[candidate.trajectory].schedule
            self._add_pending(candidate.atoms, {
                "iteration": iteration, "trajectory": candidate.trajectory, "source": "sampler",
                "model_sha256": model_hash, "t0": schedule.t0, "t1": schedule.t1,
                "amplitude": schedule.amplitude, "period_fs": schedule.period_fs, "strain": schedule.strain,
                "flag_step": candidate.step, "flag_temperature": candidate.temperature,
                "predicted_forces_uncertainty": candidate.forces_uncertainty,
                "predicted_energy_uncertainty": candidate.energy_uncertainty,
            }, {"predicted_forces": candidate.predicted_forces})
        return [self.store.row(label_id(c.atoms, self.oracle_hash)) for c in candidates]

    def _sampling_entry(self, iteration: int, results: Sequence[TrajectoryResult], times: Dict[str, float]) -> dict:
        entry = self.store.entries()[iteration]
        outcomes = [r.outcome for r in results]
        entry["trajectories"] = {
            "n": len(results), **{name: outcomes.count(name) for name in ("accurate", "flagged", "discarded")},
            "accurate_fraction": outcomes.count("accurate") / len(results),
        }
        entry["flags"] = [self._flag_record(r) for r in results]
        entry["wall_time"]["sampling"] = times["sampling"]
        entry["wall_time"]["tasks"] += times["tasks"]
        return entry

    def _flag_record(self, result: TrajectoryResult) -> dict:
        """Where a trajectory ended: its first flag, t_max (accurate) or the frame it was discarded at."""
        step = {"flagged": result.first_flag_step, "accurate": self.config.sampler.max_steps}.get(
            result.outcome, result.last_step)
        time_fs = step * self.config.sampler.timestep_fs
        temperature = result.first_flag_temperature if result.outcome == "flagged" else \
            result.schedule.temperature(time_fs)
        return {"trajectory": result.trajectory, "outcome": result.outcome, "step": step, "time_fs": time_fs,
                "temperature": temperature}

    def _label(self, iteration: int) -> None:
        start, waited = time.perf_counter(), self.scheduler.waited
        self._label_pending()
        rows = [row for row in self.store.rows(iteration=iteration) if row.get("source") == "sampler"]
        entry = self.store.entries()[iteration]
        entry["new_labels"] = [{
            "label_id": row.label_id, "status": row.status,
            "predicted_forces_uncertainty": row.get("predicted_forces_uncertainty"),
            "true_forces_error": row.get("true_forces_error"), "error": row.get("error"),
        } for row in rows]
        done = [n for n in entry["new_labels"] if n["status"] == "done"]
        entry["spearman"] = report.spearman([n["predicted_forces_uncertainty"] for n in done],
                                            [n["true_forces_error"] for n in done])
        entry.update(n_new=len(done), n_failed=len(rows) - len(done), n_labels=self.store.counts()["done"])
        wall = entry["wall_time"]
        wall["labelling"] += time.perf_counter() - start
        wall["tasks"] += self.scheduler.waited - waited
        _add_totals(wall)
        with self.store.transaction() as connection:
            self.store.save_entry(connection, iteration, entry)
        self.log(report.iteration_table(entry))
        self._check_failures()
        with self.store.transaction() as connection:
            self.store.set_state(connection, iteration=iteration + 1, phase="train")

    # -- the loop --------------------------------------------------------------------------------------------
    def status(self) -> dict:
        """The campaign's state as report.json's ``status``."""
        iteration, phase = self._phase()
        return {"out": self.out, "iteration": iteration, "phase": phase, "finished": phase == "finished",
                "stop_reason": self.store.state("stop_reason"), "drained": self.drained,
                "labels": self.store.counts(),
                "accurate_fraction_target": self.config.stop.accurate_fraction,
                "thresholds": {key: getattr(self.config.selection, key) for key in
                               ("forces_uncertainty", "energy_uncertainty", "relative_forces_uncertainty")},
                "model": os.path.join(self.out, MODEL_FILE)}

    def _write_report(self) -> None:
        report.write_report(self.out, self.store.entries(), self.status())

    def run(self) -> dict:
        """Runs (or resumes) the campaign to its end; returns the final status."""
        os.makedirs(self.out, exist_ok=True)
        with _exclusive(self.out):
            self._open()
            if self.catch_signals:
                self.drain.catch_signals()
            try:
                self._loop()
            except Drained as reason:
                self.drained = str(reason)
                self.log(f"campaign drained: {reason}; run the same command again to resume")
            finally:
                self.drain.restore_signals()
                self.engine.close(wait=self.drained is None)
                self._write_report()
        return self.status()

    def _loop(self) -> None:
        steps = {"initial": lambda k: self._initial(), "train": self._train, "sample": self._sample,
                 "label": self._label}
        while True:
            self.scheduler.stop_if_draining()
            iteration, phase = self._phase()
            if phase == "finished":
                self.log(f"campaign finished: {self.store.state('stop_reason')}; model: "
                         f"{os.path.join(self.out, MODEL_FILE)}")
                return
            steps[phase](iteration)
            if phase == "label":
                self._write_report()


def run_campaign(config: CampaignConfig, out: str | os.PathLike, executor: Optional[futures.Executor] = None,
                 log: Callable[[str], None] = print, catch_signals: bool = False) -> dict:
    """Runs the campaign of ``config`` in the directory ``out``, or resumes the one there.

    ``executor``: any ``concurrent.futures.Executor`` for the trajectories,
    labels and trainings (default: the engine of ``executor.kind``).
    ``catch_signals``: SIGTERM and SIGINT drain the campaign instead of
    killing it (process-wide handlers, restored on return: for callers that
    own the process). Returns the final status (see :meth:`Campaign.status`);
    its ``drained`` says why a drained driver stopped early (SIGTERM, SIGINT,
    ``executor.walltime``), with everything finished recorded for the next
    run. Raises :class:`CampaignError` when it stops before its end (failure
    budget, other settings in ``out``, another driver running there).
    """
    return Campaign(config, os.fspath(out), executor, log, catch_signals).run()


def campaign_status(out: str | os.PathLike) -> dict:
    """A JSON-able summary of the campaign in ``out``: iterations done, labels by status, thresholds, last errors."""
    out = os.path.abspath(os.fspath(out))
    path = os.path.join(out, STORE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no campaign in {out} (no {STORE_FILE})")
    store = LabelStore(path)
    config = store.state("config") or {}
    entries = store.entries()
    failed = sorted(store.rows(status="failed"), key=lambda row: row.mtime)
    return {
        "out": out, "iteration": store.state("iteration"), "phase": store.state("phase"),
        "finished": store.state("phase") == "finished", "stop_reason": store.state("stop_reason"),
        "iterations_trained": len(entries), "labels": store.counts(),
        "thresholds": {k: v for k, v in config.get("selection", {}).items() if "uncertainty" in k},
        "last_errors": [{"label_id": row.label_id, "iteration": row.get("iteration"), "error": row.get("error")}
                        for row in failed[-5:]],
        "model": os.path.join(out, MODEL_FILE) if os.path.exists(os.path.join(out, MODEL_FILE)) else None,
        "last_iteration": entries[-1] if entries else None,
    }
