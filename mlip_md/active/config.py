"""The campaign configuration: one YAML file, every key documented, unknown keys refused.

Sections and defaults (units: eV, Å, fs, K; relative paths are relative to the YAML file)::

    seed: 0                     # seeds trajectories, probes and the initial structures
    test: null                  # optional labelled file, scored by every iteration's model
    oracle:                     # the reference ("QM") calculator
      name: emt                 # emt, tblite, or module:Class for any ASE calculator
      parameters: {}            # keyword arguments of the calculator (tblite: method, accuracy, ...;
                                # tblite defaults to method GFN2-xTB, accuracy 0.01)
      timeout: 600.0            # s of wall clock per label (all its calls); 0: no limit
      retries: 1                # further attempts after a failed or timed-out label
      hvp_probes: 0             # k > 0: k random ±1 probes v per label and H·v by central
                                # differences of the oracle's forces (2k more force calls)
      hvp_step: 0.005           # Å, displacement of those differences
    initial:                    # the first training set: data, generated structures, or both
      data: null                # a labelled file (any ASE-readable) taken as it is
      n_configurations: 0       # start structures (see sampler.start) rattled and labelled by the oracle
      rattle: 0.05              # Å, standard deviation of the Gaussian displacements
    sampler:                    # Langevin MD with the ensemble, one trajectory per task
      engine: ase               # ase (ASE's Langevin in the worker) or lammps (pair_style mlip,
                                # fix langevin on the same schedule, fix halt on the same threshold)
      mpi_ranks: 1              # lammps: MPI ranks of one trajectory (mpiexec -n), for large cells
      n_trajectories: 8         # per iteration
      max_steps: 1000           # t_max, in steps
      timestep_fs: 1.0
      check_interval: 10        # steps between uncertainty checks
      friction: 0.01            # Langevin friction, 1/fs (0: no thermostat, plain velocity Verlet)
      temperature_start: [300.0, 800.0]      # T0 range, K (a number fixes it)
      temperature_end: [1000.0, 2000.0]      # T1 range, K
      temperature_amplitude: [0.0, 500.0]    # A range, K
      temperature_period_fs: [200.0, 1000.0] # τ range, fs: T(t) = T0 + (T1 - T0) t/t_max + A sin²(π t/τ)
      strain: 0.0               # isotropic linear strain reached at t_max (cell × (1 + s)), range; 0: fixed cell
      start: disordered         # disordered, store (done labels), or a structure file (any ASE-readable)
      n_atoms: [32, 108]        # disordered starts: atom count, range
      composition: {Al: 1.0}    # disordered starts: element fractions
      density: 2.70             # disordered starts: g/cm³
      periodic: true            # disordered starts: a periodic cubic cell (false: a cluster in vacuum)
      min_distance: 2.0         # Å: disordered starts keep atoms this far apart; a frame with atoms
                                # closer is discarded and the trajectory restarts from its last checked frame
      max_restarts: 3           # restarts per trajectory before it is given up as discarded
    selection:
      forces_uncertainty: 0.15  # eV/Å: flag a frame when max over atoms of forces_uncertainty exceeds it
      energy_uncertainty: null  # eV (the calculator's energy_uncertainty, σ_E/√N): also flag past it
      relative_forces_uncertainty: null  # also flag when max_i σ_i / (|F_i| + relative_forces_floor) exceeds it
      relative_forces_floor: 1.0  # eV/Å
      max_per_trajectory: 1     # flagged frames a trajectory collects before it stops
      max_labels_per_iteration: 16  # flagged frames not yet in the store, thinned to this by farthest-point
                                # sampling on a pair-distance histogram (mlip_md.active.selection.descriptor)
    retrain:
      valid_fraction: 0.1       # share of labels held out for validation, chosen by content hash
      warm_start: false         # start members from the previous iteration's weights
    stop:
      max_iterations: 5         # sampling rounds; the campaign ends with a training on every label
      max_labels: 1000          # done labels
      accurate_fraction: 0.9    # converged: this share of trajectories reach t_max unflagged,
                                # two iterations in a row
      max_failure_fraction: 0.25  # stop when more than this share of oracle labels failed
      min_failures: 3           # ... and at least this many
    executor:                   # where tasks run (mlip_md/active/engines.py documents every option)
      kind: local               # local (process pool), mpi (mpi4py.futures), parsl or dask
      workers: 2                # worker processes of a pool (parsl: per node; mpi under
                                # python -m mpi4py.futures: the world size - 1 instead)
      threads_per_worker: 1     # torch and OpenMP threads in each worker
      options: {}               # per kind (parsl provider..., dask address/cluster..., mpi executor_options)
      oracle: {}                # per-role overrides of workers, threads_per_worker and options: a role
      sampler: {}               # whose settings differ gets a pool of its own (e.g. oracle labels on
      training: {}              # DFT nodes, MD and training on GPU nodes); equal settings share one
      max_queued_labels: 32     # labels submitted to the oracle pool at once; more wait in the store
      task_retries: 2           # a task whose worker the engine lost (killed, node failure) runs again
      walltime: null            # this driver's time limit, s or "HH:MM:SS" (e.g. the Slurm job's)
      drain_margin: 300.0       # s before walltime at which the driver drains, as on SIGTERM/SIGINT:
      grace: 120.0              # no new tasks, up to grace s for the labels in flight, exit status 75
    model: / training: / loss: / ensemble:
                                # as in the training YAML (mlip_md/train/config.py);
                                # ensemble.size >= 2, no distillation; there is no data: section

Range keys take a number or ``[low, high]``; each trajectory draws its value
uniformly from the range.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ase.data import atomic_masses, atomic_numbers
from ase.units import _Nav

from mlip_md.species import validate_species
from mlip_md.train.config import (
    Config,
    ConfigError,
    DataConfig,
    EnsembleConfig,
    IntRange,
    LossConfig,
    ModelConfig,
    Range,
    TrainingConfig,
    read_section,
    read_yaml,
    validate_config,
)

BUILTIN_ORACLES = ("emt", "tblite")
# Random sequential placement of hard spheres jams near a packing fraction of 0.38.
MAX_PACKING_FRACTION = 0.35


@dataclass
class OracleConfig:
    name: str = "emt"
    parameters: Dict[str, Any] = field(default_factory=dict)
    timeout: float = 600.0
    retries: int = 1
    hvp_probes: int = 0
    hvp_step: float = 0.005

    def identity(self) -> str:
        """SHA-256 (hex) of what determines a label's values: name, parameters, probes, step."""
        described = {"name": self.name, "parameters": self.parameters, "hvp_probes": self.hvp_probes,
                     "hvp_step": self.hvp_step}
        return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class InitialConfig:
    data: Optional[str] = None
    n_configurations: int = 0
    rattle: float = 0.05


@dataclass
class SamplerConfig:
    engine: str = "ase"
    mpi_ranks: int = 1
    n_trajectories: int = 8
    max_steps: int = 1000
    timestep_fs: float = 1.0
    check_interval: int = 10
    friction: float = 0.01
    temperature_start: Range = (300.0, 800.0)
    temperature_end: Range = (1000.0, 2000.0)
    temperature_amplitude: Range = (0.0, 500.0)
    temperature_period_fs: Range = (200.0, 1000.0)
    strain: Range = (0.0, 0.0)
    start: str = "disordered"
    n_atoms: IntRange = (32, 108)
    composition: Dict[str, float] = field(default_factory=lambda: {"Al": 1.0})
    density: float = 2.70
    periodic: bool = True
    min_distance: float = 2.0
    max_restarts: int = 3


@dataclass
class SelectionConfig:
    forces_uncertainty: float = 0.15
    energy_uncertainty: Optional[float] = None
    relative_forces_uncertainty: Optional[float] = None
    relative_forces_floor: float = 1.0
    max_per_trajectory: int = 1
    max_labels_per_iteration: int = 16


@dataclass
class RetrainConfig:
    valid_fraction: float = 0.1
    warm_start: bool = False


@dataclass
class StopConfig:
    max_iterations: int = 5
    max_labels: int = 1000
    accurate_fraction: float = 0.9
    max_failure_fraction: float = 0.25
    min_failures: int = 3


ROLES = ("oracle", "sampler", "training")  # kinds of task, each sent to its role's pool
EXECUTOR_KINDS = ("local", "mpi", "parsl", "dask")
ROLE_KEYS = ("workers", "threads_per_worker", "options")  # what executor.<role> may override


@dataclass
class ExecutorConfig:
    kind: str = "local"
    workers: int = 2
    threads_per_worker: int = 1
    options: Dict[str, Any] = field(default_factory=dict)
    oracle: Dict[str, Any] = field(default_factory=dict)
    sampler: Dict[str, Any] = field(default_factory=dict)
    training: Dict[str, Any] = field(default_factory=dict)
    max_queued_labels: int = 32
    task_retries: int = 2
    walltime: Optional[Any] = None
    drain_margin: float = 300.0
    grace: float = 120.0

    def pool(self, role: str) -> Dict[str, Any]:
        """The settings of ``role``'s pool: workers, threads_per_worker and options, with the role's overrides."""
        overrides = getattr(self, role)
        return {"workers": overrides.get("workers", self.workers),
                "threads_per_worker": overrides.get("threads_per_worker", self.threads_per_worker),
                "options": _merged(self.options, overrides.get("options", {}))}

    def walltime_seconds(self) -> Optional[float]:
        """``walltime`` in s (None: no limit)."""
        return None if self.walltime is None else parse_duration(self.walltime, "executor.walltime")


def _merged(base: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` with ``overrides`` applied key by key, nested mappings merged the same way."""
    if not isinstance(overrides, dict):
        return overrides
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merged(base[key], value) if isinstance(base.get(key), dict) else value
    return merged


def parse_duration(value: Any, name: str) -> float:
    """Seconds from a number of s or ``"[D-]HH:MM:SS"`` / ``"MM:SS"`` (Slurm's forms); ConfigError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        days, _, clock = value.rpartition("-")
        parts = clock.split(":")
        try:
            numbers = [float(part) for part in parts]
            day_count = int(days) if days else 0
        except ValueError:
            numbers, day_count = [], 0
        if 1 <= len(numbers) <= 3 and all(n >= 0 for n in numbers):
            seconds = sum(n * 60**k for k, n in enumerate(reversed(numbers))) + 86400 * day_count
            if seconds > 0:
                return seconds
    raise ConfigError(f"{name} must be a positive number of seconds or \"HH:MM:SS\", got {value!r}")


CAMPAIGN_SECTIONS = {
    "oracle": OracleConfig,
    "initial": InitialConfig,
    "sampler": SamplerConfig,
    "selection": SelectionConfig,
    "retrain": RetrainConfig,
    "stop": StopConfig,
    "executor": ExecutorConfig,
}
TRAINING_SECTIONS = {"model": ModelConfig, "training": TrainingConfig, "loss": LossConfig, "ensemble": EnsembleConfig}
SCALARS = ("seed", "test")


@dataclass
class CampaignConfig:
    """Every setting of a campaign; :func:`load_campaign_config` reads and checks one."""

    seed: int = 0
    test: Optional[str] = None
    oracle: OracleConfig = field(default_factory=OracleConfig)
    initial: InitialConfig = field(default_factory=InitialConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ensemble: EnsembleConfig = field(default_factory=lambda: EnsembleConfig(size=2))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def training_config(self, train: str, species: Optional[List[str]] = None) -> Config:
        """The training configuration of an iteration whose labels are in ``train`` (split by content
        hash), for a model of ``species`` (default: ``model.species``); a copy, this config is left alone."""
        model = dataclasses.replace(self.model, species=list(species) if species else self.model.species)
        return copy.deepcopy(Config(data=DataConfig(train=train, valid_fraction=self.retrain.valid_fraction),
                                    model=model, training=self.training, loss=self.loss, ensemble=self.ensemble))


def _resolve(path: Optional[str], base_directory: str, name: str) -> Optional[str]:
    """``path`` made absolute against ``base_directory``; FileNotFoundError naming the key if it is missing."""
    if path is None:
        return None
    path = os.path.normpath(os.path.join(base_directory, os.path.expanduser(path)))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: file not found: {path}")
    return path


def _scalar(values: Dict[str, Any]) -> Dict[str, Any]:
    seed, test = values.get("seed", 0), values.get("test")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    if test is not None and not isinstance(test, str):
        raise ConfigError(f"test must be null or the path of a labelled file, got {test!r}")
    return {"seed": seed, "test": test}


def volume_at_density(mass: float, density: float) -> float:
    """Volume (Å³) of ``mass`` (g/mol) at ``density`` (g/cm³)."""
    return mass / (density * _Nav) * 1e24


def packing_fraction(sampler: SamplerConfig) -> float:
    """Share of a disordered start's volume filled by spheres of diameter ``min_distance``."""
    fractions = sampler.composition
    total = sum(fractions.values())
    mass = sum(atomic_masses[atomic_numbers[e]] * f / total for e, f in fractions.items())  # g/mol per atom
    return math.pi / 6 * sampler.min_distance**3 / volume_at_density(mass, sampler.density)


def _sampler_checks(s: SamplerConfig) -> list:
    ranges = ("temperature_start", "temperature_end", "temperature_amplitude", "temperature_period_fs", "strain")
    checks = [(getattr(s, name)[0] >= 0 or name == "strain", f"sampler.{name} must be >= 0") for name in ranges]
    return checks + [
        (s.n_trajectories >= 1, "sampler.n_trajectories must be at least 1"),
        (s.max_steps >= 1, "sampler.max_steps must be at least 1"),
        (s.timestep_fs > 0, "sampler.timestep_fs must be positive"),
        (1 <= s.check_interval <= s.max_steps, "sampler.check_interval must be in [1, sampler.max_steps]"),
        (s.friction >= 0, "sampler.friction must be >= 0"),
        (s.temperature_period_fs[0] > 0, "sampler.temperature_period_fs must be positive"),
        (s.strain[0] > -0.5, "sampler.strain must be > -0.5"),
        (s.n_atoms[0] >= 1, "sampler.n_atoms must be at least 1"),
        (s.density > 0, "sampler.density must be positive (g/cm³)"),
        (s.min_distance > 0, "sampler.min_distance must be positive (Å)"),
        (s.max_restarts >= 0, "sampler.max_restarts must be >= 0"),
        (bool(s.composition) and all(f > 0 for f in s.composition.values()),
         "sampler.composition must give each element a positive fraction"),
    ]


def _checks(c: CampaignConfig) -> list:
    o, i, sel, stop = c.oracle, c.initial, c.selection, c.stop
    return _sampler_checks(c.sampler) + [
        (o.name in BUILTIN_ORACLES or ":" in o.name,
         f"oracle.name {o.name!r} is not an oracle: use {' or '.join(BUILTIN_ORACLES)}, or module:Class "
         "for any ASE calculator (e.g. ase.calculators.emt:EMT)"),
        (o.timeout >= 0, "oracle.timeout must be >= 0 (0: no limit)"),
        (o.retries >= 0, "oracle.retries must be >= 0"),
        (o.hvp_probes >= 0, "oracle.hvp_probes must be >= 0"),
        (o.hvp_step > 0, "oracle.hvp_step must be positive (Å)"),
        (i.data is not None or i.n_configurations > 0,
         "initial.data or initial.n_configurations is needed: the first ensemble needs labels"),
        (i.n_configurations >= 0, "initial.n_configurations must be >= 0"),
        (i.rattle >= 0, "initial.rattle must be >= 0 (Å)"),
        (sel.forces_uncertainty > 0, "selection.forces_uncertainty must be positive (eV/Å)"),
        (sel.energy_uncertainty is None or sel.energy_uncertainty > 0, "selection.energy_uncertainty must be positive"),
        (sel.relative_forces_uncertainty is None or sel.relative_forces_uncertainty > 0,
         "selection.relative_forces_uncertainty must be positive"),
        (sel.relative_forces_floor > 0, "selection.relative_forces_floor must be positive (eV/Å)"),
        (sel.max_per_trajectory >= 1, "selection.max_per_trajectory must be at least 1"),
        (sel.max_labels_per_iteration >= 1, "selection.max_labels_per_iteration must be at least 1"),
        (0 <= c.retrain.valid_fraction < 1, "retrain.valid_fraction must be in [0, 1)"),
        (stop.max_iterations >= 0, "stop.max_iterations must be >= 0"),
        (stop.max_labels >= 1, "stop.max_labels must be at least 1"),
        (0 < stop.accurate_fraction <= 1, "stop.accurate_fraction must be in (0, 1]"),
        (0 <= stop.max_failure_fraction <= 1, "stop.max_failure_fraction must be in [0, 1]"),
        (stop.min_failures >= 1, "stop.min_failures must be at least 1"),
        (c.sampler.engine in ("ase", "lammps"), f"sampler.engine must be ase or lammps, got {c.sampler.engine!r}"),
        (c.sampler.mpi_ranks >= 1, "sampler.mpi_ranks must be at least 1"),
        (c.sampler.mpi_ranks == 1 or c.sampler.engine == "lammps",
         "sampler.mpi_ranks > 1 needs sampler.engine: lammps (the ASE sampler runs on one process)"),
        (c.sampler.engine == "ase" or sel.energy_uncertainty is None,
         "selection.energy_uncertainty is not available with sampler.engine: lammps (pair_style mlip gives "
         "per-atom force uncertainties only); use forces_uncertainty or relative_forces_uncertainty"),
    ] + _executor_checks(c.executor) + [
        (c.ensemble.size >= 2,
         f"ensemble.size must be at least 2 for a campaign (got {c.ensemble.size}): the ensemble's "
         "disagreement is what flags configurations"),
        (not c.ensemble.distill, "ensemble.distill must be false in a campaign: a distilled student has no uncertainty"),
        (c.training.workers == 1 and c.training.threads is None,
         "training.workers and training.threads are not used in a campaign: members train as executor tasks "
         "(executor.workers, executor.threads_per_worker)"),
        (c.loss.hessian == 0 or o.hvp_probes > 0,
         "loss.hessian > 0 needs Hessian labels: set oracle.hvp_probes (or set loss.hessian to 0)"),
    ]


def _executor_checks(e: ExecutorConfig) -> list:
    checks = [
        (e.kind in EXECUTOR_KINDS, f"executor.kind must be one of {', '.join(EXECUTOR_KINDS)}, got {e.kind!r}"),
        (e.max_queued_labels >= 1, "executor.max_queued_labels must be at least 1"),
        (e.task_retries >= 0, "executor.task_retries must be >= 0"),
        (e.drain_margin >= 0, "executor.drain_margin must be >= 0 (s)"),
        (e.grace >= 0, "executor.grace must be >= 0 (s)"),
    ]
    for role in ROLES:
        unknown = sorted(set(getattr(e, role)) - set(ROLE_KEYS))
        checks.append((not unknown, f"unknown key(s) {', '.join(f'executor.{role}.{k}' for k in unknown)}; "
                                    f"a role may override {', '.join(ROLE_KEYS)}"))
        pool = e.pool(role) if not unknown else {"workers": 1, "threads_per_worker": 1, "options": {}}
        for key in ("workers", "threads_per_worker"):
            value = pool[key]
            checks.append((isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                           f"executor.{key} (for the {role} pool) must be an integer of at least 1, got {value!r}"))
        checks.append((isinstance(pool["options"], dict), f"executor.{role}.options must be a mapping"))
    return checks


def _check_elements(c: CampaignConfig) -> None:
    validate_species(c.sampler.composition)
    if c.model.species:
        missing = sorted(set(c.sampler.composition) - set(c.model.species))
        if missing and c.sampler.start == "disordered":
            raise ConfigError(f"sampler.composition has element(s) {missing} that model.species lacks")
    phi = packing_fraction(c.sampler)
    if c.sampler.start == "disordered" and phi > MAX_PACKING_FRACTION:
        raise ConfigError(
            f"sampler.density {c.sampler.density:g} g/cm³ with sampler.min_distance {c.sampler.min_distance:g} Å "
            f"asks random placement to fill {phi:.2f} of the volume with atoms, beyond the {MAX_PACKING_FRACTION} "
            "it can reach; lower the density or the minimum distance"
        )


def campaign_config_from_dict(values: Dict[str, Any], base_directory: str = ".") -> CampaignConfig:
    """Builds and checks a :class:`CampaignConfig`; relative paths are taken from ``base_directory``."""
    if not isinstance(values, dict):
        raise ConfigError("the campaign configuration must be a mapping of sections")
    sections = {**CAMPAIGN_SECTIONS, **TRAINING_SECTIONS}
    unknown = sorted(set(values) - set(sections) - set(SCALARS))
    if unknown:
        hint = " (a campaign makes its own training data: there is no data section)" if "data" in unknown else ""
        raise ConfigError(f"unknown key(s) {unknown}{hint}; known: {sorted([*sections, *SCALARS])}")
    parsed = {name: read_section(name, cls, values.get(name)) for name, cls in sections.items()}
    if values.get("ensemble") is None or "size" not in values["ensemble"]:
        parsed["ensemble"].size = 2
    config = CampaignConfig(**_scalar(values), **parsed)
    for ok, message in _checks(config):
        if not ok:
            raise ConfigError(message)
    config.executor.walltime_seconds()  # a ConfigError if it is not a duration
    validate_config(config.training_config("labels.db"))
    _check_elements(config)
    config.test = _resolve(config.test, base_directory, "test")
    config.initial.data = _resolve(config.initial.data, base_directory, "initial.data")
    if config.sampler.start not in ("disordered", "store"):
        config.sampler.start = _resolve(config.sampler.start, base_directory, "sampler.start")
    return config


def load_campaign_config(path: str | os.PathLike) -> CampaignConfig:
    """Reads a campaign YAML file (relative paths are relative to the file)."""
    return campaign_config_from_dict(read_yaml(path), os.path.dirname(os.path.abspath(os.fspath(path))))
