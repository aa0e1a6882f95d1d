"""Model predictions on a batch and the loss terms of training.

Hessian training uses Projected Hessian Learning: with probes v drawn so that
E[v vᵀ] = I (Rademacher or standard Gaussian), the squared error of
Hessian-vector products, ‖(H_θ − H_ref) v‖², is an unbiased estimate of the
squared Frobenius error ‖H_θ − H_ref‖²_F, at the cost of one double-backward
pass per probe instead of 3N for a full Hessian. H_θ v = ∇_x(∇_x E · v).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import torch

from mlip_md.data.batch import Batch
from mlip_md.model.hipnn import HIPNN

PROBE_KINDS = ("rademacher", "gaussian", "onehot")


class Predictions(NamedTuple):
    energy: torch.Tensor  # [B] eV
    forces: Optional[torch.Tensor]  # [N, 3] eV/Å (None when not asked for)
    level_totals: torch.Tensor  # [n_levels, B] eV, per-level energy of each structure
    positions: torch.Tensor  # [N, 3] the leaf the forces were taken against


def predict(model: HIPNN, batch: Batch, create_graph: bool = True, forces: bool = True) -> Predictions:
    """Energies, forces and per-level energies of every structure in ``batch``.

    ``create_graph=True`` keeps the graph of the forces, for force losses
    (and Hessian-vector products) to be differentiated in training.
    ``forces=False`` skips them (energy-only training).
    """
    positions = batch.positions.detach().requires_grad_(forces)
    layout = model.neighbor_layout(batch.species, batch.edge_index, batch.edge_vectors(positions))
    levels = model.level_energies(layout)  # [n_levels, N]
    level_totals = levels.new_zeros(levels.shape[0], batch.n_structures).index_add_(1, batch.structure, levels)
    energy = level_totals.sum(0)
    if not forces:
        return Predictions(energy, None, level_totals, positions)
    (gradient,) = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph)
    return Predictions(energy, -gradient, level_totals, positions)


def error_sums(predictions: Predictions, batch: Batch) -> Dict[str, torch.Tensor]:
    """Sums over a batch of squared and absolute errors, with the counts they are averages over.

    Keys: ``energy_sq``, ``energy_abs`` (per-atom energy errors, eV/atom, over
    structures), ``forces_sq``, ``forces_abs`` (force components, eV/Å) and the
    counts ``n_energy``, ``n_forces`` (0 without force labels). Sums rather
    than means, so that the parts of a batch split across processes add up.
    """
    energy_error = (predictions.energy - batch.energy) / batch.n_atoms
    zero = energy_error.new_zeros(())
    sums = {
        "energy_sq": energy_error.square().sum(),
        "energy_abs": energy_error.abs().sum(),
        "n_energy": zero + batch.n_structures,
        "forces_sq": zero,
        "forces_abs": zero,
        "n_forces": zero,
    }
    if batch.forces is not None and predictions.forces is not None:
        force_error = predictions.forces - batch.forces
        sums.update(forces_sq=force_error.square().sum(), forces_abs=force_error.abs().sum(),
                    n_forces=zero + force_error.numel())
    return sums


def root_mean_square(mean_square: torch.Tensor) -> torch.Tensor:
    """√``mean_square``, with derivative 0 where it is 0 (torch's sqrt has an infinite one there).

    An RMSE is zero exactly when no error can be made: the force on the atom of a one-atom periodic
    cell is zero for any model and any label set that respects symmetry, so a batch of such cells has
    a zero force RMSE, and ∞ × 0 would make every gradient NaN. Zero is the RMSE's minimum there.
    """
    positive = mean_square > 0
    safe = torch.where(positive, mean_square, torch.ones_like(mean_square))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(mean_square))


def energy_force_errors(predictions: Predictions, batch: Batch) -> dict:
    """Per-atom energy errors (eV/atom) and force-component errors (eV/Å) as RMSE and MAE tensors."""
    sums = error_sums(predictions, batch)
    errors = {
        "energy_rmse": root_mean_square(sums["energy_sq"] / sums["n_energy"]),
        "energy_mae": sums["energy_abs"] / sums["n_energy"],
    }
    if sums["n_forces"] > 0:
        errors["forces_rmse"] = root_mean_square(sums["forces_sq"] / sums["n_forces"])
        errors["forces_mae"] = sums["forces_abs"] / sums["n_forces"]
    return errors


def sample_probes(
    batch: Batch, n_probes: int, kind: str = "rademacher", generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """``[n_probes, N, 3]`` probe vectors, each configuration's block drawn independently.

    ``rademacher`` (±1) and ``gaussian`` probes satisfy E[v vᵀ] = I;
    ``onehot`` probes pick one random Cartesian coordinate per configuration
    (one Hessian column), scaled by √(3n) so that E[v vᵀ] = I as well.
    """
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe kind {kind!r}; choose one of {PROBE_KINDS}")
    shape = (n_probes,) + tuple(batch.positions.shape)
    dtype = batch.positions.dtype
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype)
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1
    probes = torch.zeros(shape, dtype=dtype)
    starts = torch.cumsum(batch.n_atoms, 0) - batch.n_atoms
    for structure, (start, n) in enumerate(zip(starts.tolist(), batch.n_atoms.tolist())):
        picks = torch.randint(0, 3 * n, (n_probes,), generator=generator)
        probes[torch.arange(n_probes), start + picks // 3, picks % 3] = (3.0 * n) ** 0.5
    return probes


def reference_products(hessians: list, probes: torch.Tensor, batch: Batch) -> torch.Tensor:
    """H_ref v for one ``[3n, 3n]`` reference Hessian per structure; ``probes`` ``[P, N, 3]`` → ``[P, N, 3]``."""
    products = torch.zeros_like(probes)
    start = 0
    for hessian, n in zip(hessians, batch.n_atoms.tolist()):
        block = probes[:, start : start + n].reshape(probes.shape[0], 3 * n)
        products[:, start : start + n] = (block @ hessian.T).reshape(probes.shape[0], n, 3)
        start += n
    return products


def _per_structure_mean_square(values: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Σ over a structure's 3n components of ``values`` [..., N, 3] squared, / (3n)², averaged."""
    squares = values.square().sum(-1)  # [..., N]
    per_structure = squares.new_zeros(squares.shape[:-1] + (batch.n_structures,)).index_add_(
        -1, batch.structure, squares
    )
    return (per_structure / (3.0 * batch.n_atoms.to(values.dtype)) ** 2).mean()


def hessian_vector_error(
    predictions: Predictions, probes: torch.Tensor, reference_products: torch.Tensor, batch: Batch
) -> torch.Tensor:
    """Mean squared Hessian-element error estimated from probes (eV²/Å⁴).

    ``probes`` and ``reference_products`` (H_ref v) are ``[P, N, 3]``; the
    model's H_θ v comes from double backward through ``predictions.forces``
    (which must have been made with ``create_graph=True``). For a structure of
    n atoms the estimate is ‖(H_θ − H_ref) v‖² / (3n)², whose expectation is
    the mean of (H_θ − H_ref)² over the (3n)² Hessian elements.
    """
    products = []
    for probe in probes:
        (product,) = torch.autograd.grad(
            predictions.forces, predictions.positions, grad_outputs=-probe, create_graph=True, retain_graph=True
        )
        products.append(product)
    return _per_structure_mean_square(torch.stack(products) - reference_products, batch)


def batch_hessians(predictions: Predictions, batch: Batch) -> list:
    """The model's Hessian of every structure, a list of ``[3n, 3n]`` (eV/Å², differentiable).

    The batch Hessian is block diagonal, so column k of every structure's
    Hessian comes from one double-backward pass whose probe is 1 at
    coordinate k of each structure: 3·max(n) passes, not 3·(total atoms).
    ``predictions`` must come from ``predict(..., create_graph=True)``.
    """
    sizes = (3 * batch.n_atoms).tolist()
    starts = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    columns = []
    for k in range(max(sizes)):
        probe = torch.zeros(3 * batch.positions.shape[0], dtype=batch.positions.dtype)
        for start, size in zip(starts, sizes):
            if k < size:
                probe[start + k] = 1.0
        (column,) = torch.autograd.grad(
            predictions.forces, predictions.positions, grad_outputs=-probe.view(-1, 3), create_graph=True,
            retain_graph=True,
        )
        columns.append(column.reshape(-1))
    stacked = torch.stack(columns, dim=1)  # [3N, max 3n]: column k of each structure's block
    return [stacked[start : start + size, :size] for start, size in zip(starts, sizes)]


def full_hessian_error(predictions: Predictions, reference_hessians: list, batch: Batch) -> torch.Tensor:
    """Mean squared Hessian-element error from full Hessians, one ``[3n, 3n]`` per structure (eV²/Å⁴)."""
    errors = [
        (model - reference).square().mean()
        for model, reference in zip(batch_hessians(predictions, batch), reference_hessians)
    ]
    return torch.stack(errors).mean()
