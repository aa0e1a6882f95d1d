"""Training loop: minibatches, validation, learning-rate decay, early stopping,
checkpoints with exact resume, and recovery from non-finite losses.

One member of an ensemble is trained by :func:`train_member`; :func:`train`
trains every member of a :class:`~mlip_md.train.config.Config` and exports them
as one file.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols
from tqdm import tqdm

from mlip_md.data import GraphCache, collate, fit_reference_energies, read_configurations, split_indices
from mlip_md.data.dataset import Configuration
from mlip_md.export import export
from mlip_md.model.hipnn import HIPNN, hierarchicality
from mlip_md.species import SpeciesMap
from mlip_md.train.config import Config
from mlip_md.train.losses import (
    energy_force_errors,
    full_hessian_error,
    hessian_vector_error,
    predict,
    reference_products,
    sample_probes,
)
from mlip_md.train.plots import (
    hessian_parity_data,
    parity_data,
    plot_hessian_parity,
    plot_learning_curves,
    plot_parity,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class DataSplit:
    """Configurations of the three sets, with their neighbour lists cached once."""

    train: GraphCache
    valid: GraphCache
    test: GraphCache
    species: List[str]


def load_data(config: Config) -> DataSplit:
    """Reads the data files of ``config`` and splits them reproducibly (``training.seed``)."""
    data = config.data
    configurations = read_configurations(data.train, data.energy_key, data.forces_key, require_forces=False)
    test_fraction = 0.0 if data.test else data.test_fraction
    train_index, valid_index, test_index = split_indices(
        len(configurations), data.valid_fraction, test_fraction, config.training.seed
    )
    test = [configurations[k] for k in test_index]
    if data.test:
        test = read_configurations(data.test, data.energy_key, data.forces_key, require_forces=False)
    species = config.model.species or sorted(
        {chemical_symbols[z] for c in configurations for z in np.unique(c.numbers)}
    )
    cutoff = config.model.cutoff
    return DataSplit(
        GraphCache([configurations[k] for k in train_index], cutoff),
        GraphCache([configurations[k] for k in valid_index], cutoff),
        GraphCache(test, cutoff),
        list(species),
    )


def build_model(config: Config, species: Sequence[str], train: Sequence[Configuration], seed: int) -> HIPNN:
    """A fresh HIP-NN (seeded) with reference energies fit by least squares on ``train``."""
    torch.manual_seed(seed)
    m = config.model
    model = HIPNN(
        list(species), m.n_interactions, m.n_features, m.n_sensitivities, m.n_atom_layers,
        m.cutoff, m.dist_soft_min, m.dist_soft_max, m.activation,
    )
    with torch.no_grad():
        model.reference_energies.copy_(torch.from_numpy(fit_reference_energies(train, species)))
    return model.to(DTYPES[config.training.dtype])


def _hessian_loss(config: Config, predictions, batch, generator: torch.Generator) -> torch.Tensor:
    """Projected (probes) or full Hessian loss, from full Hessian labels or stored probe pairs."""
    training = config.training
    if batch.hessians is not None:
        if training.hessian_mode == "full":
            return full_hessian_error(predictions, batch.hessians, batch)
        probes = sample_probes(batch, training.n_probes, training.probe_kind, generator)
        return hessian_vector_error(predictions, probes, reference_products(batch.hessians, probes, batch), batch)
    if batch.hvp_probes is not None:
        return hessian_vector_error(predictions, batch.hvp_probes, batch.hvp_products, batch)
    raise ValueError("loss.hessian > 0 but some configurations have no Hessian labels (hessian or hvp pairs)")


def _loss(config: Config, model: HIPNN, batch, generator: torch.Generator) -> tuple:
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


def evaluate(
    model: HIPNN, cache: GraphCache, species_map: SpeciesMap, batch_size: int, hessians: bool = True
) -> Dict[str, float]:
    """Errors over a whole set: energies in meV/atom, forces in eV/Å (``nan`` when a set is empty),
    and, with ``hessians`` and Hessian labels, ``hessian_rmse`` in eV/Å² (3n passes per structure)."""
    if len(cache) == 0:
        return {"energy_rmse": math.nan, "energy_mae": math.nan, "forces_rmse": math.nan, "forces_mae": math.nan}
    dtype = next(model.parameters()).dtype
    energy_errors, force_errors, hessian_squares = [], [], []
    for start in range(0, len(cache), batch_size):
        batch = collate(cache, range(start, min(start + batch_size, len(cache))), species_map, dtype)
        with_hessians = hessians and batch.hessians is not None
        predictions = predict(model, batch, create_graph=with_hessians)
        energy_errors.append(((predictions.energy - batch.energy) / batch.n_atoms).detach())
        if batch.forces is not None:
            force_errors.append((predictions.forces - batch.forces).detach().reshape(-1))
        if with_hessians:
            hessian_squares.append(full_hessian_error(predictions, batch.hessians, batch).detach().item())
    energy = torch.cat(energy_errors)
    metrics = {"energy_rmse": 1000 * energy.square().mean().sqrt().item(), "energy_mae": 1000 * energy.abs().mean().item()}
    forces = torch.cat(force_errors) if force_errors else torch.full((1,), math.nan)
    metrics.update(forces_rmse=forces.square().mean().sqrt().item(), forces_mae=forces.abs().mean().item())
    if hessian_squares:  # eV/Å², RMSE over Hessian elements (batches weighted equally)
        metrics["hessian_rmse"] = math.sqrt(float(np.mean(hessian_squares)))
    return metrics


def _save(state: dict, path: str) -> None:
    """Writes a checkpoint atomically, so an interrupted run never corrupts the last good one."""
    temporary = path + ".partial"
    torch.save(state, temporary)
    os.replace(temporary, path)


def _finite_gradients(model: HIPNN) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def train_member(
    config: Config, data: DataSplit, member: int, directory: str, show_progress: bool = False
) -> HIPNN:
    """Trains ensemble member ``member`` in ``directory`` (resuming from its checkpoint if present).

    Files: ``checkpoint.pt`` (last epoch, for resume), ``best.pt`` (best
    validation loss), ``metrics.jsonl`` (one line per epoch). Returns the model
    with the best validation weights.
    """
    os.makedirs(directory, exist_ok=True)
    training = config.training
    seed = training.seed + 1000 * member
    species_map = SpeciesMap(data.species)
    dtype = DTYPES[training.dtype]
    model = build_model(config, data.species, data.train.configurations, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=training.lr_factor, patience=training.lr_patience, min_lr=training.min_learning_rate
    )
    state = {"epoch": 0, "best_loss": math.inf, "epochs_without_improvement": 0}
    checkpoint_path = os.path.join(directory, "checkpoint.pt")
    if os.path.exists(checkpoint_path):
        saved = torch.load(checkpoint_path, weights_only=True)
        _check_resumable(saved, config, checkpoint_path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
    metrics_path = os.path.join(directory, "metrics.jsonl")
    progress = tqdm(range(state["epoch"], training.max_epochs), desc=f"member {member}", disable=not show_progress)
    for epoch in progress:
        order = np.random.default_rng([training.seed, member, epoch]).permutation(len(data.train))
        good = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict())}
        recoveries = 0
        for start in range(0, len(order), training.batch_size):
            batch = collate(data.train, order[start : start + training.batch_size], species_map, dtype)
            optimizer.zero_grad()
            # Probes depend only on (seed, member, epoch, batch): resumed runs draw the same ones.
            seeds = np.random.SeedSequence([training.seed, member, epoch, start]).generate_state(1)
            generator = torch.Generator().manual_seed(int(seeds[0]))
            loss, _ = _loss(config, model, batch, generator)
            if torch.isfinite(loss):
                loss.backward()
            if not torch.isfinite(loss) or not _finite_gradients(model):
                # Roll back to the start of the epoch and lower the learning rate.
                model.load_state_dict(good["model"])
                optimizer.load_state_dict(good["optimizer"])
                for group in optimizer.param_groups:
                    group["lr"] *= training.lr_factor
                recoveries += 1
                continue
            optimizer.step()
        # Full Hessians only for the (small) validation set: on the training
        # set they would cost far more than the probe-based training itself.
        valid = evaluate(model, data.valid, species_map, training.batch_size)
        train_metrics = evaluate(model, data.train, species_map, training.batch_size, hessians=False)
        monitored = _monitored_loss(config, valid if len(data.valid) else train_metrics)
        scheduler.step(monitored)
        improved = monitored < state["best_loss"]
        if improved:
            state["best_loss"] = monitored
            state["epochs_without_improvement"] = 0
            _save({"model": model.state_dict(), "config": config.to_dict(), "species": data.species}, os.path.join(directory, "best.pt"))
        else:
            state["epochs_without_improvement"] += 1
        state["epoch"] = epoch + 1
        record = {
            "epoch": epoch + 1,
            "learning_rate": optimizer.param_groups[0]["lr"],
            "train": train_metrics,
            "valid": valid,
            "recoveries": recoveries,
        }
        with open(metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "state": state, "config": config.to_dict()}, checkpoint_path)
        progress.set_postfix(valid_E=f"{valid['energy_rmse']:.2f}", valid_F=f"{valid['forces_rmse']:.3f}")
        if state["epochs_without_improvement"] >= training.early_stopping_patience:
            break
    best_path = os.path.join(directory, "best.pt")
    if not os.path.exists(best_path):  # validation never finite: keep the last weights
        _save({"model": model.state_dict(), "config": config.to_dict(), "species": data.species}, best_path)
    model.load_state_dict(torch.load(best_path, weights_only=True)["model"])
    return model


def _check_resumable(saved: dict, config: Config, path: str) -> None:
    """Refuses to resume a checkpoint written for other data, model or losses."""
    current = config.to_dict()
    changed = [name for name in ("data", "model", "loss") if saved.get("config", {}).get(name) != current[name]]
    if changed:
        raise ValueError(
            f"{path} was written with different {', '.join(changed)} settings; "
            "resume with the original configuration or choose a new output directory"
        )


def _monitored_loss(config: Config, metrics: Dict[str, float]) -> float:
    """The validation quantity that drives decay, early stopping and the best checkpoint."""
    value = config.loss.energy_rmse * metrics["energy_rmse"] / 1000
    if not math.isnan(metrics["forces_rmse"]):
        value += config.loss.forces_rmse * metrics["forces_rmse"]
    return value


def _summary(config: Config, data: DataSplit, members: Sequence[HIPNN]) -> Dict[str, object]:
    species_map = SpeciesMap(data.species)
    sets = (("train", data.train), ("valid", data.valid), ("test", data.test))
    return {
        "species": data.species,
        "n_train": len(data.train),
        "n_valid": len(data.valid),
        "n_test": len(data.test),
        "members": [
            {name: evaluate(m, cache, species_map, config.training.batch_size) for name, cache in sets}
            for m in members
        ],
    }


def _export(config: Config, members: Sequence[HIPNN], path: str) -> str:
    return export(members if len(members) > 1 else members[0], path,
                  dtype=config.training.export_dtype, extra_metadata={"training_config": config.to_dict()})


def teacher_forces(teachers: Sequence[HIPNN], cache: GraphCache, species: Sequence[str]) -> GraphCache:
    """A copy of ``cache`` whose configurations carry the teachers' mean forces (eV/Å)."""
    species_map = SpeciesMap(species)
    dtype = next(teachers[0].parameters()).dtype
    labelled = []
    for index, configuration in enumerate(cache.configurations):
        batch = collate(cache, [index], species_map, dtype)
        forces = torch.stack([predict(t, batch, create_graph=False).forces.detach() for t in teachers]).mean(0)
        labelled.append(dataclasses.replace(configuration, forces=forces.double().numpy()))
    return GraphCache(labelled, cache.cutoff)


def train(config: Config, out: str, show_progress: bool = True) -> Dict[str, object]:
    """Trains ``ensemble.size`` members, exports ``out/model.pt`` and writes ``out/metrics.json``.

    With ``ensemble.distill``: the members are teachers trained on the data as
    they are (typically energies only, exported to ``out/teachers.pt``); every
    configuration is then labelled with the teachers' mean forces and one
    student is trained on the true energies plus those forces (``out/model.pt``).
    """
    os.makedirs(out, exist_ok=True)
    data = load_data(config)
    members = [
        train_member(config, data, member, os.path.join(out, f"member_{member}"), show_progress)
        for member in range(config.ensemble.size)
    ]
    distilled = None
    if config.ensemble.distill:
        teachers_path = _export(config, members, os.path.join(out, "teachers.pt"))
        distilled = DataSplit(*(teacher_forces(members, cache, data.species) for cache in (data.train, data.valid, data.test)),
                              data.species)
        members = [train_member(config, distilled, config.ensemble.size, os.path.join(out, "student"), show_progress)]
    summary = _summary(config, distilled or data, members)
    summary["model"] = _export(config, members, os.path.join(out, "model.pt"))
    if distilled is not None:
        summary["teachers"] = teachers_path
    run_directory = "student" if distilled is not None else "member_0"
    summary["plots"] = _plots(config, distilled or data, members[0], out, run_directory)
    with open(os.path.join(out, "metrics.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    return summary


def _plots(config: Config, data: DataSplit, model: HIPNN, out: str, run_directory: str) -> List[str]:
    """Learning curves of ``run_directory`` and parity plots on the test set (validation set if there is none)."""
    curves = os.path.join(out, "learning_curves.png")
    paths = [plot_learning_curves(os.path.join(out, run_directory, "metrics.jsonl"), curves)]
    name, cache = ("test set", data.test) if len(data.test) else ("validation set", data.valid)
    if len(cache):
        species_map = SpeciesMap(data.species)
        values = parity_data(model, cache, species_map, config.training.batch_size)
        paths.append(plot_parity(*values, os.path.join(out, "parity.png"), title=name))
        reference, predicted = hessian_parity_data(model, cache, species_map, config.training.batch_size)
        if reference.size:
            paths.append(plot_hessian_parity(reference, predicted, os.path.join(out, "parity_hessian.png"), name))
    return paths
