"""Labelled molecule data for the Hessian-training benchmark (GFN2-xTB via tblite).

Energies, forces and central-difference Hessians of rattled copies of a
reference geometry, labelled by :func:`mlip_md.data.labels.label` with
tblite at SCF accuracy 0.01. Files are cached as extended XYZ
under ``benchmarks/results/data/`` and reused when present.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before tblite is imported

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import ase  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hessian_speed import aspirin, place  # noqa: E402

DATA_DIRECTORY = Path(__file__).resolve().parent / "results" / "data"


def alkane(n_carbons: int = 19) -> ase.Atoms:
    """All-trans n-alkane C_nH_(2n+2) (C19H40: 59 atoms), C-C 1.53 Å, C-H 1.09 Å, tetrahedral angles."""
    # Zigzag in the xy plane: C_k at (k·1.2495, ±0.4418, 0) gives 1.53 Å bonds and 109.5° angles.
    half = np.radians(109.47) / 2
    dx, dy = 1.53 * np.sin(half), 1.53 * np.cos(half)
    carbons = [np.array([k * dx, (k % 2) * dy, 0.0]) for k in range(n_carbons)]
    hydrogens = []
    for k, c in enumerate(carbons):
        neighbours = [carbons[j] for j in (k - 1, k + 1) if 0 <= j < n_carbons]
        if len(neighbours) == 2:  # CH2: two H in the plane bisecting the C-C-C angle, ± z
            a, b = neighbours
            for dihedral in (120.0, 240.0):
                hydrogens.append(place(b, a, c, 1.09, 109.5, dihedral))
        else:  # CH3 end: three H staggered
            a = neighbours[0]
            other = carbons[k + 2] if k == 0 else carbons[k - 2]
            for dihedral in (180.0, 60.0, 300.0):
                hydrogens.append(place(other, a, c, 1.09, 109.5, dihedral))
    return ase.Atoms(f"C{n_carbons}H{len(hydrogens)}", positions=carbons + hydrogens)


def rattled_labelled(base: ase.Atoms, n: int, rattle: float, seed: int) -> list:
    """``n`` copies of ``base`` rattled by σ = ``rattle`` Å, labelled with GFN2-xTB energy, forces, FD Hessian."""
    from tblite.ase import TBLite

    from mlip_md.data.labels import label

    tight = TBLite(method="GFN2-xTB", accuracy=0.01, verbosity=0)
    frames = []
    for k in range(n):
        frame = base.copy()
        frame.rattle(rattle, seed=seed + k)
        frames.append(label(frame, tight, hessian=True, info={"kind": f"rattled_{rattle:g}"}))
    return frames


def dataset(name: str, n: int) -> Path:
    """Path of the cached data set ``name`` (ethanol, aspirin, alkane) with ``n`` configurations."""
    from mlip_md.data.generate import generate_molecule, write_images

    path = DATA_DIRECTORY / f"{name}_{n}.extxyz"
    if path.exists():
        return path
    if name == "ethanol":
        images = generate_molecule(n, "CH3CH2OH", seed=0)
    elif name == "aspirin":
        images = rattled_labelled(aspirin(), n, 0.05, seed=0)
    elif name == "alkane":
        images = rattled_labelled(alkane(), n, 0.05, seed=0)
    else:
        raise ValueError(f"unknown molecule {name!r}")
    write_images(images, path)
    return path


if __name__ == "__main__":  # python benchmarks/_molecules.py NAME N [NAME N ...]: fill the cache
    arguments = sys.argv[1:]
    for name, n in zip(arguments[::2], arguments[1::2]):
        print(name, dataset(name, int(n)), flush=True)
