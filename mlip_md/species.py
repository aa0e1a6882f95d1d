"""Element symbols and their mapping to a model's species indices."""

from __future__ import annotations

from typing import Iterable, List

import numpy as np
from ase.data import atomic_numbers, chemical_symbols


def validate_species(species: Iterable[str]) -> List[str]:
    """Checks a list of element symbols: known to ASE, unique, non-empty."""
    species = list(species)
    if not species:
        raise ValueError("a model needs at least one element in `species`")
    unknown = [s for s in species if s not in atomic_numbers or s == "X"]
    if unknown:
        raise ValueError(f"unknown element symbol(s) {unknown}; use symbols such as 'H', 'Al', 'Cu'")
    duplicates = sorted({s for s in species if species.count(s) > 1})
    if duplicates:
        raise ValueError(f"element(s) {duplicates} listed more than once in `species`")
    return species


class SpeciesMap:
    """Maps atomic numbers to the species indices of a model's element list."""

    def __init__(self, species: Iterable[str]):
        self.species = validate_species(species)
        self._index = np.full(len(chemical_symbols), -1, dtype=np.int64)
        for index, symbol in enumerate(self.species):
            self._index[atomic_numbers[symbol]] = index

    def __call__(self, numbers: np.ndarray) -> np.ndarray:
        """``numbers`` ``[N]`` atomic numbers → ``[N]`` int64 species indices.

        Raises ValueError naming every element the model does not know.
        """
        numbers = np.asarray(numbers, dtype=np.int64)
        indices = self._index[numbers]
        if (indices < 0).any():
            unknown = sorted({chemical_symbols[z] for z in numbers[indices < 0]})
            raise ValueError(
                f"element(s) {unknown} not known to this model; it was trained on {self.species}"
            )
        return indices
