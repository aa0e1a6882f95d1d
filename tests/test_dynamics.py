"""The calculator under real ASE dynamics, optimisers and vibrational analysis."""

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.optimize import BFGS
from ase.vibrations import VibrationsData

import mlip_md
from conftest import make_model
from mlip_md.md import run_nve


@pytest.fixture(scope="module")
def calc(tmp_path_factory):
    """A random repulsive potential: a stable solid for MD tests."""
    path = mlip_md.export(make_model(readout_scale=0.05, repulsive=True), tmp_path_factory.mktemp("md") / "md.pt")
    return mlip_md.MLIPCalculator(path)


def _aluminium(calc, repeat=2):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * (repeat, repeat, repeat)
    atoms.symbols[::5] = "Cu"
    atoms.rattle(0.05, seed=7)
    atoms.calc = calc
    return atoms


def _nve_energy_error(calc, timestep_fs):
    atoms = _aluminium(calc)
    steps = int(round(1000 / timestep_fs))
    records = run_nve(atoms, steps=steps, timestep_fs=timestep_fs, temperature_K=600, log_interval=10)
    totals = np.array([r.total for r in records])  # eV/atom
    drift, fluctuation = totals[-1] - totals[0], totals.max() - totals.min()
    print(f"\nNVE 1 ps, dt {timestep_fs} fs, {len(atoms)} atoms, float64: drift {drift:.2e} eV/atom, "
          f"max-min {fluctuation:.2e} eV/atom, mean T {np.mean([r.temperature for r in records]):.0f} K")
    assert records[-1].time_fs == 1000.0
    assert min(r.temperature for r in records) > 100, "atoms must actually move"
    return drift, fluctuation


def test_nve_conserves_energy_for_one_picosecond(calc):
    drift, fluctuation = _nve_energy_error(calc, 1.0)
    assert abs(drift) < 5e-5 and fluctuation < 1e-4
    # Velocity Verlet's energy error is O(dt²): halving dt must cut it ~4x,
    # which shows the residual is integration error, not inconsistent forces.
    _, finer = _nve_energy_error(calc, 0.5)
    assert 2.5 < fluctuation / finer < 6.0


def test_langevin_runs_and_thermalises(calc):
    atoms = _aluminium(calc)
    dynamics = Langevin(atoms, 2.0 * units.fs, temperature_K=300, friction=0.05, fixcm=False,
                        rng=np.random.default_rng(1))
    dynamics.run(200)
    assert np.isfinite(atoms.get_potential_energy())
    assert 100 < atoms.get_temperature() < 600


def test_bfgs_reaches_a_minimum(calc):
    atoms = _aluminium(calc, repeat=1)
    start = atoms.get_potential_energy()
    assert BFGS(atoms, logfile=None).run(fmax=1e-4, steps=500)
    assert np.abs(atoms.get_forces()).max() < 1e-4
    assert atoms.get_potential_energy() < start


def test_vibrations_from_analytic_hessian(tmp_path):
    calc = mlip_md.MLIPCalculator(mlip_md.export(make_model(species=("Al",)), tmp_path / "al.pt"))
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.pbc = False  # an Al4 cluster: a molecule with 6 zero modes
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=1e-6, steps=500)
    vibrations = VibrationsData.from_2d(atoms, calc.get_hessian(atoms))
    energies = vibrations.get_energies()  # eV, complex where imaginary
    assert len(energies) == 12
    zero_modes = np.sort(np.abs(energies))[:6]
    assert zero_modes.max() < 1e-3, "three translations and three rotations"
    real_modes = np.sort(np.abs(energies))[6:]
    assert (real_modes > 1e-3).all()
