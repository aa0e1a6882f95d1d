"""Example training data made here, with real reference calculators (nothing downloaded).

Aluminium is labelled with ASE's EMT: rattled and strained fcc cells,
vacancies, surfaces and molecular-dynamics snapshots at several temperatures,
30–108 atoms each. Every image carries its energy (eV) and forces (eV/Å) in a
single-point calculator, so ``ase.io.write`` stores them in extended XYZ or an
ASE database and :func:`mlip_md.data.read_configurations` reads them back.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Sequence

import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin

from mlip_md.md import thermalize_momenta

ALUMINIUM_LATTICE = 4.05  # Å


def _labelled(atoms: Atoms, kind: str) -> Atoms:
    """A copy of ``atoms`` with EMT energy and forces attached, and its kind in ``info``."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    atoms.info["kind"] = kind
    return atoms


def _supercell(rng: np.random.Generator) -> Atoms:
    """A cubic fcc Al supercell of 32, 48, 72 or 108 atoms."""
    repeats = [(2, 2, 2), (2, 2, 3), (2, 3, 3), (3, 3, 3)][rng.integers(4)]
    return bulk("Al", "fcc", a=ALUMINIUM_LATTICE, cubic=True) * repeats


def _rattled(rng: np.random.Generator) -> Atoms:
    atoms = _supercell(rng)
    atoms.rattle(rng.uniform(0.03, 0.2), seed=int(rng.integers(2**31)))
    return atoms


def _strained(rng: np.random.Generator) -> Atoms:
    atoms = _supercell(rng)
    strain = np.eye(3) + rng.uniform(-0.04, 0.04, (3, 3))
    atoms.set_cell(atoms.cell[:] @ (0.5 * (strain + strain.T)), scale_atoms=True)
    atoms.rattle(0.05, seed=int(rng.integers(2**31)))
    return atoms


def _vacancy(rng: np.random.Generator) -> Atoms:
    atoms = _supercell(rng)
    del atoms[rng.choice(len(atoms), size=rng.integers(1, 3), replace=False).tolist()]
    atoms.rattle(0.08, seed=int(rng.integers(2**31)))
    return atoms


def _surface(rng: np.random.Generator) -> Atoms:
    builder = (fcc111, fcc100)[rng.integers(2)]
    atoms = builder("Al", size=(3, 3, int(rng.integers(4, 7))), a=ALUMINIUM_LATTICE, vacuum=6.0, periodic=True)
    atoms.info.pop("adsorbate_info", None)  # a dict extended XYZ cannot store
    atoms.rattle(0.06, seed=int(rng.integers(2**31)))
    return atoms


STATIC_KINDS: Dict[str, Callable[[np.random.Generator], Atoms]] = {
    "rattled": _rattled,
    "strained": _strained,
    "vacancy": _vacancy,
    "surface": _surface,
}


def _md_snapshots(n: int, temperature: float, rng: np.random.Generator, interval: int = 20) -> List[Atoms]:
    """``n`` frames of Langevin MD with EMT at ``temperature`` K, ``interval`` fs apart."""
    atoms = _supercell(rng)
    atoms.calc = EMT()
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    dynamics = Langevin(atoms, 1.0 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng)
    dynamics.run(100)  # leave the perfect lattice behind
    frames = []
    for _ in range(n):
        dynamics.run(interval)
        frames.append(_labelled(atoms, f"md_{temperature:g}K"))
    return frames


def generate_aluminium(
    n_configurations: int, seed: int = 0, temperatures: Sequence[float] = (300.0, 600.0, 900.0)
) -> List[Atoms]:
    """``n_configurations`` EMT-labelled Al structures (30–108 atoms).

    Half are static structures (rattled, strained, with vacancies, slabs,
    in equal shares), half MD snapshots spread over ``temperatures`` (K).
    The result depends only on ``seed``.
    """
    if n_configurations < 1:
        raise ValueError(f"n_configurations must be positive, got {n_configurations}")
    rng = np.random.default_rng(seed)
    n_static = (n_configurations + 1) // 2
    kinds = list(STATIC_KINDS)
    images = [_labelled(STATIC_KINDS[kinds[k % len(kinds)]](rng), kinds[k % len(kinds)]) for k in range(n_static)]
    n_md = n_configurations - n_static
    for index, temperature in enumerate(temperatures):
        count = n_md // len(temperatures) + (1 if index < n_md % len(temperatures) else 0)
        if count:
            images += _md_snapshots(count, temperature, rng)
    return images


def write_images(images: Sequence[Atoms], path: str | os.PathLike) -> str:
    """Writes labelled images to any ASE format (by extension); atomic (temporary file, then rename)."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    root, extension = os.path.splitext(path)
    temporary = f"{root}.partial{extension}"
    if os.path.exists(temporary):
        os.remove(temporary)
    ase.io.write(temporary, list(images), parallel=False)
    os.replace(temporary, path)
    return path


def finite_difference_hessian(atoms: Atoms, calculator, step: float = 5e-3, symmetrize: bool = True) -> np.ndarray:
    """Central differences of ``calculator``'s forces, ``(3N, 3N)`` eV/Å²; row k is −∂F/∂x_k.

    ``symmetrize`` returns (H + Hᵀ)/2 (labels); ``False`` keeps the raw rows (test oracle).
    """
    size = 3 * len(atoms)
    hessian = np.zeros((size, size))
    for row in range(size):
        forces = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.calc = calculator
            displaced.positions[row // 3, row % 3] += sign * step
            forces.append(displaced.get_forces().ravel())
        hessian[row] = -(forces[0] - forces[1]) / (2 * step)
    return 0.5 * (hessian + hessian.T) if symmetrize else hessian


def generate_molecule(
    n_configurations: int,
    name: str = "CH3CH2OH",
    seed: int = 0,
    temperature: float = 500.0,
    interval: int = 10,
    hessians: bool = True,
) -> List[Atoms]:
    """MD frames of a molecule labelled with GFN2-xTB (tblite): energies, forces, Hessians.

    ``name`` is any molecule of ``ase.build.molecule`` (the G2 set). Frames
    come every ``interval`` steps (0.5 fs) of Langevin MD at ``temperature`` K,
    driven by GFN2-xTB itself. Hessian labels (``info["hessian"]``, flat
    (3N)², eV/Å²) are central differences of forces computed with a tight SCF
    accuracy (0.01), as the default leaves ~0.1 eV/Å² of noise. Needs the
    ``tblite`` package (``pip install tblite``); set OMP_NUM_THREADS=1 on
    small machines, where tblite's threads otherwise stall.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from tblite.ase import TBLite
    except ImportError as error:
        raise ImportError("generate_molecule needs tblite: pip install tblite") from error
    from ase.build import molecule

    if n_configurations < 1:
        raise ValueError(f"n_configurations must be positive, got {n_configurations}")
    rng = np.random.default_rng(seed)
    atoms = molecule(name)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    tight = TBLite(method="GFN2-xTB", accuracy=0.01, verbosity=0)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng)
    frames = []
    for _ in range(n_configurations):
        dynamics.run(interval)
        frame = atoms.copy()
        frame.calc = tight
        energy, forces = frame.get_potential_energy(), frame.get_forces()
        if hessians:
            frame.info["hessian"] = finite_difference_hessian(frame, tight).ravel()
        frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
        frame.info["kind"] = f"md_{temperature:g}K"
        frames.append(frame)
    return frames
