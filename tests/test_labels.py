"""Labelling with a reference calculator (mlip_md.data.labels), checked against ASE's EMT itself."""

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from mlip_md.data import LabellingError, configuration_from_atoms, label, read_configurations
from mlip_md.data.generate import write_images


def aluminium_cell(seed=0) -> Atoms:
    """32 Al atoms in a strained, rattled periodic fcc cell."""
    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 2, 2)
    strain = np.eye(3) + np.random.default_rng(seed).uniform(-0.02, 0.02, (3, 3))
    atoms.set_cell(atoms.cell[:] @ (0.5 * (strain + strain.T)), scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


def aluminium_cluster(n_atoms=4, seed=0) -> Atoms:
    """A small open Al cluster (no periodic directions)."""
    atoms = (bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 1))[:n_atoms]
    atoms.pbc = False
    atoms.rattle(0.15, seed=seed)
    return atoms


def test_labels_equal_emts_own_results():
    atoms = aluminium_cell()
    labelled = label(atoms, EMT(), info={"kind": "strained"})
    reference = atoms.copy()
    reference.calc = EMT()
    assert labelled.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(labelled.get_forces(), reference.get_forces(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(labelled.get_stress(), reference.get_stress(), rtol=0, atol=1e-12)
    assert np.abs(labelled.get_stress()).max() > 1e-4  # the strain shows
    np.testing.assert_array_equal(labelled.positions, atoms.positions)
    assert labelled.info["kind"] == "strained" and "hessian" not in labelled.info
    assert atoms.calc is None and "kind" not in atoms.info  # the input is left alone


def test_stress_for_3d_periodic_cells_only():
    assert "stress" in label(aluminium_cell(), EMT()).calc.results
    assert "stress" not in label(aluminium_cell(), EMT(), stress=False).calc.results
    assert "stress" not in label(aluminium_cluster(), EMT()).calc.results
    slab = aluminium_cell()
    slab.pbc = (True, True, False)
    assert "stress" not in label(slab, EMT()).calc.results
    with pytest.raises(ValueError, match=r"Al4 \(4 atoms\): a stress label needs a 3-D periodic cell"):
        label(aluminium_cluster(), EMT(), stress=True)


def test_hessian_label_is_the_derivative_of_emts_forces_and_symmetric():
    atoms = aluminium_cluster()
    hessian = label(atoms, EMT(), hessian=True, hessian_step=1e-4).info["hessian"].reshape(12, 12)
    np.testing.assert_array_equal(hessian, hessian.T)
    # Oracle: derivatives of EMT's forces along random directions, H d = -(F(x + εd) - F(x - εd)) / 2ε.
    directions = np.random.default_rng(1).normal(size=(3, 12))
    for direction in directions / np.linalg.norm(directions, axis=1, keepdims=True):
        forces = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.positions += sign * 1e-4 * direction.reshape(4, 3)
            displaced.calc = EMT()
            forces.append(displaced.get_forces().ravel())
        np.testing.assert_allclose(hessian @ direction, -(forces[0] - forces[1]) / 2e-4,
                                   rtol=0, atol=1e-7 * np.abs(hessian).max())
    assert np.abs(hessian).max() > 0.5  # eV/Å², a Hessian of real size


def test_earlier_labels_do_not_survive():
    atoms = aluminium_cluster()
    atoms.info.update(energy=123.0, hessian=np.zeros(144), kind="old")
    atoms.arrays["forces"] = np.ones((4, 3))
    labelled = label(atoms, EMT(), info={"kind": "new"})
    assert "energy" not in labelled.info and "hessian" not in labelled.info and "forces" not in labelled.arrays
    assert labelled.info["kind"] == "new"
    assert configuration_from_atoms(labelled).energy == pytest.approx(labelled.get_potential_energy())


@pytest.mark.parametrize("suffix", ["extxyz", "xyz", "traj", "db"])
def test_labels_survive_files_and_read_configurations(tmp_path, suffix):
    images = [label(aluminium_cell(), EMT(), info={"kind": "strained"}),
              label(aluminium_cluster(), EMT(), hessian=True, info={"kind": "cluster"})]
    path = write_images(images, tmp_path / f"labels.{suffix}")
    configurations = read_configurations(path)
    for configuration, atoms in zip(configurations, images):
        assert configuration.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(configuration.forces, atoms.get_forces(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(configurations[1].hessian.ravel(), images[1].info["hessian"], rtol=0, atol=1e-7)
    assert configurations[0].hessian is None
    if suffix == "db":
        with ase.db.connect(path) as database:
            rows = list(database.select())
        stress, kinds = rows[0].stress, [row.kind for row in rows]
    else:
        read_back = ase.io.read(path, ":")
        stress, kinds = read_back[0].get_stress(), [atoms.info["kind"] for atoms in read_back]
    np.testing.assert_allclose(stress, images[0].get_stress(), rtol=0, atol=1e-9)
    assert kinds == ["strained", "cluster"]


def test_plain_ase_extxyz_keeps_the_labels(tmp_path):
    images = [label(aluminium_cluster(seed=2), EMT(), hessian=True), label(aluminium_cell(seed=2), EMT())]
    ase.io.write(tmp_path / "plain.extxyz", images)
    configurations = read_configurations(tmp_path / "plain.extxyz")
    np.testing.assert_allclose(configurations[0].hessian.ravel(), images[0].info["hessian"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(configurations[1].forces, images[1].get_forces(), rtol=0, atol=1e-7)


def test_failures_name_the_configuration_and_the_problem():
    iron = Atoms("Fe2", positions=[[0, 0, 0], [0, 0, 2.3]])
    with pytest.raises(LabellingError, match=r"Fe2 \(2 atoms, kind dimer\): EMT failed: NotImplementedError: "
                                             r"No EMT-potential for Fe") as failure:
        label(iron, EMT(), info={"kind": "dimer"})
    assert isinstance(failure.value.__cause__, NotImplementedError)
    on_top = Atoms("Al2", positions=[[0, 0, 0], [0, 0, 0]])
    with pytest.raises(LabellingError, match=r"Al2 \(2 atoms\): EMT returned non-finite forces"), \
            np.errstate(all="ignore"):
        label(on_top, EMT())
