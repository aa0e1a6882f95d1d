"""The hand-written reverse pass (energies_and_gradients) against autograd of the same energies."""

import pytest
import torch

import mlip_md
from conftest import graph_inputs, make_model, random_cell
from mlip_md.contract import load_exported
from mlip_md.model.graph import radial_terms_of
from mlip_md.model.layers import ACTIVATIONS


def _autograd_distance_gradients(model, layout, n_owned):
    """Energies [N] and ∂(Σ_{i < n_owned} E_i)/∂r [N, K] by autograd through level_energies."""
    distances = layout.distances.detach().requires_grad_(True)
    layout = layout._replace(distances=distances, radial_terms=radial_terms_of(distances, model.cutoff))
    energies = model.level_energies(layout).sum(0)
    (gradient,) = torch.autograd.grad(energies[:n_owned].sum(), distances)
    return energies.detach(), gradient


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("n_features", [3, 12])
def test_distance_gradients_match_autograd_over_many_blocks(activation, n_features):
    # 3 features gives layers 2 and 3 narrow inputs, 12 wide ones; the pass
    # under test runs without autograd, where both take batched products.
    model = make_model(n_interactions=3, n_features=n_features, n_sensitivities=7, activation=activation).double()
    _check_against_autograd(model, random_cell() * (2, 2, 1), ("Al", "Cu"))


@pytest.mark.parametrize("symbols", [("Al",), ("C", "H", "N", "O")])
def test_distance_gradients_match_autograd_for_one_and_four_species(symbols):
    # The first layer's input is the species one-hot: 1 wide (broadcast
    # products) or 4 wide (batched products) here, 2 wide above.
    model = make_model(species=symbols, n_interactions=2, n_features=6, n_sensitivities=5).double()
    _check_against_autograd(model, random_cell(symbols=symbols) * (2, 2, 1), symbols)


def _check_against_autograd(model, atoms, symbols):
    species, edge_index, vectors = graph_inputs(atoms, model.cutoff, species=symbols)
    layout = model.neighbor_layout(species, edge_index, vectors)
    for n_owned in (len(atoms), 17):
        expected_energies, expected = _autograd_distance_gradients(model, layout, n_owned)
        with torch.no_grad():
            energies, gradient = model.energies_and_distance_gradients(layout, n_owned, block_slots=100)
        assert layout.neighbors.shape[0] > 100 // layout.neighbors.shape[1] * 3  # several blocks
        torch.testing.assert_close(energies, expected_energies, rtol=0, atol=1e-12)
        torch.testing.assert_close(gradient, expected, rtol=0, atol=1e-12)


def test_exported_edge_gradients_match_autograd(tmp_path):
    members = [make_model(seed=seed) for seed in (0, 1)]
    module = load_exported(mlip_md.export(members, tmp_path / "ensemble.pt")).module
    atoms = random_cell()
    # A 7.5 Å list for a 6 Å model: the module drops the longer edges itself.
    species, edge_index, vectors = graph_inputs(atoms, 7.5)
    assert (vectors.norm(dim=1) >= 6.0).any()
    energies, gradients = module.energies_and_gradients(species, edge_index, vectors)
    vectors = vectors.clone().requires_grad_(True)
    expected_energies = module(species, edge_index, vectors)
    for member in range(2):
        (expected,) = torch.autograd.grad(expected_energies[member].sum(), vectors, retain_graph=True)
        torch.testing.assert_close(gradients[member], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(energies, expected_energies.detach(), rtol=0, atol=1e-12)
    assert float(gradients[:, vectors.detach().norm(dim=1) >= 6.0].abs().max()) == 0.0


def test_exported_edge_gradients_follow_the_input_edge_order(tmp_path):
    module = load_exported(mlip_md.export(make_model(), tmp_path / "model.pt")).module
    species, edge_index, vectors = graph_inputs(random_cell())
    shuffle = torch.randperm(edge_index.shape[1], generator=torch.Generator().manual_seed(0))
    energies, gradients = module.energies_and_gradients(species, edge_index, vectors)
    shuffled_energies, shuffled = module.energies_and_gradients(species, edge_index[:, shuffle], vectors[shuffle])
    torch.testing.assert_close(shuffled_energies, energies, rtol=0, atol=1e-12)
    torch.testing.assert_close(shuffled, gradients[:, shuffle], rtol=0, atol=1e-12)


def test_exported_float32_edge_gradients(tmp_path):
    module = load_exported(mlip_md.export(make_model(), tmp_path / "f32.pt", dtype="float32")).module
    species, edge_index, vectors = graph_inputs(random_cell())
    _, gradients = module.energies_and_gradients(species, edge_index, vectors.float())
    vectors = vectors.float().requires_grad_(True)
    (expected,) = torch.autograd.grad(module(species, edge_index, vectors).sum(), vectors)
    assert gradients.dtype == torch.float32
    torch.testing.assert_close(gradients[0], expected, rtol=0, atol=1e-5)
