"""Example training data made here, with real reference calculators (nothing downloaded).

Aluminium is labelled with ASE's EMT: rattled and strained fcc cells,
vacancies, surfaces and molecular-dynamics snapshots at several temperatures,
30–108 atoms each; so are small compressed cells of EMT metals (1–16 atoms,
cells narrower than a model's cutoff); molecules with GFN2-xTB (tblite).
Every image is labelled by :func:`mlip_md.data.labels.label` (energy, forces,
stress of periodic cells, optionally a Hessian), and :func:`write_images`
stores the labels so that :func:`mlip_md.data.read_configurations` reads them
back.
"""

from __future__ import annotations

import numbers
import os
from typing import Callable, Dict, List, Sequence, Tuple

import ase.db
import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.data import atomic_numbers, reference_states
from ase.db.core import check as check_database_keys
from ase.md.langevin import Langevin

from mlip_md.atomic import write_atomically
from mlip_md.data.dataset import HESSIAN_KEY, hessian_label
from mlip_md.data.labels import label
from mlip_md.md import thermalize_momenta

ALUMINIUM_LATTICE = 4.05  # Å
# File endings write_images accepts: formats that keep every label read_configurations reads.
DATA_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".traj": "traj", ".db": "db"}


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
        frames.append(label(atoms, EMT(), info={"kind": f"md_{temperature:g}K"}))
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
    images = [label(STATIC_KINDS[kind](rng), EMT(), info={"kind": kind})
              for kind in (kinds[k % len(kinds)] for k in range(n_static))]
    n_md = n_configurations - n_static
    for index, temperature in enumerate(temperatures):
        count = n_md // len(temperatures) + (1 if index < n_md % len(temperatures) else 0)
        if count:
            images += _md_snapshots(count, temperature, rng)
    return images


SMALL_CELL_LATTICES = ("fcc", "bcc", "sc", "hcp")  # ASE structure names; primitive cells of 1 or 2 (hcp) atoms
EMT_METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")  # the metals ASE's EMT parametrises


def _small_cell(symbol: str, rng: np.random.Generator, max_atoms: int) -> Atoms:
    """A compressed, strained, rattled periodic cell of ``symbol`` with 1 to ``max_atoms`` atoms.

    The lattice (fcc, bcc, sc, hcp, primitive) keeps the metal's fcc volume per
    atom, scaled by 0.7–1.0; repeats of the primitive cell give up to
    ``max_atoms`` atoms; a symmetric strain of up to ±8 % and a rattle of
    0–0.2 Å follow. Cell edges reach down to about 2 Å.
    """
    lattice = SMALL_CELL_LATTICES[rng.integers(len(SMALL_CELL_LATTICES))]
    volume = reference_states[atomic_numbers[symbol]]["a"] ** 3 / 4 * rng.uniform(0.7, 1.0)  # Å³ per atom
    if lattice == "hcp":
        # Ideal c/a = √(8/3): the cell's volume per atom is (√3/4) a² c = a³/√2.
        a = (volume * np.sqrt(2.0)) ** (1 / 3)
        atoms = bulk(symbol, "hcp", a=a, c=a * np.sqrt(8 / 3))
    else:
        per_cubic_cell = {"fcc": 4, "bcc": 2, "sc": 1}[lattice]
        atoms = bulk(symbol, lattice, a=(volume * per_cubic_cell) ** (1 / 3))
    repeats = [1, 1, 1]
    while True:  # grow along random directions while the cell stays within max_atoms
        trial = list(repeats)
        trial[rng.integers(3)] += 1
        if len(atoms) * np.prod(trial) > max_atoms or rng.random() < 0.3:
            break
        repeats = trial
    atoms = atoms * tuple(repeats)
    strain = rng.uniform(-0.08, 0.08, (3, 3))
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.5 * (strain + strain.T)), scale_atoms=True)
    atoms.rattle(rng.uniform(0.0, 0.2), seed=int(rng.integers(2**31)))
    atoms.info["kind"] = f"small_{lattice}"
    return atoms


def generate_small_cells(
    n_configurations: int, seed: int = 0, symbols: Sequence[str] = ("Al",), max_atoms: int = 16
) -> List[Atoms]:
    """``n_configurations`` EMT-labelled small periodic cells of 1 to ``max_atoms`` atoms.

    fcc, bcc, sc and hcp cells of the metals ``symbols`` (any of
    :data:`EMT_METALS`; one per cell, in turn), compressed to 0.7–1.0 of the
    fcc volume, strained and rattled (see :func:`_small_cell`): cell edges
    down to ~2 Å, far below a typical 6 Å cutoff, so every atom sees many
    images of itself (the atom of a 1-atom cell sees nothing else, and its
    force is zero for EMT and for any model), and forces up to ~15 eV/Å. A
    hard case for training. The result depends only on the arguments.
    """
    if n_configurations < 1:
        raise ValueError(f"n_configurations must be positive, got {n_configurations}")
    if max_atoms < 2:
        raise ValueError(f"max_atoms must be at least 2 (an hcp cell has 2 atoms), got {max_atoms}")
    unknown = sorted(set(symbols) - set(EMT_METALS))
    if unknown or not symbols:
        raise ValueError(f"symbols must be EMT metals, one or more of {', '.join(EMT_METALS)}; got {list(symbols)}")
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n_configurations):
        atoms = _small_cell(symbols[k % len(symbols)], rng, max_atoms)
        images.append(label(atoms, EMT()))
    return images


def check_data_path(path: str | os.PathLike) -> str:
    """The ASE format :func:`write_images` uses for ``path``, from its ending.

    ValueError for an ending it does not take (naming those it does),
    IsADirectoryError for a directory.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension not in DATA_FORMATS:
        raise ValueError(f"cannot tell the data format of {path!r} from its ending {extension or '(none)'!r}; "
                         f"use one of {', '.join(DATA_FORMATS)}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; give a file name ending in one of {', '.join(DATA_FORMATS)}")
    return DATA_FORMATS[extension]


def _is_database_key(key: str, value) -> bool:
    """Whether an ASE database row takes ``key: value`` as a key-value pair (a plain scalar, a valid key)."""
    if not isinstance(value, (str, numbers.Real, np.bool_)):
        return False
    try:
        check_database_keys({key: value})
    except ValueError:  # a reserved or malformed key, or a number written as a string
        return False
    return True


def _database_fields(info: dict) -> Tuple[dict, dict]:
    """``info`` split into an ASE database row's key-value pairs and its ``data`` (the rest: arrays, ...)."""
    pairs = {key: value for key, value in info.items() if _is_database_key(key, value)}
    return pairs, {key: value for key, value in info.items() if key not in pairs}


def _hessian_in_info(atoms: Atoms, source: str) -> Atoms:
    """``atoms``, or a copy with its per-atom Hessian (``arrays["hessian"]``, ``[N, 9N]``) in ``info``, flat.

    Extended XYZ writes ``info`` arrays in full but per-atom columns with 8
    decimals; trajectories and databases drop unknown per-atom arrays.
    """
    if HESSIAN_KEY not in atoms.arrays:
        return atoms
    hessian = hessian_label(atoms, source=source)  # LabelError for a wrong shape or a disagreeing info Hessian
    moved = atoms.copy()
    moved.calc = atoms.calc
    del moved.arrays[HESSIAN_KEY]
    moved.info[HESSIAN_KEY] = hessian.ravel()
    return moved


def write_images(images: Sequence[Atoms], path: str | os.PathLike) -> str:
    """Writes labelled images (extended XYZ, trajectory or ASE database, by ending); returns the absolute path.

    Atomic (:func:`mlip_md.atomic.write_atomically`). A database keeps each
    image's ``info`` too (scalars as key-value pairs, arrays such as the
    Hessian in the row's ``data``), which ``ase.io.write`` would drop. Hessian
    labels are written as ``info["hessian"]`` (flat ``(3N)²``, eV/Å², full
    precision), also those given per atom in ``arrays["hessian"]`` (``[N, 9N]``).
    """
    file_format = check_data_path(path)
    images = [_hessian_in_info(atoms, f"{path}[{k}]") for k, atoms in enumerate(images)]

    def write(partial: str) -> None:
        if file_format != "db":
            ase.io.write(partial, list(images), format=file_format, parallel=False)
            return
        with ase.db.connect(partial, type="db", serial=True) as database:
            for atoms in images:
                pairs, data = _database_fields(atoms.info)
                database.write(atoms, key_value_pairs=pairs, data=data)

    return write_atomically(path, write)


def generate_molecule(
    n_configurations: int,
    name: str = "CH3CH2OH",
    seed: int = 0,
    temperature: float = 500.0,
    interval: int = 10,
    hessians: bool = True,
) -> List[Atoms]:
    """MD frames of a molecule labelled with GFN2-xTB (tblite): energies, forces, Hessians.

    ``name`` is any molecule of ``ase.build.molecule`` (the G2 set,
    ``ase.collections.g2.names``). Frames come every ``interval`` steps
    (0.5 fs) of Langevin MD at ``temperature`` K, driven by GFN2-xTB itself.
    Hessian labels (``info["hessian"]``, flat (3N)², eV/Å²) are central
    differences of forces computed with a tight SCF accuracy (0.01), as the
    default leaves ~0.1 eV/Å² of noise. Needs the ``tblite`` package
    (``pip install tblite``). Set ``OMP_NUM_THREADS=1`` in the environment
    before tblite is imported on small machines, where its threads otherwise
    stall (``mlip-md generate`` does).
    """
    from ase.build import molecule

    if n_configurations < 1:
        raise ValueError(f"n_configurations must be positive, got {n_configurations}")
    try:
        atoms = molecule(name)
    except KeyError:
        raise ValueError(
            f"unknown molecule {name!r}: ase.build.molecule knows the G2 set (print ase.collections.g2.names "
            "for every name, e.g. CH3CH2OH, H2O, C6H6)"
        ) from None
    try:
        from tblite.ase import TBLite
    except ImportError as error:
        raise ImportError("generate_molecule needs tblite: pip install tblite", name="tblite") from error

    rng = np.random.default_rng(seed)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    tight = TBLite(method="GFN2-xTB", accuracy=0.01, verbosity=0)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng)
    frames = []
    for _ in range(n_configurations):
        dynamics.run(interval)
        frames.append(label(atoms, tight, hessian=hessians, info={"kind": f"md_{temperature:g}K"}))
    return frames
