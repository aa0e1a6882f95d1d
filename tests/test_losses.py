"""Loss terms: predictions on batches, and Hessian-vector products (Projected Hessian Learning)."""

import numpy as np
import pytest
import torch
from ase.build import bulk

import mlip_md
from conftest import make_model
from mlip_md.data import GraphCache, collate, configuration_from_atoms
from mlip_md.species import SpeciesMap
from mlip_md.train import (
    energy_force_errors,
    full_hessian_error,
    hessian_vector_error,
    predict,
    reference_products,
    sample_probes,
)


def _clusters():
    """Two small non-periodic Al/Cu clusters with (arbitrary) labels."""
    from ase.calculators.singlepoint import SinglePointCalculator

    images = []
    for k, size in enumerate((4, 6)):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 1, 1)
        atoms = atoms[:size]
        atoms.pbc = False
        atoms.symbols[::2] = "Al"
        atoms.rattle(0.1, seed=k)
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0 * size, forces=np.zeros((size, 3)))
        images.append(atoms)
    return images


@pytest.fixture
def setup(tmp_path):
    model = make_model().double()
    images = _clusters()
    configurations = [configuration_from_atoms(atoms) for atoms in images]
    batch = collate(GraphCache(configurations, model.cutoff), [0, 1], SpeciesMap(model.species))
    calc = mlip_md.MLIPCalculator(mlip_md.export(model, tmp_path / "m.pt"))
    hessians = [torch.from_numpy(calc.get_hessian(atoms)) for atoms in images]
    return model, images, batch, calc, hessians


def test_predictions_match_the_calculator(setup):
    model, images, batch, calc, _ = setup
    predictions = predict(model, batch)
    expected_forces = []
    for atoms in images:
        atoms = atoms.copy()
        atoms.calc = calc
        expected_forces.append(atoms.get_forces())
    np.testing.assert_allclose(predictions.forces.detach().numpy(), np.concatenate(expected_forces), atol=1e-10)
    torch.testing.assert_close(predictions.level_totals.sum(0), predictions.energy)
    errors = energy_force_errors(predictions, batch)
    per_atom = (predictions.energy - batch.energy) / batch.n_atoms
    assert errors["energy_mae"].item() == pytest.approx(per_atom.abs().mean().item())
    assert errors["forces_rmse"].item() == pytest.approx(predictions.forces.square().mean().sqrt().item())


def test_hessian_vector_products_are_exact(setup):
    model, _, batch, _, hessians = setup
    predictions = predict(model, batch)
    probes = sample_probes(batch, 3, "gaussian", torch.Generator().manual_seed(0))
    error = hessian_vector_error(predictions, probes, reference_products(hessians, probes, batch), batch)
    assert error.item() < 1e-22
    assert full_hessian_error(predictions, hessians, batch).item() < 1e-22


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "onehot"])
def test_probe_loss_is_unbiased_estimate_of_full_hessian_loss(setup, kind):
    model, _, batch, _, hessians = setup
    generator = torch.Generator().manual_seed(1)
    perturbed = []
    for hessian in hessians:
        noise = torch.randn(hessian.shape, generator=generator, dtype=hessian.dtype)
        perturbed.append(hessian + 0.1 * (noise + noise.T))
    predictions = predict(model, batch)
    full = full_hessian_error(predictions, perturbed, batch).item()
    probes = sample_probes(batch, 400, kind, generator)
    references = reference_products(perturbed, probes, batch)
    samples = np.array(
        [hessian_vector_error(predictions, probes[k : k + 1], references[k : k + 1], batch).item() for k in range(400)]
    )
    standard_error = samples.std() / np.sqrt(len(samples))
    assert abs(samples.mean() - full) < 4 * standard_error, (samples.mean(), full, standard_error)
    assert standard_error < 0.2 * full


def test_probe_kinds_and_errors(setup):
    _, _, batch, _, _ = setup
    probes = sample_probes(batch, 2, "onehot", torch.Generator().manual_seed(0))
    assert (probes != 0).sum().item() == 2 * 2  # one coordinate per structure and probe
    with pytest.raises(ValueError, match="unknown probe kind"):
        sample_probes(batch, 1, "sobol")
