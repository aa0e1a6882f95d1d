"""MLIPCalculator against physics: finite differences, invariances, ensembles, bad input."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError

import mlip_md
from conftest import make_model, numeric_forces, numeric_hessian, numeric_stress, random_cell
from isolated import run_isolated
from mlip_md.physics import forces_from_edge_gradients


@pytest.fixture
def cell(calc):
    atoms = random_cell()
    atoms.calc = calc
    return atoms


@pytest.fixture
def cluster(calc):
    """A non-periodic two-element cluster."""
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 2, 1)
    atoms.pbc = False
    atoms.symbols[::3] = "Al"
    atoms.rattle(0.1, seed=5)
    atoms.calc = calc
    return atoms


def test_forces_are_minus_energy_gradient(cell, cluster):
    for atoms in (cell, cluster):
        forces = atoms.get_forces()
        assert np.abs(forces).max() > 0.05, "oracle needs non-trivial forces"
        np.testing.assert_allclose(forces, numeric_forces(atoms), rtol=0, atol=1e-6)


def test_stress_matches_finite_strain(cell):
    stress = cell.get_stress()
    assert np.abs(stress).max() > 1e-3
    np.testing.assert_allclose(stress, numeric_stress(cell), rtol=0, atol=1e-6)


def test_hessian_matches_finite_differences_and_is_symmetric(calc, cell, cluster):
    for atoms in (cell, cluster):
        hessian = calc.get_hessian(atoms)
        assert hessian.shape == (3 * len(atoms), 3 * len(atoms))
        np.testing.assert_allclose(hessian, hessian.T, rtol=0, atol=1e-10)
        reference = numeric_hessian(atoms)
        np.testing.assert_allclose(hessian, reference, rtol=0, atol=1e-5 * np.abs(reference).max())
        # Translations are zero modes: every row sums to zero over x, y, z blocks.
        np.testing.assert_allclose(hessian.reshape(-1, len(atoms), 3).sum(1), 0, atol=1e-9)


def test_zero_net_force(cell, cluster):
    for atoms in (cell, cluster):
        np.testing.assert_allclose(atoms.get_forces().sum(0), 0, atol=1e-10)


def test_translation_rotation_permutation_invariance(calc, cluster):
    energy, forces = cluster.get_potential_energy(), cluster.get_forces()

    moved = cluster.copy()
    moved.calc = calc
    moved.positions += [1.7, -3.2, 0.4]
    assert moved.get_potential_energy() == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(moved.get_forces(), forces, atol=1e-10)

    rotated = cluster.copy()
    rotated.calc = calc
    rotated.rotate(37, (1, 2, 0.5), center="COM")
    rotation = np.linalg.lstsq(cluster.positions - cluster.get_center_of_mass(),
                               rotated.positions - rotated.get_center_of_mass(), rcond=None)[0]
    assert rotated.get_potential_energy() == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(rotated.get_forces(), forces @ rotation, atol=1e-10)

    order = np.random.default_rng(0).permutation(len(cluster))
    shuffled = cluster[order]
    shuffled.calc = calc
    assert shuffled.get_potential_energy() == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(shuffled.get_forces(), forces[order], atol=1e-10)


def test_periodic_translation_and_wrapping(calc, cell):
    energy = cell.get_potential_energy()
    shifted = cell.copy()
    shifted.calc = calc
    shifted.positions += cell.cell[0] * 3 + [0.3, 0.1, -0.2]
    assert shifted.get_potential_energy() == pytest.approx(energy, abs=1e-10)
    shifted.wrap()
    assert shifted.get_potential_energy() == pytest.approx(energy, abs=1e-10)


def test_supercell_energy_per_atom(calc, cell):
    supercell = cell * (2, 1, 3)
    supercell.calc = calc
    assert supercell.get_potential_energy() / len(supercell) == pytest.approx(
        cell.get_potential_energy() / len(cell), abs=1e-10
    )
    np.testing.assert_allclose(supercell.get_stress(), cell.get_stress(), atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_force_sums_over_sorted_edges_match_the_scatter(dtype):
    # The calculator's edges are sorted by centre, so it sums each atom's run of
    # edges (reduceat); atoms 0, 3 and the last two have no outgoing edges here.
    rng = np.random.default_rng(3)
    centers = np.sort(rng.choice([1, 2, 4, 5, 6, 7], size=40))
    edge_index = torch.from_numpy(np.stack([centers, rng.integers(0, 10, size=40)]))
    gradients = torch.randn(2, 40, 3, dtype=dtype)
    expected = forces_from_edge_gradients(edge_index, gradients, 10)
    sums = forces_from_edge_gradients(edge_index, gradients, 10, sorted_centers=True)
    torch.testing.assert_close(sums, expected, rtol=0, atol=10 * torch.finfo(dtype).eps)
    incoming = gradients.new_zeros(2, 10, 3).index_add_(1, edge_index[1], gradients)
    empty = [0, 3, 8, 9]
    torch.testing.assert_close(sums[:, empty], -incoming[:, empty], rtol=0, atol=0)


def test_per_atom_energies_sum_to_total(cell):
    energies = cell.get_potential_energies()
    assert energies.shape == (len(cell),)
    assert energies.sum() == pytest.approx(cell.get_potential_energy(), abs=1e-10)
    assert cell.get_potential_energy(force_consistent=True) == cell.get_potential_energy()


def test_energy_and_forces_continuous_across_cutoff(calc):
    def dimer(distance):
        atoms = Atoms("AlCu", positions=[[0, 0, 0], [distance, 0, 0]])
        atoms.calc = calc
        return atoms.get_potential_energy(), atoms.get_forces()

    inside, outside, far = dimer(6.0 - 1e-7), dimer(6.0 + 1e-7), dimer(9.0)
    assert inside[0] == pytest.approx(outside[0], abs=1e-10)
    np.testing.assert_allclose(inside[1], outside[1], atol=1e-8)
    assert outside[0] == pytest.approx(far[0], abs=1e-12)
    np.testing.assert_allclose(outside[1], 0, atol=1e-12)


def test_ensemble_mean_and_uncertainty(tmp_path, cell):
    members = [make_model(seed=seed) for seed in (1, 2, 3)]
    ensemble = mlip_md.MLIPCalculator(mlip_md.export(members, tmp_path / "ensemble.pt"))
    singles = [mlip_md.MLIPCalculator(mlip_md.export(m, tmp_path / f"m{k}.pt")) for k, m in enumerate(members)]
    energies, forces = [], []
    for single in singles:
        atoms = cell.copy()
        atoms.calc = single
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    atoms = cell.copy()
    atoms.calc = ensemble
    energies, forces = np.array(energies), np.array(forces)
    assert atoms.get_potential_energy() == pytest.approx(energies.mean(), abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), forces.mean(0), atol=1e-10)
    assert ensemble.get_property("energy_uncertainty", atoms) == pytest.approx(
        energies.std() / np.sqrt(len(atoms)), abs=1e-12
    )
    expected = np.sqrt(((forces - forces.mean(0)) ** 2).sum(-1).mean(0))
    np.testing.assert_allclose(ensemble.get_property("forces_uncertainty", atoms), expected, atol=1e-12)
    assert expected.min() > 0


@pytest.mark.parametrize("name", ["energy_uncertainty", "forces_uncertainty"])
def test_single_model_uncertainty_is_refused(cell, calc, name):
    # As in the LAMMPS plugin: a clear error, not zeros that look like certainty.
    cell.get_forces()
    with pytest.raises(PropertyNotImplementedError, match=f"{name} needs an ensemble model file.*has one member"):
        calc.get_property(name, cell)
    assert name not in calc.results and name not in calc.implemented_properties


def test_float32_model_agrees_with_float64(tmp_path, cell):
    model = make_model()
    atoms64, atoms32 = cell.copy(), cell.copy()
    atoms64.calc = mlip_md.MLIPCalculator(mlip_md.export(model, tmp_path / "m64.pt"))
    atoms32.calc = mlip_md.MLIPCalculator(mlip_md.export(model, tmp_path / "m32.pt", dtype="float32"))
    assert atoms32.get_potential_energy() == pytest.approx(atoms64.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(atoms32.get_forces(), atoms64.get_forces(), atol=1e-4)
    assert atoms32.get_forces().dtype == np.float64


# -- bad input ------------------------------------------------------------------


def test_unknown_element_is_named(calc):
    atoms = molecule("H2O")
    atoms.calc = calc
    with pytest.raises(ValueError, match=r"\['H', 'O'\] not known to this model.*\['Al', 'Cu'\]"):
        atoms.get_potential_energy()


def test_empty_atoms(calc):
    atoms = Atoms()
    atoms.calc = calc
    with pytest.raises(ValueError, match="empty"):
        atoms.get_potential_energy()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_positions(calc, cluster, value):
    cluster.positions[2, 1] = value
    with pytest.raises(ValueError, match=r"non-finite .* atom\(s\) \[2\]"):
        cluster.get_potential_energy()


def test_close_contact_warns_with_pair(calc):
    atoms = Atoms("AlCu", positions=[[0, 0, 0], [0.6, 0, 0]])
    atoms.calc = calc
    with pytest.warns(mlip_md.CloseContactWarning, match="Al0-Cu1 at 0.600"):
        assert np.isfinite(atoms.get_potential_energy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atoms.positions[1, 0] = 2.4
        atoms.get_potential_energy()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_coincident_atoms_are_refused(tmp_path, dtype):
    calc = mlip_md.MLIPCalculator(mlip_md.export(make_model(), tmp_path / "model.pt", dtype=dtype))
    atoms = Atoms("AlAl", positions=[[1, 1, 1], [1, 1, 1]])
    atoms.calc = calc
    with pytest.raises(ValueError, match="on top of each other"):
        atoms.get_potential_energy()
    # Also when the skin list is updated rather than rebuilt (a move < skin/2),
    # where float32 vectors of coincident atoms are rounding noise, not 0.
    atoms.positions = [[10.3, 7.1, 3.3], [10.7, 7.1, 3.3]]
    with pytest.warns(mlip_md.CloseContactWarning):
        atoms.get_potential_energy()
    builds = calc.neighbors.n_builds
    atoms.positions[1] = atoms.positions[0] + 1e-7
    with pytest.raises(ValueError, match="on top of each other"):
        atoms.get_potential_energy()
    assert calc.neighbors.n_builds == builds


def test_stress_of_non_periodic_system(cluster):
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        cluster.get_stress()


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        mlip_md.MLIPCalculator(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_text("not a model")
    with pytest.raises(mlip_md.ModelFileError):
        mlip_md.MLIPCalculator(tmp_path / "corrupt.pt")


def test_results_do_not_depend_on_skin(model_file, cell):
    from ase.md.verlet import VelocityVerlet

    trajectories = []
    for skin in (0.0, 1.5):
        atoms = cell.copy()
        atoms.set_momenta(np.random.default_rng(3).normal(0, 0.5, (len(atoms), 3)))
        atoms.calc = mlip_md.MLIPCalculator(model_file, skin=skin)
        dynamics = VelocityVerlet(atoms, timestep=1.0 * 0.0982269)  # 1 fs in ASE time units
        energies = []
        dynamics.attach(lambda: energies.append(atoms.get_potential_energy()), interval=5)
        dynamics.run(40)
        trajectories.append((np.array(energies), atoms.get_forces()))
    np.testing.assert_allclose(trajectories[0][0], trajectories[1][0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(trajectories[0][1], trajectories[1][1], rtol=0, atol=1e-9)


def test_ensemble_hessian_is_mean_of_members(tmp_path, cluster):
    members = [make_model(seed=seed) for seed in (4, 5)]
    ensemble = mlip_md.MLIPCalculator(mlip_md.export(members, tmp_path / "pair.pt"))
    singles = [mlip_md.MLIPCalculator(mlip_md.export(m, tmp_path / f"h{k}.pt")) for k, m in enumerate(members)]
    expected = np.mean([single.get_hessian(cluster) for single in singles], axis=0)
    np.testing.assert_allclose(ensemble.get_hessian(cluster), expected, rtol=0, atol=1e-10)


def test_coincident_with_own_periodic_image_is_refused(calc):
    atoms = Atoms("Al", cell=[3.0, 3.0, 1e-6], pbc=True)
    atoms.calc = calc
    with pytest.raises(ValueError, match="atom 0 and its own periodic image sit on top of each other.*vector 2"):
        atoms.get_potential_energy()


@pytest.mark.parametrize("cell, distance", [([0.5, 0.5, 0.5], "0.500"), ([3.0, 3.0, 1e-3], "0.001")])
def test_close_own_periodic_image_warns(tmp_path, cell, distance):
    calc = mlip_md.MLIPCalculator(mlip_md.export(make_model(species=("Al",)), tmp_path / "al.pt"))
    atoms = Atoms("Al", cell=cell, pbc=True)
    atoms.calc = calc
    with pytest.warns(mlip_md.CloseContactWarning, match=f"Al0-its own periodic image at {distance} Å"):
        atoms.get_potential_energy()


def test_non_finite_model_output_is_refused(tmp_path, cluster):
    model = make_model()
    with torch.no_grad():
        model.readouts[1].weight[0, 0] = float("nan")
    cluster.calc = mlip_md.MLIPCalculator(mlip_md.export(model, tmp_path / "nan.pt"))
    with pytest.raises(FloatingPointError, match="non-finite .*energies or forces.*model file"):
        cluster.get_potential_energy()
    assert "energy" not in cluster.calc.results
    with pytest.raises(FloatingPointError, match="non-finite .*Hessian"):
        cluster.calc.get_hessian(cluster)


def test_non_finite_ensemble_member_is_named(tmp_path, cluster):
    members = [make_model(seed=1), make_model(seed=2)]
    with torch.no_grad():
        members[1].readouts[0].weight.fill_(float("inf"))
    cluster.calc = mlip_md.MLIPCalculator(mlip_md.export(members, tmp_path / "inf.pt"))
    with pytest.raises(FloatingPointError, match=r"ensemble member\(s\) \[1\]"):
        cluster.get_forces()


# -- far-apart atoms (once SIGFPE inside the neighbour list) ----------------------------------


@pytest.mark.parametrize("layout", ["pair_open", "slab_and_atom_above"])
def test_far_apart_atoms_give_isolated_energies(model_file, layout):
    result = run_isolated(f"""
        import numpy as np
        from ase import Atoms
        from ase.build import fcc111
        import mlip_md

        def energy(atoms):
            atoms.calc = mlip_md.MLIPCalculator({str(model_file)!r})
            return atoms.get_potential_energy(), atoms.get_forces()

        if {layout!r} == "pair_open":
            parts = [Atoms("Al", positions=[[0, 0, 0]]), Atoms("Cu", positions=[[1e6, 0, 0]])]
        else:
            slab = fcc111("Al", (2, 2, 3), vacuum=5.0)
            slab.pbc = [True, True, False]
            atom = Atoms("Cu", positions=[[0.4, 0.3, 1e6]], cell=slab.cell, pbc=slab.pbc)
            parts = [slab, atom]
        whole = parts[0] + parts[1]
        together, forces = energy(whole)
        alone = [energy(part.copy()) for part in parts]
        print(json.dumps({{
            "difference": together - sum(e for e, _ in alone),
            "force_difference": float(np.abs(forces - np.vstack([f for _, f in alone])).max()),
            "far_force": float(np.abs(forces[-1]).max()),
        }}))
        """, timeout=120, memory_gb=3)
    assert abs(result["difference"]) < 1e-10
    assert result["force_difference"] < 1e-10 and result["far_force"] == 0.0


# -- process-wide state is the caller's ------------------------------------------------------


def test_default_calculator_leaves_the_process_alone(model_file, cell, monkeypatch):
    calls = []
    monkeypatch.setattr(mlip_md.tuning, "keep_freed_memory", lambda: calls.append(1) or True)
    threads, environment = torch.get_num_threads(), dict(os.environ)
    cell.calc = mlip_md.MLIPCalculator(model_file)
    cell.get_forces()
    cell.calc.get_hessian(cell)
    assert calls == [] and torch.get_num_threads() == threads and dict(os.environ) == environment
    mlip_md.MLIPCalculator(model_file, keep_freed_memory=True)
    assert calls == [1], "opting in tunes malloc"


def test_importing_mlip_md_leaves_the_process_alone():
    script = """
import json, os, sys
import matplotlib, torch
matplotlib.use("svg")
torch.set_num_threads(3)
before = (dict(os.environ), torch.get_num_threads(), matplotlib.get_backend())
import mlip_md
after = (dict(os.environ), torch.get_num_threads(), matplotlib.get_backend())
print(json.dumps({"same": before == after, "after": after[1:], "pyplot": "matplotlib.pyplot" in sys.modules}))
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    result = json.loads(output.splitlines()[-1])
    assert result["same"], result
    assert result["after"] == [3, "svg"] and not result["pyplot"]


def test_todict_is_recorded_by_an_ase_database(tmp_path, model_file, cell):
    import hashlib

    from ase.db import connect

    cell.calc = mlip_md.MLIPCalculator(model_file, skin=0.5, close_contact_factor=0.4, num_threads=torch.get_num_threads())
    energy = cell.get_potential_energy()
    database = connect(tmp_path / "results.db")
    row = database.get(database.write(cell))
    assert row.calculator == "mlipcalculator" and row.energy == pytest.approx(energy, abs=1e-12)
    expected = {
        "model_path": os.path.abspath(model_file),
        "model_sha256": hashlib.sha256(open(model_file, "rb").read()).hexdigest(),
        "device": "cpu",
        "skin": 0.5,
        "close_contact_factor": 0.4,
        "keep_freed_memory": False,
        "num_threads": torch.get_num_threads(),
    }
    assert row.calculator_parameters == expected == cell.calc.todict()
