"""A model's predictions over a set of configurations, and their errors against the labels.

:func:`model_outputs` is the one loop that runs a model over a set: the
errors of every epoch and of the final summary, the parity plots and the
teachers' force labels all come from it. Quantities a set cannot give (forces
of energy-only data, any error of an empty set) are ``None``, so that metrics
files are valid JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from mlip_md.data.batch import GraphCache, batches
from mlip_md.data.dataset import Configuration
from mlip_md.model.hipnn import HIPNN
from mlip_md.species import SpeciesMap
from mlip_md.train.losses import batch_hessians, predict


@dataclass(frozen=True)
class SetPredictions:
    """Labels and predictions of B configurations, flattened for errors and parity plots."""

    n_atoms: np.ndarray  # [B]
    reference_energy: np.ndarray  # [B] eV
    energy: np.ndarray  # [B] eV
    reference_forces: np.ndarray  # [3n] eV/Å, components over the configurations with force labels
    forces: np.ndarray  # [3n] eV/Å
    reference_hessian: np.ndarray  # [h] eV/Å², elements of the Hessian-labelled configurations
    hessian: np.ndarray  # [h] eV/Å² (empty unless Hessians were predicted)

    @property
    def reference_energy_per_atom(self) -> np.ndarray:
        return self.reference_energy / self.n_atoms

    @property
    def energy_per_atom(self) -> np.ndarray:
        return self.energy / self.n_atoms


def _flat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(a) for a in arrays]).astype(np.float64) if len(arrays) else np.empty(0)


def collect(
    configurations: Sequence[Configuration],
    energies: Sequence[float],
    forces: Sequence[np.ndarray],
    hessians: Optional[Sequence[Optional[np.ndarray]]] = None,
) -> SetPredictions:
    """:class:`SetPredictions` from per-configuration predictions: energies (eV), forces ``[n, 3]``
    (eV/Å) and Hessians ``[3n, 3n]`` (eV/Å², None where not predicted)."""
    hessians = hessians if hessians is not None else [None] * len(configurations)
    with_forces = [k for k, c in enumerate(configurations) if c.forces is not None]
    with_hessians = [k for k, c in enumerate(configurations) if c.hessian is not None and hessians[k] is not None]
    return SetPredictions(
        n_atoms=np.array([c.n_atoms for c in configurations], dtype=np.int64),
        reference_energy=np.array([c.energy for c in configurations], dtype=np.float64),
        energy=np.asarray(energies, dtype=np.float64),
        reference_forces=_flat([configurations[k].forces for k in with_forces]),
        forces=_flat([forces[k] for k in with_forces]),
        reference_hessian=_flat([configurations[k].hessian for k in with_hessians]),
        hessian=_flat([hessians[k] for k in with_hessians]),
    )


def model_outputs(
    model: HIPNN, cache: GraphCache, species_map: SpeciesMap, batch_size: int, hessians: bool = False
) -> Iterator[Tuple[float, np.ndarray, Optional[np.ndarray]]]:
    """Per configuration of ``cache``, in order: energy (eV), forces ``[n, 3]`` (eV/Å) and, with
    ``hessians``, the Hessian ``[3n, 3n]`` (eV/Å², 3·max(n) passes a batch) of those with Hessian labels."""
    dtype = next(model.parameters()).dtype
    for _, indices, batch in batches(cache, species_map, batch_size, dtype):
        labelled = [hessians and cache.configurations[k].hessian is not None for k in indices]
        predictions = predict(model, batch, create_graph=any(labelled))
        model_hessians = batch_hessians(predictions, batch) if any(labelled) else [None] * len(indices)
        forces = np.split(predictions.forces.detach().double().numpy(), np.cumsum(batch.n_atoms.numpy())[:-1])
        for energy, f, h, has in zip(predictions.energy.detach().tolist(), forces, model_hessians, labelled):
            yield energy, f, h.detach().double().numpy() if has else None


def predict_set(
    model: HIPNN, cache: GraphCache, species_map: SpeciesMap, batch_size: int, hessians: bool = False
) -> SetPredictions:
    """The model's predictions over ``cache`` next to its labels (see :func:`model_outputs`)."""
    outputs = list(zip(*model_outputs(model, cache, species_map, batch_size, hessians))) or [(), (), ()]
    return collect(cache.configurations, *outputs)


def _rmse_mae(errors: np.ndarray, scale: float = 1.0) -> Tuple[Optional[float], Optional[float]]:
    if errors.size == 0:
        return None, None
    return scale * float(np.sqrt(np.mean(errors**2))), scale * float(np.mean(np.abs(errors)))


def error_metrics(predictions: SetPredictions) -> Dict[str, Optional[float]]:
    """Energy errors in meV/atom, force-component errors in eV/Å and, where Hessians were
    predicted, Hessian-element errors in eV/Å²; ``None`` where the set has no such labels."""
    p = predictions
    metrics: Dict[str, Optional[float]] = {}
    metrics["energy_rmse"], metrics["energy_mae"] = _rmse_mae(p.energy_per_atom - p.reference_energy_per_atom, 1000)
    metrics["forces_rmse"], metrics["forces_mae"] = _rmse_mae(p.forces - p.reference_forces)
    if p.hessian.size:
        metrics["hessian_rmse"], metrics["hessian_mae"] = _rmse_mae(p.hessian - p.reference_hessian)
    return metrics


def evaluate(
    model: HIPNN, cache: GraphCache, species_map: SpeciesMap, batch_size: int, hessians: bool = True
) -> Dict[str, Optional[float]]:
    """:func:`error_metrics` of ``model`` on ``cache`` (with ``hessians``: full Hessians where labelled)."""
    return error_metrics(predict_set(model, cache, species_map, batch_size, hessians))


def json_values(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` and NumPy scalars and arrays made plain
    Python, so that JSON stays strict."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_values(item) for item in value]
    return value


def write_json(value: Any, path: str, mode: str = "w") -> None:
    """Writes ``value`` as strict JSON (see :func:`json_values`); ``mode="a"`` appends it as one line."""
    with open(path, mode) as handle:
        if mode == "a":
            handle.write(json.dumps(json_values(value), allow_nan=False) + "\n")
        else:
            json.dump(json_values(value), handle, indent=2, allow_nan=False)
