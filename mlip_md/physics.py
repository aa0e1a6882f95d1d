"""Forces, virials and Hessians from an exported model, as free functions.

All functions take the exported TorchScript module (contract in
:mod:`mlip_md.contract`) and plain tensors; they know nothing of ASE.

The frozen module runs with TorchScript's graph optimiser switched off
(``torch.jit.optimized_execution(False)``): op-by-op execution needs no
warm-up or re-profiling calls as graph sizes change from step to step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class EdgeResults(NamedTuple):
    """Per-member results of one evaluation (M = ensemble size)."""

    atom_energies: torch.Tensor  # [M, N] eV
    forces: torch.Tensor  # [M, N, 3] eV/Å
    virial: torch.Tensor  # [M, 3, 3] eV, W = −Σ_e r_e ⊗ ∂E/∂r_e


def forces_from_edge_gradients(
    edge_index: torch.Tensor, edge_gradients: torch.Tensor, n_atoms: int, sorted_centers: bool = False
) -> torch.Tensor:
    """F_k = Σ_{e: i_e=k} g_e − Σ_{e: j_e=k} g_e; ``edge_gradients`` ``[M, E, 3]`` → ``[M, N, 3]``.

    ``sorted_centers``: ``edge_index[0]`` is non-decreasing, as in the lists of
    :mod:`mlip_md.neighbors`.
    """
    n_members, n_edges, _ = edge_gradients.shape
    # Component-major [3M, E] (a view when the gradients are, as the edge vectors
    # of VerletList are): sums along rows of contiguous source columns.
    columns = edge_gradients.permute(0, 2, 1).reshape(3 * n_members, n_edges)
    if sorted_centers and not columns.requires_grad and columns.device.type == "cpu":
        outgoing = _run_sums(edge_index[0], columns, n_atoms)
    else:
        outgoing = columns.new_zeros(3 * n_members, n_atoms).index_add_(1, edge_index[0], columns)
    # Two sums and one difference rather than index_add_ with alpha=-1, which takes torch's slow path.
    incoming = columns.new_zeros(3 * n_members, n_atoms).index_add_(1, edge_index[1], columns)
    return (outgoing - incoming).view(n_members, 3, n_atoms).permute(0, 2, 1)


def _run_sums(sorted_index: torch.Tensor, columns: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """Σ_{e: index_e = k} columns[:, e] ``[R, N]`` for a non-decreasing ``index`` ``[E]`` (CPU, no autograd).

    Each atom's edges are one run, which numpy's reduceat sums in one pass;
    index_add_'s adds into one atom form a dependency chain when the index is
    sorted.
    """
    values = columns.numpy()
    starts = np.searchsorted(sorted_index.numpy(), np.arange(n_atoms + 1))  # [N + 1]
    nonempty = starts[:-1] < starts[1:]  # reduceat would return an element, not 0, for an empty run
    sums = np.zeros((values.shape[0], n_atoms), dtype=values.dtype)
    if nonempty.any():
        sums[:, nonempty] = np.add.reduceat(values, starts[:-1][nonempty], axis=1)
    return torch.from_numpy(sums)


def evaluate_edges(
    module: torch.jit.ScriptModule,
    species: torch.Tensor,
    edge_index: torch.Tensor,
    edge_vectors: torch.Tensor,
    sorted_centers: bool = False,
) -> EdgeResults:
    """Energies, forces and virials of every ensemble member.

    ``edge_vectors`` ``[E, 3]`` in the model's dtype; ``sorted_centers`` as in
    :func:`forces_from_edge_gradients`. The module's
    ``energies_and_gradients`` returns each member's ∂E/∂r_e from its
    hand-written reverse pass; no autograd graph is built.
    """
    with torch.no_grad(), torch.jit.optimized_execution(False):
        atom_energies, gradients = module.energies_and_gradients(species, edge_index, edge_vectors)
    forces = forces_from_edge_gradients(edge_index, gradients, species.shape[0], sorted_centers)
    virial = -torch.einsum("ea,meb->mab", edge_vectors, gradients)
    return EdgeResults(atom_energies, forces, virial)


def hessian(
    module: torch.jit.ScriptModule, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor
) -> torch.Tensor:
    """Analytic Hessian ∂²E/∂x∂x of the ensemble-mean energy, ``[3N, 3N]`` float64 in eV/Å².

    ``edge_vectors`` ``[E, 3]`` in the model's dtype. Row and column 3a + c are
    axis c of atom a. The module's ``hessian`` differentiates its hand-written
    gradient in forward mode, all coordinates at once (no autograd graph).
    """
    with torch.no_grad(), torch.jit.optimized_execution(False):
        member_hessians = module.hessian(species, edge_index, edge_vectors)
    return member_hessians.to(torch.float64).mean(0)
