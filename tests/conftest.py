"""Shared fixtures and physics oracles (finite differences) for the test suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

import mlip_md
from mlip_md.data.labels import finite_difference_hessian
from mlip_md.neighbors import neighbor_list


def make_model(species=("Al", "Cu"), seed=0, readout_scale=40.0, repulsive=False, **kwargs) -> mlip_md.HIPNN:
    """A random HIP-NN whose forces are of realistic size (0.1–1 eV/Å).

    Freshly initialised read-outs give forces of ~1e-3 eV/Å, too small for
    finite-difference checks with an absolute tolerance to mean much; they are
    multiplied by ``readout_scale``.

    ``repulsive=True`` makes every weight non-negative and weights the
    sensitivities by their inverse-distance centre: with softplus activations
    the energy then grows as neighbours come closer (down to dist_soft_min),
    a stable random potential for dynamics tests.
    """
    torch.manual_seed(seed)
    model = mlip_md.HIPNN(list(species), **kwargs)
    with torch.no_grad():
        model.reference_energies.copy_(torch.linspace(-3.0, -1.0, len(species)))
        if repulsive:
            for name, parameter in model.named_parameters():
                if "weight" in name:
                    parameter.abs_()
            for interaction in model.interactions:
                n_sensitivities = interaction.sensitivity.inverse_centers.shape[0]
                ramp = torch.linspace(0.0, 1.0, n_sensitivities) ** 2
                weights = interaction.interaction_weights
                # Rows of V are ordered (input feature b, sensitivity ν).
                weights.copy_((weights.view(-1, n_sensitivities, weights.shape[1]) * ramp[:, None]).view_as(weights))
        for readout in model.readouts:
            readout.weight.mul_(readout_scale)
    return model


def random_cell(symbols=("Al", "Cu"), n_atoms=12, seed=1, min_distance=2.0) -> Atoms:
    """A random triclinic periodic cell (smaller than a 6 Å cutoff) with two elements."""
    rng = np.random.default_rng(seed)
    cell = np.array([[5.6, 0.0, 0.0], [1.3, 5.2, 0.0], [0.7, -0.9, 5.9]]) + rng.normal(0, 0.2, (3, 3))
    positions = []
    while len(positions) < n_atoms:
        trial = rng.random(3) @ cell
        atoms = Atoms("X" * (len(positions) + 1), positions=positions + [trial], cell=cell, pbc=True)
        if len(positions) == 0 or atoms.get_distances(len(positions), range(len(positions)), mic=True).min() > min_distance:
            positions.append(trial)
    names = [symbols[k % len(symbols)] for k in range(n_atoms)]
    return Atoms(names, positions=positions, cell=cell, pbc=True)


def graph_inputs(atoms: Atoms, cutoff: float = 6.0, species=("Al", "Cu"), dtype=torch.float64):
    """Model inputs of ``atoms``: species indices, a full edge list within ``cutoff`` and its edge vectors."""
    neighbors = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
    index = {s: k for k, s in enumerate(species)}
    species_index = torch.tensor([index[s] for s in atoms.get_chemical_symbols()])
    return species_index, torch.from_numpy(neighbors.edge_index), torch.tensor(neighbors.vectors, dtype=dtype)


def numeric_forces(atoms: Atoms, h: float = 1e-4) -> np.ndarray:
    """Central finite differences −∂E/∂x, ``(N, 3)`` eV/Å."""
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                displaced = atoms.copy()
                displaced.calc = atoms.calc
                displaced.positions[a, k] += sign * h
                energies.append(displaced.get_potential_energy())
            forces[a, k] = -(energies[0] - energies[1]) / (2 * h)
    return forces


def numeric_stress(atoms: Atoms, h: float = 1e-5) -> np.ndarray:
    """Central finite differences of E under symmetric strain, Voigt, eV/Å³."""
    volume = atoms.get_volume()
    stress = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * h / 2
                strain[b, a] += sign * h / 2
                strained = atoms.copy()
                strained.calc = atoms.calc
                strained.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
                energies.append(strained.get_potential_energy())
            stress[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
    return stress.flat[[0, 4, 8, 5, 2, 1]]


def numeric_hessian(atoms: Atoms, h: float = 1e-4) -> np.ndarray:
    """Central finite differences of forces, not symmetrised, ``(3N, 3N)`` eV/Å²."""
    return finite_difference_hessian(atoms, atoms.calc, step=h, symmetrize=False)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> str:
    """A float64 single-model file for Al/Cu."""
    return mlip_md.export(make_model(), tmp_path_factory.mktemp("models") / "model.pt")


@pytest.fixture(scope="session")
def ensemble_file(tmp_path_factory) -> str:
    """A float64 three-member ensemble file for Al/Cu."""
    members = [make_model(seed=seed) for seed in (1, 2, 3)]
    return mlip_md.export(members, tmp_path_factory.mktemp("models") / "ensemble.pt")


@pytest.fixture
def calc(model_file) -> mlip_md.MLIPCalculator:
    return mlip_md.MLIPCalculator(model_file)


@pytest.fixture(scope="session")
def ood_test_file(tmp_path_factory) -> str:
    """Disordered Al cells (other seeds than the tiny campaign's) labelled by EMT: a held-out test set."""
    from ase.calculators.emt import EMT

    from campaign_runs import tiny
    from mlip_md.active import campaign_config_from_dict
    from mlip_md.active.sampler import disordered_start
    from mlip_md.data import label
    from mlip_md.data.generate import write_images

    config = campaign_config_from_dict(tiny())
    rng = np.random.default_rng(1234)
    images = [label(disordered_start(config.sampler, rng), EMT()) for _ in range(12)]
    return write_images(images, tmp_path_factory.mktemp("test_set") / "test.extxyz")


@pytest.fixture(scope="session")
def reference(tmp_path_factory, ood_test_file):
    """The uninterrupted tiny campaign (local engine), run by the CLI in a subprocess;
    (out, oracle log, report, output). The runs on other engines and the resumed runs compare with it."""
    import json

    from campaign_runs import start_campaign, tiny, write_config

    directory = tmp_path_factory.mktemp("reference")
    config = write_config(directory, tiny(test=ood_test_file))
    log = directory / "oracle.log"
    process = start_campaign(config, directory / "out", log)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    report = json.loads((directory / "out" / "report.json").read_text())
    return directory / "out", log, report, output
