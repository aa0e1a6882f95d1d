"""The campaign's sampler (schedule, start structures, ensemble MD with the discard and flag rules)
and its selection (descriptor, farthest-point sampling, candidate selection), with a real ensemble."""

import dataclasses
import json
import math
import pickle

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.data import atomic_masses
from ase.units import _Nav

import mlip_md
from conftest import make_model, random_cell
from mlip_md.active.config import SamplerConfig, SelectionConfig
from mlip_md.active.sampler import (
    Candidate,
    Schedule,
    TrajectoryResult,
    TrajectoryTask,
    disordered_start,
    run_trajectory,
    start_structure,
)
from mlip_md.active.selection import StreamingSelection, descriptor, farthest_point_sampling, select_candidates

SPECIES = ("Al",)
CUTOFF = 4.5
SMALL = dict(species=SPECIES, repulsive=True, n_interactions=1, n_features=8, n_sensitivities=8, n_atom_layers=1,
             cutoff=CUTOFF, dist_soft_min=1.5, dist_soft_max=4.0)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory) -> str:
    """A float64 two-member ensemble of small random repulsive Al models (they disagree by ~0.5 eV/Å)."""
    members = [make_model(seed=seed, **SMALL) for seed in (1, 2)]
    return mlip_md.export(members, tmp_path_factory.mktemp("sampler") / "ensemble.pt", dtype="float64")


def _sampler(**changes) -> SamplerConfig:
    settings = dict(max_steps=40, check_interval=10, n_atoms=(16, 16), temperature_start=(300.0, 300.0),
                    temperature_end=(600.0, 600.0), temperature_amplitude=(0.0, 100.0),
                    temperature_period_fs=(50.0, 100.0), max_restarts=2)
    return SamplerConfig(**{**settings, **changes})


def _task(path, sampler=None, selection=None, start=None, seed=5) -> TrajectoryTask:
    sampler = sampler or _sampler()
    start = disordered_start(sampler, np.random.default_rng(0)) if start is None else start
    return TrajectoryTask(path, sampler, selection or SelectionConfig(), start, seed, iteration=1, trajectory=3,
                          species=SPECIES, cutoff=CUTOFF)


def _min_distance(atoms: Atoms) -> float:
    distances = atoms.get_all_distances(mic=atoms.pbc.any())
    return distances[~np.eye(len(atoms), dtype=bool)].min()


# -- schedule ---------------------------------------------------------------------------------------


def test_schedule_formula():
    schedule = Schedule(t0=300.0, t1=1000.0, amplitude=200.0, period_fs=400.0, t_max_fs=1000.0, strain=0.1)
    assert schedule.temperature(0.0) == 300.0
    np.testing.assert_allclose(schedule.temperature(1000.0), 1000.0 + 200.0 * math.sin(2.5 * math.pi) ** 2)
    np.testing.assert_allclose(schedule.temperature(200.0), 300.0 + 700.0 * 0.2 + 200.0)  # sin²(π/2) = 1
    assert schedule.strain_at(0.0) == 0.0
    np.testing.assert_allclose(schedule.strain_at(500.0), 0.05)
    np.testing.assert_allclose(schedule.strain_at(1000.0), 0.1)


def test_schedule_draw_within_ranges():
    sampler = SamplerConfig(max_steps=500, timestep_fs=0.5, strain=(-0.1, 0.2))
    rng = np.random.default_rng(1)
    for _ in range(50):
        s = Schedule.draw(sampler, rng)
        assert 300.0 <= s.t0 <= 800.0 and 1000.0 <= s.t1 <= 2000.0
        assert 0.0 <= s.amplitude <= 500.0 and 200.0 <= s.period_fs <= 1000.0 and -0.1 <= s.strain <= 0.2
        assert s.t_max_fs == 250.0
    fixed = Schedule.draw(SamplerConfig(temperature_start=(400.0, 400.0)), rng)
    assert fixed.t0 == 400.0 and fixed.strain == 0.0


# -- start structures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("periodic", [True, False])
def test_disordered_start(periodic):
    sampler = SamplerConfig(n_atoms=(20, 40), composition={"Al": 0.75, "Cu": 0.25}, density=3.5,
                            min_distance=2.1, periodic=periodic)
    rng = np.random.default_rng(2)
    for _ in range(3):
        atoms = disordered_start(sampler, rng)
        n = len(atoms)
        assert 20 <= n <= 40
        counts = {s: atoms.get_chemical_symbols().count(s) for s in ("Al", "Cu")}
        assert counts["Al"] + counts["Cu"] == n and counts["Cu"] >= 1
        assert abs(counts["Cu"] - n / 4) <= 1
        assert _min_distance(atoms) >= 2.1
        assert atoms.pbc.all() == periodic and atoms.pbc.any() == periodic
        mass = atomic_masses[atoms.numbers].sum()
        if periodic:
            volume = atoms.get_volume()
        else:  # the occupied cube lies 6 Å from every face of the cell
            side = atoms.cell.lengths()[0] - 12.0
            volume = side**3
            assert atoms.positions.min() >= 6.0 and atoms.positions.max() <= 6.0 + side
        np.testing.assert_allclose(mass / (volume * _Nav) * 1e24, 3.5, rtol=1e-12)


def test_disordered_start_counts_round_and_keep_every_element():
    ten = disordered_start(SamplerConfig(n_atoms=(10, 10), composition={"Al": 0.75, "Cu": 0.25}),
                           np.random.default_rng(0))
    assert ten.get_chemical_symbols().count("Cu") == 2  # 7.5/2.5: the tie goes to the first element
    four = disordered_start(SamplerConfig(n_atoms=(4, 4), composition={"Al": 0.99, "Cu": 0.01}),
                            np.random.default_rng(0))
    assert four.get_chemical_symbols().count("Cu") == 1


def test_disordered_start_impossible_density():
    with pytest.raises(ValueError, match="density.*min_distance"):
        disordered_start(SamplerConfig(n_atoms=(30, 30), density=30.0, min_distance=2.5), np.random.default_rng(0))


def test_start_structure_store_and_file(tmp_path):
    frames = [random_cell(seed=seed, n_atoms=6) for seed in (1, 2)]
    for frame in frames:
        frame.info["energy"] = 1.0
    pool = [frame.copy() for frame in frames]
    for atoms in pool:  # neither may come along
        atoms.calc = SinglePointCalculator(atoms, energy=1.0)
        atoms.set_constraint(FixAtoms([0]))
    taken = start_structure(SamplerConfig(start="store"), np.random.default_rng(0), pool)
    assert taken.calc is None and taken.info == {} and not taken.constraints
    assert any(np.array_equal(taken.positions, f.positions) for f in frames)
    assert taken is not pool[0] and taken is not pool[1]
    with pytest.raises(ValueError, match="store"):
        start_structure(SamplerConfig(start="store"), np.random.default_rng(0), [])

    path = str(tmp_path / "starts.extxyz")
    ase.io.write(path, frames)
    picked = {start_structure(SamplerConfig(start=path), np.random.default_rng(seed)).positions.tobytes()
              for seed in range(8)}
    assert picked == {f.positions.tobytes() for f in ase.io.read(path, ":")}  # extxyz rounds positions
    read = start_structure(SamplerConfig(start=path), np.random.default_rng(0))
    assert read.calc is None and read.info == {} and not read.constraints
    read.positions += 1.0  # the cached frames stay as read
    assert start_structure(SamplerConfig(start=path), np.random.default_rng(0)).positions.tobytes() in picked

    assert len(start_structure(_sampler(), np.random.default_rng(0))) == 16


# -- the trajectory -------------------------------------------------------------------------------------


def test_accurate_with_a_huge_threshold(ensemble):
    task = _task(ensemble, selection=SelectionConfig(forces_uncertainty=1e9))
    result = run_trajectory(pickle.loads(pickle.dumps(task)))  # what an executor does with it
    assert result.outcome == "accurate" and result.candidates == [] and result.error is None
    assert result.steps == result.last_step == 40 and result.restarts == 0
    assert [step for step, _ in result.checks] == [10, 20, 30, 40]
    assert result.first_flag_step is None and result.first_flag_temperature is None
    assert (result.iteration, result.trajectory, result.seed) == (1, 3, 5)
    assert all(value > 0 for _, value in result.checks)


def test_flagged_with_a_tiny_threshold(ensemble):
    task = _task(ensemble, selection=SelectionConfig(forces_uncertainty=1e-6, max_per_trajectory=2))
    result = run_trajectory(task)
    assert result.outcome == "flagged" and len(result.candidates) == 2
    assert [c.step for c in result.candidates] == [10, 20] and result.last_step == 20 and result.steps == 20
    assert result.first_flag_step == 10
    assert result.first_flag_temperature == result.schedule.temperature(10.0)
    first = result.candidates[0]
    assert first.trajectory == 3 and first.time_fs == 10.0 and first.atoms.calc is None
    assert first.forces_uncertainty == result.checks[0][1]
    # The candidate holds what the ensemble says about its configuration.
    atoms = first.atoms.copy()
    atoms.calc = mlip_md.MLIPCalculator(ensemble)
    np.testing.assert_allclose(first.predicted_energy, atoms.get_potential_energy(), rtol=1e-12)
    np.testing.assert_allclose(first.predicted_forces, atoms.get_forces(), atol=1e-10)
    np.testing.assert_allclose(first.forces_uncertainty, atoms.calc.get_property("forces_uncertainty").max(),
                               rtol=1e-10)
    np.testing.assert_allclose(first.energy_uncertainty, atoms.calc.get_property("energy_uncertainty"), rtol=1e-8)
    sigma = atoms.calc.get_property("forces_uncertainty")
    np.testing.assert_allclose(first.relative_forces_uncertainty,
                               (sigma / (np.linalg.norm(atoms.get_forces(), axis=1) + 1.0)).max(), rtol=1e-10)
    np.testing.assert_array_equal(first.descriptor, descriptor(first.atoms, SPECIES, CUTOFF))


@pytest.mark.parametrize("rule", [dict(energy_uncertainty=1e-9), dict(relative_forces_uncertainty=1e-9)])
def test_energy_and_relative_rules_flag(ensemble, rule):
    result = run_trajectory(_task(ensemble, selection=SelectionConfig(forces_uncertainty=1e9, **rule)))
    assert result.outcome == "flagged" and result.first_flag_step == 10


def test_deterministic_and_round_trip(ensemble):
    sampler = _sampler(strain=(0.05, 0.05))
    task = _task(ensemble, sampler, SelectionConfig(forces_uncertainty=1e-6, max_per_trajectory=2))
    first, second = run_trajectory(task), run_trajectory(task)
    one, two = first.to_dict(), second.to_dict()
    one.pop("wall_time"), two.pop("wall_time")
    assert json.dumps(one) == json.dumps(two)
    # The cell follows the strain schedule: scaled from the start cell at every check.
    start_cell = task.start.cell[:]
    np.testing.assert_array_equal(first.candidates[0].atoms.cell[:], start_cell)
    np.testing.assert_allclose(first.candidates[1].atoms.cell[:], start_cell * (1 + 0.05 * 10 / 40), rtol=1e-14)

    restored = TrajectoryResult.from_dict(json.loads(json.dumps(first.to_dict())))
    for name in ("iteration", "trajectory", "seed", "schedule", "outcome", "steps", "last_step", "first_flag_step",
                 "first_flag_temperature", "restarts", "checks", "wall_time", "error"):
        assert getattr(restored, name) == getattr(first, name), name
    for got, want in zip(restored.candidates, first.candidates, strict=True):
        for field in dataclasses.fields(Candidate):
            a, b = getattr(got, field.name), getattr(want, field.name)
            if isinstance(b, np.ndarray):
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), field.name
            elif isinstance(b, Atoms):
                for x, y in ((a.numbers, b.numbers), (a.positions, b.positions), (a.cell[:], b.cell[:]),
                             (a.pbc, b.pbc)):
                    assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), field.name
            else:
                assert a == b, field.name


def test_discard_rule_restarts_then_discards(ensemble):
    sampler = _sampler(min_distance=6.0, max_restarts=2)  # the start was placed 2 Å apart: every check fails
    start = disordered_start(_sampler(), np.random.default_rng(0))
    result = run_trajectory(_task(ensemble, sampler, SelectionConfig(forces_uncertainty=1e-6), start))
    assert result.outcome == "discarded" and result.restarts == 2
    assert result.steps == 30 and result.last_step == 10 and result.checks == [] and result.candidates == []
    assert "min_distance" in result.error and "2 restart" in result.error


def test_calculator_errors_count_as_untrusted(ensemble):
    start = Atoms("Al2", positions=[[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]], cell=[10.0] * 3, pbc=False)
    result = run_trajectory(_task(ensemble, _sampler(max_restarts=1), start=start))
    assert result.outcome == "discarded" and result.restarts == 1 and result.steps == 2
    assert "ValueError" in result.error


# -- selection --------------------------------------------------------------------------------------------


def test_descriptor_invariances():
    atoms = random_cell(n_atoms=10, seed=3)
    reference = descriptor(atoms, ("Al", "Cu"), 5.0)
    assert reference.shape == (3 * 24,) and reference.sum() > 0
    permuted = atoms[np.random.default_rng(0).permutation(len(atoms))]
    shifted = atoms.copy()
    shifted.positions += [1.3, -0.7, 2.9]
    rotated = atoms.copy()
    rotated.rotate(37.0, (1.0, 2.0, 0.5), rotate_cell=True)
    for other in (permuted, shifted, rotated, atoms.repeat(2)):
        np.testing.assert_allclose(descriptor(other, ("Al", "Cu"), 5.0), reference, rtol=1e-10, atol=1e-12)
    cluster = Atoms(atoms.numbers, positions=atoms.positions, cell=[30.0] * 3, pbc=False)
    moved = cluster.copy()
    moved.positions += 4.0
    np.testing.assert_allclose(descriptor(moved, ("Al", "Cu"), 5.0), descriptor(cluster, ("Al", "Cu"), 5.0),
                               atol=1e-12)
    with pytest.raises(ValueError, match="Cu"):
        descriptor(atoms, ("Al",), 5.0)


def test_farthest_point_sampling():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.5, 0.0], [9.0, 1.0]])
    assert farthest_point_sampling(points, 2) == [0, 2]
    assert farthest_point_sampling(points, 4, first=1) == [1, 2, 4, 0]  # 4 is 1.41 from 2, 0 is 1 from 1
    assert sorted(farthest_point_sampling(points, 10)) == [0, 1, 2, 3, 4]
    assert sorted(farthest_point_sampling(np.zeros((4, 3)), 3)) == [0, 1, 2]  # duplicates, still distinct picks


def _candidate(atoms, trajectory, step, uncertainty) -> Candidate:
    return Candidate(atoms=atoms, trajectory=trajectory, step=step, time_fs=float(step), temperature=300.0,
                     forces_uncertainty=uncertainty, energy_uncertainty=0.0, relative_forces_uncertainty=0.0,
                     predicted_energy=0.0, predicted_forces=np.zeros((len(atoms), 3)),
                     descriptor=descriptor(atoms, ("Al", "Cu"), 5.0))


def test_select_candidates_dedups_and_limits():
    base = random_cell(n_atoms=8, seed=4)
    near = base.copy()
    near.positions[0] += 0.02
    far = random_cell(n_atoms=8, seed=9, min_distance=1.0)
    known = base.copy()
    known.positions[1] += 0.3
    pool = [_candidate(near, 2, 10, 0.9), _candidate(base, 1, 20, 0.5), _candidate(base.copy(), 1, 30, 0.4),
            _candidate(far, 0, 40, 0.2), _candidate(known, 0, 10, 0.3)]
    is_known = lambda c: c.atoms.positions.tobytes() == known.positions.tobytes()  # noqa: E731
    kept = select_candidates(pool, 10, is_known)
    assert [(c.trajectory, c.step) for c in kept] == [(0, 40), (1, 20), (2, 10)]  # duplicate (1, 30) dropped
    limited = select_candidates(pool, 2, is_known)
    assert [(c.trajectory, c.step) for c in limited] == [(0, 40), (2, 10)]  # most uncertain, then the far one
    assert select_candidates(pool, 2, is_known) == limited


def _flagged_iteration(n_trajectories: int, per_trajectory: int, seed: int) -> dict:
    """trajectory -> its candidates: distinct random cells, some trajectories flag nothing."""
    rng = np.random.default_rng(seed)
    flagged = {}
    for t in range(n_trajectories):
        count = int(rng.integers(0, per_trajectory + 1))
        flagged[t] = [_candidate(random_cell(n_atoms=6, seed=100 * seed + 10 * t + k, min_distance=1.0), t,
                                 10 * (k + 1), float(rng.uniform(0.2, 1.0))) for k in range(count)]
    return flagged


@pytest.mark.parametrize("limit", [1, 3, 5, 40])
def test_streaming_selection_picks_what_the_batch_selection_picks_in_any_finishing_order(limit):
    """Admitted as trajectories finish, in several finishing orders: the same labels as select_candidates on
    the whole iteration; labels stream early exactly when the limit cannot bind."""
    flagged = _flagged_iteration(8, 2, seed=limit)
    every = [c for t in sorted(flagged) for c in flagged[t]]
    expected = [(c.trajectory, c.step) for c in select_candidates(every, limit, lambda c: False)]
    for order_seed in range(4):
        order = np.random.default_rng(order_seed).permutation(8)
        selection, admitted, early = StreamingSelection(8, 2, limit, lambda c: False), [], 0
        for position, t in enumerate(order):
            chosen = selection.add(flagged[t])
            early += len(chosen) if position < 7 else 0
            admitted += chosen
        admitted += selection.finish()
        assert sorted((c.trajectory, c.step) for c in admitted) == sorted(expected)
        if len(every) <= limit - 2 * 2:  # room for two more full trajectories: labels start before the last ends
            assert early > 0
        if len(every) > limit:
            assert early == 0


def test_streaming_selection_resumes_with_candidates_admitted_before():
    """A resumed driver: candidates in the store already are skipped and count against the limit."""
    flagged = _flagged_iteration(4, 2, seed=7)
    every = [c for t in sorted(flagged) for c in flagged[t]]
    first = StreamingSelection(4, 2, 40, lambda c: False)
    stored = first.add(flagged[0]) + first.add(flagged[1])
    keys = {c.atoms.positions.tobytes() for c in stored}
    resumed = StreamingSelection(4, 2, 40, lambda c: c.atoms.positions.tobytes() in keys, admitted=len(stored))
    rest = [c for t in range(4) for c in resumed.add(flagged[t])] + resumed.finish()
    assert sorted((c.trajectory, c.step) for c in stored + rest) == sorted((c.trajectory, c.step) for c in every)
