"""Vibrational frequencies from the analytic Hessian of an exported model.

Builds a small random-weight HIP-NN for C/H/O (a stand-in for a trained
model), relaxes ethanol with BFGS, and feeds ``MLIPCalculator.get_hessian``
to ASE's ``VibrationsData``: no finite-difference displacements needed.

    .venv/bin/python examples/vibrations.py [MODEL.pt]
"""

import sys

import torch
from ase.build import molecule
from ase.optimize import BFGS
from ase.vibrations import VibrationsData

import mlip_md


def main() -> None:
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        torch.manual_seed(0)
        path = mlip_md.export(mlip_md.HIPNN(["C", "H", "O"], cutoff=5.0), "ethanol_demo.pt")
    atoms = molecule("CH3CH2OH")
    atoms.calc = mlip_md.MLIPCalculator(path)
    BFGS(atoms, logfile=None).run(fmax=1e-5, steps=1000)
    vibrations = VibrationsData.from_2d(atoms, atoms.calc.get_hessian(atoms))
    print(vibrations.tabulate())


if __name__ == "__main__":
    main()
