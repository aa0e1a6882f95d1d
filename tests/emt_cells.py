"""Small labelled data for fast training tests: 4-atom fcc cells labelled with ASE's EMT."""

from __future__ import annotations

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from mlip_md.data.labels import label

# A tiny HIP-NN: fast enough for a few epochs on a few dozen cells within a test.
TINY_MODEL = dict(n_interactions=1, n_features=8, n_sensitivities=6, n_atom_layers=1, cutoff=4.0,
                  dist_soft_min=1.5, dist_soft_max=3.8)


def emt_cells(n: int = 24, seed: int = 0, copper: int = 0, forces: bool = True) -> list:
    """``n`` strained, rattled 4-atom fcc cells, ``copper`` of their atoms Cu, with EMT energies
    (eV) and, with ``forces``, forces (eV/Å) in single-point calculators."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True)
        atoms.symbols[:copper] = "Cu"
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.normal(0, 0.02, (3, 3))), scale_atoms=True)
        atoms.rattle(0.12, seed=int(rng.integers(1 << 30)))
        labelled = label(atoms, EMT(), stress=False)
        if not forces:
            labelled.calc = SinglePointCalculator(labelled, energy=labelled.get_potential_energy())
        images.append(labelled)
    return images


def write_cells(path, **kwargs) -> str:
    """Writes :func:`emt_cells` to ``path`` (extended XYZ) and returns the path as a string."""
    write(str(path), emt_cells(**kwargs))
    return str(path)


def tiny_config(train: str, **sections) -> dict:
    """Configuration values for a 2-epoch run of :data:`TINY_MODEL` on ``train``; ``sections``
    update the sections (``training={"seed": 1}``)."""
    values = {
        "data": {"train": train, "valid_fraction": 0.25},
        "model": dict(TINY_MODEL),
        "training": {"max_epochs": 2, "batch_size": 8, "learning_rate": 0.005},
    }
    for name, updates in sections.items():
        values[name] = {**values.get(name, {}), **updates}
    return values
