"""Neighbour lists computed once per configuration, and batches of several
configurations as one disjoint graph (the model's input convention, see
:mod:`mlip_md.contract`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from mlip_md.data.dataset import Configuration
from mlip_md.neighbors import neighbor_list
from mlip_md.species import SpeciesMap


class Batch(NamedTuple):
    """B configurations with N atoms and E edges in total.

    Edge vectors follow from positions: ``r_ij = positions[j] − positions[i]
    + shift_vectors`` (so forces and Hessians can be taken with respect to
    ``positions``).
    """

    species: torch.Tensor  # [N] int64, species index
    positions: torch.Tensor  # [N, 3] Å
    edge_index: torch.Tensor  # [2, E] int64, atom indices within the batch
    shift_vectors: torch.Tensor  # [E, 3] Å, periodic image offsets
    structure: torch.Tensor  # [N] int64, which configuration each atom belongs to
    n_atoms: torch.Tensor  # [B] int64
    energy: torch.Tensor  # [B] eV, reference labels
    forces: Optional[torch.Tensor]  # [N, 3] eV/Å, reference labels (None if any is missing)
    hessians: Optional[List[torch.Tensor]] = None  # B x [3n, 3n] eV/Å² (None if any is missing)
    hvp_probes: Optional[torch.Tensor] = None  # [P, N, 3] stored probes (None if any is missing)
    hvp_products: Optional[torch.Tensor] = None  # [P, N, 3] eV/Å², H_ref · probe

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])

    def edge_vectors(self, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[E, 3]`` edge vectors for ``positions`` (default: the batch's own)."""
        positions = self.positions if positions is None else positions
        return positions[self.edge_index[1]] - positions[self.edge_index[0]] + self.shift_vectors


@dataclass(frozen=True)
class _Graph:
    edge_index: np.ndarray  # [2, E]
    shift_vectors: np.ndarray  # [E, 3]


class GraphCache:
    """Neighbour lists of fixed configurations, each computed once, on first use."""

    def __init__(self, configurations: Sequence[Configuration], cutoff: float):
        self.configurations = list(configurations)
        self.cutoff = float(cutoff)
        self._graphs: List[Optional[_Graph]] = [None] * len(self.configurations)

    def __len__(self) -> int:
        return len(self.configurations)

    def graph(self, index: int) -> _Graph:
        if self._graphs[index] is None:
            c = self.configurations[index]
            neighbors = neighbor_list(c.positions, c.cell, c.pbc, self.cutoff)
            self._graphs[index] = _Graph(neighbors.edge_index, neighbors.shifts @ c.cell)
        return self._graphs[index]


def collate(
    cache: GraphCache, indices: Sequence[int], species_map: SpeciesMap, dtype: torch.dtype = torch.float64
) -> Batch:
    """Joins the configurations ``indices`` of ``cache`` into one :class:`Batch`."""
    if len(indices) == 0:
        raise ValueError("cannot collate an empty batch")
    configurations = [cache.configurations[k] for k in indices]
    graphs = [cache.graph(k) for k in indices]
    sizes = np.array([c.n_atoms for c in configurations])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    edge_index = np.concatenate([g.edge_index + offset for g, offset in zip(graphs, offsets)], axis=1)
    forces = None
    if all(c.forces is not None for c in configurations):
        forces = torch.tensor(np.concatenate([c.forces for c in configurations]), dtype=dtype)
    hessians = None
    if all(c.hessian is not None for c in configurations):
        hessians = [torch.tensor(c.hessian, dtype=dtype) for c in configurations]
    probes = products = None
    if all(c.hvp_probes is not None for c in configurations):
        counts = {c.hvp_probes.shape[0] for c in configurations}
        if len(counts) > 1:
            raise ValueError(f"stored HVP probes per configuration differ within a batch: {sorted(counts)}")
        probes = torch.tensor(np.concatenate([c.hvp_probes.reshape(len(c.hvp_probes), -1, 3) for c in configurations], axis=1), dtype=dtype)
        products = torch.tensor(np.concatenate([c.hvp_products.reshape(len(c.hvp_products), -1, 3) for c in configurations], axis=1), dtype=dtype)
    return Batch(
        species=torch.from_numpy(np.concatenate([species_map(c.numbers) for c in configurations])),
        positions=torch.tensor(np.concatenate([c.positions for c in configurations]), dtype=dtype),
        edge_index=torch.from_numpy(np.ascontiguousarray(edge_index)),
        shift_vectors=torch.tensor(np.concatenate([g.shift_vectors for g in graphs]), dtype=dtype),
        structure=torch.from_numpy(np.repeat(np.arange(len(indices)), sizes)),
        n_atoms=torch.from_numpy(sizes.astype(np.int64)),
        energy=torch.tensor([c.energy for c in configurations], dtype=dtype),
        forces=forces,
        hessians=hessians,
        hvp_probes=probes,
        hvp_products=products,
    )


def batches(
    cache: GraphCache,
    species_map: SpeciesMap,
    batch_size: int,
    dtype: torch.dtype = torch.float64,
    order: Optional[Sequence[int]] = None,
) -> Iterator[Tuple[int, np.ndarray, Batch]]:
    """``(start, indices, batch)`` for consecutive minibatches of ``cache`` in ``order`` (default: file order).

    ``start`` is the position of the batch's first configuration in ``order``;
    ``indices`` are the configurations' indices in ``cache``.
    """
    order = np.arange(len(cache)) if order is None else np.asarray(order)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        yield start, indices, collate(cache, indices, species_map, dtype)
