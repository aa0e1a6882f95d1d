"""Molecular dynamics with ASE on top of :class:`mlip_md.MLIPCalculator`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
from ase import Atoms, units
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ASE: same keyword arguments
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta


@dataclass(frozen=True)
class EnergyRecord:
    """One logged MD frame; energies in eV per atom, temperature in K."""

    step: int
    time_fs: float
    potential: float
    kinetic: float
    temperature: float

    @property
    def total(self) -> float:
        return self.potential + self.kinetic


def run_nve(
    atoms: Atoms,
    steps: int,
    timestep_fs: float = 1.0,
    temperature_K: float = 300.0,
    log_interval: int = 10,
    seed: int = 0,
    on_record: Optional[Callable[[EnergyRecord], None]] = None,
) -> List[EnergyRecord]:
    """Velocity-Verlet NVE from Maxwell–Boltzmann velocities at ``temperature_K``.

    ``atoms`` must carry a calculator. Returns the records taken every
    ``log_interval`` steps (step 0 included); ``on_record`` sees each as it
    is taken (for printing).
    """
    if steps < 0 or log_interval < 1 or timestep_fs <= 0:
        raise ValueError("need steps >= 0, log_interval >= 1 and timestep_fs > 0")
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    records: List[EnergyRecord] = []

    def record() -> None:
        n = len(atoms)
        entry = EnergyRecord(
            step=dynamics.nsteps,
            time_fs=dynamics.nsteps * timestep_fs,
            potential=atoms.get_potential_energy() / n,
            kinetic=atoms.get_kinetic_energy() / n,
            temperature=atoms.get_temperature(),
        )
        records.append(entry)
        if on_record is not None:
            on_record(entry)

    dynamics.attach(record, interval=log_interval)
    dynamics.run(steps)
    return records
