"""ASE calculator serving an exported mlip_md model (single model or ensemble)."""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import covalent_radii

import mlip_md.tuning as tuning
from mlip_md.contract import load_exported
from mlip_md.neighbors import Neighbors, VerletList
from mlip_md.physics import evaluate_edges, hessian
from mlip_md.species import SpeciesMap


class CloseContactWarning(UserWarning):
    """Two atoms closer than a physically sensible distance."""


_UNCERTAINTIES = ("energy_uncertainty", "forces_uncertainty")


class MLIPCalculator(Calculator):
    """ASE calculator for a model written by :func:`mlip_md.export`.

    Properties (ASE units: eV, Å): ``energy``, ``free_energy`` (= energy),
    ``forces`` ``(N, 3)``, ``stress`` (Voigt, eV/Å³; 3-D periodic cells only),
    per-atom ``energies`` ``(N,)``. For an ensemble file every property is the
    ensemble mean over the M members and two more are available:

    * ``energy_uncertainty`` (eV): σ_E / √N, where σ_E is the standard
      deviation over members (ddof=0) of the members' total energies E_m in
      eV and N the number of atoms; sqrt(mean_m (E_m − ⟨E⟩)²) / √N.
    * ``forces_uncertainty``: ``(N,)`` in eV/Å, for atom i
      sqrt(mean over members of |F_i^m − ⟨F_i⟩|²) (ddof=0), what the LAMMPS
      plugin's ``forces_uncertainty`` gives.

    A single-model file has no uncertainty: asking for either raises
    PropertyNotImplementedError (the LAMMPS plugin refuses it too).
    Non-finite model output raises FloatingPointError.

    :meth:`get_hessian` returns the analytic ``(3N, 3N)`` Hessian in eV/Å².

    Args:
        model_path: exported model file.
        device: torch device for the model (default ``"cpu"``).
        close_contact_factor: warn (naming the pair) when two atoms, or an atom
            and its own periodic image, are closer than this fraction of the
            sum of their covalent radii (default 0.5).
        num_threads: if given, sets ``torch.set_num_threads`` (process-wide);
            by default torch's thread count is left as it is.
        skin: neighbour-list skin in Å (default 1.0). The list is rebuilt only
            when an atom has moved more than skin/2 or the cell changed;
            results do not depend on it, only the speed does (0 rebuilds
            at every call).
        keep_freed_memory: opt in to tuning glibc's malloc, process-wide, so
            that it reuses freed memory instead of returning it to the system
            (:func:`mlip_md.tuning.keep_freed_memory`). Float64 steps of
            hundreds to thousands of atoms get up to ~1.4x faster, Hessians
            1.3–1.6x; the process's resident memory then stays at its peak. Default False: the caller's process
            is left alone.

    :meth:`todict` returns these settings (and the model file's SHA-256), so
    an ASE database row written with this calculator attached records which
    model and options produced it.
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        "energies",
        *_UNCERTAINTIES,
    ]

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "cpu",
        close_contact_factor: float = 0.5,
        num_threads: Optional[int] = None,
        skin: float = 1.0,
        keep_freed_memory: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.keep_freed_memory = bool(keep_freed_memory)
        if self.keep_freed_memory:
            tuning.keep_freed_memory()
        self.num_threads = None if num_threads is None else int(num_threads)
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        self.model_path = os.path.abspath(os.fspath(model_path))
        self.model = load_exported(self.model_path, device=device)
        with open(self.model_path, "rb") as handle:
            self.model_sha256 = hashlib.sha256(handle.read()).hexdigest()
        self.device = torch.device(device)
        self.species_map = SpeciesMap(self.model.species)
        self.close_contact_factor = float(close_contact_factor)
        if self.model.ensemble_size < 2:
            self.implemented_properties = [p for p in self.implemented_properties if p not in _UNCERTAINTIES]
        # Edge vectors in the model's dtype straight from the skin-list update.
        self.neighbors = VerletList(self.model.cutoff, skin, dtype=self.model.metadata["dtype"])
        self._warned_pairs: set = set()

    @property
    def metadata(self) -> dict:
        return self.model.metadata

    def todict(self) -> dict:
        """The settings that produced the results (an ASE database row's ``calculator_parameters``)."""
        return {
            "model_path": self.model_path,
            "model_sha256": self.model_sha256,
            "device": str(self.device),
            "skin": self.neighbors.skin,
            "close_contact_factor": self.close_contact_factor,
            "keep_freed_memory": self.keep_freed_memory,
            "num_threads": self.num_threads,
        }

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name in _UNCERTAINTIES and self.model.ensemble_size < 2:
            raise PropertyNotImplementedError(
                f"{name} needs an ensemble model file (exported from several members); "
                f"{self.model_path} has one member"
            )
        return super().get_property(name, atoms, allow_calculation)

    # -- input checks and graph -------------------------------------------------

    def _validate(self, atoms: Atoms) -> np.ndarray:
        if len(atoms) == 0:
            raise ValueError("cannot evaluate an empty Atoms object (no atoms)")
        species = self.species_map(atoms.numbers)
        positions = atoms.positions
        if not np.isfinite(positions).all():
            bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
            raise ValueError(f"non-finite (NaN or inf) positions for atom(s) {bad[:10].tolist()}")
        if atoms.pbc.any() and not np.isfinite(atoms.cell[:]).all():
            raise ValueError("the cell contains NaN or inf")
        lengths = np.linalg.norm(atoms.cell[:], axis=1)
        collapsed = np.flatnonzero(atoms.pbc & (lengths < 1e-5))  # the contact check's coincidence limit
        if collapsed.size:
            axis = collapsed[0]
            raise ValueError(
                f"atom 0 and its own periodic image sit on top of each other: periodic cell vector {axis} "
                f"is {lengths[axis]:.2g} Å long (closer than 1e-5 Å)"
            )
        return species

    def _close_edges(self, atoms: Atoms, neighbors: Neighbors) -> np.ndarray:
        """One edge per pair closer than the contact limit, the closest image (an atom's own images included)."""
        radii = covalent_radii[atoms.numbers]
        i, j = neighbors.edge_index
        squares = neighbors.squared_distances
        # Only edges shorter than the largest possible limit need the per-pair test.
        short = np.flatnonzero(squares < (2.0 * self.close_contact_factor * radii.max()) ** 2)
        limit = self.close_contact_factor * (radii[i[short]] + radii[j[short]])
        close = short[(squares[short] < limit * limit) & (i[short] <= j[short])]
        keys = i[close] * len(atoms) + j[close]
        order = np.lexsort((squares[close], keys))  # by pair, closest image first
        first = np.unique(keys[order], return_index=True)[1]
        return close[order[first]]

    def _check_contacts(self, atoms: Atoms, neighbors: Neighbors) -> None:
        close = self._close_edges(atoms, neighbors)
        if close.size == 0:
            return
        i, j = neighbors.edge_index[:, close]
        distances = np.sqrt(neighbors.squared_distances[close])
        # Closer than 1e-5 Å counts as coincident: float32 vectors resolve ~1e-6 Å.
        nearest = int(np.argmin(distances))
        if distances[nearest] < 1e-5:
            partner = "its own periodic image" if i[nearest] == j[nearest] else f"atom {j[nearest]}"
            raise ValueError(f"atom {i[nearest]} and {partner} sit on top of each other (closer than 1e-5 Å)")
        # Warn once per pair, not at every MD step.
        pairs = set(zip(i.tolist(), j.tolist()))
        if pairs <= self._warned_pairs:
            return
        self._warned_pairs |= pairs
        symbols = atoms.get_chemical_symbols()
        named = [
            f"{symbols[a]}{a}-{'its own periodic image' if a == b else f'{symbols[b]}{b}'} at {d:.3f} Å"
            for a, b, d in zip(i[:5], j[:5], distances[:5])
        ]
        more = f" and {close.size - 5} more" if close.size > 5 else ""
        warnings.warn(
            f"atoms closer than {self.close_contact_factor} x the sum of covalent radii: {', '.join(named)}{more}; "
            "the model was almost certainly not trained there",
            CloseContactWarning,
            stacklevel=3,
        )

    def _graph(self, atoms: Atoms) -> Tuple[torch.Tensor, torch.Tensor, Neighbors]:
        species = self._validate(atoms)
        neighbors = self.neighbors.update(atoms.positions, atoms.cell[:], atoms.pbc)
        self._check_contacts(atoms, neighbors)
        return (
            torch.from_numpy(species).to(self.device),
            torch.from_numpy(neighbors.edge_index).to(self.device),
            neighbors,
        )

    # -- ASE interface ------------------------------------------------------------

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if "stress" in properties and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                f"stress needs a cell periodic in all three directions (pbc={atoms.pbc.tolist()})"
            )
        species, edge_index, neighbors = self._graph(atoms)
        edge_vectors = torch.from_numpy(neighbors.vectors).to(device=self.device, dtype=self.model.dtype)
        result = evaluate_edges(self.model.module, species, edge_index, edge_vectors, sorted_centers=True)
        self._store(atoms, result)

    def _store(self, atoms: Atoms, result) -> None:
        atom_energies = result.atom_energies.double().cpu().numpy()  # [M, N]
        forces = result.forces.double().cpu().numpy()  # [M, N, 3]
        _refuse_non_finite("energies or forces", atom_energies.sum(1) + forces.sum((1, 2)))
        totals = atom_energies.sum(1)  # [M]
        mean_forces = forces.mean(0)
        self.results["energy"] = float(totals.mean())
        self.results["free_energy"] = self.results["energy"]
        self.results["energies"] = atom_energies.mean(0)
        self.results["forces"] = mean_forces
        if len(totals) > 1:
            self.results["energy_uncertainty"] = float(totals.std() / np.sqrt(len(atoms)))
            deviation = ((forces - mean_forces) ** 2).sum(-1)  # [M, N]
            self.results["forces_uncertainty"] = np.sqrt(deviation.mean(0))
        if atoms.pbc.all():
            virial = result.virial.double().cpu().numpy().mean(0)
            stress = -virial / atoms.get_volume()
            stress = 0.5 * (stress + stress.T)
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]

    def get_hessian(self, atoms: Optional[Atoms] = None) -> np.ndarray:
        """Analytic Hessian of the (ensemble-mean) energy, ``(3N, 3N)`` in eV/Å².

        Row/column ``3 a + k`` is Cartesian component k of atom a, the layout
        ``ase.vibrations.VibrationsData.from_2d`` expects.
        """
        atoms = self.atoms if atoms is None else atoms
        if atoms is None:
            raise ValueError("get_hessian needs an Atoms object")
        species, edge_index, neighbors = self._graph(atoms)
        edge_vectors = torch.from_numpy(neighbors.vectors).to(device=self.device, dtype=self.model.dtype)
        matrix = hessian(self.model.module, species, edge_index, edge_vectors).cpu().numpy()
        _refuse_non_finite("Hessian", matrix[None])
        return matrix

    @property
    def species(self) -> List[str]:
        """Element symbols the model knows."""
        return self.model.species


def _refuse_non_finite(what: str, per_member: np.ndarray) -> None:
    """FloatingPointError if ``per_member`` (one entry or row per ensemble member) holds a NaN or inf."""
    finite = np.isfinite(per_member.reshape(len(per_member), -1)).all(1)
    if finite.all():
        return
    members = f" (ensemble member(s) {np.flatnonzero(~finite).tolist()})" if len(finite) > 1 else ""
    raise FloatingPointError(
        f"the model returned non-finite (NaN or inf) {what}{members}: check the model file "
        "(NaN weights from a diverged training?) and the input (atoms far closer than in any training data?)"
    )
