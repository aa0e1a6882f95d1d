"""Training on small compressed periodic cells (1–16 atoms, edges down to ~2 Å): no non-finite steps.

The trigger: the force on the atom of a one-atom periodic cell is zero for any
model (moving the atom translates the crystal) and in EMT's labels, so a
minibatch of such cells has a force error of exactly zero, where the
derivative of an RMSE, √(mean square), is infinite: a loss that takes the
square root plainly gets ∞ × 0 = NaN in every gradient, and the trainer rolls
the epoch back (losing it and halving the learning rate).
"""

import json

import numpy as np
import pytest
import torch

from mlip_md.data.batch import collate
from mlip_md.data.generate import generate_small_cells, write_images
from mlip_md.species import SpeciesMap
from mlip_md.train import trainer
from mlip_md.train.config import config_from_dict
from mlip_md.train.losses import energy_force_errors, predict
from mlip_md.train.trainer import build_model, load_data, train_member

from emt_cells import TINY_MODEL

# The issue's architecture (the defaults) and loss weights: RMSE terms only, and the configuration's defaults.
RMSE_LOSS = {"energy_rmse": 1.0, "forces_rmse": 1.0, "energy_mse": 0.0, "forces_mse": 0.0}
LOSSES = {"rmse": RMSE_LOSS, "default": {}}


@pytest.fixture(scope="module")
def small_cells(tmp_path_factory):
    return write_images(generate_small_cells(20, seed=0), tmp_path_factory.mktemp("data") / "small.extxyz")


def test_small_cells_are_small_and_labelled():
    images = generate_small_cells(60, seed=3, symbols=("Al", "Cu"))
    sizes = [len(atoms) for atoms in images]
    assert min(sizes) == 1 and max(sizes) <= 16
    assert min(atoms.cell.lengths().min() for atoms in images) < 2.6
    assert {atoms.get_chemical_symbols()[0] for atoms in images} == {"Al", "Cu"}
    one_atom_forces = np.concatenate([atoms.get_forces() for atoms in images if len(atoms) == 1])
    assert np.abs(one_atom_forces).max() < 1e-12  # zero up to EMT's rounding (Al's: exactly zero)
    assert max(np.abs(atoms.get_forces()).max() for atoms in images) > 1.0
    again = generate_small_cells(60, seed=3, symbols=("Al", "Cu"))
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(images, again))
    with pytest.raises(ValueError, match="EMT metals"):
        generate_small_cells(2, symbols=("Fe",))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_one_atom_cells_give_finite_gradients(small_cells, dtype, loss):
    """The loss of a minibatch of one-atom cells has finite gradients although its force error is exactly 0."""
    config = config_from_dict({"data": {"train": small_cells, "valid_fraction": 0.0}, "training": {"dtype": dtype},
                               "loss": LOSSES[loss]})
    data = load_data(config)
    model = build_model(config, data.species, data.train.configurations, seed=0)
    one_atom = [k for k, c in enumerate(data.train.configurations) if c.n_atoms == 1]
    assert len(one_atom) >= 2
    batch = collate(data.train, one_atom, SpeciesMap(data.species), next(model.parameters()).dtype)
    assert bool((batch.edge_index[0] == batch.edge_index[1]).all())  # every neighbour is an image of the atom
    assert bool((predict(model, batch).forces == batch.forces).all())  # zero, as the labels
    trainer._loss(config, model, batch, torch.Generator().manual_seed(0))[0].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(p.grad.abs().max() > 0 for p in model.parameters())


def test_energy_force_errors_rmse_has_a_finite_gradient_at_zero_error(small_cells):
    config = config_from_dict({"data": {"train": small_cells, "valid_fraction": 0.0}})
    data = load_data(config)
    model = build_model(config, data.species, data.train.configurations, seed=0)
    one_atom = [k for k, c in enumerate(data.train.configurations) if c.n_atoms == 1]
    batch = collate(data.train, one_atom, SpeciesMap(data.species))
    errors = energy_force_errors(predict(model, batch), batch)
    assert errors["forces_rmse"].item() == 0.0
    (errors["energy_rmse"] + errors["forces_rmse"]).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def _recoveries(directory) -> list:
    with open(directory / "metrics.jsonl") as handle:
        return [json.loads(line)["recoveries"] for line in handle]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_training_on_one_atom_minibatches_needs_no_recovery(small_cells, tmp_path, dtype):
    """With one configuration per minibatch every one-atom cell is a minibatch of its own."""
    config = config_from_dict({
        "data": {"train": small_cells, "valid_fraction": 0.1},
        "model": TINY_MODEL,
        "training": {"max_epochs": 2, "batch_size": 1, "learning_rate": 1e-3, "dtype": dtype},
        "loss": RMSE_LOSS,
    })
    data = load_data(config)
    assert sum(c.n_atoms == 1 for c in data.train.configurations) >= 2
    model = train_member(config, data, 0, str(tmp_path / "run"))
    assert _recoveries(tmp_path / "run") == [0, 0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_issue_settings_train_25_epochs_without_recovery(tmp_path, dtype, loss):
    """The issue's architecture and settings on 410 small cells: 369 for training, so the last minibatch
    of every epoch holds one configuration, a one-atom cell in about one epoch of five."""
    path = write_images(generate_small_cells(410, seed=0), tmp_path / "small.extxyz")
    config = config_from_dict({
        "data": {"train": path, "valid_fraction": 0.1},
        "training": {"max_epochs": 25, "batch_size": 16, "learning_rate": 1e-3, "dtype": dtype,
                     "early_stopping_patience": 25},
        "loss": LOSSES[loss],
    })
    data = load_data(config)
    assert len(data.train) % 16 == 1
    model = train_member(config, data, 0, str(tmp_path / "run"))
    assert _recoveries(tmp_path / "run") == [0] * 25
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cli_generates_small_cells(tmp_path, capsys):
    from mlip_md.cli import main
    from mlip_md.data import read_configurations

    path = tmp_path / "small.extxyz"
    assert main(["generate", "small-cells", "--n", "6", "--elements", "Al", "Ni", "--out", str(path)]) == 0
    assert "wrote 6 configurations" in capsys.readouterr().out
    assert [c.numbers[0] for c in read_configurations(path)] == [13, 28] * 3
    assert main(["generate", "small-cells", "--n", "2", "--elements", "Fe", "--out", str(path)]) == 2
    assert "EMT metals" in capsys.readouterr().err
