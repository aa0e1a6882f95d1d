"""Labelled configurations read from any ASE-readable file (extended XYZ, ASE db, ...).

Units are ASE's: energies in eV, forces in eV/Å, positions and cells in Å.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import ase.db
import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.io.formats import UnknownFileTypeError

from mlip_md.species import SpeciesMap


class LabelError(ValueError):
    """A configuration lacks a label it needs, or carries a malformed one."""


class DataFileError(LabelError):
    """A data file that cannot be read as labelled configurations; the message names the file."""


@dataclass(frozen=True)
class Configuration:
    """One labelled structure.

    ``energy`` eV; ``forces`` ``[N, 3]`` eV/Å or None; ``hessian``
    ``[3N, 3N]`` eV/Å² or None; ``hvp_probes``/``hvp_products`` ``[P, 3N]``:
    stored probe vectors v and their products H·v (eV/Å²), or None.
    ``source`` names the file and index it came from (provenance).
    """

    numbers: np.ndarray  # [N] int
    positions: np.ndarray  # [N, 3] Å
    cell: np.ndarray  # [3, 3] Å
    pbc: np.ndarray  # [3] bool
    energy: float
    forces: Optional[np.ndarray]
    source: str
    hessian: Optional[np.ndarray] = None
    hvp_probes: Optional[np.ndarray] = None
    hvp_products: Optional[np.ndarray] = None

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    def to_atoms(self) -> Atoms:
        return Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)


def _label(atoms: Atoms, key: str, per_atom: bool):
    """A label from ``atoms.info``/``atoms.arrays`` or, failing that, its calculator's results."""
    store = atoms.arrays if per_atom else atoms.info
    if key in store:
        return store[key]
    if atoms.calc is not None and key in ("energy", "forces"):
        try:
            return atoms.get_forces(apply_constraint=False) if key == "forces" else atoms.get_potential_energy()
        except (PropertyNotImplementedError, RuntimeError):
            return None
    return None


# Unit declarations a data file may carry in atoms.info, and the only values
# mlip_md accepts (it never converts silently).
UNIT_KEYS = {"energy_unit": ("eV",), "length_unit": ("Angstrom", "Å", "Ang", "A"), "forces_unit": ("eV/Angstrom", "eV/Å", "eV/A")}


def _check_units(atoms: Atoms, source: str) -> None:
    for key, accepted in UNIT_KEYS.items():
        if key in atoms.info and str(atoms.info[key]) not in accepted:
            raise LabelError(
                f"{source}: {key} is {atoms.info[key]!r}; mlip_md works in eV and Å "
                f"(accepted: {', '.join(accepted)}); convert the labels first"
            )


# A full Hessian label H is [3N, 3N] eV/Å²; row and column 3a + c are axis c (x, y, z) of atom a,
# as in HIPNN.position_hessian. Where it may sit, and its layout there:
#   atoms.info["hessian"], a database row's data["hessian"]: the (3N)² values, flat or [3N, 3N], C order;
#   atoms.arrays["hessian"] (an extended XYZ per-atom column): [N, 9N], row a = H[3a:3a + 3].ravel(),
#   the row block of atom a, so the array is H.reshape(N, 9N) and H is array.reshape(3N, 3N).
HESSIAN_KEY = "hessian"
# Two places agree when their values differ by at most this (eV/Å²): extended XYZ writes
# per-atom columns with 8 decimals, info values in full.
HESSIAN_AGREEMENT = 1e-8


def _hessian_places(atoms: Atoms, extra: dict, source: str) -> dict:
    """Every Hessian label of ``atoms`` (place name → ``[3N, 3N]`` eV/Å²); LabelError for a wrong shape or NaN."""
    size, n_atoms = 3 * len(atoms), len(atoms)
    found = {}
    for place, value in ((f"info[{HESSIAN_KEY!r}]", atoms.info.get(HESSIAN_KEY)),
                         (f"data[{HESSIAN_KEY!r}]", extra.get(HESSIAN_KEY))):
        if value is not None:
            value = np.asarray(value, dtype=np.float64)
            if value.size != size * size:
                raise LabelError(f"{source}: {place} has {value.size} values, expected {size * size}: "
                                 f"the ({size}, {size}) Hessian, flat or square")
            found[place] = value.reshape(size, size)
    if HESSIAN_KEY in atoms.arrays:
        place, value = f"arrays[{HESSIAN_KEY!r}]", np.asarray(atoms.arrays[HESSIAN_KEY], dtype=np.float64)
        if value.shape != (n_atoms, 3 * size):
            raise LabelError(f"{source}: {place} has shape {value.shape}, expected ({n_atoms}, {3 * size}): "
                             f"row a holds rows 3a..3a+2 of the ({size}, {size}) Hessian")
        found[place] = value.reshape(size, size)
    for place, value in found.items():
        if not np.isfinite(value).all():
            raise LabelError(f"{source}: {place} contains NaN or inf")
    return found


def hessian_label(atoms: Atoms, extra: Optional[dict] = None, source: str = "memory") -> Optional[np.ndarray]:
    """The full Hessian label of ``atoms``, ``[3N, 3N]`` eV/Å², or None if it has none.

    Read from ``atoms.info["hessian"]``, ``extra["hessian"]`` (an ASE
    database row's ``data``) or ``atoms.arrays["hessian"]`` (``[N, 9N]``), in
    the layouts described at :data:`HESSIAN_KEY`. Raises :class:`LabelError`
    naming ``source`` for a wrong shape, NaN or inf, or for two places whose
    values differ by more than :data:`HESSIAN_AGREEMENT`; when they agree the
    first of info, data, arrays is returned.
    """
    found = _hessian_places(atoms, extra or {}, source)
    if not found:
        return None
    (first, hessian), *others = found.items()
    for place, value in others:
        difference = np.abs(value - hessian).max()
        if difference > HESSIAN_AGREEMENT:
            raise LabelError(f"{source}: the Hessians in {first} and {place} differ (by up to {difference:.3g} "
                             "eV/Å²); keep one")
    return hessian


def _hessian_labels(atoms: Atoms, extra: dict, source: str) -> dict:
    """The full Hessian (:func:`hessian_label`) and stored HVP pairs (a row's ``data``), as Configuration fields."""
    size = 3 * len(atoms)
    labels = {}
    hessian = hessian_label(atoms, extra, source)
    if hessian is not None:
        labels["hessian"] = hessian
    if "hvp_probes" in extra or "hvp_products" in extra:
        probes = np.asarray(extra.get("hvp_probes"), dtype=np.float64)
        products = np.asarray(extra.get("hvp_products"), dtype=np.float64)
        if probes.ndim != 2 or probes.shape[1] != size or probes.shape != products.shape:
            raise LabelError(
                f"{source}: hvp_probes {probes.shape} and hvp_products {products.shape} must both be (P, {size})"
            )
        if not (np.isfinite(probes).all() and np.isfinite(products).all()):
            raise LabelError(f"{source}: hvp_probes or hvp_products contain NaN or inf")
        labels.update(hvp_probes=probes, hvp_products=products)
    return labels


def configuration_from_atoms(
    atoms: Atoms,
    source: str = "memory",
    energy_key: str = "energy",
    forces_key: str = "forces",
    require_forces: bool = True,
    extra: Optional[dict] = None,
) -> Configuration:
    """A :class:`Configuration` from labelled ``Atoms`` (see :func:`read_configurations`);
    ``extra`` holds additional labels (an ASE database row's ``data``)."""
    _check_units(atoms, source)
    energy = _label(atoms, energy_key, per_atom=False)
    if energy is None:
        raise LabelError(f"{source}: no energy label (looked for info[{energy_key!r}] and calculator results)")
    energy = float(np.asarray(energy))
    if not np.isfinite(energy):
        raise LabelError(f"{source}: energy is not finite ({energy})")
    forces = _label(atoms, forces_key, per_atom=True)
    if forces is None and require_forces:
        raise LabelError(f"{source}: no forces label (looked for arrays[{forces_key!r}] and calculator results)")
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise LabelError(f"{source}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
        if not np.isfinite(forces).all():
            raise LabelError(f"{source}: forces contain NaN or inf")
    return Configuration(
        numbers=atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=atoms.cell[:].copy(),
        pbc=atoms.pbc.copy(),
        energy=energy,
        forces=forces,
        source=source,
        **_hessian_labels(atoms, extra or {}, source),
    )


def _read_rows(path: str, index: str) -> List[Tuple[Atoms, dict]]:
    """``(atoms, extra labels)`` of every configuration, or :class:`DataFileError` naming ``path``.

    ASE raises whatever its parser trips on (UnicodeDecodeError, XYZError,
    sqlite3.DatabaseError, ...), so every exception of the read is turned into
    one error that says which file failed.
    """
    if os.path.isdir(path):
        raise DataFileError(f"{path} is a directory; give a data file (extended XYZ, ASE database, ...)")
    if os.path.getsize(path) == 0:
        raise DataFileError(f"{path} is empty; it holds no configurations")
    try:
        if path.endswith(".db"):  # ASE database: keep each row's `data` (Hessians, HVP pairs)
            with ase.db.connect(path, serial=True) as database:  # not collective under mpi4py
                return [(row.toatoms(), dict(row.data)) for row in database.select()]
        images = ase.io.read(path, index=index, parallel=False)
    except UnknownFileTypeError as error:
        raise DataFileError(
            f"{path}: not a file format ASE reads ({error}); use an extension ASE knows, e.g. .extxyz or .db"
        ) from error
    except Exception as error:
        raise DataFileError(f"{path} cannot be read as configurations: {type(error).__name__}: {error}") from error
    return [(atoms, {}) for atoms in (images if isinstance(images, list) else [images])]


def read_configurations(
    path: str | os.PathLike,
    energy_key: str = "energy",
    forces_key: str = "forces",
    require_forces: bool = True,
    index: str = ":",
) -> List[Configuration]:
    """Reads every labelled configuration of an ASE-readable file.

    Labels come from ``atoms.info[energy_key]`` / ``atoms.arrays[forces_key]``
    or from the attached (single-point) calculator, as ASE stores them in
    extended XYZ files and databases. Optional Hessian labels (eV/Å², row
    3a + c is axis c of atom a): ``hessian`` in ``atoms.info`` or an ASE
    database row's ``data`` (``(3N)²`` values, flat or ``[3N, 3N]``), or in
    ``atoms.arrays`` (an extended XYZ per-atom column, ``[N, 9N]``: row a is
    rows 3a..3a+2 of H, i.e. ``H.reshape(N, 9N)``); see :func:`hessian_label`.
    Stored probe pairs ``hvp_probes``/``hvp_products`` (``[P, 3N]``) come from
    a row's ``data``. Declared units (``info`` keys
    ``energy_unit``, ``length_unit``, ``forces_unit``) must be eV and Å and
    the same in every configuration. Raises FileNotFoundError,
    :class:`DataFileError` (a directory, an empty file, a file ASE cannot
    parse) or :class:`LabelError` naming the configuration and the missing label.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    rows = _read_rows(path, index)
    if not rows:
        raise LabelError(f"{path}: contains no configurations")
    for key in UNIT_KEYS:
        declared = {str(atoms.info[key]) for atoms, _ in rows if key in atoms.info}
        if len(declared) > 1:
            raise LabelError(f"{path}: mixed units, {key} takes the values {sorted(declared)}")
    return [
        configuration_from_atoms(atoms, f"{path}[{k}]", energy_key, forces_key, require_forces, extra)
        for k, (atoms, extra) in enumerate(rows)
    ]


def content_hash(configurations: Sequence[Configuration]) -> str:
    """SHA-256 (hex) of the structures and labels of ``configurations``, in order.

    Covers numbers, positions, cell, pbc, energy, forces and Hessian labels
    (not ``source``): equal hashes mean equal training data, wherever the file lies.
    """
    digest = hashlib.sha256()
    for c in configurations:
        for name in ("numbers", "positions", "cell", "pbc", "energy", "forces", "hessian", "hvp_probes", "hvp_products"):
            value = getattr(c, name)
            digest.update(name.encode())
            if value is not None:
                array = np.ascontiguousarray(value, dtype=np.int64 if name == "numbers" else np.float64)
                digest.update(repr(array.shape).encode() + array.tobytes())
    return digest.hexdigest()


def split_indices(
    n: int, valid_fraction: float, test_fraction: float = 0.0, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reproducible random train/validation/test index split of ``n`` items."""
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 <= valid_fraction, test_fraction and their sum < 1, got {valid_fraction}, {test_fraction}"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_valid = int(round(valid_fraction * n))
    n_test = int(round(test_fraction * n))
    if n - n_valid - n_test < 1:
        raise ValueError(f"{n} configurations leave no training data after the split")
    return order[n_valid + n_test :], order[:n_valid], order[n_valid : n_valid + n_test]


def fit_reference_energies(configurations: Sequence[Configuration], species: Sequence[str]) -> np.ndarray:
    """Per-species reference energies (eV) by least squares: E ≈ Σ_s count_s · e_s.

    Returns ``[n_species]`` in the order of ``species``. Species absent from
    the data get 0; with fewer distinct compositions than species the
    minimum-norm solution is returned.
    """
    species_map = SpeciesMap(species)
    counts = np.zeros((len(configurations), len(species)))
    for row, configuration in enumerate(configurations):
        counts[row] = np.bincount(species_map(configuration.numbers), minlength=len(species))
    energies = np.array([c.energy for c in configurations])
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return solution
