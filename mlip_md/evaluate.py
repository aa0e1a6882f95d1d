"""Errors of an exported model on a labelled data file (what ``mlip-md eval`` prints).

It runs the deployed file through :class:`~mlip_md.calculator.MLIPCalculator`,
as users' simulations do, and shares the error definitions of training
(:func:`mlip_md.train.metrics.error_metrics`).
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

from mlip_md.calculator import MLIPCalculator
from mlip_md.data import Configuration, read_configurations
from mlip_md.train.metrics import collect, error_metrics, json_values


def evaluate_exported(model_path: str | os.PathLike, data_path: str | os.PathLike) -> Dict[str, Optional[float]]:
    """Energy errors in meV/atom and force errors in eV/Å of an exported model (ensemble mean).

    Keys: ``energy_mae``, ``energy_rmse``, ``forces_mae``, ``forces_rmse``
    (None when the data have no forces), ``n_configs``; with Hessian labels also
    ``hessian_mae`` and ``hessian_rmse`` (eV/Å², over all Hessian elements).
    Every value is a finite number or None, so the result is strict JSON.
    """
    return evaluate_configurations(model_path, read_configurations(data_path, require_forces=False))


def evaluate_configurations(model_path: str | os.PathLike,
                            configurations: Sequence[Configuration]) -> Dict[str, Optional[float]]:
    """:func:`evaluate_exported` on configurations already read (e.g. from a campaign's label store)."""
    calc = MLIPCalculator(model_path)
    energies, forces, hessians = [], [], []
    for configuration in configurations:
        atoms = configuration.to_atoms()
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        hessians.append(calc.get_hessian(atoms) if configuration.hessian is not None else None)
    metrics = error_metrics(collect(configurations, energies, forces, hessians))
    return json_values({**metrics, "n_configs": len(configurations)})
