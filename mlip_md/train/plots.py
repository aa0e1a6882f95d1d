"""PNG plots of a training run: learning curves and parity plots.

The figures are :class:`matplotlib.figure.Figure` objects saved directly, never
pyplot's, so that plotting leaves the caller's backend and open figures alone.
The functions receive values, not models: predictions come from
:func:`mlip_md.train.metrics.predict_set`.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure


def _values(records: Sequence[dict], split: str, key: str) -> np.ndarray:
    """One metric per epoch, NaN where the log holds null (a quantity the set cannot give)."""
    return np.array([np.nan if r[split].get(key) is None else r[split][key] for r in records], dtype=float)


def plot_learning_curves(metrics_path: str, out_path: str) -> str:
    """Train and validation energy (meV/atom) and force (eV/Å) RMSE per epoch, from ``metrics.jsonl``."""
    with open(metrics_path) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    epochs = [r["epoch"] for r in records]
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    for axis, key, unit in zip(figure.subplots(1, 2), ("energy_rmse", "forces_rmse"), ("meV/atom", "eV/Å")):
        for split in ("train", "valid"):
            values = _values(records, split, key)
            if np.isfinite(values).any():
                axis.plot(epochs, values, label=split)
        axis.set_yscale("log")
        axis.set_xlabel("epoch")
        axis.set_ylabel(f"{key.replace('_', ' ')} ({unit})")
        if axis.lines:
            axis.legend()
    figure.savefig(out_path, dpi=120)
    return out_path


def _parity(axis, reference: np.ndarray, predicted: np.ndarray, label: str, unit: str, title: str,
            size: float = 4, alpha: float = 0.6) -> None:
    """Model against reference on ``axis``, with the diagonal and the RMSE in the title."""
    low, high = min(reference.min(), predicted.min()), max(reference.max(), predicted.max())
    axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
    axis.scatter(reference, predicted, s=size, alpha=alpha)
    rmse = float(np.sqrt(np.mean((predicted - reference) ** 2)))
    axis.set_title(f"{title}: RMSE {rmse:.3g} {unit}")
    axis.set_xlabel(f"reference {label} ({unit})")
    axis.set_ylabel(f"model {label} ({unit})")


def plot_parity(
    reference_energies: Sequence[float],
    predicted_energies: Sequence[float],
    reference_forces: np.ndarray,
    predicted_forces: np.ndarray,
    out_path: str,
    title: str = "test set",
) -> str:
    """Parity plots: per-atom energies (eV/atom) and force components (eV/Å; hidden when empty)."""
    figure = Figure(figsize=(9, 4.2), layout="constrained")
    pairs = [
        (np.asarray(reference_energies, dtype=float), np.asarray(predicted_energies, dtype=float), "energy", "eV/atom"),
        (np.ravel(reference_forces), np.ravel(predicted_forces), "force component", "eV/Å"),
    ]
    for axis, (reference, predicted, label, unit) in zip(figure.subplots(1, 2), pairs):
        if reference.size == 0:
            axis.set_visible(False)
        else:
            _parity(axis, reference, predicted, label, unit, title)
    figure.savefig(out_path, dpi=120)
    return out_path


def plot_hessian_parity(reference: np.ndarray, predicted: np.ndarray, out_path: str, title: str = "test set") -> str:
    """Parity plot of Hessian elements (eV/Å²)."""
    figure = Figure(figsize=(4.6, 4.2), layout="constrained")
    _parity(figure.subplots(), np.ravel(reference), np.ravel(predicted), "Hessian element", "eV/Å²", title, 2, 0.4)
    figure.savefig(out_path, dpi=120)
    return out_path
