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
from typing import Callable, Optional, Tuple, Union

import numpy as np
import vesin

_Lazy = Union[np.ndarray, Callable[[], np.ndarray]]

MAX_PAIRS = 20_000_000
"""The most pairs :func:`neighbor_list` agrees to build, estimated beforehand
(a uniform solid of ~200,000 atoms at a 7 Å cutoff). The list takes about 130
bytes per pair while it is built, a model evaluation far more."""
_MAX_CELLS = 90_000  # vesin's cell grid, below its own limit of 1e5
_MAX_CELL_VISITS = 10_000_000  # cell pairs vesin scans with mixed periodicity


class Neighbors:
    """A full neighbour list; see the module docstring for the convention.

    Attributes:
        edge_index: ``[2, E]`` int64.
        vectors: ``[E, 3]`` r_ij in Å, float64 (or the dtype of a :class:`VerletList`).
        shifts: ``[E, 3]`` int64.
        squared_distances, distances: ``[E]`` Å² and Å, the dtype of ``vectors``.

    ``shifts`` and ``squared_distances`` may be given as functions that
    compute them: they are then computed on first use, so that an MD step
    through the calculator, which needs neither, does not pay for them.
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


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float, max_pairs: Optional[float] = None
) -> Neighbors:
    """Full neighbour list of all pairs closer than ``cutoff`` (Å).

    Args:
        positions: ``[N, 3]`` Cartesian positions in Å (need not be wrapped).
        cell: ``[3, 3]`` cell vectors as rows, Å.
        pbc: bool or three bools, periodicity along each cell vector.
        cutoff: pair cutoff radius in Å (> 0).
        max_pairs: refuse (ValueError naming the cell heights and the
            estimate) when the list would hold more pairs than this, as a cell
            much thinner than the cutoff does; default :data:`MAX_PAIRS`
            (read at each call).

    Atoms any distance apart along open directions (a blown-up trajectory)
    are handled: gaps wider than the cutoff are closed up before binning,
    which changes no pair within the cutoff.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    if not np.isfinite(positions).all():
        raise ValueError("positions must be finite (no NaN or inf)")
    box = _binning_box(np.asarray(cell, dtype=np.float64), pbc)
    # Wrap periodic coordinates into the cell and remember the wrap so that the
    # returned shifts refer to the caller's (unwrapped) positions.
    wraps = np.zeros((len(positions), 3), dtype=np.int64)
    if pbc.any():
        fractional = np.linalg.solve(box.T, positions.T).T
        wraps[:, pbc] = np.floor(fractional[:, pbc]).astype(np.int64)
        positions = positions - wraps @ box
    # Compressed coordinates differ from the true ones by rounding: search a hair wider.
    tolerance = 1e-9 * cutoff + 1e-13 * np.abs(positions).max(initial=0.0)
    binned, compressed = _close_gaps(positions, _open_directions(box, pbc), 1.001 * (cutoff + tolerance))
    _check_pair_budget(binned, box, pbc, cutoff, MAX_PAIRS if max_pairs is None else max_pairs)
    search = _search_cutoff(binned, box, pbc, cutoff + tolerance if compressed else cutoff)
    calculator = vesin.NeighborList(cutoff=float(search), full_list=True, sorted=True)
    i, j, shifts, distances, vectors = calculator.compute(binned, box, pbc.tolist(), quantities="ijSdD")
    i, j, shifts = i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64)
    squares = np.asarray(distances, np.float64) ** 2
    if search > cutoff:  # vectors from the caller's (wrapped) positions, and only the pairs within cutoff
        vectors = positions[j] - positions[i] + shifts @ box
        squares = np.einsum("ij,ij->i", vectors, vectors)
        keep = np.flatnonzero(squares < cutoff * cutoff)
        i, j, shifts, vectors, squares = (array[keep] for array in (i, j, shifts, vectors, squares))
    shifts = shifts - wraps[j] + wraps[i]
    return Neighbors(np.stack([i, j]), np.asarray(vectors, np.float64), shifts, squares)


def _open_directions(box: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Orthonormal rows spanning the open directions (vesin bins an open system along x, y, z)."""
    return np.eye(3) if not pbc.any() else box[~pbc]


def _heights(box: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the cell along each periodic direction (Å); inf along open ones."""
    heights = np.full(3, np.inf)
    volume = abs(np.linalg.det(box))
    for d in np.flatnonzero(pbc):
        heights[d] = volume / np.linalg.norm(np.cross(box[(d + 1) % 3], box[(d + 2) % 3]))
    return heights


def _close_gaps(positions: np.ndarray, directions: np.ndarray, gap: float) -> Tuple[np.ndarray, bool]:
    """``positions`` with every gap wider than ``gap`` along each of ``directions`` narrowed to ``gap``.

    Atoms between two wide gaps move together, and atoms on opposite sides of
    one stay at least ``gap`` apart (along an open direction no periodic
    shift applies): every pair closer than ``gap`` keeps its vector and no
    other pair comes closer, while the extent vesin bins stays bounded.
    Returns the positions and whether any moved.
    """
    moved = positions
    for direction in directions:  # orthonormal: moving along one leaves the others' coordinates alone
        coordinates = positions @ direction
        order = np.argsort(coordinates, kind="stable")
        excess = np.maximum(np.diff(coordinates[order]) - gap, 0.0)
        if excess.any():
            closing = np.empty(len(positions))
            closing[order] = np.concatenate([[0.0], np.cumsum(excess)])
            moved = moved - np.outer(closing, direction)
    return moved, moved is not positions


def _spans(coordinates: np.ndarray) -> np.ndarray:
    """max − min of each column of ``[N, k]`` coordinates (zeros for no atoms)."""
    return np.ptp(coordinates, axis=0) if len(coordinates) else np.zeros(coordinates.shape[1])


def _estimate_pairs(positions: np.ndarray, box: np.ndarray, pbc: np.ndarray, cutoff: float) -> float:
    """An estimate of the number of pairs within ``cutoff``, as if the atoms were spread evenly.

    A ball of radius ``cutoff`` holds about 2·cutoff/h images of a partner per
    periodic direction of cell height h (many where the cell is thin, a
    fraction where it is wide), and partners within 2·cutoff of it along each
    open direction; an atom's own images count at least once.
    """
    ball_in_cube = np.pi / 6
    images = 2.0 * cutoff / _heights(box, pbc)[pbc]  # per partner and periodic direction
    reach = np.minimum(1.0, 2.0 * cutoff / np.maximum(_spans(positions @ _open_directions(box, pbc).T), 1e-300))
    own_images = max(1.0, ball_in_cube * np.prod(np.maximum(images, 1.0)))
    partners = (len(positions) - 1) * ball_in_cube * np.prod(images) * np.prod(reach)
    return len(positions) * (own_images + partners)


def _check_pair_budget(positions: np.ndarray, box: np.ndarray, pbc: np.ndarray, cutoff: float, budget) -> None:
    estimate = _estimate_pairs(positions, box, pbc, cutoff)
    if estimate <= budget:
        return
    heights = ", ".join(f"{h:.3g}" if p else "open" for h, p in zip(_heights(box, pbc), pbc))
    raise ValueError(
        f"a neighbour list within {cutoff:g} Å of {len(positions)} atom(s) would hold about {estimate:.2g} "
        f"pairs, more than the budget of {budget:.2g} (mlip_md.neighbors.MAX_PAIRS); the cell heights "
        f"(distances between opposite faces) are [{heights}] Å: a cell much thinner than the cutoff puts "
        "many periodic images of every atom within reach"
    )


def _search_cutoff(positions: np.ndarray, box: np.ndarray, pbc: np.ndarray, cutoff: float) -> float:
    """The cutoff to ask vesin for: ``cutoff``, or wider where its cell grid would be too large.

    vesin bins into cells of about the cutoff; past 1e5 cells it shrinks the
    grid (and divides by zero where a direction rounds to no cell), and with
    mixed periodicity it scans whole columns of cells along open directions.
    Lengths along open directions are taken generously (vesin may bin them
    along Cartesian axes).
    """
    spans = _spans(positions)
    if pbc.any():
        spans = np.maximum(spans, np.linalg.norm(_spans(positions @ box[~pbc].T)))
    lengths = np.where(pbc, _heights(box, pbc), spans)
    mixed = pbc.any() and not pbc.all()
    search = cutoff
    while True:
        cells = np.maximum(1.0, np.floor(lengths / search * (1 + 1e-9)))
        visits = cells.prod() * (np.prod(2.0 * cells[~pbc] - 1.0) if mixed else 1.0)
        if cells.prod() <= _MAX_CELLS and visits <= _MAX_CELL_VISITS:
            return search
        search *= 1.25


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
        # update then reads and writes contiguous rows.
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
            # The edges are sorted by i: Δ_i repeated per run of edges, a copy instead of a gather.
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
