"""Errors of an exported model on a labelled data file (what `mlip-md eval` prints)."""

from __future__ import annotations

import os
from typing import Dict

import numpy as np

from mlip_md.calculator import MLIPCalculator
from mlip_md.data import read_configurations


def evaluate_exported(model_path: str | os.PathLike, data_path: str | os.PathLike) -> Dict[str, float]:
    """Energy errors in meV/atom and force errors in eV/Å of an exported model (ensemble mean).

    Keys: ``energy_mae``, ``energy_rmse``, ``forces_mae``, ``forces_rmse``
    (NaN when the data have no forces), ``n_configs``; with Hessian labels also
    ``hessian_mae`` and ``hessian_rmse`` (eV/Å², over all Hessian elements).
    """
    calc = MLIPCalculator(model_path)
    configurations = read_configurations(data_path, require_forces=False)
    energy_errors, force_errors, hessian_errors = [], [], []
    for configuration in configurations:
        atoms = configuration.to_atoms()
        atoms.calc = calc
        energy_errors.append((atoms.get_potential_energy() - configuration.energy) / len(atoms))
        if configuration.forces is not None:
            force_errors.append((atoms.get_forces() - configuration.forces).ravel())
        if configuration.hessian is not None:
            hessian_errors.append((calc.get_hessian(atoms) - configuration.hessian).ravel())
    energy = np.array(energy_errors)
    forces = np.concatenate(force_errors) if force_errors else np.array([np.nan])
    result = {
        "energy_mae": 1000 * float(np.abs(energy).mean()),
        "energy_rmse": 1000 * float(np.sqrt((energy**2).mean())),
        "forces_mae": float(np.abs(forces).mean()),
        "forces_rmse": float(np.sqrt((forces**2).mean())),
        "n_configs": len(configurations),
    }
    if hessian_errors:
        hessian = np.concatenate(hessian_errors)
        result.update(hessian_mae=float(np.abs(hessian).mean()), hessian_rmse=float(np.sqrt((hessian**2).mean())))
    return result
