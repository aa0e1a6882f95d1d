"""The exported module's hand-written Hessian against autograd of its own energies.

The oracle differentiates the module's ``forward`` (plain autograd, no
hand-written derivative) twice with respect to the positions, so it shares
nothing with the forward-mode tangents under test. Finite differences of the
calculator's forces are checked in test_calculator.py.
"""

import pytest
import torch
from ase.build import molecule

import mlip_md
from conftest import graph_inputs, make_model, random_cell
from mlip_md.contract import load_exported
from mlip_md.model.graph import edge_lengths, pad_neighbors, padded_unit_vectors
from mlip_md.model.hessian import position_hessian
from mlip_md.model.layers import ACTIVATIONS


def _inputs(atoms, symbols, cutoff):
    """Species, edge list, edge vectors and the image offsets (vectors minus x_j − x_i) of ``atoms``."""
    species, edge_index, vectors = graph_inputs(atoms, cutoff, species=symbols)
    positions = torch.from_numpy(atoms.positions)
    shifts = vectors - (positions[edge_index[1]] - positions[edge_index[0]])
    return species, edge_index, vectors, shifts


def _autograd_hessians(module, species, edge_index, positions, shifts):
    """[M, 3N, 3N]: ∂²E_m/∂x∂x by double backward through ``module.forward``."""
    n_members = module(species, edge_index, positions[edge_index[1]] - positions[edge_index[0]] + shifts).shape[0]

    def member_energy(member):
        def energy(flat):
            x = flat.view(-1, 3)
            return module(species, edge_index, x[edge_index[1]] - x[edge_index[0]] + shifts)[member].sum()
        return energy

    flat = positions.reshape(-1)
    return torch.stack([torch.autograd.functional.hessian(member_energy(m), flat) for m in range(n_members)])


def _check(tmp_path, members, atoms, symbols, list_cutoff=None, shuffle=False, atol=1e-11):
    module = load_exported(mlip_md.export(members, tmp_path / "model.pt")).module
    cutoff = members[0].cutoff
    species, edge_index, vectors, shifts = _inputs(atoms, symbols, list_cutoff or cutoff)
    if shuffle:
        order = torch.randperm(edge_index.shape[1], generator=torch.Generator().manual_seed(0))
        edge_index, vectors, shifts = edge_index[:, order], vectors[order], shifts[order]
    hessians = module.hessian(species, edge_index, vectors)
    positions = torch.from_numpy(atoms.positions.copy())
    expected = _autograd_hessians(module, species, edge_index, positions, shifts)
    assert hessians.shape == (len(members), 3 * len(atoms), 3 * len(atoms))
    scale = float(expected.abs().max())
    assert scale > 1e-2  # a Hessian of meaningful size
    torch.testing.assert_close(hessians, expected, rtol=0, atol=atol * scale)
    return hessians


def test_periodic_ensemble_matches_autograd(tmp_path):
    # Triclinic cell smaller than the cutoff: several images of one pair, and
    # images of an atom itself (an edge i -> i whose length never changes).
    _check(tmp_path, [make_model(seed=0), make_model(seed=1)], random_cell(), ("Al", "Cu"))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_three_narrow_layers_match_autograd(tmp_path, activation):
    model = make_model(n_interactions=3, n_features=7, n_sensitivities=5, activation=activation)
    _check(tmp_path, [model], random_cell(n_atoms=8), ("Al", "Cu"))


@pytest.mark.parametrize("n_interactions, n_atom_layers", [(1, 3), (2, 0), (2, 1)])
def test_block_shapes_match_autograd(tmp_path, n_interactions, n_atom_layers):
    model = make_model(n_interactions=n_interactions, n_atom_layers=n_atom_layers, n_features=9)
    _check(tmp_path, [model], random_cell(n_atoms=8), ("Al", "Cu"))


def test_one_species_matches_autograd(tmp_path):
    _check(tmp_path, [make_model(species=("Al",), n_features=8)], random_cell(symbols=("Al",), n_atoms=8), ("Al",))


def test_molecule_with_four_species_matches_autograd(tmp_path):
    symbols = ("C", "H", "N", "O")
    atoms = molecule("CH3CONH2")  # acetamide: C, H, N, O; open boundaries
    _check(tmp_path, [make_model(species=symbols, cutoff=5.0, n_features=10)], atoms, symbols)


def test_unsorted_edges_and_edges_beyond_the_cutoff(tmp_path):
    # A 7.5 Å list in random order for a 6 Å model: the module drops and sorts.
    atoms = random_cell(n_atoms=8)
    species, _, vectors, _ = _inputs(atoms, ("Al", "Cu"), 7.5)
    assert (vectors.norm(dim=1) >= 6.0).any()
    _check(tmp_path, [make_model()], atoms, ("Al", "Cu"), list_cutoff=7.5, shuffle=True)


def test_chunks_of_tangents_and_both_neighbour_products_match_autograd(tmp_path):
    model = make_model().double()
    atoms = random_cell()
    species, edge_index, vectors, shifts = _inputs(atoms, ("Al", "Cu"), model.cutoff)
    module = load_exported(mlip_md.export(model, tmp_path / "model.pt")).module
    expected = _autograd_hessians(module, species, edge_index, torch.from_numpy(atoms.positions.copy()), shifts)[0]
    distances = edge_lengths(vectors)
    layout = pad_neighbors(species, edge_index, distances, model.cutoff)
    units = padded_unit_vectors(layout, vectors, distances)
    with torch.no_grad():
        for pair_matrices in (False, True):  # per-slot gathers; per-pair matrices
            layers, gradient, curvature = model._hessian_terms(layout, units, pair_matrices)
            for chunk in (1, 5, 12):  # atoms per chunk: 12 chunks, 3 (the last one shorter), 1
                hessian = position_hessian(
                    layers, gradient, curvature, layout.neighbors, layout.occupied, layout.distances, units, 1, chunk
                )
                torch.testing.assert_close(hessian, expected, rtol=0, atol=1e-11 * float(expected.abs().max()))
        # b = ∂E/∂r of the same pass is the hand-written gradient of the forward pass
        _, expected_gradient = model.energies_and_distance_gradients(layout, len(atoms))
        torch.testing.assert_close(gradient, expected_gradient, rtol=0, atol=1e-12)


def test_float32_hessian_agrees_with_float64(tmp_path):
    model = make_model()
    atoms = random_cell(n_atoms=8)
    f64 = load_exported(mlip_md.export(model, tmp_path / "f64.pt")).module
    f32 = load_exported(mlip_md.export(model, tmp_path / "f32.pt", dtype="float32")).module
    species, edge_index, vectors = graph_inputs(atoms)
    expected = f64.hessian(species, edge_index, vectors)
    hessian = f32.hessian(species, edge_index, vectors.float())
    assert hessian.dtype == torch.float32
    torch.testing.assert_close(hessian.double(), expected, rtol=0, atol=2e-5 * float(expected.abs().max()))
