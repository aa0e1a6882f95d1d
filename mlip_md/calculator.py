"""ASE calculator serving an exported mlip_md model (single model or ensemble)."""

from __future__ import annotations

import os
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import covalent_radii

from mlip_md import tuning
from mlip_md.contract import load_exported
from mlip_md.neighbors import Neighbors, VerletList
from mlip_md.physics import evaluate_edges, hessian
from mlip_md.species import SpeciesMap


class CloseContactWarning(UserWarning):
    """Two atoms closer than a physically sensible distance."""


class MLIPCalculator(Calculator):
    """ASE calculator for a model written by :func:`mlip_md.export`.

    Properties (ASE units: eV, Å): ``energy``, ``free_energy`` (= energy),
    ``forces`` ``(N, 3)``, ``stress`` (Voigt, eV/Å³; 3-D periodic cells only),
    per-atom ``energies`` ``(N,)``. For an ensemble file every property is the
    ensemble mean and two more are available:

    * ``energy_uncertainty``: σ_E / √N in eV/atom, σ_E the standard deviation
      (over members, ddof=0) of the members' total energies;
    * ``forces_uncertainty``: ``(N,)`` in eV/Å,
      sqrt(mean over members of |F_i^m − ⟨F_i⟩|²).

    :meth:`get_hessian` returns the analytic ``(3N, 3N)`` Hessian in eV/Å².

    Args:
        model_path: exported model file.
        device: torch device for the model (default ``"cpu"``).
        close_contact_factor: warn (naming the pair) when two atoms are closer
            than this fraction of the sum of their covalent radii (default 0.5).
        num_threads: if given, sets ``torch.set_num_threads`` (process-wide).
        skin: neighbour-list skin in Å (default 1.0). The list is rebuilt only
            when an atom has moved more than skin/2 or the cell changed;
            results do not depend on it, only the speed does (0 rebuilds
            at every call).
        keep_freed_memory: tune glibc malloc to reuse freed memory
            (process-wide, see :func:`mlip_md.tuning.keep_freed_memory`;
            default True: 25–40 % faster steps for large systems).
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        "energies",
        "energy_uncertainty",
        "forces_uncertainty",
    ]

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "cpu",
        close_contact_factor: float = 0.5,
        num_threads: Optional[int] = None,
        skin: float = 1.0,
        keep_freed_memory: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if keep_freed_memory:
            tuning.keep_freed_memory()
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.model_path = os.fspath(model_path)
        self.model = load_exported(self.model_path, device=device)
        self.device = torch.device(device)
        self.species_map = SpeciesMap(self.model.species)
        self.close_contact_factor = float(close_contact_factor)
        # Edge vectors in the model's dtype straight from the skin-list update.
        self.neighbors = VerletList(self.model.cutoff, skin, dtype=self.model.metadata["dtype"])
        self._warned_pairs: set = set()

    @property
    def metadata(self) -> dict:
        return self.model.metadata

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
        return species

    def _check_contacts(self, atoms: Atoms, neighbors: Neighbors) -> None:
        radii = covalent_radii[atoms.numbers]
        i, j = neighbors.edge_index
        squares = neighbors.squared_distances
        # Only edges shorter than the largest possible limit need the per-pair test.
        short = np.flatnonzero(squares < (2.0 * self.close_contact_factor * radii.max()) ** 2)
        limit = self.close_contact_factor * (radii[i[short]] + radii[j[short]])
        close = short[(squares[short] < limit * limit) & (i[short] < j[short])]
        if close.size == 0:
            return
        # Closer than 1e-5 Å counts as coincident: float32 vectors resolve ~1e-6 Å.
        if (squares[close] < 1e-10).any():
            pair = close[np.argmin(squares[close])]
            raise ValueError(f"atoms {i[pair]} and {j[pair]} sit on top of each other (closer than 1e-5 Å)")
        # Warn once per pair, not at every MD step.
        pairs = {(int(i[e]), int(j[e])) for e in close}
        if pairs <= self._warned_pairs:
            return
        self._warned_pairs |= pairs
        symbols = atoms.get_chemical_symbols()
        pairs = ", ".join(
            f"{symbols[i[e]]}{i[e]}-{symbols[j[e]]}{j[e]} at {np.sqrt(squares[e]):.3f} Å" for e in close[:5]
        )
        more = f" and {close.size - 5} more" if close.size > 5 else ""
        warnings.warn(
            f"atoms closer than {self.close_contact_factor} x the sum of covalent radii: {pairs}{more}; "
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
        totals = atom_energies.sum(1)  # [M]
        mean_forces = forces.mean(0)
        self.results["energy"] = float(totals.mean())
        self.results["free_energy"] = self.results["energy"]
        self.results["energies"] = atom_energies.mean(0)
        self.results["forces"] = mean_forces
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
        matrix = hessian(self.model.module, species, edge_index, edge_vectors)
        return matrix.cpu().numpy()

    @property
    def species(self) -> List[str]:
        """Element symbols the model knows."""
        return self.model.species
