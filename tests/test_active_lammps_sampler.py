"""The campaign's LAMMPS sampler (sampler.engine: lammps) against the ASE sampler: real lmp runs of a
float64 ensemble. With friction 0 both integrate velocity Verlet from the same start and velocities, so
the trajectories agree to rounding: the same checks, flags, discards and messages."""

import json

import numpy as np
import pytest
from ase import Atoms

import mlip_md
from conftest import make_model, random_cell
from mlip_md.active.config import SamplerConfig, SelectionConfig
from mlip_md.active.lammps_sampler import LammpsUnavailableError, lammps_command, run_lammps_trajectory
from mlip_md.active.sampler import TrajectoryResult, TrajectoryTask, disordered_start, run_trajectory
from mlip_md.lammps import build_plugin

SPECIES = ("Al",)
CUTOFF = 4.5
SMALL = dict(species=SPECIES, repulsive=True, n_interactions=1, n_features=8, n_sensitivities=8, n_atom_layers=1,
             cutoff=CUTOFF, dist_soft_min=1.5, dist_soft_max=4.0)
POSITIONS_TOLERANCE = 1e-10  # Å, LAMMPS against ASE after 30 steps (measured: 4.5e-14 on 1 and 2 ranks)
CHECKS_TOLERANCE = 1e-10  # relative, max forces_uncertainty at the same step (measured: 6e-14)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory) -> str:
    """A float64 two-member ensemble of small random repulsive Al models (they disagree by ~0.5 eV/Å)."""
    build_plugin()
    members = [make_model(seed=seed, **SMALL) for seed in (1, 2)]
    return mlip_md.export(members, tmp_path_factory.mktemp("lammps_sampler") / "ensemble.pt", dtype="float64")


def _sampler(**changes) -> SamplerConfig:
    """16 Al atoms, 40 steps checked every 10, no thermostat: the deterministic case."""
    settings = dict(max_steps=40, check_interval=10, n_atoms=(16, 16), temperature_start=(300.0, 300.0),
                    temperature_end=(600.0, 600.0), temperature_amplitude=(0.0, 100.0),
                    temperature_period_fs=(50.0, 100.0), max_restarts=2, friction=0.0)
    return SamplerConfig(**{**settings, **changes})


def _task(path, sampler=None, selection=None, start=None, seed=5) -> TrajectoryTask:
    sampler = sampler or _sampler()
    if start is None:
        start = disordered_start(_sampler(periodic=sampler.periodic), np.random.default_rng(0))
    return TrajectoryTask(path, sampler, selection or SelectionConfig(), start, seed, iteration=1, trajectory=3,
                          species=SPECIES, cutoff=CUTOFF)


def _assert_same_run(lammps: TrajectoryResult, ase: TrajectoryResult) -> None:
    """The same trajectory: outcome, steps, restarts, error text, and the checks to rounding."""
    for name in ("outcome", "steps", "last_step", "restarts", "first_flag_step", "first_flag_temperature", "error",
                 "schedule"):
        assert getattr(lammps, name) == getattr(ase, name), name
    assert [step for step, _ in lammps.checks] == [step for step, _ in ase.checks]
    np.testing.assert_allclose([v for _, v in lammps.checks], [v for _, v in ase.checks], rtol=CHECKS_TOLERANCE)
    assert [c.step for c in lammps.candidates] == [c.step for c in ase.candidates]


def _assert_candidates_match(lammps: TrajectoryResult, ase: TrajectoryResult, model: str) -> None:
    """Each LAMMPS candidate is the ASE candidate's frame, and its uncertainty is the calculator's on it."""
    for mine, theirs in zip(lammps.candidates, ase.candidates, strict=True):
        np.testing.assert_allclose(mine.atoms.cell[:], theirs.atoms.cell[:], rtol=0, atol=1e-12)
        np.testing.assert_allclose(mine.atoms.positions, theirs.atoms.positions, rtol=0, atol=POSITIONS_TOLERANCE)
        assert (mine.atoms.numbers == theirs.atoms.numbers).all() and (mine.atoms.pbc == theirs.atoms.pbc).all()
        atoms = mine.atoms.copy()
        atoms.calc = mlip_md.MLIPCalculator(model)
        sigma = atoms.calc.get_property("forces_uncertainty", atoms)
        np.testing.assert_allclose(mine.forces_uncertainty, sigma.max(), rtol=1e-10, atol=0)
        np.testing.assert_allclose(mine.predicted_forces, atoms.get_forces(), rtol=0, atol=1e-10)
        assert mine.predicted_energy == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
        for name in ("energy_uncertainty", "relative_forces_uncertainty", "predicted_energy"):
            assert getattr(mine, name) == pytest.approx(getattr(theirs, name), rel=1e-9), name
        np.testing.assert_allclose(mine.descriptor, theirs.descriptor, rtol=0, atol=1e-9)
        assert (mine.time_fs, mine.temperature, mine.trajectory) == (theirs.time_fs, theirs.temperature, 3)
        assert mine.atoms.calc is None


@pytest.fixture(scope="module")
def accurate(ensemble) -> tuple:
    """(ASE, LAMMPS) results of the deterministic trajectory with a threshold that never flags."""
    task = _task(ensemble, selection=SelectionConfig(forces_uncertainty=1e9))
    return run_trajectory(task), run_lammps_trajectory(task)


def _threshold_between(checks) -> tuple:
    """A threshold that the deterministic run first exceeds mid-way, with the widest margin on both sides:
    (threshold, the step it flags at)."""
    values = [value for _, value in checks]
    gaps = [(values[k] - max(values[:k]), k) for k in range(1, len(values)) if values[k] > max(values[:k])]
    gap, k = max(gaps)
    assert gap > 0.05 * values[k], "no check stands out from the earlier ones"
    return values[k] - gap / 2, checks[k][0]


# -- the deterministic case ---------------------------------------------------------------------------------


def test_accurate_run_reaches_max_steps_with_the_same_checks(accurate):
    ase, lammps = accurate
    assert lammps.outcome == "accurate" and lammps.steps == lammps.last_step == 40 and lammps.error is None
    assert [step for step, _ in lammps.checks] == [10, 20, 30, 40]
    _assert_same_run(lammps, ase)
    assert lammps.wall_time > 0 and (lammps.iteration, lammps.trajectory, lammps.seed) == (1, 3, 5)


@pytest.mark.parametrize("ranks", [1, 2])
def test_flags_at_the_ase_step_with_the_calculator_uncertainty(ensemble, accurate, ranks):
    threshold, step = _threshold_between(accurate[0].checks)
    assert 10 < step <= 40
    selection = SelectionConfig(forces_uncertainty=threshold)
    ase = run_trajectory(_task(ensemble, selection=selection))
    lammps = run_lammps_trajectory(_task(ensemble, _sampler(mpi_ranks=ranks), selection))
    assert ase.outcome == "flagged" and ase.first_flag_step == step
    _assert_same_run(lammps, ase)
    _assert_candidates_match(lammps, ase, ensemble)
    assert lammps.candidates[0].forces_uncertainty == lammps.checks[-1][1]  # the record is the dumped frame's
    restored = TrajectoryResult.from_dict(json.loads(json.dumps(lammps.to_dict())))
    assert restored.checks == lammps.checks and restored.candidates[0].step == step


def test_strain_triclinic_cell_and_several_candidates(ensemble):
    # A tilted cell (rotated into LAMMPS's frame and back), an atom two cells away from home, the cell
    # scaled at every chunk start, and two flags: the second segment goes on from the first flagged frame.
    start = random_cell(symbols=SPECIES, n_atoms=8, seed=3, min_distance=2.3)
    start.positions[0] += 2 * start.cell[0] - start.cell[2]
    sampler = _sampler(strain=(0.1, 0.1), min_distance=1.0)
    task = _task(ensemble, sampler, SelectionConfig(forces_uncertainty=1e-9, max_per_trajectory=2), start)
    ase, lammps = run_trajectory(task), run_lammps_trajectory(task)
    assert [c.step for c in lammps.candidates] == [10, 20] and lammps.outcome == "flagged"
    _assert_same_run(lammps, ase)
    _assert_candidates_match(lammps, ase, ensemble)
    np.testing.assert_allclose(lammps.candidates[1].atoms.cell[:], start.cell[:] * (1 + 0.1 * 10 / 40), rtol=1e-14)


def test_cluster_flagged_by_the_relative_rule(ensemble):
    selection = SelectionConfig(forces_uncertainty=1e9, relative_forces_uncertainty=1e-9)
    task = _task(ensemble, _sampler(periodic=False), selection)
    ase, lammps = run_trajectory(task), run_lammps_trajectory(task)
    assert lammps.outcome == "flagged" and lammps.first_flag_step == 10
    _assert_same_run(lammps, ase)
    _assert_candidates_match(lammps, ase, ensemble)
    mine, theirs = lammps.candidates[0], ase.candidates[0]
    assert mine.relative_forces_uncertainty == pytest.approx(theirs.relative_forces_uncertainty, rel=1e-6)
    assert mine.atoms.pbc.tolist() == [False] * 3


# -- untrusted frames ---------------------------------------------------------------------------------------


def test_too_close_restarts_then_discards_as_ase_does(ensemble):
    # The start was placed 2 Å apart and the model's cutoff is 4.5 Å: every check finds atoms too close.
    # (min_distance 6 Å, beyond the cutoff, takes compute coord/atom through pair_style zero.)
    for min_distance in (4.0, 6.0):
        task = _task(ensemble, _sampler(min_distance=min_distance, max_restarts=1), SelectionConfig(1e-6))
        ase, lammps = run_trajectory(task), run_lammps_trajectory(task)
        assert lammps.outcome == "discarded" and lammps.restarts == 1 and lammps.checks == []
        assert lammps.steps == 20 and lammps.last_step == 10
        assert lammps.error == ase.error and "closer than sampler.min_distance" in lammps.error
        _assert_same_run(lammps, ase)


def test_lammps_errors_count_as_untrusted(ensemble):
    start = Atoms("Al2", positions=[[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]], cell=[10.0] * 3, pbc=False)
    task = _task(ensemble, _sampler(max_restarts=1), start=start)
    ase, lammps = run_trajectory(task), run_lammps_trajectory(task)
    assert (lammps.outcome, lammps.restarts, lammps.steps, lammps.last_step) == ("discarded", 1, 2, 1)
    assert (ase.outcome, ase.restarts, ase.steps, ase.last_step) == ("discarded", 1, 2, 1)
    assert "LAMMPS stopped: ERROR" in lammps.error and "sit on top of each other" in lammps.error
    assert "discarded after 1 restart(s)" in lammps.error


# -- the thermostat ----------------------------------------------------------------------------------------


def test_langevin_run_is_sane(ensemble, accurate):
    # friction 0.01/fs from 300 K: noise and friction act, the checks stay finite; max_steps 45 ends in a
    # check after a chunk of 5 steps. (This random model lets atoms come 1.98 Å close in this run.)
    sampler = _sampler(friction=0.01, max_steps=45, min_distance=1.5)
    task = _task(ensemble, sampler, SelectionConfig(forces_uncertainty=1e9))
    lammps = run_lammps_trajectory(task)
    assert lammps.outcome == "accurate" and lammps.steps == lammps.last_step == 45 and lammps.restarts == 0
    assert [step for step, _ in lammps.checks] == [10, 20, 30, 40, 45]
    values = np.array([value for _, value in lammps.checks])
    assert np.isfinite(values).all() and (values > 0).all()
    deterministic = np.array([value for _, value in accurate[1].checks])
    assert np.abs(values[:4] / deterministic - 1).max() > 1e-3  # the thermostat changed the trajectory
    assert lammps.schedule == run_trajectory(task).schedule


# -- refusals -------------------------------------------------------------------------------------------------


def test_a_single_model_is_refused(tmp_path, ensemble):
    single = mlip_md.export(make_model(**SMALL), tmp_path / "single.pt", dtype="float64")
    with pytest.raises(ValueError, match="needs an ensemble model file"):
        run_lammps_trajectory(_task(single))


def test_mixed_periodicity_is_refused(ensemble):
    slab = random_cell(symbols=SPECIES, n_atoms=4, seed=1)
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match="periodic cells or open clusters"):
        run_lammps_trajectory(_task(ensemble, start=slab))


def test_missing_lmp_names_the_setup(tmp_path):
    with pytest.raises(LammpsUnavailableError, match=r"mpiexec and lmp not found.*mlip-md lammps-plugin"):
        lammps_command(2, search_path=str(tmp_path))


def test_missing_plugin_names_the_setup(ensemble, tmp_path, monkeypatch):
    # The launcher finds no plugin sources to build from, so lmp starts without pair_style mlip.
    monkeypatch.setenv("MLIP_MD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLIP_MD_PLUGIN_SOURCE", str(tmp_path))
    with pytest.raises(LammpsUnavailableError, match=r"(?s)without pair_style mlip.*mlip-md lammps-plugin.*"
                                                     r"Unrecognized pair style 'mlip'"):
        run_lammps_trajectory(_task(ensemble))
