"""Layer stepping (contract format 4): a domain decomposition done in Python equals one pass.

The exported file's ``layer_*`` methods are what ``pair_style mlip comm layer``
calls on each MPI rank. Here the ranks, their ghost atoms and the exchanges
between blocks (LAMMPS's forward and reverse communication) are emulated in
one process, with the ghosts' periodic images as separate nodes, as LAMMPS
has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

import mlip_md
from mlip_md.contract import load_exported
from mlip_md.neighbors import neighbor_list

from conftest import make_model, random_cell


@dataclass
class Rank:
    """One emulated rank: its nodes (global atom of each, owned first) and its owned atoms' edges."""

    atoms: List[int]  # global atom of each node
    n_owned: int
    edge_index: torch.Tensor  # [2, E] local node indices
    vectors: torch.Tensor  # [E, 3]
    edge_atoms: np.ndarray  # [2, E] global atoms of each edge's ends
    graph: object = None
    states: List[object] = field(default_factory=list)


def decompose(atoms, cutoff: float, n_ranks: int) -> List[Rank]:
    """Slabs along the first fractional coordinate; a ghost node per (atom, periodic image) pair."""
    nl = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
    fractions = atoms.cell.scaled_positions(atoms.positions)[:, 0] % 1.0
    owner = np.minimum((fractions * n_ranks).astype(int), n_ranks - 1)
    ranks = []
    for rank in range(n_ranks):
        owned = [int(a) for a in np.flatnonzero(owner == rank)]
        local: Dict[Tuple[int, Tuple[int, ...]], int] = {(a, (0, 0, 0)): k for k, a in enumerate(owned)}
        node_atoms = list(owned)
        rows, columns, vectors = [], [], []
        for e in np.flatnonzero(owner[nl.edge_index[0]] == rank):
            i, j = (int(v) for v in nl.edge_index[:, e])
            key = (j, tuple(int(s) for s in nl.shifts[e]))  # the image of j that i sees
            if key not in local:
                local[key] = len(node_atoms)
                node_atoms.append(j)
            rows.append(local[(i, (0, 0, 0))])
            columns.append(local[key])
            vectors.append(nl.vectors[e])
        edge_index = torch.tensor([rows, columns], dtype=torch.long).reshape(2, -1)
        ranks.append(Rank(node_atoms, len(owned), edge_index, torch.tensor(np.array(vectors)).reshape(-1, 3),
                          np.array([[node_atoms[r] for r in rows], [node_atoms[c] for c in columns]])))
    return ranks


def owned_row(ranks: List[Rank]) -> Dict[int, Tuple[int, int]]:
    return {atom: (r, k) for r, rank in enumerate(ranks) for k, atom in enumerate(rank.atoms[: rank.n_owned])}


def forward_exchange(ranks, arrays, where):
    """Ghost rows ← their owners' rows (LAMMPS forward communication)."""
    for rank, array in zip(ranks, arrays):
        for node in range(rank.n_owned, len(rank.atoms)):
            r, k = where[rank.atoms[node]]
            array[:, node] = arrays[r][:, k]


def reverse_exchange(ranks, arrays, where):
    """Owners' rows += their ghosts' rows (LAMMPS reverse communication)."""
    for rank, array in zip(ranks, arrays):
        for node in range(rank.n_owned, len(rank.atoms)):
            r, k = where[rank.atoms[node]]
            arrays[r][:, k] += array[:, node]


def layered_results(module, atoms, species_index, cutoff, n_layers, n_ranks):
    """Per-member per-atom energies [M, N], forces [M, N, 3] and virials [M, 3, 3] from layer stepping."""
    ranks = decompose(atoms, cutoff, n_ranks)
    where = owned_row(ranks)
    for rank in ranks:
        species = torch.tensor([species_index[a] for a in rank.atoms])
        rank.graph = module.layer_graph(species, rank.edge_index, rank.vectors, rank.n_owned)
    features = [torch.empty(0, dtype=torch.float64) for _ in ranks]
    energies = [0.0] * n_ranks
    for layer in range(n_layers):
        outputs = []
        for r, rank in enumerate(ranks):
            output, level_energies, states = module.layer_forward(layer, rank.graph, features[r])
            outputs.append(output)
            energies[r] = energies[r] + level_energies
            rank.states.append(states)
        assert all(bool((output[:, rank.n_owned:] == 0).all()) for output, rank in zip(outputs, ranks))
        forward_exchange(ranks, outputs, where)
        features = outputs
    gradients = [torch.empty(0, dtype=torch.float64) for _ in ranks]
    radial = [[] for _ in ranks]
    for layer in range(n_layers - 1, -1, -1):
        for r, rank in enumerate(ranks):
            gradients[r], radial[r] = module.layer_reverse(layer, rank.graph, rank.states[layer], gradients[r], radial[r])
        if layer > 0:
            reverse_exchange(ranks, gradients, where)
    n_members = energies[0].shape[0]
    atom_energies = torch.zeros(n_members, len(atoms), dtype=torch.float64)
    forces = torch.zeros(n_members, len(atoms), 3, dtype=torch.float64)
    virials = torch.zeros(n_members, 3, 3, dtype=torch.float64)
    for r, rank in enumerate(ranks):
        atom_energies[:, rank.atoms[: rank.n_owned]] = energies[r]
        g = module.layer_edge_gradients(rank.graph, radial[r])  # [M, E, 3]
        assert g.shape[1] == rank.edge_index.shape[1]
        forces.index_add_(1, torch.as_tensor(rank.edge_atoms[0]), g)
        forces.index_add_(1, torch.as_tensor(rank.edge_atoms[1]), -g)
        virials -= torch.einsum("ea,meb->mab", rank.vectors, g)
    return atom_energies, forces, virials


def one_pass(module, atoms, species_index, cutoff):
    nl = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
    vectors = torch.as_tensor(nl.vectors)
    energies, g = module.energies_and_gradients(torch.tensor(species_index), torch.as_tensor(nl.edge_index), vectors)
    forces = torch.zeros(g.shape[0], len(atoms), 3, dtype=torch.float64)
    forces.index_add_(1, torch.as_tensor(nl.edge_index[0]), g).index_add_(1, torch.as_tensor(nl.edge_index[1]), -g)
    return energies, forces, -torch.einsum("ea,meb->mab", vectors, g)


@pytest.mark.parametrize("n_ranks", [1, 2, 3])
@pytest.mark.parametrize("which", ["model_file", "ensemble_file"])
def test_layer_stepping_over_ranks_equals_one_pass(request, which, n_ranks):
    exported = load_exported(request.getfixturevalue(which))
    atoms = random_cell(n_atoms=12, seed=3) * (3, 1, 1)
    atoms.rattle(0.05, seed=3)
    species_index = [exported.species.index(s) for s in atoms.get_chemical_symbols()]
    layers = exported.metadata["n_interactions"]
    with torch.jit.optimized_execution(False):  # as the plugin runs it: no profiling passes
        expected = one_pass(exported.module, atoms, species_index, exported.cutoff)
        got = layered_results(exported.module, atoms, species_index, exported.cutoff, layers, n_ranks)
    for name, a, b in zip(("per-atom energies", "forces", "virials"), got, expected):
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= 1e-12 * scale, name
    assert float(expected[1].abs().max()) > 0.1  # forces of realistic size


def test_layer_graph_refuses_edges_of_ghosts(model_file):
    module = load_exported(model_file).module
    species = torch.zeros(3, dtype=torch.long)
    edge_index = torch.tensor([[0, 2], [2, 0]])
    vectors = torch.tensor([[2.5, 0.0, 0.0], [-2.5, 0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(torch.jit.Error, match="an edge starts at a node beyond n_owned"):
        module.layer_graph(species, edge_index, vectors, 2)
    with pytest.raises(torch.jit.Error, match="n_owned must be between 1 and the node count"):
        module.layer_graph(species, edge_index, vectors, 0)


def test_edges_beyond_the_cutoff_get_zero_gradients(model_file):
    # A caller may pass the skin's pairs too: they are dropped and come back as zeros.
    module = load_exported(model_file).module
    species = torch.tensor([0, 1, 0])
    edge_index = torch.tensor([[0, 0, 1], [1, 2, 0]])
    vectors = torch.tensor([[2.5, 0.0, 0.0], [0.0, 7.0, 0.0], [-2.5, 0.0, 0.0]], dtype=torch.float64)
    graph = module.layer_graph(species, edge_index, vectors, 2)
    output, _, states = module.layer_forward(0, graph, torch.empty(0))
    gradient, radial = module.layer_reverse(1, graph, module.layer_forward(1, graph, output)[2], torch.empty(0), [])
    _, radial = module.layer_reverse(0, graph, states, gradient, radial)
    g = module.layer_edge_gradients(graph, radial)
    assert g.shape == (1, 3, 3) and float(g[0, 1].abs().max()) == 0.0 and float(g[0, 0].abs().max()) > 0.0


def test_ensemble_members_must_agree_on_layers_and_features(tmp_path):
    with pytest.raises(ValueError, match="members must agree"):
        mlip_md.export([make_model(), make_model(n_features=8)], tmp_path / "mixed.pt")
