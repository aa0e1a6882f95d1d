"""PNG plots of a training run: learning curves and parity plots."""

from __future__ import annotations

import json
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_learning_curves(metrics_path: str, out_path: str) -> str:
    """Train and validation energy (meV/atom) and force (eV/Å) RMSE per epoch, from ``metrics.jsonl``."""
    records = [json.loads(line) for line in open(metrics_path)]
    epochs = [r["epoch"] for r in records]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    for axis, key, unit in zip(axes, ("energy_rmse", "forces_rmse"), ("meV/atom", "eV/Å")):
        for split in ("train", "valid"):
            axis.plot(epochs, [r[split][key] for r in records], label=split)
        axis.set_yscale("log")
        axis.set_xlabel("epoch")
        axis.set_ylabel(f"{key.replace('_', ' ')} ({unit})")
        axis.legend()
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
    return out_path


def plot_parity(
    reference_energies: Sequence[float],
    predicted_energies: Sequence[float],
    reference_forces: np.ndarray,
    predicted_forces: np.ndarray,
    out_path: str,
    title: str = "test set",
) -> str:
    """Parity plots: per-atom energies (eV/atom) and force components (eV/Å)."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.2), constrained_layout=True)
    pairs = [
        (np.asarray(reference_energies), np.asarray(predicted_energies), "energy", "eV/atom"),
        (np.ravel(reference_forces), np.ravel(predicted_forces), "force component", "eV/Å"),
    ]
    for axis, (reference, predicted, label, unit) in zip(axes, pairs):
        if reference.size == 0:
            axis.set_visible(False)
            continue
        low, high = min(reference.min(), predicted.min()), max(reference.max(), predicted.max())
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
        axis.scatter(reference, predicted, s=4, alpha=0.6)
        rmse = float(np.sqrt(np.mean((predicted - reference) ** 2)))
        axis.set_title(f"{title}: RMSE {rmse:.3g} {unit}")
        axis.set_xlabel(f"reference {label} ({unit})")
        axis.set_ylabel(f"model {label} ({unit})")
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
    return out_path


def plot_hessian_parity(reference: np.ndarray, predicted: np.ndarray, out_path: str, title: str = "test set") -> str:
    """Parity plot of Hessian elements (eV/Å²)."""
    figure, axis = plt.subplots(figsize=(4.6, 4.2), constrained_layout=True)
    low, high = min(reference.min(), predicted.min()), max(reference.max(), predicted.max())
    axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
    axis.scatter(reference, predicted, s=2, alpha=0.4)
    rmse = float(np.sqrt(np.mean((predicted - reference) ** 2)))
    axis.set_title(f"{title}: RMSE {rmse:.3g} eV/Å²")
    axis.set_xlabel("reference Hessian element (eV/Å²)")
    axis.set_ylabel("model Hessian element (eV/Å²)")
    figure.savefig(out_path, dpi=120)
    plt.close(figure)
    return out_path


def hessian_parity_data(model, cache, species_map, batch_size: int):
    """Reference and model Hessian elements over a set with Hessian labels (flat arrays)."""
    from mlip_md.data import collate
    from mlip_md.train.losses import batch_hessians, predict

    dtype = next(model.parameters()).dtype
    reference, predicted = [], []
    for start in range(0, len(cache), batch_size):
        batch = collate(cache, range(start, min(start + batch_size, len(cache))), species_map, dtype)
        if batch.hessians is None:
            continue
        model_hessians = batch_hessians(predict(model, batch, create_graph=True), batch)
        reference += [h.numpy().ravel() for h in batch.hessians]
        predicted += [h.detach().numpy().ravel() for h in model_hessians]
    if not reference:
        return np.empty(0), np.empty(0)
    return np.concatenate(reference), np.concatenate(predicted)


def parity_data(model, cache, species_map, batch_size: int):
    """Reference and predicted per-atom energies and forces over a set (for :func:`plot_parity`)."""
    from mlip_md.data import collate
    from mlip_md.train.losses import predict

    dtype = next(model.parameters()).dtype
    ref_e, pred_e, ref_f, pred_f = [], [], [], []
    for start in range(0, len(cache), batch_size):
        batch = collate(cache, range(start, min(start + batch_size, len(cache))), species_map, dtype)
        predictions = predict(model, batch, create_graph=False)
        n_atoms = batch.n_atoms.to(dtype)
        ref_e += (batch.energy / n_atoms).tolist()
        pred_e += (predictions.energy.detach() / n_atoms).tolist()
        if batch.forces is not None:
            ref_f.append(batch.forces.numpy())
            pred_f.append(predictions.forces.detach().numpy())
    forces = (np.concatenate(ref_f), np.concatenate(pred_f)) if ref_f else (np.empty(0), np.empty(0))
    return ref_e, pred_e, forces[0], forces[1]
