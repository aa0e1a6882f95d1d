"""Training: minibatch steps with recovery from non-finite values, one member's run with
exact resume, and :func:`train`, which trains an ensemble (or distils it) and exports it.

Parts: :func:`train_epoch` (one shuffled pass with rollback), :class:`MemberRun`
(a member's model, optimiser, schedule, checkpoints and log),
:func:`train_member` (runs one to the end), :func:`train` (every member, the
summary, the plots and the exported file). Data are read and checked in
:mod:`mlip_md.train.splits`, errors computed in :mod:`mlip_md.train.metrics`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import threading
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mlip_md.data import GraphCache, fit_reference_energies
from mlip_md.data.batch import Batch, batches
from mlip_md.data.dataset import Configuration
from mlip_md.export import export
from mlip_md.model.hipnn import HIPNN, hierarchicality
from mlip_md.species import SpeciesMap
from mlip_md.train import checkpoint
from mlip_md.train.config import Config, TrainingConfig
from mlip_md.train.errors import TrainingError
from mlip_md.train.losses import (
    energy_force_errors,
    full_hessian_error,
    hessian_vector_error,
    predict,
    reference_products,
    sample_probes,
)
from mlip_md.train.metrics import SetPredictions, error_metrics, evaluate, json_values, model_outputs, predict_set, write_json
from mlip_md.train.plots import plot_hessian_parity, plot_learning_curves, plot_parity
from mlip_md.train.splits import DataSplit, load_data

__all__ = ["DataSplit", "MemberRun", "build_model", "evaluate", "load_data", "teacher_forces", "train",
           "train_epoch", "train_member"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# A run that keeps producing non-finite steps is failing, whatever the learning rate.
MAX_ROLLBACKS = 50
SETS = ("train", "valid", "test")
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


def _loss(config: Config, model: HIPNN, batch: Batch, generator: torch.Generator) -> tuple:
    predictions = predict(model, batch, create_graph=True)
    errors = energy_force_errors(predictions, batch)
    weights = config.loss
    total = weights.energy_rmse * errors["energy_rmse"] + weights.energy_mae * errors["energy_mae"]
    if "forces_rmse" in errors:
        total = total + weights.forces_rmse * errors["forces_rmse"] + weights.forces_mae * errors["forces_mae"]
    if weights.hierarchicality > 0:
        total = total + weights.hierarchicality * hierarchicality(predictions.level_totals)
    if weights.l2 > 0:
        total = total + weights.l2 * sum(p.square().sum() for n, p in model.named_parameters() if "weight" in n)
    if weights.hessian > 0:
        total = total + weights.hessian * _hessian_loss(config, predictions, batch, generator)
    return total, errors


def _finite(tensors) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


def _step(config: Config, model: HIPNN, optimizer: torch.optim.Optimizer, batch: Batch, generator) -> bool:
    """One optimiser step; False if the loss, the gradients or the updated weights are not finite."""
    optimizer.zero_grad()
    loss, _ = _loss(config, model, batch, generator)
    if not torch.isfinite(loss):
        return False
    loss.backward()
    if not _finite(p.grad for p in model.parameters()):
        return False
    optimizer.step()
    return _finite(model.parameters())


def _roll_back(model: HIPNN, optimizer: torch.optim.Optimizer, good: dict, training: TrainingConfig, where: str) -> None:
    """Restores the weights and optimiser of ``good`` with the learning rate lowered by ``lr_factor``;
    TrainingError once it would fall below ``min_learning_rate``."""
    learning_rate = optimizer.param_groups[0]["lr"] * training.lr_factor
    if learning_rate < training.min_learning_rate:
        raise TrainingError(
            f"training diverged: non-finite loss, gradients or weights at {where}, and lowering the learning "
            f"rate again would take it to {learning_rate:.3g}, below training.min_learning_rate "
            f"{training.min_learning_rate:g}; lower training.learning_rate or look for extreme labels in the data"
        )
    model.load_state_dict(good["model"])
    optimizer.load_state_dict(good["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def train_epoch(
    config: Config, model: HIPNN, optimizer: torch.optim.Optimizer, cache: GraphCache, species_map: SpeciesMap,
    member: int, epoch: int,
) -> int:
    """One pass over ``cache`` in a shuffled order; returns how many steps were rolled back.

    The order depends only on (seed, member, epoch) and a batch's probes on
    (seed, member, epoch, batch), so a resumed run repeats an uninterrupted one
    exactly. A non-finite step rolls model and optimiser back to the start of
    the epoch and lowers the learning rate (see :func:`_roll_back`).
    """
    training = config.training
    dtype = next(model.parameters()).dtype
    order = np.random.default_rng([training.seed, member, epoch]).permutation(len(cache))
    good = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}
    rollbacks = 0
    for start, _, batch in batches(cache, species_map, training.batch_size, dtype, order):
        seeds = np.random.SeedSequence([training.seed, member, epoch, start]).generate_state(1)
        if not _step(config, model, optimizer, batch, torch.Generator().manual_seed(int(seeds[0]))):
            _roll_back(model, optimizer, good, training, f"epoch {epoch + 1}, batch {start // training.batch_size + 1}")
            rollbacks += 1
    return rollbacks


def monitored_loss(config: Config, metrics: Dict[str, Optional[float]]) -> float:
    """The quantity that drives decay, early stopping and the best weights (eV/atom and eV/Å
    weighted as in the loss); NaN when the errors are not finite."""
    energy, forces = metrics["energy_rmse"], metrics["forces_rmse"]
    value = math.nan if energy is None else config.loss.energy_rmse * energy / 1000
    return value + (config.loss.forces_rmse * forces if forces is not None else 0.0)


class MemberRun:
    """One ensemble member's training in ``directory``.

    Files: ``checkpoint.pt`` (after every epoch: weights, optimiser, schedule,
    loop state, and the configuration and data fingerprint that a resume must
    match), ``best.pt`` (the weights of the best monitored loss),
    ``metrics.jsonl`` (one line per epoch; ``null`` for errors a set cannot give).
    """

    def __init__(self, config: Config, data: DataSplit, member: int, directory: str):
        self.config, self.data, self.member, self.directory = config, data, member, directory
        training = config.training
        self.species_map = SpeciesMap(data.species)
        self.model = build_model(config, data.species, data.train.configurations, training.seed + 1000 * member)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=training.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=training.lr_factor, patience=training.lr_patience, min_lr=training.min_learning_rate
        )
        self.state = {"epoch": 0, "best_loss": math.inf, "epochs_without_improvement": 0, "rollbacks": 0}
        self.checkpoint_path = os.path.join(directory, "checkpoint.pt")
        self.best_path = os.path.join(directory, "best.pt")
        self.log_path = os.path.join(directory, "metrics.jsonl")

    def resume(self) -> None:
        """Continues from ``checkpoint.pt`` if there is one (refusing one of another run), else starts afresh."""
        os.makedirs(self.directory, exist_ok=True)
        if os.path.exists(self.checkpoint_path):
            saved = checkpoint.load(self.checkpoint_path)
            checkpoint.check_resumable(saved, self.config, self.data.fingerprint, self.checkpoint_path, self.directory)
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.state = {**self.state, **saved["state"]}
        checkpoint.trim_log(self.log_path, self.state["epoch"])

    def finished(self) -> bool:
        """Whether the run is over: ``max_epochs`` reached, or stopped early (checked before an epoch,
        so a resumed run that had stopped stays stopped)."""
        state, training = self.state, self.config.training
        stopped = state["epoch"] > 0 and state["epochs_without_improvement"] >= training.early_stopping_patience
        return stopped or state["epoch"] >= training.max_epochs

    def run_epoch(self) -> dict:
        """Trains one epoch, evaluates, schedules, writes the log line and the checkpoints; returns the log line."""
        state, training = self.state, self.config.training
        rollbacks = train_epoch(self.config, self.model, self.optimizer, self.data.train, self.species_map,
                                self.member, state["epoch"])
        state["rollbacks"] += rollbacks
        if state["rollbacks"] > MAX_ROLLBACKS:
            raise TrainingError(f"{self.directory}: more than {MAX_ROLLBACKS} non-finite steps in "
                                f"{state['epoch'] + 1} epochs; lower training.learning_rate or check the data")
        # Full Hessians only on the (small) validation set; on the training set they would cost more than training.
        valid = evaluate(self.model, self.data.valid, self.species_map, training.batch_size)
        train = evaluate(self.model, self.data.train, self.species_map, training.batch_size, hessians=False)
        monitored = monitored_loss(self.config, valid if len(self.data.valid) else train)
        self.scheduler.step(monitored)
        if monitored < state["best_loss"]:
            state.update(best_loss=monitored, epochs_without_improvement=0)
            checkpoint.save({"model": self.model.state_dict(), "config": self.config.to_dict(),
                             "species": self.data.species}, self.best_path)
        else:
            state["epochs_without_improvement"] += 1
        state["epoch"] += 1
        record = {"epoch": state["epoch"], "learning_rate": self.optimizer.param_groups[0]["lr"],
                  "train": train, "valid": valid, "recoveries": rollbacks}
        write_json(record, self.log_path, mode="a")
        checkpoint.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(), "state": state, "config": self.config.to_dict(),
                         "fingerprint": self.data.fingerprint}, self.checkpoint_path)
        return record

    def best_model(self) -> HIPNN:
        """The model with the best weights; TrainingError if no epoch gave a finite loss."""
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
    initial_weights: Optional[str] = None,
) -> HIPNN:
    """Trains ensemble member ``member`` in ``directory`` (resuming from its checkpoint if present)
    and returns the model with its best weights (see :class:`MemberRun` for the files).

    ``initial_weights``: a checkpoint (``best.pt``) whose weights a new run starts from (a warm start);
    ignored when resuming.
    """
    run = MemberRun(config, data, member, directory)
    if initial_weights and not os.path.exists(run.checkpoint_path):
        run.model.load_state_dict(checkpoint.load(initial_weights)["model"])
    run.resume()
    progress = tqdm(total=config.training.max_epochs, initial=run.state["epoch"], desc=f"member {member}",
                    disable=not show_progress)
    while not run.finished():
        progress.update()
        progress.set_postfix(_postfix(run.run_epoch()))
    progress.close()
    return run.best_model()


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


def train(config: Config, out: str, show_progress: bool = True) -> Dict[str, object]:
    """Trains ``ensemble.size`` members, exports ``out/model.pt`` and writes ``out/metrics.json``.

    With ``ensemble.distill``: the members are teachers trained on the data as
    they are (typically energies only, exported to ``out/teachers.pt``); every
    configuration is then labelled with the teachers' mean forces and one
    student is trained on the true energies plus those forces (``out/model.pt``).
    Errors in ``metrics.json`` are against the data's own labels. A run that
    gives no finite model raises :class:`TrainingError` and exports nothing.
    """
    os.makedirs(out, exist_ok=True)
    data = load_data(config)
    _check_directory(config, data, out)
    members = [train_member(config, data, m, os.path.join(out, f"member_{m}"), show_progress)
               for m in range(config.ensemble.size)]
    extra, run_directory, distilled = {}, "member_0", None
    if config.ensemble.distill:
        extra["teachers"] = _export(config, members, os.path.join(out, "teachers.pt"))
        labelled = [teacher_forces(members, getattr(data, name), data.species, config.training.batch_size)
                    for name in SETS]
        student_data = DataSplit(*labelled, data.species, data.fingerprint)
        members = [train_member(config, student_data, config.ensemble.size, os.path.join(out, "student"), show_progress)]
        distilled = [_predictions(config, student_data, members[0], hessians=False)]
        run_directory = "student"
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
