"""Ensemble uncertainty along an ASE Langevin trajectory.

Exports three random-weight HIP-NN members as one ensemble file and prints,
every 10 steps, the ensemble-mean energy, ``energy_uncertainty`` (σ_E/√N, eV)
and the largest per-atom ``forces_uncertainty`` (eV/Å): the signal active
learning uses to decide which configurations need new QM labels.

    .venv/bin/python examples/ensemble_uncertainty.py
"""

import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin

import mlip_md


def main() -> None:
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(mlip_md.HIPNN(["Al", "Cu"]))
    path = mlip_md.export(members, "alcu_ensemble_demo.pt")
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 2, 2)
    atoms.symbols[::4] = "Al"
    calc = mlip_md.MLIPCalculator(path)
    atoms.calc = calc
    dynamics = Langevin(atoms, 2 * units.fs, temperature_K=500, friction=0.02, fixcm=False,
                         rng=np.random.default_rng(0))

    def report() -> None:
        print(
            f"step {dynamics.nsteps:4d}  E = {atoms.get_potential_energy():10.4f} eV  "
            f"sigma_E = {calc.get_property('energy_uncertainty', atoms):.2e} eV  "
            f"max sigma_F = {calc.get_property('forces_uncertainty', atoms).max():.2e} eV/A"
        )

    dynamics.attach(report, interval=10)
    dynamics.run(100)


if __name__ == "__main__":
    main()
