"""Training: minibatch steps with recovery from non-finite values, one member's run with
exact resume, and :func:`train`, which trains an ensemble (or distils it) and exports it.

Parts: :func:`train_epoch` (one shuffled pass with rollback), :class:`WeightAverage`
(the moving average of the weights that is validated and exported),
:class:`MemberRun` (a member's model, optimiser, schedule, checkpoints and log),
:func:`train_member` (runs one to the end), :func:`train` (every member, in
turn or in worker processes, the summary, the plots and the exported file).
Data are read and checked in :mod:`mlip_md.train.splits`, errors computed in
:mod:`mlip_md.train.metrics`; several processes train one model through
:mod:`mlip_md.train.distributed`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from mlip_md.data import GraphCache, fit_reference_energies
from mlip_md.data.batch import Batch, batches, collate
from mlip_md.data.dataset import Configuration
from mlip_md.export import export
from mlip_md.model.hipnn import HIPNN, hierarchicality
from mlip_md import tuning
from mlip_md.species import SpeciesMap
from mlip_md.train import checkpoint, distributed
from mlip_md.train.config import Config, TrainingConfig
from mlip_md.train.distributed import Group
from mlip_md.train.errors import ResumeError, TrainingError
from mlip_md.train.losses import (
    error_sums,
    full_hessian_error,
    hessian_vector_error,
    predict,
    reference_products,
    sample_probes,
)
from mlip_md.train.metrics import SetPredictions, error_metrics, evaluate, json_values, model_outputs, predict_set, write_json
from mlip_md.train.plots import plot_hessian_parity, plot_learning_curves, plot_parity
from mlip_md.train.splits import DataSplit, load_data

__all__ = ["DataSplit", "MemberRun", "WeightAverage", "build_model", "evaluate", "load_data", "teacher_forces",
           "train", "train_epoch", "train_member"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# A run that keeps producing non-finite steps is failing, whatever the learning rate.
MAX_ROLLBACKS = 50
SETS = ("train", "valid", "test")
# The error sums of a step (see losses.error_sums), in the order they travel between processes.
SUM_KEYS = ("energy_sq", "energy_abs", "n_energy", "forces_sq", "forces_abs", "n_forces")
_GLOBAL_GENERATOR = threading.Lock()


def build_model(config: Config, species: Sequence[str], train: Sequence[Configuration], seed: int) -> HIPNN:
    """A fresh HIP-NN (seeded) with reference energies fit by least squares on ``train``.

    Thread-safe: the weights come from torch's global generator after seeding
    it, so two threads (members on a thread-pool executor) take turns.
    """
    m = config.model
    with _GLOBAL_GENERATOR:
        torch.manual_seed(seed)
        model = HIPNN(
            list(species), m.n_interactions, m.n_features, m.n_sensitivities, m.n_atom_layers,
            m.cutoff, m.dist_soft_min, m.dist_soft_max, m.activation,
        )
    with torch.no_grad():
        model.reference_energies.copy_(torch.from_numpy(fit_reference_energies(train, species)))
    return model.to(DTYPES[config.training.dtype])


def fit_offsets(model: HIPNN, cache: GraphCache, species_map: SpeciesMap, batch_size: int) -> None:
    """Sets the per-species reference energies (eV) to the least-squares fit of what the network's other
    levels leave of the labels of ``cache``, so that training starts without a constant energy error
    (the random read-outs of untrained features add tenths of an eV per atom)."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        model.reference_energies.zero_()
        network = [e for _, _, batch in batches(cache, species_map, batch_size, dtype)
                   for e in predict(model, batch, create_graph=False, forces=False).energy.tolist()]
        residuals = [dataclasses.replace(c, energy=c.energy - e) for c, e in zip(cache.configurations, network)]
        model.reference_energies.copy_(torch.from_numpy(fit_reference_energies(residuals, species_map.species)))


def member_model(config: Config, species: Sequence[str], train: Sequence[Configuration], member: int,
                 state: Dict[str, torch.Tensor]) -> HIPNN:
    """Ensemble member ``member`` rebuilt from its trained weights ``state``."""
    model = build_model(config, species, train, config.training.seed + 1000 * member)
    model.load_state_dict(state)
    return model


def _hessian_loss(config: Config, predictions, batch: Batch, generator: torch.Generator) -> torch.Tensor:
    """Projected (probes) or full Hessian loss, from full Hessian labels or stored probe pairs."""
    training = config.training
    if batch.hessians is not None:
        if training.hessian_mode == "full":
            return full_hessian_error(predictions, batch.hessians, batch)
        probes = sample_probes(batch, training.n_probes, training.probe_kind, generator)
        return hessian_vector_error(predictions, probes, reference_products(batch.hessians, probes, batch), batch)
    if batch.hvp_probes is not None:
        return hessian_vector_error(predictions, batch.hvp_probes, batch.hvp_products, batch)
    raise TrainingError("loss.hessian > 0 but some configurations have no Hessian labels (hessian or hvp pairs)")


def _rmse_share(weight: float, local_sq: torch.Tensor, global_sq: torch.Tensor, count: torch.Tensor,
                group: Group) -> torch.Tensor:
    """This process's share of ``weight`` · √(Σ squares / count) over the global batch: the shares add up
    to the RMSE over the processes, and their gradients to the RMSE's gradient."""
    if weight == 0 or count == 0:
        return local_sq.new_zeros(())
    # Clamped: a batch of one-atom cells has exactly zero force error, where sqrt's derivative is infinite.
    rmse = (global_sq / count).sqrt().clamp_min(1e-30).to(local_sq.dtype)
    return weight * (rmse / group.size + (local_sq - local_sq.detach()) / (2 * rmse * count.to(local_sq.dtype)))


def _loss(config: Config, model: HIPNN, batch: Batch, generator: torch.Generator,
          group: Group = Group()) -> Tuple[torch.Tensor, torch.Tensor]:
    """This process's part of the loss of the global minibatch (the whole loss for one process), and the
    global error sums (``SUM_KEYS``, detached): every term is normalised by the global batch."""
    weights = config.loss
    needs_forces = weights.forces_mse + weights.forces_rmse + weights.forces_mae + weights.hessian > 0
    predictions = predict(model, batch, create_graph=True, forces=needs_forces)
    sums = error_sums(predictions, batch)
    totals = group.sum(torch.stack([sums[key] for key in SUM_KEYS]))
    total_of = dict(zip(SUM_KEYS, totals))
    n_energy, n_forces = total_of["n_energy"], total_of["n_forces"]
    total = (weights.energy_mse * sums["energy_sq"] + weights.energy_mae * sums["energy_abs"]) / n_energy.item()
    total = total + _rmse_share(weights.energy_rmse, sums["energy_sq"], total_of["energy_sq"], n_energy, group)
    if n_forces > 0:
        total = total + (weights.forces_mse * sums["forces_sq"] + weights.forces_mae * sums["forces_abs"]) / n_forces.item()
        total = total + _rmse_share(weights.forces_rmse, sums["forces_sq"], total_of["forces_sq"], n_forces, group)
    share = batch.n_structures / n_energy.item()  # of the per-structure means below
    if weights.hierarchicality > 0:
        total = total + weights.hierarchicality * share * hierarchicality(predictions.level_totals)
    if weights.l2 > 0:
        l2 = sum(p.square().sum() for n, p in model.named_parameters() if "weight" in n)
        total = total + weights.l2 / group.size * l2
    if weights.hessian > 0:
        total = total + weights.hessian * share * _hessian_loss(config, predictions, batch, generator)
    return total, totals


def _finite(tensors) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


def _step(config: Config, model: HIPNN, optimizer: torch.optim.Optimizer, batch: Optional[Batch], generator,
          group: Group = Group()) -> Tuple[bool, torch.Tensor]:
    """One optimiser step on this process's part of a minibatch (None: an empty part); returns whether the
    loss, the gradients and the updated weights are finite on every process, and the global error sums."""
    optimizer.zero_grad()
    if batch is None:
        loss, totals = None, group.sum(torch.zeros(len(SUM_KEYS), dtype=torch.float64))
    else:
        loss, totals = _loss(config, model, batch, generator, group)
    if group.sum(torch.tensor([0.0 if loss is None or torch.isfinite(loss) else 1.0])).item() > 0:
        return False, totals
    if loss is not None:
        loss.backward()
    group.sum_gradients(model.parameters())
    if not _finite(p.grad for p in model.parameters()):
        return False, totals
    optimizer.step()
    return _finite(model.parameters()), totals


class WeightAverage:
    """An exponential moving average of a model's weights, updated after every step.

    The rate warms up (decay min(``decay``, (1 + t)/(10 + t)) at step t), so
    the first epochs are not dominated by the random initial weights. With
    ``decay`` 0 the average is the model itself.
    """

    def __init__(self, model: HIPNN, decay: float):
        self.decay, self.steps = decay, 0
        self.model = copy.deepcopy(model) if decay > 0 else model

    def update(self, model: HIPNN) -> None:
        if self.model is model:
            return
        self.steps += 1
        rate = 1 - min(self.decay, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            for average, weight in zip(self.model.parameters(), model.parameters()):
                average.lerp_(weight, rate)

    def state_dict(self) -> dict:
        return {"model": copy.deepcopy(self.model.state_dict()), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.steps = state["steps"]


def _roll_back(model: HIPNN, optimizer: torch.optim.Optimizer, averaged: WeightAverage, good: dict,
               training: TrainingConfig, where: str) -> None:
    """Restores the weights, their average and the optimiser of ``good`` with the learning rate lowered by
    ``lr_factor``; TrainingError once it would fall below ``min_learning_rate``."""
    learning_rate = optimizer.param_groups[0]["lr"] * training.lr_factor
    if learning_rate < training.min_learning_rate:
        raise TrainingError(
            f"training diverged: non-finite loss, gradients or weights at {where}, and lowering the learning "
            f"rate again would take it to {learning_rate:.3g}, below training.min_learning_rate "
            f"{training.min_learning_rate:g}; lower training.learning_rate or look for extreme labels in the data"
        )
    model.load_state_dict(good["model"])
    optimizer.load_state_dict(good["optimizer"])
    averaged.load_state_dict(good["averaged"])
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def _errors_from_sums(totals: torch.Tensor) -> Dict[str, Optional[float]]:
    """Energy errors (meV/atom) and force errors (eV/Å) from summed ``SUM_KEYS``; None where nothing was summed."""
    total_of = {key: float(value) for key, value in zip(SUM_KEYS, totals)}
    metrics: Dict[str, Optional[float]] = dict.fromkeys(("energy_rmse", "energy_mae", "forces_rmse", "forces_mae"))
    for name, scale in (("energy", 1000.0), ("forces", 1.0)):
        count = total_of[f"n_{name}"]
        if count > 0:
            metrics[f"{name}_rmse"] = scale * math.sqrt(total_of[f"{name}_sq"] / count)
            metrics[f"{name}_mae"] = scale * total_of[f"{name}_abs"] / count
    return metrics


def train_epoch(
    config: Config, model: HIPNN, optimizer: torch.optim.Optimizer, cache: GraphCache, species_map: SpeciesMap,
    member: int, epoch: int, averaged: Optional[WeightAverage] = None, group: Group = Group(),
) -> Tuple[int, Dict[str, Optional[float]]]:
    """One pass over ``cache`` in a shuffled order; returns how many steps were rolled back and the
    training errors of the epoch's minibatches (each taken before its step, so no second pass).

    The order depends only on (seed, member, epoch) and a batch's probes on
    (seed, member, epoch, batch), so a resumed run repeats an uninterrupted one
    exactly. Each process of ``group`` takes its part of every minibatch. A
    non-finite step rolls model, ``averaged`` and optimiser back to the start
    of the epoch and lowers the learning rate (see :func:`_roll_back`).
    """
    training = config.training
    averaged = averaged if averaged is not None else WeightAverage(model, 0.0)
    dtype = next(model.parameters()).dtype
    order = np.random.default_rng([training.seed, member, epoch]).permutation(len(cache))
    good = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
            "averaged": averaged.state_dict()}
    rollbacks, totals = 0, torch.zeros(len(SUM_KEYS), dtype=torch.float64)
    for start in range(0, len(order), training.batch_size):
        indices = group.shard(order[start : start + training.batch_size])
        batch = collate(cache, indices, species_map, dtype) if len(indices) else None
        seeds = np.random.SeedSequence([training.seed, member, epoch, start]).generate_state(1)
        finite, step_totals = _step(config, model, optimizer, batch, torch.Generator().manual_seed(int(seeds[0])),
                                    group)
        if finite:
            averaged.update(model)
            totals += step_totals
        else:
            _roll_back(model, optimizer, averaged, good, training,
                       f"epoch {epoch + 1}, batch {start // training.batch_size + 1}")
            rollbacks += 1
    return rollbacks, _errors_from_sums(totals)


def monitored_loss(config: Config, metrics: Dict[str, Optional[float]]) -> float:
    """The quantity that drives decay, early stopping and the best weights: the loss's energy and force
    terms, with RMSEs for the squared errors (eV/atom and eV/Å); NaN when the errors are not finite."""
    weights = config.loss
    if metrics["energy_rmse"] is None:
        return math.nan
    value = 0.0
    for name, scale in (("energy", 1e-3), ("forces", 1.0)):
        rmse, mae = metrics[f"{name}_rmse"], metrics[f"{name}_mae"]
        if rmse is not None:
            value += (getattr(weights, f"{name}_mse") * (scale * rmse) ** 2 + getattr(weights, f"{name}_rmse") * scale
                      * rmse + getattr(weights, f"{name}_mae") * scale * mae)
    return value


class MemberRun:
    """One ensemble member's training in ``directory``.

    Files: ``checkpoint.pt`` (after every epoch: weights, their average,
    optimiser, schedule, loop state, and the configuration and data
    fingerprint that a resume must match), ``best.pt`` (the averaged weights
    of the best monitored loss), ``metrics.jsonl`` (one line per epoch:
    ``train``, the errors of the epoch's minibatches as they were trained
    (forces: only when the loss uses them); ``valid``, the errors of the
    averaged weights, with full Hessians in the first, the last and every
    ``training.valid_hessian_every``-th epoch; ``seconds``, the epoch's wall
    time; ``null`` for errors a set cannot give). In a group of processes
    only rank 0 reads and writes them; the others receive what it read.
    """

    def __init__(self, config: Config, data: DataSplit, member: int, directory: str, group: Group = Group()):
        self.config, self.data, self.member, self.directory, self.group = config, data, member, directory, group
        training = config.training
        self.species_map = SpeciesMap(data.species)
        self.model = build_model(config, data.species, data.train.configurations, training.seed + 1000 * member)
        fit_offsets(self.model, data.train, self.species_map, training.batch_size)
        self.averaged = WeightAverage(self.model, training.ema_decay)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=training.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=training.lr_factor, patience=training.lr_patience, min_lr=training.min_learning_rate
        )
        self.state = {"epoch": 0, "best_loss": math.inf, "epochs_without_improvement": 0, "rollbacks": 0}
        self.checkpoint_path = os.path.join(directory, "checkpoint.pt")
        self.best_path = os.path.join(directory, "best.pt")
        self.log_path = os.path.join(directory, "metrics.jsonl")

    def start_from(self, weights_path: str) -> None:
        """Starts a new run from the weights of another run's ``best.pt`` (a warm start)."""
        self.model.load_state_dict(checkpoint.load(weights_path)["model"])
        self.averaged = WeightAverage(self.model, self.config.training.ema_decay)

    def _read_checkpoint(self) -> dict:
        """Rank 0's checkpoint (``{}`` if none) or the ResumeError it raised, for every process."""
        found: dict = {}
        if self.group.is_main:
            os.makedirs(self.directory, exist_ok=True)
            try:
                if os.path.exists(self.checkpoint_path):
                    found["saved"] = checkpoint.load(self.checkpoint_path)
                    checkpoint.check_resumable(found["saved"], self.config, self.data.fingerprint,
                                               self.checkpoint_path, self.directory)
                checkpoint.trim_log(self.log_path, found.get("saved", {}).get("state", {}).get("epoch", 0))
            except ResumeError as error:
                found = {"error": str(error)}
        return self.group.broadcast(found)

    def resume(self) -> None:
        """Continues from ``checkpoint.pt`` if there is one (refusing one of another run), else starts afresh."""
        found = self._read_checkpoint()
        if "error" in found:
            raise ResumeError(found["error"])
        saved = found.get("saved")
        if saved is not None:
            self.model.load_state_dict(saved["model"])
            self.averaged.load_state_dict(saved["averaged"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.state = {**self.state, **saved["state"]}
        elif self.group.size > 1:  # the same starting weights everywhere, whatever each process's generator did
            self.model.load_state_dict(self.group.broadcast(self.model.state_dict()))
            self.averaged = WeightAverage(self.model, self.config.training.ema_decay)

    def finished(self) -> bool:
        """Whether the run is over: ``max_epochs`` reached, or stopped early (checked before an epoch,
        so a resumed run that had stopped stays stopped)."""
        state, training = self.state, self.config.training
        stopped = state["epoch"] > 0 and state["epochs_without_improvement"] >= training.early_stopping_patience
        return stopped or state["epoch"] >= training.max_epochs

    def _validate(self) -> Dict[str, Optional[float]]:
        """Rank 0's errors of the averaged weights on the validation set, for every process."""
        training, epoch = self.config.training, self.state["epoch"] + 1
        hessians = epoch == 1 or epoch % training.valid_hessian_every == 0 or epoch == training.max_epochs
        valid = None
        if self.group.is_main:
            valid = evaluate(self.averaged.model, self.data.valid, self.species_map, training.batch_size, hessians)
            if not hessians and any(c.hessian is not None for c in self.data.valid.configurations):
                valid.update(hessian_rmse=None, hessian_mae=None)  # labelled, not computed this epoch
        return self.group.broadcast(valid)

    def run_epoch(self) -> dict:
        """Trains one epoch, evaluates, schedules, writes the log line and the checkpoints; returns the log line."""
        state = self.state
        started = time.perf_counter()
        rollbacks, train = train_epoch(self.config, self.model, self.optimizer, self.data.train, self.species_map,
                                       self.member, state["epoch"], self.averaged, self.group)
        state["rollbacks"] += rollbacks
        if state["rollbacks"] > MAX_ROLLBACKS:
            raise TrainingError(f"{self.directory}: more than {MAX_ROLLBACKS} non-finite steps in "
                                f"{state['epoch'] + 1} epochs; lower training.learning_rate or check the data")
        valid = self._validate()
        monitored = monitored_loss(self.config, valid if len(self.data.valid) else train)
        self.scheduler.step(monitored)
        improved = monitored < state["best_loss"]
        if improved:
            state.update(best_loss=monitored, epochs_without_improvement=0)
        else:
            state["epochs_without_improvement"] += 1
        state["epoch"] += 1
        record = {"epoch": state["epoch"], "learning_rate": self.optimizer.param_groups[0]["lr"],
                  "train": train, "valid": valid, "recoveries": rollbacks}
        if self.group.is_main:
            self._write(record, improved, started)
        return record

    def _write(self, record: dict, improved: bool, started: float) -> None:
        """The best weights (if ``improved``), the log line with the epoch's wall time, the checkpoint."""
        if improved:
            checkpoint.save({"model": self.averaged.model.state_dict(), "config": self.config.to_dict(),
                             "species": self.data.species}, self.best_path)
        checkpoint.save({"model": self.model.state_dict(), "averaged": self.averaged.state_dict(),
                         "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                         "state": self.state, "config": self.config.to_dict(),
                         "fingerprint": self.data.fingerprint}, self.checkpoint_path)
        record["seconds"] = time.perf_counter() - started
        write_json(record, self.log_path, mode="a")

    def best_model(self) -> HIPNN:
        """The model with the best (averaged) weights; TrainingError if no epoch gave a finite loss.
        Rank 0 only: the other processes of a group have no files to read."""
        which = "validation" if len(self.data.valid) else "training"
        if not math.isfinite(self.state["best_loss"]):
            raise TrainingError(
                f"{self.directory}: no epoch gave a finite {which} loss in {self.state['epoch']} epoch(s), so "
                "there is no model to export; lower training.learning_rate or look for extreme labels in the data"
            )
        self.model.load_state_dict(checkpoint.load(self.best_path)["model"])
        if not _finite(self.model.parameters()):
            raise TrainingError(f"{self.best_path} holds non-finite weights; delete {self.directory} and train again")
        return self.model


def _postfix(record: dict) -> Dict[str, str]:
    metrics = record["valid"] if record["valid"]["energy_rmse"] is not None else record["train"]
    return {key: "n/a" if metrics[key] is None else f"{metrics[key]:.3g}" for key in ("energy_rmse", "forces_rmse")}


def train_member(
    config: Config, data: DataSplit, member: int, directory: str, show_progress: bool = False,
    initial_weights: Optional[str] = None, group: Group = Group(),
) -> Optional[HIPNN]:
    """Trains ensemble member ``member`` in ``directory`` (resuming from its checkpoint if present)
    and returns the model with its best weights (see :class:`MemberRun` for the files); None on the
    processes of ``group`` other than rank 0.

    ``initial_weights``: a checkpoint (``best.pt``) whose weights a new run starts from (a warm start);
    ignored when resuming.
    """
    run = MemberRun(config, data, member, directory, group)
    if initial_weights and not os.path.exists(run.checkpoint_path):
        run.start_from(initial_weights)
    run.resume()
    progress = tqdm(total=config.training.max_epochs, initial=run.state["epoch"], desc=f"member {member}",
                    disable=not (show_progress and group.is_main))
    while not run.finished():
        progress.update()
        progress.set_postfix(_postfix(run.run_epoch()))
    progress.close()
    return run.best_model() if group.is_main else None


def _member_weights(config: Config, data: DataSplit, member: int, directory: str) -> Dict[str, torch.Tensor]:
    """A worker process's task: trains one member and returns its best weights."""
    return train_member(config, data, member, directory).state_dict()


def _start_worker(threads: int) -> None:
    """Settings of a member's worker process, which this module owns: its threads, and malloc
    reusing freed memory (as the ``mlip-md`` entry point does; see :mod:`mlip_md.tuning`)."""
    torch.set_num_threads(threads)
    tuning.keep_freed_memory()


def _train_members(config: Config, data: DataSplit, jobs: Sequence[Tuple[int, str]], show_progress: bool,
                   group: Group) -> List[Optional[HIPNN]]:
    """Trains the members of ``jobs`` ((member index, directory) pairs): in turn, or with
    ``training.workers`` > 1 in that many spawned processes with ``training.threads`` threads each
    (default: the cores shared out), which gives the same members as training them in turn with as
    many threads."""
    members = [m for m, _ in jobs]
    workers = min(config.training.workers, len(members))
    if workers == 1:
        return [train_member(config, data, m, directory, show_progress, group=group) for m, directory in jobs]
    threads = distributed.threads_per_process(config.training.threads, workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(_member_weights, config, data, m, directory) for m, directory in jobs]
        try:
            states = [future.result() for future in tqdm(futures, desc="members", disable=not show_progress)]
        except BrokenProcessPool as error:
            raise TrainingError(f"a worker process training members died ({error}); "
                                "run again to resume from the members' checkpoints") from error
    return [member_model(config, data.species, data.train.configurations, m, state) for m, state in zip(members, states)]


def teacher_forces(
    teachers: Sequence[HIPNN], cache: GraphCache, species: Sequence[str], batch_size: int = 16
) -> GraphCache:
    """A copy of ``cache`` whose configurations carry the teachers' mean forces (eV/Å)."""
    species_map = SpeciesMap(species)
    per_teacher = [[forces for _, forces, _ in model_outputs(t, cache, species_map, batch_size)] for t in teachers]
    labelled = [
        dataclasses.replace(c, forces=np.mean([forces[k] for forces in per_teacher], axis=0))
        for k, c in enumerate(cache.configurations)
    ]
    return GraphCache(labelled, cache.cutoff)


def _check_directory(config: Config, data: DataSplit, out: str) -> None:
    """Refuses, before training anything, an ``out`` whose checkpoints belong to another run."""
    names = [f"member_{m}" for m in range(config.ensemble.size)] + ["student"]
    for name in names:
        path = os.path.join(out, name, "checkpoint.pt")
        if os.path.exists(path):
            checkpoint.check_resumable(checkpoint.load(path), config, data.fingerprint, path, out)


def _summary(config: Config, data: DataSplit, predictions: List[Dict[str, SetPredictions]],
             distilled: Optional[List[Dict[str, SetPredictions]]]) -> Dict[str, object]:
    """Sizes of the sets and every member's errors on them, against the labels of the data files."""
    members = [{name: error_metrics(p) for name, p in sets.items()} for sets in predictions]
    labels = {"errors": "against the labels of the data files; null where a set has no such label"}
    if distilled is not None:
        labels["forces_vs_teachers"] = "the student's force errors against the teachers' mean forces, its training labels"
        for errors, sets in zip(members, distilled):
            for name, p in sets.items():
                vs_teachers = error_metrics(p)
                errors[name]["forces_vs_teachers"] = {"rmse": vs_teachers["forces_rmse"], "mae": vs_teachers["forces_mae"]}
    return json_values({"species": data.species, "n_train": len(data.train), "n_valid": len(data.valid),
                        "n_test": len(data.test), "labels": labels, "members": members})


def _export(config: Config, members: Sequence[HIPNN], path: str) -> str:
    return export(members if len(members) > 1 else members[0], path,
                  dtype=config.training.export_dtype, extra_metadata={"training_config": config.to_dict()})


def _predictions(config: Config, data: DataSplit, model: HIPNN, hessians: bool = True) -> Dict[str, SetPredictions]:
    species_map = SpeciesMap(data.species)
    return {name: predict_set(model, getattr(data, name), species_map, config.training.batch_size, hessians)
            for name in SETS}


def train(config: Config, out: str, show_progress: bool = True, group: Optional[Group] = None) -> Dict[str, object]:
    """Trains ``ensemble.size`` members, exports ``out/model.pt`` and writes ``out/metrics.json``.

    With ``ensemble.distill``: the members are teachers trained on the data as
    they are (typically energies only, exported to ``out/teachers.pt``); every
    configuration is then labelled with the teachers' mean forces and one
    student is trained on the true energies plus those forces (``out/model.pt``).
    Errors in ``metrics.json`` are against the data's own labels. A run that
    gives no finite model raises :class:`TrainingError` and exports nothing.

    ``group``: the processes that train together (see
    :mod:`mlip_md.train.distributed`; default: this one alone). Rank 0 writes
    every file and returns the summary; the others return ``{}``.
    """
    group = group if group is not None else Group()
    if group.size > 1 and config.training.workers > 1:
        raise TrainingError("training.workers > 1 trains members in separate processes and cannot be combined "
                            "with a torchrun launch, which splits each minibatch across processes; set it to 1")
    if group.is_main:
        os.makedirs(out, exist_ok=True)
    data = load_data(config)
    if group.is_main:
        _check_directory(config, data, out)
    jobs = [(m, os.path.join(out, f"member_{m}")) for m in range(config.ensemble.size)]
    members = _train_members(config, data, jobs, show_progress, group)
    extra, run_directory, distilled = {}, "member_0", None
    if config.ensemble.distill:
        labelled = None
        if group.is_main:
            extra["teachers"] = _export(config, members, os.path.join(out, "teachers.pt"))
            labelled = [teacher_forces(members, getattr(data, name), data.species, config.training.batch_size)
                        for name in SETS]
        student_data = DataSplit(*group.broadcast(labelled), data.species, data.fingerprint)
        student = [(config.ensemble.size, os.path.join(out, "student"))]
        members = _train_members(config, student_data, student, show_progress, group)
        if group.is_main:
            distilled = [_predictions(config, student_data, members[0], hessians=False)]
        run_directory = "student"
    if not group.is_main:
        return {}
    predictions = [_predictions(config, data, m) for m in members]
    summary = {**_summary(config, data, predictions, distilled), **extra}
    summary["model"] = _export(config, members, os.path.join(out, "model.pt"))
    summary["plots"] = _plots(data, predictions[0], out, run_directory)
    write_json(summary, os.path.join(out, "metrics.json"))
    return summary


def _plots(data: DataSplit, predictions: Dict[str, SetPredictions], out: str, run_directory: str) -> List[str]:
    """Learning curves of ``run_directory`` and parity plots on the test set (validation set if there is none)."""
    curves = os.path.join(out, "learning_curves.png")
    paths = [plot_learning_curves(os.path.join(out, run_directory, "metrics.jsonl"), curves)]
    name, key = ("test set", "test") if len(data.test) else ("validation set", "valid")
    p = predictions[key]
    if p.n_atoms.size:
        paths.append(plot_parity(p.reference_energy_per_atom, p.energy_per_atom, p.reference_forces, p.forces,
                                 os.path.join(out, "parity.png"), title=name))
        if p.hessian.size:
            paths.append(plot_hessian_parity(p.reference_hessian, p.hessian, os.path.join(out, "parity_hessian.png"), name))
    return paths
