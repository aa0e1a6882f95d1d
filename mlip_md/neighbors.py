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
        vectors: ``[E, 3]`` r_ij in Å, float64 (or the dtype of a :class:`VerletList`).
        shifts: ``[E, 3]`` int64.
        squared_distances, distances: ``[E]`` Å² and Å, the dtype of ``vectors``.

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

    Between builds the vectors come from the displacements Δ since the build,
    r_ij = r⁰_ij + Δ_j − Δ_i, computed in ``dtype`` (the returned vectors and
    distances have that dtype). With |Δ| < skin/2, float32 here is as accurate
    as rounding float64 vectors to float32, so a float32 model loses nothing
    and the update moves half the memory.
    """

    def __init__(self, cutoff: float, skin: float = 1.0, dtype=np.float64):
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.n_builds = 0
        self._list: Neighbors | None = None
        self._reference: tuple | None = None  # positions, cell, pbc at the last build
        # Component-major [3, E] edge vectors at the last build, in dtype: the
        # update works on [3, E] arrays, ~2x faster than on [E, 3].
        self._build_vectors: np.ndarray | None = None
        self._center_counts: np.ndarray | None = None  # edges per centre atom, [N]

    def _displacements(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray | None:
        """Displacements ``[N, 3]`` since the last build, or None when the list must be rebuilt."""
        if self._list is None or self.skin == 0:
            return None
        reference_positions, reference_cell, reference_pbc = self._reference
        if positions.shape != reference_positions.shape:
            return None
        if not (np.array_equal(cell, reference_cell) and np.array_equal(pbc, reference_pbc)):
            return None
        displacements = positions - reference_positions
        if np.einsum("ij,ij->i", displacements, displacements).max() > (0.5 * self.skin) ** 2:
            return None
        return displacements

    def _build(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> None:
        self._list = neighbor_list(positions, cell, pbc, self.cutoff + self.skin)
        self._reference = (positions.copy(), cell, pbc)
        self._build_vectors = np.ascontiguousarray(self._list.vectors.T, dtype=self.dtype)
        self._center_counts = np.bincount(self._list.edge_index[0], minlength=len(positions))
        self.n_builds += 1

    def update(self, positions: np.ndarray, cell: np.ndarray, pbc) -> Neighbors:
        """All pairs within ``cutoff`` for these positions (same convention as :func:`neighbor_list`)."""
        positions = np.asarray(positions, dtype=np.float64)
        cell = np.array(cell, dtype=np.float64)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        displacements = self._displacements(positions, cell, pbc)
        if displacements is None:
            self._build(positions, cell, pbc)
            vectors = self._build_vectors.copy()
        else:
            moves = np.ascontiguousarray(displacements.T, dtype=self.dtype)  # [3, N]
            vectors = moves.take(self._list.edge_index[1], axis=1)
            # The edges are sorted by i: Δ_i repeated per edge, ~2.5x faster than a take.
            vectors -= np.repeat(moves, self._center_counts, axis=1)
            vectors += self._build_vectors
        squares = np.einsum("ij,ij->j", vectors, vectors)
        keep = np.flatnonzero(squares < self.cutoff * self.cutoff)
        edges = self._list
        return Neighbors(
            edges.edge_index.take(keep, axis=1),
            vectors.take(keep, axis=1).T,  # [E, 3], a transposed view
            shifts=lambda: edges.shifts.take(keep, axis=0),
            squared_distances=lambda: squares.take(keep),
        )
