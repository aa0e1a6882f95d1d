"""Neighbour lists for periodic, partly periodic and open systems (via vesin).

The edge convention used everywhere in mlip_md:

* ``edge_index`` ``[2, E]`` int64, rows ``(i, j)``, sorted by ``i`` (then ``j``);
  both directions of every pair are present (a *full* list).
* ``shifts`` ``[E, 3]`` int64, integer cell translations such that the edge
  vector is ``r_ij = x_j - x_i + shifts @ cell`` (Å).

vesin's cell-list algorithm is O(N) and handles triclinic cells, any mix of
periodic directions and cells smaller than the cutoff (several images of the
same atom are then neighbours).
"""

from __future__ import annotations

from functools import cached_property
from typing import Callable, Union

import numpy as np
import vesin

_Lazy = Union[np.ndarray, Callable[[], np.ndarray]]


class Neighbors:
    """A full neighbour list; see the module docstring for the convention.

    Attributes:
        edge_index: ``[2, E]`` int64.
        vectors: ``[E, 3]`` float64, r_ij in Å.
        shifts: ``[E, 3]`` int64.
        squared_distances, distances: ``[E]`` float64, Å² and Å.

    ``shifts`` and ``squared_distances`` may be given as functions that
    compute them: they are then computed on first use (an MD step through
    the calculator needs neither, and building them is ~5 % of a step).
    """

    def __init__(self, edge_index: np.ndarray, vectors: np.ndarray, shifts: _Lazy, squared_distances: _Lazy):
        self.edge_index = edge_index
        self.vectors = vectors
        self._shifts = shifts
        self._squared_distances = squared_distances

    @cached_property
    def shifts(self) -> np.ndarray:
        return self._shifts() if callable(self._shifts) else self._shifts

    @cached_property
    def squared_distances(self) -> np.ndarray:
        squares = self._squared_distances
        return squares() if callable(squares) else squares

    @cached_property
    def distances(self) -> np.ndarray:
        return np.sqrt(self.squared_distances)

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])


def _binning_box(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """A non-degenerate box for vesin.

    Periodic directions keep their cell vector. Along open directions no shift
    is ever applied, so their vectors (which ASE allows to be zero) are
    replaced by unit vectors orthogonal to the periodic ones.
    """
    if not pbc.any():
        return np.zeros((3, 3))
    box = np.array(cell, dtype=np.float64)
    periodic = box[pbc]
    if np.linalg.matrix_rank(periodic, tol=1e-9) < len(periodic):
        raise ValueError(f"the cell {cell.tolist()} is degenerate along a periodic direction")
    # The last right-singular vectors span the orthogonal complement.
    _, _, vt = np.linalg.svd(np.vstack([periodic, np.zeros((3 - len(periodic), 3))]))
    box[~pbc] = vt[len(periodic):]
    return box


def neighbor_list(positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float) -> Neighbors:
    """Full neighbour list of all pairs closer than ``cutoff`` (Å).

    Args:
        positions: ``[N, 3]`` Cartesian positions in Å (need not be wrapped).
        cell: ``[3, 3]`` cell vectors as rows, Å.
        pbc: bool or three bools, periodicity along each cell vector.
        cutoff: pair cutoff radius in Å (> 0).
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    box = _binning_box(np.asarray(cell, dtype=np.float64), pbc)
    # Wrap periodic coordinates into the cell and remember the wrap so that the
    # returned shifts refer to the caller's (unwrapped) positions.
    wraps = np.zeros((len(positions), 3), dtype=np.int64)
    if pbc.any():
        fractional = np.linalg.solve(box.T, positions.T).T
        wraps[:, pbc] = np.floor(fractional[:, pbc]).astype(np.int64)
        positions = positions - wraps @ box
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True, sorted=True)
    i, j, shifts, distances, vectors = calculator.compute(positions, box, pbc.tolist(), quantities="ijSdD")
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    shifts = shifts.astype(np.int64) - wraps[j] + wraps[i]
    distances = np.asarray(distances, np.float64)
    return Neighbors(np.stack([i, j]), np.asarray(vectors, np.float64), shifts, distances * distances)


class VerletList:
    """Neighbour list with a skin, rebuilt only when needed.

    The list is built for ``cutoff + skin``; while no atom has moved more than
    ``skin / 2`` since, and cell, periodicity and atom count are unchanged, it
    still holds every pair within ``cutoff``, so :meth:`update` only
    recomputes the vectors of its edges and keeps those within ``cutoff``.
    ``skin=0`` rebuilds at every call.
    """

    def __init__(self, cutoff: float, skin: float = 1.0):
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.n_builds = 0
        self._list: Neighbors | None = None
        self._reference: tuple | None = None  # positions, cell, pbc at the last build
        # shifts @ cell by Cartesian component, [3, E]: the update works on
        # component-major arrays, ~2x faster than on [E, 3].
        self._shift_components: np.ndarray | None = None
        self._center_counts: np.ndarray | None = None  # edges per centre atom, [N]

    def _stale(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        if self._list is None or self.skin == 0:
            return True
        reference_positions, reference_cell, reference_pbc = self._reference
        if positions.shape != reference_positions.shape:
            return True
        if not (np.array_equal(cell, reference_cell) and np.array_equal(pbc, reference_pbc)):
            return True
        displacement = np.einsum("ij,ij->i", positions - reference_positions, positions - reference_positions)
        return bool(displacement.max() > (0.5 * self.skin) ** 2)

    def update(self, positions: np.ndarray, cell: np.ndarray, pbc) -> Neighbors:
        """All pairs within ``cutoff`` for these positions (same convention as :func:`neighbor_list`)."""
        positions = np.asarray(positions, dtype=np.float64)
        cell = np.array(cell, dtype=np.float64)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        if self._stale(positions, cell, pbc):
            self._list = neighbor_list(positions, cell, pbc, self.cutoff + self.skin)
            self._reference = (positions.copy(), cell, pbc)
            self._shift_components = np.ascontiguousarray((self._list.shifts @ cell).T)
            self._center_counts = np.bincount(self._list.edge_index[0], minlength=len(positions))
            self.n_builds += 1
        edges = self._list
        # Component-major [3, E] throughout: gathers and sums run on contiguous rows.
        components = np.ascontiguousarray(positions.T)  # [3, N]
        vectors = components.take(edges.edge_index[1], axis=1)  # r_ij = x_j - x_i + shifts @ cell
        # The edges are sorted by i: x_i repeated per edge, ~2.5x faster than a take.
        vectors -= np.repeat(components, self._center_counts, axis=1)
        vectors += self._shift_components
        squares = np.einsum("ij,ij->j", vectors, vectors)
        keep = np.flatnonzero(squares < self.cutoff * self.cutoff)
        return Neighbors(
            edges.edge_index.take(keep, axis=1),
            vectors.take(keep, axis=1).T,  # [E, 3], a transposed view
            shifts=lambda: edges.shifts.take(keep, axis=0),
            squared_distances=lambda: squares.take(keep),
        )
