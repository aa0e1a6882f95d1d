"""Labelled data: reading (extxyz, ASE db), label checks, splits, reference energies, batches."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db import connect
from ase.io import write

import mlip_md
from conftest import make_model
from mlip_md.data import (
    GraphCache,
    LabelError,
    collate,
    configuration_from_atoms,
    fit_reference_energies,
    read_configurations,
    split_indices,
)
from mlip_md.data.labels import label
from mlip_md.species import SpeciesMap


def _emt_images(n=6, seed=0):
    """Rattled, strained Al/Cu cells labelled by ASE's EMT (a real reference calculator)."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 1)
        atoms.symbols[: k % 3] = "Cu"
        atoms.set_cell(atoms.cell[:] * (1 + rng.normal(0, 0.01, (3, 3))), scale_atoms=True)
        atoms.rattle(0.1, seed=k)
        images.append(label(atoms, EMT(), stress=False))
    return images


@pytest.mark.parametrize("suffix", ["extxyz", "db"])
def test_reads_labels_written_by_ase(tmp_path, suffix):
    images = _emt_images()
    path = tmp_path / f"data.{suffix}"
    if suffix == "db":
        with connect(path) as database:
            for atoms in images:
                database.write(atoms)
    else:
        write(path, images)
    configurations = read_configurations(path)
    assert len(configurations) == len(images)
    for configuration, atoms in zip(configurations, images):
        assert configuration.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(configuration.forces, atoms.get_forces(), atol=1e-7)
        np.testing.assert_allclose(configuration.positions, atoms.positions, atol=1e-7)  # extxyz: 8 decimals
        assert configuration.source.startswith(str(path))


def test_label_errors_name_the_configuration(tmp_path):
    images = _emt_images(3)
    images[1].calc = SinglePointCalculator(images[1], energy=1.0)  # energy only
    path = tmp_path / "partial.extxyz"
    write(path, images)
    with pytest.raises(LabelError, match=r"partial.extxyz\[1\]: no forces label"):
        read_configurations(path)
    energy_only = read_configurations(path, require_forces=False)
    assert energy_only[1].forces is None and energy_only[0].forces is not None
    unlabelled = tmp_path / "bare.extxyz"
    write(unlabelled, bulk("Al"))
    with pytest.raises(LabelError, match="no energy label"):
        read_configurations(unlabelled)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_configurations(tmp_path / "missing.extxyz")


def test_split_is_reproducible_and_disjoint():
    train, valid, test = split_indices(100, 0.1, 0.2, seed=3)
    assert (len(train), len(valid), len(test)) == (70, 10, 20)
    assert sorted(np.concatenate([train, valid, test]).tolist()) == list(range(100))
    again = split_indices(100, 0.1, 0.2, seed=3)
    assert all((a == b).all() for a, b in zip((train, valid, test), again))
    assert not (split_indices(100, 0.1, 0.2, seed=4)[1] == valid).all()
    with pytest.raises(ValueError, match="valid_fraction"):
        split_indices(10, 0.6, 0.5)


def test_reference_energies_by_least_squares():
    images = _emt_images(9)
    truth = {"Al": -3.2, "Cu": -1.1}
    for atoms in images:
        energy = sum(truth[s] for s in atoms.get_chemical_symbols())
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((len(atoms), 3)))
    configurations = [configuration_from_atoms(atoms) for atoms in images]
    np.testing.assert_allclose(fit_reference_energies(configurations, ["Al", "Cu"]), [-3.2, -1.1], atol=1e-10)


def test_batch_reproduces_the_calculator(tmp_path):
    """Energies per structure and forces from a batched graph equal the deployed calculator's."""
    images = _emt_images(4)
    path = tmp_path / "data.extxyz"
    write(path, images)
    configurations = read_configurations(path)
    model = make_model().double()
    calc = mlip_md.MLIPCalculator(mlip_md.export(model, tmp_path / "m.pt"))
    batch = collate(GraphCache(configurations, model.cutoff), [2, 0, 3], SpeciesMap(model.species))
    positions = batch.positions.clone().requires_grad_(True)
    atom_energies = model(batch.species, batch.edge_index, batch.edge_vectors(positions))
    energies = torch.zeros(batch.n_structures, dtype=torch.float64).index_add_(0, batch.structure, atom_energies)
    (gradient,) = torch.autograd.grad(energies.sum(), positions)
    forces = -gradient.numpy()
    start = 0
    for row, index in enumerate([2, 0, 3]):
        atoms = configurations[index].to_atoms()
        atoms.calc = calc
        n = len(atoms)
        assert energies[row].item() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(forces[start : start + n], atoms.get_forces(), atol=1e-10)
        np.testing.assert_allclose(batch.forces[start : start + n].numpy(), configurations[index].forces)
        start += n
    assert batch.energy.tolist() == [configurations[k].energy for k in (2, 0, 3)]


def test_generated_aluminium_is_labelled_reproducible_and_readable(tmp_path):
    from mlip_md.cli import main
    from mlip_md.data.generate import generate_aluminium

    images = generate_aluminium(10, seed=1, temperatures=(300.0, 900.0))
    kinds = [atoms.info["kind"] for atoms in images]
    assert set(kinds) == {"rattled", "strained", "vacancy", "surface", "md_300K", "md_900K"}
    assert all(30 <= len(atoms) <= 108 for atoms in images)
    check = images[3].copy()
    check.calc = EMT()
    np.testing.assert_allclose(images[3].get_forces(), check.get_forces(), atol=1e-12)
    again = generate_aluminium(10, seed=1, temperatures=(300.0, 900.0))
    np.testing.assert_array_equal(images[-1].positions, again[-1].positions)

    path = tmp_path / "al.extxyz"
    assert main(["generate", "aluminium", "--n", "6", "--out", str(path), "--seed", "2"]) == 0
    configurations = read_configurations(path)
    assert len(configurations) == 6 and all(c.forces is not None for c in configurations)


def test_hessian_labels_from_database_rows(tmp_path):
    images = _emt_images(2)
    rng = np.random.default_rng(0)
    path = tmp_path / "hessians.db"
    hessians, probes = [], []
    with connect(path) as database:
        for atoms in images:
            size = 3 * len(atoms)
            hessian = rng.normal(size=(size, size))
            hessian = hessian + hessian.T
            probe = rng.choice([-1.0, 1.0], size=(2, size))
            database.write(atoms, data={"hessian": hessian, "hvp_probes": probe, "hvp_products": probe @ hessian})
            hessians.append(hessian)
            probes.append(probe)
    configurations = read_configurations(path)
    np.testing.assert_array_equal(configurations[1].hessian, hessians[1])
    batch = collate(GraphCache(configurations, 5.0), [0, 1], SpeciesMap(["Al", "Cu"]))
    assert batch.hvp_probes.shape == (2, batch.positions.shape[0], 3)
    n0 = configurations[0].n_atoms
    np.testing.assert_allclose(batch.hvp_products[:, n0:].reshape(2, -1).numpy(), probes[1] @ hessians[1])
    with connect(tmp_path / "bad.db") as database:
        database.write(images[0], data={"hessian": np.zeros(5)})
    with pytest.raises(LabelError, match=r"data\['hessian'\] has 5 values, expected 576"):
        read_configurations(tmp_path / "bad.db")


def test_gfn2_molecule_frames_with_hessians(tmp_path):
    from mlip_md.cli import main

    path = tmp_path / "ethanol.extxyz"
    assert main(["generate", "molecule", "--n", "2", "--out", str(path), "--temperatures", "400"]) == 0
    configurations = read_configurations(path)
    assert [c.n_atoms for c in configurations] == [9, 9]
    hessian = configurations[0].hessian
    assert hessian.shape == (27, 27)
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-12)
    # Translational invariance of the labels: rows of each 3x3 column block sum to ~0.
    assert np.abs(hessian.reshape(27, 9, 3).sum(1)).max() < 0.05 * np.abs(hessian).max()


def test_declared_units_must_be_ev_and_angstrom(tmp_path):
    images = _emt_images(2)
    images[0].info["energy_unit"] = "eV"
    images[1].info["energy_unit"] = "kcal/mol"
    path = tmp_path / "mixed.extxyz"
    write(path, images)
    with pytest.raises(LabelError, match=r"mixed units, energy_unit takes the values \['eV', 'kcal/mol'\]"):
        read_configurations(path)
    images[0].info["energy_unit"] = "kcal/mol"
    write(path, images)
    with pytest.raises(LabelError, match="energy_unit is 'kcal/mol'; mlip_md works in eV"):
        read_configurations(path)


def _unreadable(tmp_path, kind):
    """A data path that is not a readable data file, of the given kind."""
    path = tmp_path / {"empty": "empty.extxyz", "garbage": "garbage.extxyz", "text": "notes.extxyz",
                       "directory": "data", "extension": "data.qwerty", "database": "broken.db"}[kind]
    if kind == "directory":
        path.mkdir()
    elif kind in ("garbage", "database"):
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes())
    else:
        path.write_text({"empty": "", "text": "energies of aluminium\n1 2 3\n", "extension": "x\n"}[kind])
    return path


UNREADABLE = {
    "empty": "is empty",
    "garbage": "cannot be read as configurations: UnicodeDecodeError",
    "text": "cannot be read as configurations: XYZError",
    "directory": "is a directory",
    "extension": "not a file format ASE reads",
    "database": "cannot be read as configurations: DatabaseError",
}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_unreadable_data_files_are_named_errors(tmp_path, kind):
    path = _unreadable(tmp_path, kind)
    with pytest.raises(LabelError) as raised:
        read_configurations(path)
    assert str(path) in str(raised.value) and UNREADABLE[kind] in str(raised.value)


@pytest.mark.parametrize("kind", ["empty", "garbage", "directory", "extension"])
def test_cli_reports_unreadable_data(tmp_path, capsys, model_file, kind):
    """`mlip-md train` and `mlip-md eval` print one line naming the file (exit code 2), no traceback."""
    import yaml

    from mlip_md.cli import main

    path = _unreadable(tmp_path, kind)
    assert main(["eval", str(model_file), str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mlip-md eval: error: ") and str(path) in error and UNREADABLE[kind] in error
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {"train": str(path)}}))
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mlip-md train: error: ") and str(path) in error and "Traceback" not in error
    assert not (tmp_path / "run" / "model.pt").exists()


def test_content_hash_sees_structures_and_labels():
    from dataclasses import replace

    from mlip_md.data.dataset import content_hash

    configurations = [configuration_from_atoms(atoms) for atoms in _emt_images(3)]
    reference = content_hash(configurations)
    assert content_hash([configuration_from_atoms(atoms) for atoms in _emt_images(3)]) == reference
    assert content_hash([replace(configurations[0], source="elsewhere.extxyz[0]")] + configurations[1:]) == reference
    moved = configurations[2].positions.copy()
    moved[0, 0] += 1e-9
    changes = [
        configurations[::-1],
        configurations[:2],
        configurations[:2] + [replace(configurations[2], positions=moved)],
        configurations[:2] + [replace(configurations[2], energy=configurations[2].energy + 1e-9)],
        configurations[:2] + [replace(configurations[2], forces=None)],
        configurations[:2] + [replace(configurations[2], pbc=np.array([True, True, False]))],
    ]
    assert all(content_hash(changed) != reference for changed in changes)


def test_batches_cover_a_set_in_the_given_order():
    from mlip_md.data.batch import batches

    configurations = [configuration_from_atoms(atoms) for atoms in _emt_images(5)]
    cache = GraphCache(configurations, 4.0)
    order = [3, 0, 4, 1, 2]
    seen = list(batches(cache, SpeciesMap(["Al", "Cu"]), 2, order=order))
    assert [start for start, _, _ in seen] == [0, 2, 4]
    assert [index.tolist() for _, index, _ in seen] == [[3, 0], [4, 1], [2]]
    assert seen[1][2].energy.tolist() == [configurations[4].energy, configurations[1].energy]
