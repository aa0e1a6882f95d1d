"""Hessian labels in every usual place (info flat or square, database data, per-atom arrays [N, 9N]),
and Hessian training refusing data where some configurations lack them."""

import re

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.db import connect

from mlip_md.data import LabelError, configuration_from_atoms, label, read_configurations, split_indices
from mlip_md.data.generate import write_images
from mlip_md.train.config import config_from_dict
from mlip_md.train.errors import TrainingError
from mlip_md.train.splits import load_data


def _cluster(seed=0, n_atoms=4):
    """A rattled Al cluster labelled by EMT (energy, forces), without a Hessian."""
    positions = np.array([[0, 0, 0], [2.8, 0, 0], [1.4, 2.4, 0], [1.4, 0.8, 2.3]])[:n_atoms]
    atoms = Atoms(f"Al{n_atoms}", positions=positions)
    atoms.rattle(0.05, seed=seed)
    return label(atoms, EMT())


def _symmetric(n_atoms, seed=0, exact_in_extxyz=False):
    """A random symmetric [3N, 3N] matrix (eV/Å²); with ``exact_in_extxyz`` its values are multiples
    of 1/256, which extended XYZ's 8-decimal per-atom columns print, and read back, exactly."""
    rng = np.random.default_rng(seed)
    shape = (3 * n_atoms, 3 * n_atoms)
    matrix = rng.integers(-800, 800, shape) / 256 if exact_in_extxyz else rng.normal(size=shape)
    return matrix + matrix.T


def _per_atom(hessian):
    """The per-atom layout by its definition: row a is rows 3a..3a+2 of H, flattened (C order)."""
    return np.stack([hessian[3 * a:3 * a + 3].ravel() for a in range(len(hessian) // 3)])


def test_every_layout_reads_to_the_same_matrix(tmp_path):
    hessian = _symmetric(4, exact_in_extxyz=True)
    np.testing.assert_array_equal(_per_atom(hessian), hessian.reshape(4, 36))
    read = {}
    for name, place in [("info flat", "info"), ("arrays", "arrays")]:
        atoms = _cluster()
        if place == "info":
            atoms.info["hessian"] = hessian.ravel()
        else:
            atoms.arrays["hessian"] = _per_atom(hessian)
        ase.io.write(tmp_path / f"{place}.extxyz", atoms, format="extxyz")
        read[name] = read_configurations(tmp_path / f"{place}.extxyz")[0].hessian
    square = _cluster()
    square.info["hessian"] = hessian
    read["info square"] = configuration_from_atoms(square).hessian
    with connect(tmp_path / "rows.db") as database:
        database.write(_cluster(), data={"hessian": hessian})
    read["database data"] = read_configurations(tmp_path / "rows.db")[0].hessian
    for name, matrix in read.items():
        np.testing.assert_array_equal(matrix, hessian, err_msg=name)


def test_a_wrong_per_atom_shape_is_refused_with_the_source_and_the_expected_shape(tmp_path):
    atoms = _cluster()
    atoms.arrays["hessian"] = np.zeros((4, 12))  # [N, 3N] instead of [N, 9N]
    path = tmp_path / "wrong.extxyz"
    ase.io.write(path, atoms, format="extxyz")
    message = rf"{re.escape(str(path))}\[0\]: arrays\['hessian'\] has shape \(4, 12\), expected \(4, 36\)"
    with pytest.raises(LabelError, match=message):
        read_configurations(path)


def test_two_places_must_agree(tmp_path):
    hessian = _symmetric(4)  # not exact in 8 decimals: the per-atom column is rounded, info is not
    atoms = _cluster()
    atoms.info["hessian"] = hessian.ravel()
    atoms.arrays["hessian"] = hessian.reshape(4, 36)
    path = tmp_path / "both.extxyz"
    ase.io.write(path, atoms, format="extxyz")
    np.testing.assert_array_equal(read_configurations(path)[0].hessian, hessian)
    atoms.arrays["hessian"] = (hessian + 0.01 * np.eye(12)).reshape(4, 36)
    with pytest.raises(LabelError, match=r"memory: the Hessians in info\['hessian'\] and arrays\['hessian'\] differ"):
        configuration_from_atoms(atoms)


@pytest.mark.parametrize("suffix", ["extxyz", "traj", "db"])
def test_write_images_keeps_a_per_atom_hessian_exactly(tmp_path, suffix):
    hessian = _symmetric(4, seed=1)
    atoms = _cluster()
    atoms.arrays["hessian"] = hessian.reshape(4, 36)
    path = write_images([atoms, _cluster(seed=1)], tmp_path / f"images.{suffix}")
    configurations = read_configurations(path)
    np.testing.assert_array_equal(configurations[0].hessian, hessian)
    assert configurations[1].hessian is None
    assert "hessian" not in label(atoms, EMT()).arrays  # relabelling drops the old Hessian


def _mixed_file(tmp_path, unlabelled, n=10):
    """``n`` clusters with Hessians in info, except those of ``unlabelled``; the path of their extxyz file."""
    images = [_cluster(seed=k) for k in range(n)]
    for k, atoms in enumerate(images):
        if k not in unlabelled:
            atoms.info["hessian"] = _symmetric(4, seed=k).ravel()
    path = tmp_path / f"mixed_{'_'.join(map(str, unlabelled))}.extxyz"
    ase.io.write(path, images, format="extxyz")
    return path


def _config(path, hessian, test=None):
    data = {"train": str(path), "valid_fraction": 0.2, "test_fraction": 0.0 if test else 0.1}
    return config_from_dict({"data": {**data, "test": str(test) if test else None}, "loss": {"hessian": hessian},
                             "training": {"seed": 0}})


@pytest.mark.parametrize("which", [0, 1, 2], ids=["training", "validation", "test"])
def test_hessian_training_refuses_a_file_where_some_configurations_lack_hessians(tmp_path, which):
    names = ["training set", "validation set", "test set"]
    index = int(split_indices(10, 0.2, 0.1, seed=0)[which][0])
    path = _mixed_file(tmp_path, [index])
    message = (rf"Hessian training is on \(loss.hessian > 0\) but 1 of 10 configuration\(s\) have no Hessian labels "
               rf"\(hessian or hvp pairs\): 1 in the {names[which]}; e.g. {re.escape(str(path))}\[{index}\]")
    with pytest.raises(TrainingError, match=message):
        load_data(_config(path, hessian=1.0))
    split = load_data(_config(path, hessian=0.0))
    assert len(split.train) + len(split.valid) + len(split.test) == 10


def test_a_separate_test_file_has_hessians_on_all_or_none(tmp_path):
    train = _mixed_file(tmp_path, [])
    assert load_data(_config(train, 1.0, test=_mixed_file(tmp_path, list(range(4)), n=4))).test.configurations
    mixed = _mixed_file(tmp_path, [2], n=4)
    name = re.escape(str(mixed))
    with pytest.raises(TrainingError, match=rf"the test set \({name}\) mixes configurations with and without "
                                            rf"Hessian labels: 1 of 4 have none, e.g. {name}\[2\]"):
        load_data(_config(train, 1.0, test=mixed))
