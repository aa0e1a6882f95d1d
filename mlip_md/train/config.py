"""The training configuration: one YAML file, every key documented, unknown keys refused.

Sections and defaults (units: eV, Å)::

    data:
      train: PATH               # required: any ASE-readable file with energies (+ forces)
      valid_fraction: 0.1       # share of `train` held out for validation
      test: null                # optional separate test file
      test_fraction: 0.0        # share of `train` held out for testing when `test` is null
      energy_key: energy        # label names in atoms.info / atoms.arrays (else calculator results)
      forces_key: forces
    model:                      # HIPNN hyper-parameters (see mlip_md.HIPNN)
      species: null             # element symbols; null: the elements of the training data
      n_interactions: 2         # network: interaction layers, features, sensitivities, dense layers
      n_features: 20
      n_sensitivities: 20       # at least 2
      n_atom_layers: 3
      activation: softplus      # softplus, silu, celu or tanh
      cutoff: 6.0               # radial basis, Å: 0 < dist_soft_min < dist_soft_max <= cutoff
      dist_soft_min: 0.85
      dist_soft_max: null       # null: 0.8 * cutoff
    training:
      max_epochs: 100
      batch_size: 16            # configurations per minibatch
      learning_rate: 0.001
      seed: 0
      dtype: float64            # training precision: float64 or float32
      lr_factor: 0.5            # learning-rate decay factor on a validation plateau
      lr_patience: 10           # epochs without improvement before decaying (>= 0)
      min_learning_rate: 1.0e-6 # floor of the decay; a run whose non-finite steps push the
                                # learning rate below it fails (>= 0, <= learning_rate)
      early_stopping_patience: 30  # epochs without improvement before stopping (>= 0)
      export_dtype: float64     # precision of the exported model.pt
      hessian_mode: probes      # probes: projected Hessian-vector products; full: whole Hessians
      n_probes: 1               # probe vectors per configuration and minibatch (probes mode)
      probe_kind: rademacher    # rademacher, gaussian or onehot (one Hessian column)
      ema_decay: 0.99           # exponential moving average of the weights (0: off); the
                                # averaged weights are validated, kept as best and exported
      valid_hessian_every: 10   # full validation Hessians every k epochs (and the first, last)
      workers: 1                # ensemble members trained at once, one process each
      threads: null             # torch threads per training process; null: the CPU
                                # cores divided among the processes on the node
    loss:                       # weights of the loss terms
      energy_mse: 1.0           # mean squared per-atom energy error, (eV/atom)²
      energy_rmse: 0.0          # its square root, eV/atom
      energy_mae: 0.0
      forces_mse: 1.0           # mean squared force-component error, (eV/Å)²
      forces_rmse: 0.0          # its square root, eV/Å
      forces_mae: 0.0
      hierarchicality: 0.0      # the HIP-NN hierarchicality regulariser
      l2: 0.0                   # sum of squared weights
      hessian: 0.0              # mean squared Hessian-element error, (eV/Å²)²; needs Hessian
                                # labels; 0.01-0.1 beside the default energy and force terms
    ensemble:
      size: 1                   # members trained with different seeds, exported as one file
      distill: false            # true: the members are teachers; a student learns the true
                                # energies plus the teachers' mean forces (for energy-only data)

Numbers must be finite (``.inf`` and ``.nan`` are refused). A float key also
takes a numeric string: YAML 1.1, which PyYAML reads, leaves ``1e-3`` and
``1.0e6`` (no dot, or no sign in the exponent) as strings, so they are
converted with ``float``; integer keys take integers only.

Why mean squared errors by default: the gradient of an RMSE term has the same
size however small the error, so Adam keeps pushing the per-atom energy's
constant mode back and forth by about the learning rate times the summed
read-out features at every step, and energies carry an offset that changes
from epoch to epoch. Squared errors pull in proportion to the error, and the
weight average (``ema_decay``) removes the optimiser's remaining noise.

A run directory resumes only under the configuration it was started with;
``training.max_epochs`` (to extend a run), ``training.early_stopping_patience``
and ``training.export_dtype`` may change between runs (see
:mod:`mlip_md.train.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml


class ConfigError(ValueError):
    """An invalid training configuration; the message names the key."""


@dataclass
class DataConfig:
    train: str = ""
    valid_fraction: float = 0.1
    test: Optional[str] = None
    test_fraction: float = 0.0
    energy_key: str = "energy"
    forces_key: str = "forces"


@dataclass
class ModelConfig:
    species: Optional[List[str]] = None
    n_interactions: int = 2
    n_features: int = 20
    n_sensitivities: int = 20
    n_atom_layers: int = 3
    activation: str = "softplus"
    cutoff: float = 6.0
    dist_soft_min: float = 0.85
    dist_soft_max: Optional[float] = None


@dataclass
class TrainingConfig:
    max_epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    dtype: str = "float64"
    lr_factor: float = 0.5
    lr_patience: int = 10
    min_learning_rate: float = 1e-6
    early_stopping_patience: int = 30
    export_dtype: str = "float64"
    hessian_mode: str = "probes"
    n_probes: int = 1
    probe_kind: str = "rademacher"
    ema_decay: float = 0.99
    valid_hessian_every: int = 10
    workers: int = 1
    threads: Optional[int] = None


@dataclass
class LossConfig:
    energy_mse: float = 1.0
    energy_rmse: float = 0.0
    energy_mae: float = 0.0
    forces_mse: float = 1.0
    forces_rmse: float = 0.0
    forces_mae: float = 0.0
    hierarchicality: float = 0.0
    l2: float = 0.0
    hessian: float = 0.0


@dataclass
class EnsembleConfig:
    size: int = 1
    distill: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _float(name: str, value: Any) -> float:
    """A finite float from a YAML number or a numeric string (see the module docstring)."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be float, got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be float, got {value!r}")
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(number)


# Annotations of range keys: a number (a fixed value) or [low, high] with low <= high, read as a tuple.
Range = Tuple[float, float]
IntRange = Tuple[int, int]


def _range(name: str, value: Any, integer: bool) -> tuple:
    """``(low, high)`` from a number or a two-element list; ConfigError naming ``name`` otherwise."""
    values = value if isinstance(value, (list, tuple)) else [value, value]
    if len(values) != 2:
        raise ConfigError(f"{name} must be a number or [low, high], got {value!r}")
    if integer:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{name} must be an integer or [low, high] of integers, got {value!r}")
        low, high = values
    else:
        low, high = (_float(name, v) for v in values)
    if low > high:
        raise ConfigError(f"{name} must be [low, high] with low <= high, got {value!r}")
    return (low, high)


def _coerce(section: str, key: str, value: Any, annotation: str) -> Any:
    """Checks ``value`` against the field's type annotation (as a string); floats via :func:`_float`."""
    name = f"{section}.{key}"
    optional = annotation.startswith("Optional[")
    base = annotation[len("Optional[") : -1] if optional else annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be null")
    if base == "float":
        return _float(name, value)
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "str" and isinstance(value, str):
        return value
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "List[str]" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if base in ("Range", "IntRange"):
        return _range(name, value, integer=base == "IntRange")
    if base == "Dict[str, float]" and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _float(f"{name}.{k}", v) for k, v in value.items()}
    if base == "Any":
        return value
    if base == "Dict[str, Any]" and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return dict(value)
    raise ConfigError(f"{name} must be {'null or ' if optional else ''}{base}, got {value!r}")


def read_section(name: str, cls, values: Any):
    """An instance of the dataclass ``cls`` from the mapping ``values`` of section ``name``
    (None: the defaults); unknown keys and values of the wrong type are ConfigErrors naming the key."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"section {name!r} must be a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; known: {sorted(known)}")
    return cls(**{key: _coerce(name, key, value, str(known[key].type)) for key, value in values.items()})


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "loss": LossConfig,
    "ensemble": EnsembleConfig,
}


def _checks(config: Config) -> List[tuple]:
    """``(condition, message)`` for every constraint between or on values (types are checked on reading)."""
    data, model, training = config.data, config.model, config.training
    soft_max = model.dist_soft_max if model.dist_soft_max is not None else 0.8 * model.cutoff
    return [
        (0 <= data.valid_fraction < 1, "data.valid_fraction must be in [0, 1)"),
        (0 <= data.test_fraction < 1, "data.test_fraction must be in [0, 1)"),
        (model.n_interactions >= 1, "model.n_interactions must be at least 1"),
        (model.n_features >= 1, "model.n_features must be at least 1"),
        (model.n_sensitivities >= 2, "model.n_sensitivities must be at least 2"),
        (model.n_atom_layers >= 0, "model.n_atom_layers must be >= 0"),
        (0 < model.dist_soft_min < soft_max <= model.cutoff,
         f"need 0 < model.dist_soft_min < model.dist_soft_max <= model.cutoff, got "
         f"{model.dist_soft_min}, {soft_max}, {model.cutoff}"),
        (training.max_epochs >= 1, "training.max_epochs must be at least 1"),
        (training.batch_size >= 1, "training.batch_size must be at least 1"),
        (training.learning_rate > 0, "training.learning_rate must be positive"),
        (training.dtype in ("float32", "float64"), "training.dtype must be float32 or float64"),
        (training.export_dtype in ("float32", "float64"), "training.export_dtype must be float32 or float64"),
        (0 < training.lr_factor < 1, "training.lr_factor must be in (0, 1)"),
        (training.lr_patience >= 0, "training.lr_patience must be >= 0"),
        (0 <= training.min_learning_rate <= training.learning_rate,
         "training.min_learning_rate must be in [0, training.learning_rate]"),
        (training.early_stopping_patience >= 0, "training.early_stopping_patience must be >= 0"),
        (training.hessian_mode in ("probes", "full"), "training.hessian_mode must be probes or full"),
        (training.n_probes >= 1, "training.n_probes must be at least 1"),
        (training.probe_kind in ("rademacher", "gaussian", "onehot"),
         "training.probe_kind must be rademacher, gaussian or onehot"),
        (0 <= training.ema_decay < 1, "training.ema_decay must be in [0, 1)"),
        (training.valid_hessian_every >= 1, "training.valid_hessian_every must be at least 1"),
        (training.workers >= 1, "training.workers must be at least 1"),
        (training.threads is None or training.threads >= 1, "training.threads must be null or at least 1"),
        (config.ensemble.size >= 1, "ensemble.size must be at least 1"),
    ]


def validate_config(config: Config) -> None:
    """Raises ConfigError, naming the key, for the first value or combination of values that is invalid."""
    if not config.data.train:
        raise ConfigError("data.train is required (path of the training data)")
    for ok, message in _checks(config):
        if not ok:
            raise ConfigError(message)
    for key, weight in dataclasses.asdict(config.loss).items():
        if weight < 0:
            raise ConfigError(f"loss.{key} must be >= 0, got {weight}")


def config_from_dict(values: Dict[str, Any], base_directory: str = ".") -> Config:
    """Builds and validates a :class:`Config`; relative data paths are taken from ``base_directory``."""
    if not isinstance(values, dict):
        raise ConfigError("the configuration must be a mapping of sections")
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known: {sorted(SECTIONS)}")
    config = Config(**{name: read_section(name, cls, values.get(name)) for name, cls in SECTIONS.items()})
    for key in ("train", "test"):
        path = getattr(config.data, key)
        if path and not os.path.isabs(path):
            setattr(config.data, key, os.path.normpath(os.path.join(base_directory, path)))
    validate_config(config)
    return config


def read_yaml(path: str | os.PathLike) -> Any:
    """The contents of a YAML file (an empty file: ``{}``); FileNotFoundError or ConfigError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"configuration file not found: {path}")
    with open(path) as handle:
        try:
            return yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error


def load_config(path: str | os.PathLike) -> Config:
    """Reads a YAML training configuration (relative paths are relative to the file)."""
    return config_from_dict(read_yaml(path), os.path.dirname(os.path.abspath(os.fspath(path))))
