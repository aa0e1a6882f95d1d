"""Temperature-ramped Langevin MD with the ensemble, stopping where its members disagree.

One trajectory is one :class:`TrajectoryTask`, run by :func:`run_trajectory` in a
worker process: MD under a randomly drawn :class:`Schedule`, checked every
``sampler.check_interval`` steps. A frame with atoms closer than
``sampler.min_distance`` (or one the calculator refused) is discarded and the
trajectory restarts from its last trusted frame; a frame the ensemble is unsure
of becomes a :class:`Candidate` for labelling.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import ase.io
import numpy as np
from ase import Atoms, units
from ase.data import atomic_masses, atomic_numbers
from ase.io.jsonio import decode, encode
from ase.md.langevin import Langevin
from ase.neighborlist import neighbor_list

from mlip_md.active.config import SamplerConfig, SelectionConfig, volume_at_density
from mlip_md.active.selection import descriptor
from mlip_md.calculator import CloseContactWarning, MLIPCalculator
from mlip_md.md import thermalize_momenta

VACUUM = 6.0  # Å of empty space on each side of a cluster
PLACEMENT_ATTEMPTS = 20000  # random trial positions per atom before a disordered start gives up
PLACEMENT_BATCH = 256  # trial positions tested at once


# -- the temperature and strain schedule ---------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """T(t) = t0 + (t1 - t0)·t/t_max + amplitude·sin²(π t/period) (K, t in fs), the ALF / ANI-Al ramp,
    and an isotropic linear strain reaching ``strain`` at t_max (cell × (1 + strain·t/t_max))."""

    t0: float
    t1: float
    amplitude: float
    period_fs: float
    t_max_fs: float
    strain: float

    def temperature(self, time_fs: float) -> float:
        """Target temperature (K) at ``time_fs``."""
        ramp = (self.t1 - self.t0) * time_fs / self.t_max_fs
        return float(self.t0 + ramp + self.amplitude * math.sin(math.pi * time_fs / self.period_fs) ** 2)

    def strain_at(self, time_fs: float) -> float:
        """Isotropic strain (dimensionless) at ``time_fs``: the cell is the start cell × (1 + strain_at)."""
        return float(self.strain * time_fs / self.t_max_fs)

    @classmethod
    def draw(cls, sampler: SamplerConfig, rng: np.random.Generator) -> "Schedule":
        """Each parameter uniform in its configured range (drawn in the order of the fields);
        t_max_fs = max_steps · timestep_fs."""
        ranges = (sampler.temperature_start, sampler.temperature_end, sampler.temperature_amplitude,
                  sampler.temperature_period_fs)
        t0, t1, amplitude, period = (float(rng.uniform(low, high)) for low, high in ranges)
        strain = float(rng.uniform(*sampler.strain))
        return cls(t0, t1, amplitude, period, float(sampler.max_steps * sampler.timestep_fs), strain)


# -- start structures -----------------------------------------------------------------------------


def _element_counts(composition: dict, n: int) -> List[Tuple[str, int]]:
    """``n`` atoms shared by the fractions of ``composition`` (largest remainders; ties: the earlier
    element), then at least one of each element while the largest count can spare one."""
    symbols = list(composition)
    fractions = np.array([composition[s] for s in symbols], dtype=np.float64)
    exact = n * fractions / fractions.sum()
    counts = np.floor(exact).astype(np.int64)
    order = sorted(range(len(symbols)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: n - int(counts.sum())]:
        counts[k] += 1
    for k in range(len(symbols)):
        donor = int(np.argmax(counts))
        if counts[k] == 0 and counts[donor] > 1:
            counts[k], counts[donor] = 1, counts[donor] - 1
    return [(s, int(c)) for s, c in zip(symbols, counts)]


def _place(n: int, box: float, min_distance: float, periodic: bool, rng: np.random.Generator) -> np.ndarray:
    """Random sequential placement of ``n`` points in a cube of side ``box`` (Å), pairwise (minimum image
    if ``periodic``) at least ``min_distance`` apart; ``(n, 3)``, or None when an atom found no place."""
    positions = np.empty((n, 3))
    for placed in range(n):
        for _ in range(0, PLACEMENT_ATTEMPTS, PLACEMENT_BATCH):
            trials = rng.random((PLACEMENT_BATCH, 3)) * box
            gaps = trials[:, None, :] - positions[None, :placed, :]  # (batch, placed, 3)
            if periodic:
                gaps -= box * np.round(gaps / box)
            fits = np.flatnonzero((np.einsum("bpk,bpk->bp", gaps, gaps) >= min_distance**2).all(axis=1))
            if fits.size:
                positions[placed] = trials[fits[0]]
                break
        else:
            return None
    return positions


def disordered_start(sampler: SamplerConfig, rng: np.random.Generator) -> Atoms:
    """Random atoms at ``sampler.density`` (g/cm³) with every pair at least ``sampler.min_distance`` (Å) apart.

    The atom count is uniform in ``sampler.n_atoms`` (inclusive), the elements
    follow ``sampler.composition``. Periodic: a cubic cell of that density, pbc
    True. Otherwise the atoms fill a cube of that density centred in a cell with
    6 Å of vacuum on each side, pbc False. ValueError (naming the density and
    minimum distance) if random placement cannot fit them.
    """
    n = int(rng.integers(sampler.n_atoms[0], sampler.n_atoms[1] + 1))
    counts = _element_counts(sampler.composition, n)
    symbols = [s for s, c in counts for _ in range(c)]
    mass = sum(atomic_masses[atomic_numbers[s]] for s in symbols)  # g/mol
    box = volume_at_density(mass, sampler.density) ** (1.0 / 3.0)  # Å
    positions = _place(n, box, sampler.min_distance, sampler.periodic, rng)
    if positions is None:
        raise ValueError(
            f"could not place {n} atoms at sampler.density {sampler.density:g} g/cm³ with every pair at least "
            f"sampler.min_distance {sampler.min_distance:g} Å apart; lower the density or the minimum distance"
        )
    if sampler.periodic:
        return Atoms(symbols, positions=positions, cell=np.eye(3) * box, pbc=True)
    return Atoms(symbols, positions=positions + VACUUM, cell=np.eye(3) * (box + 2 * VACUUM), pbc=False)


@functools.lru_cache(maxsize=8)
def _read_frames(path: str) -> Tuple[Atoms, ...]:
    """Every frame of a structure file, read once per process (callers copy what they take)."""
    return tuple(ase.io.read(path, ":", parallel=False))


def bare(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` with no calculator, no constraints and empty info."""
    copy = atoms.copy()
    copy.calc = None
    copy.set_constraint()
    copy.info = {}
    return copy


def start_structure(sampler: SamplerConfig, rng: np.random.Generator, pool: Sequence[Atoms] = ()) -> Atoms:
    """A trajectory's first frame, by ``sampler.start``: ``"disordered"`` (:func:`disordered_start`),
    ``"store"`` (a random member of ``pool``, ValueError if it is empty) or the path of a structure
    file (a random frame of it). Returned without calculator, constraints or info."""
    if sampler.start == "disordered":
        return disordered_start(sampler, rng)
    if sampler.start == "store":
        if len(pool) == 0:
            raise ValueError("sampler.start is 'store' but the label store has no structures yet")
        return bare(pool[int(rng.integers(len(pool)))])
    frames = _read_frames(sampler.start)
    if not frames:
        raise ValueError(f"sampler.start: {sampler.start} holds no structures")
    return bare(frames[int(rng.integers(len(frames)))])


# -- results ----------------------------------------------------------------------------------------


def _json_values(values: dict) -> dict:
    """``values`` (Atoms and arrays included) as plain JSON values, by ASE's jsonio: float64 reads back bit
    for bit through :func:`_python_values`."""
    return json.loads(encode(values))


def _python_values(values: dict) -> dict:
    return decode(json.dumps(values))


@dataclass
class Candidate:
    """A flagged frame: the configuration and what the ensemble predicted there (eV, Å, fs, K)."""

    atoms: Atoms  # numbers, positions, cell and pbc at the flagged frame; no calculator
    trajectory: int
    step: int
    time_fs: float
    temperature: float  # the schedule's target T (K) at that time
    forces_uncertainty: float  # max over atoms, eV/Å
    energy_uncertainty: float  # eV (σ_E/√N)
    relative_forces_uncertainty: float  # max_i σ_i/(|F_i| + selection.relative_forces_floor)
    predicted_energy: float  # eV, ensemble mean
    predicted_forces: np.ndarray  # (N, 3) eV/Å, ensemble mean
    descriptor: np.ndarray  # (D,), selection.descriptor

    def to_dict(self) -> dict:
        return _json_values({name: getattr(self, name) for name in self.__dataclass_fields__})

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        return cls(**_python_values(d))


@dataclass
class TrajectoryResult:
    """What one trajectory found. ``outcome``: "accurate" (reached t_max unflagged), "flagged" (at least
    one candidate) or "discarded" (untrusted frames beyond ``sampler.max_restarts`` restarts)."""

    iteration: int
    trajectory: int
    seed: int
    schedule: Schedule
    outcome: str
    steps: int  # MD steps taken in total, those lost to restarts included
    last_step: int  # the time index (step) at which the trajectory ended
    first_flag_step: Optional[int]
    first_flag_temperature: Optional[float]
    restarts: int  # restarts from a trusted frame actually made
    candidates: List[Candidate]
    checks: List[Tuple[int, float]]  # (step, max forces_uncertainty in eV/Å) at every check that read the ensemble
    wall_time: float  # s
    error: Optional[str] = None  # why the trajectory was discarded, or last restarted

    def to_dict(self) -> dict:
        """JSON-able; :meth:`from_dict` restores every value exactly (float64 bit for bit)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values.update(schedule=dataclasses.asdict(self.schedule), candidates=[c.to_dict() for c in self.candidates],
                      checks=[[step, value] for step, value in self.checks])
        return values

    @classmethod
    def from_dict(cls, d: dict) -> "TrajectoryResult":
        return cls(**{**d, "schedule": Schedule(**d["schedule"]),
                      "candidates": [Candidate.from_dict(c) for c in d["candidates"]],
                      "checks": [(int(step), float(value)) for step, value in d["checks"]]})


@dataclass(frozen=True)
class TrajectoryTask:
    """One trajectory for a worker process (picklable): the ensemble file, settings, first frame and seed."""

    model_path: str
    sampler: SamplerConfig
    selection: SelectionConfig
    start: Atoms
    seed: int
    iteration: int
    trajectory: int
    species: Tuple[str, ...]  # the model's elements, for Candidate.descriptor
    cutoff: float  # Å, of Candidate.descriptor


# -- the trajectory -----------------------------------------------------------------------------------


def spend_restart(state, reason: str) -> bool:
    """The restart rule of both samplers, on a running ``state`` (restarts, outcome, error, task): True with
    a restart counted while ``sampler.max_restarts`` allows one, else False with the trajectory discarded."""
    if state.restarts >= state.task.sampler.max_restarts:
        state.outcome = "discarded"
        state.error = f"{reason}; discarded after {state.restarts} restart(s)"
        return False
    state.error = reason
    state.restarts += 1
    return True


def read_candidate(atoms: Atoms, task: TrajectoryTask, schedule: Schedule, step: int) -> Candidate:
    """The ensemble's view of ``atoms`` at ``step`` through its calculator (an MLIPCalculator of the
    ensemble, which computes what it does not hold yet); the descriptor is left empty."""
    selection, time_fs = task.selection, step * task.sampler.timestep_fs
    forces = atoms.get_forces()
    sigma = np.asarray(atoms.calc.get_property("forces_uncertainty", atoms), dtype=np.float64)
    relative = sigma / (np.linalg.norm(forces, axis=1) + selection.relative_forces_floor)
    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell[:], pbc=atoms.pbc)
    return Candidate(
        atoms=frame, trajectory=int(task.trajectory), step=step, time_fs=time_fs,
        temperature=schedule.temperature(time_fs), forces_uncertainty=float(sigma.max()),
        energy_uncertainty=float(atoms.calc.get_property("energy_uncertainty", atoms)),
        relative_forces_uncertainty=float(relative.max()), predicted_energy=float(atoms.get_potential_energy()),
        predicted_forces=np.array(forces, dtype=np.float64), descriptor=np.empty(0),
    )



@dataclass
class _Frame:
    """A trusted frame to restart from."""

    step: int
    positions: np.ndarray
    momenta: np.ndarray
    cell: np.ndarray

    @classmethod
    def of(cls, atoms: Atoms, step: int) -> "_Frame":
        return cls(step, atoms.get_positions(), atoms.get_momenta(), np.array(atoms.cell[:]))

    def restore(self, atoms: Atoms) -> None:
        atoms.set_cell(self.cell, scale_atoms=False)
        atoms.set_positions(self.positions)
        atoms.set_momenta(self.momenta)


@dataclass
class _Trajectory:
    """The running state of :func:`run_trajectory`."""

    task: TrajectoryTask
    schedule: Schedule
    atoms: Atoms
    dynamics: Langevin
    trusted: _Frame
    start_cell: np.ndarray
    step: int = 0
    steps: int = 0
    restarts: int = 0
    outcome: Optional[str] = None
    error: Optional[str] = None
    candidates: List[Candidate] = field(default_factory=list)
    checks: List[Tuple[int, float]] = field(default_factory=list)

    def time(self, step: int) -> float:
        return step * self.task.sampler.timestep_fs

    def advance(self, n: int) -> Optional[str]:
        """Up to ``n`` MD steps under the schedule; why the calculator failed, or None if all went through."""
        if self.schedule.strain != 0.0:
            cell = self.start_cell * (1.0 + self.schedule.strain_at(self.time(self.step)))
            self.atoms.set_cell(cell, scale_atoms=True)
        for _ in range(n):
            self.dynamics.set_temperature(temperature_K=self.schedule.temperature(self.time(self.step)))
            self.step += 1
            self.steps += 1
            try:
                self.dynamics.step()
            except (ArithmeticError, ValueError) as error:  # FloatingPointError, coincident atoms, NaN positions
                return f"step {self.step}: the calculator raised {type(error).__name__}: {error}"
        return None

    def too_close(self) -> Optional[str]:
        """Why the current frame is untrusted by distance (minimum image), or None."""
        min_distance = self.task.sampler.min_distance
        distances = neighbor_list("d", self.atoms, min_distance)
        if distances.size == 0:
            return None
        return (f"step {self.step}: atoms {distances.min():.3f} Å apart, closer than sampler.min_distance "
                f"{min_distance:g} Å")

    def restart(self, reason: str) -> None:
        """Back to the last trusted frame, or discarded once ``max_restarts`` restarts are spent."""
        if spend_restart(self, reason):
            self.trusted.restore(self.atoms)
            self.step = self.trusted.step

    def check(self) -> None:
        """The discard rule, then the flag rule, on the current frame."""
        reason = self.too_close()
        if reason is not None:
            self.restart(reason)
            return
        candidate = self.read_candidate()
        self.checks.append((self.step, candidate.forces_uncertainty))
        if not self.flagged(candidate):
            self.trusted = _Frame.of(self.atoms, self.step)
            return
        # Only flagged frames need the descriptor, for the selection.
        described = descriptor(candidate.atoms, self.task.species, self.task.cutoff)
        self.candidates.append(dataclasses.replace(candidate, descriptor=described))
        if len(self.candidates) >= self.task.selection.max_per_trajectory:
            self.outcome = "flagged"

    def read_candidate(self) -> Candidate:
        """The ensemble's view of the current frame (results the last MD step computed), descriptor left empty."""
        return read_candidate(self.atoms, self.task, self.schedule, self.step)

    def flagged(self, candidate: Candidate) -> bool:
        selection = self.task.selection
        return (candidate.forces_uncertainty > selection.forces_uncertainty
                or (selection.energy_uncertainty is not None
                    and candidate.energy_uncertainty > selection.energy_uncertainty)
                or (selection.relative_forces_uncertainty is not None
                    and candidate.relative_forces_uncertainty > selection.relative_forces_uncertainty))

    def run(self) -> None:
        """Chunks of ``check_interval`` steps (the last one may be shorter), each ending in a check."""
        sampler = self.task.sampler
        while self.outcome is None and self.step < sampler.max_steps:
            failure = self.advance(min(sampler.check_interval, sampler.max_steps - self.step))
            if failure is not None:
                self.restart(failure)
            else:
                self.check()
        if self.outcome is None:
            self.outcome = "flagged" if self.candidates else "accurate"


def _start(task: TrajectoryTask, schedule: Schedule, rng: np.random.Generator) -> Tuple[Atoms, Langevin]:
    """The first frame with thermal momenta at T(0), the ensemble calculator and the Langevin integrator."""
    atoms = bare(task.start)
    temperature = schedule.temperature(0.0)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    atoms.calc = MLIPCalculator(task.model_path)
    dynamics = Langevin(atoms, task.sampler.timestep_fs * units.fs, temperature_K=temperature,
                        friction=task.sampler.friction / units.fs, fixcm=False, rng=rng)
    return atoms, dynamics


def run_trajectory(task: TrajectoryTask) -> TrajectoryResult:
    """One trajectory (see the module docstring); the same task gives bit-identical results
    for the same torch thread count."""
    began = time.perf_counter()
    rng = np.random.default_rng(task.seed)
    schedule = Schedule.draw(task.sampler, rng)
    atoms, dynamics = _start(task, schedule, rng)
    state = _Trajectory(task, schedule, atoms, dynamics, _Frame.of(atoms, 0), np.array(atoms.cell[:]))
    with warnings.catch_warnings():
        # Close contacts are the sampler's own business: the discard rule deals with them.
        warnings.simplefilter("ignore", CloseContactWarning)
        state.run()
    return trajectory_result(task, schedule, state, time.perf_counter() - began)


def trajectory_result(task: TrajectoryTask, schedule: Schedule, state, wall_time: float) -> TrajectoryResult:
    """The result of a finished trajectory from its running ``state`` (either sampler's: outcome, steps,
    step, restarts, candidates, checks, error); ``wall_time`` in s."""
    first = state.candidates[0] if state.candidates else None
    return TrajectoryResult(
        iteration=int(task.iteration), trajectory=int(task.trajectory), seed=int(task.seed), schedule=schedule,
        outcome=state.outcome, steps=state.steps, last_step=state.step,
        first_flag_step=None if first is None else first.step,
        first_flag_temperature=None if first is None else first.temperature,
        restarts=state.restarts, candidates=state.candidates, checks=state.checks, wall_time=wall_time,
        error=state.error,
    )
