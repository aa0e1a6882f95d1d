"""From flagged frames to the configurations worth labelling: a structural descriptor,
farthest-point sampling on it, and the selection of one iteration's candidates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List, Sequence, Tuple

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers
from ase.neighborlist import neighbor_list

if TYPE_CHECKING:  # the sampler imports this module, not the other way round
    from mlip_md.active.sampler import Candidate

SMOOTHING_WIDTH = 0.1  # Å, standard deviation of the Gaussian put on every pair distance


def _pair_types(species: Sequence[str]) -> Tuple[Dict[int, int], np.ndarray]:
    """Index of every element (atomic number -> k) and the ``(S, S)`` table of pair types,
    unordered pairs a <= b numbered row by row (0 .. S(S+1)/2 - 1)."""
    index = {atomic_numbers[symbol]: k for k, symbol in enumerate(species)}
    table = np.zeros((len(species), len(species)), dtype=np.int64)
    number = 0
    for a in range(len(species)):
        for b in range(a, len(species)):
            table[a, b] = table[b, a] = number
            number += 1
    return index, table


def descriptor(atoms: Atoms, species: Sequence[str], cutoff: float, n_bins: int = 24) -> np.ndarray:
    """Smoothed partial pair-distance histograms per atom, ``(n_pairs * n_bins,)``.

    For every unordered element pair (a, b), a <= b in the order of ``species``
    (n_pairs = S(S+1)/2 blocks, in the order (0,0), (0,1), ..., (1,1), ...), each
    pair of atoms within ``cutoff`` (Å; all periodic images, an atom and its own
    image included, each pair once) adds a Gaussian of width 0.1 Å centred on its
    distance, sampled at ``n_bins`` centres cutoff·k/n_bins (k = 1..n_bins) in
    (0, cutoff]; the sums are divided by the number of atoms. Invariant to
    permutation, translation, rotation and supercell repetition. ValueError for
    an element not in ``species``.
    """
    index, table = _pair_types(species)
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(species))
    if unknown:
        raise ValueError(f"descriptor: element(s) {unknown} not in species {list(species)}")
    n_types = table[-1, -1] + 1 if len(species) else 0
    histogram = np.zeros((n_types, n_bins))
    if len(atoms) == 0:
        return histogram.ravel()
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    kinds = np.array([index[z] for z in atoms.numbers], dtype=np.int64)
    types = table[kinds[i], kinds[j]]
    centres = cutoff * np.arange(1, n_bins + 1) / n_bins
    weights = np.exp(-0.5 * ((d[:, None] - centres[None, :]) / SMOOTHING_WIDTH) ** 2)
    np.add.at(histogram, types, weights)
    # The full list holds each pair twice, (i, j) and (j, i).
    return 0.5 * histogram.ravel() / len(atoms)


def farthest_point_sampling(points: np.ndarray, k: int, first: int = 0) -> List[int]:
    """Greedy max-min selection: ``min(k, K)`` distinct row indices of ``points`` ``(K, D)``, in pick order.

    Starts from ``first``; each next pick is the point farthest (Euclidean) from
    those picked, the lowest index on ties, so the result is deterministic.
    """
    points = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    count = min(int(k), len(points))
    if count <= 0:
        return []
    picked = [int(first)]
    distance = np.linalg.norm(points - points[first], axis=1)
    distance[first] = -np.inf  # picked points are never picked again, even among duplicates
    while len(picked) < count:
        best = int(np.argmax(distance))
        picked.append(best)
        distance = np.minimum(distance, np.linalg.norm(points - points[best], axis=1))
        distance[picked] = -np.inf
    return picked


def _identity(candidate: "Candidate") -> bytes:
    """Bytes that equal exactly when two candidates hold the same configuration."""
    atoms = candidate.atoms
    parts = (atoms.numbers.astype(np.int64), atoms.positions.astype(np.float64),
             np.asarray(atoms.cell[:], dtype=np.float64), atoms.pbc.astype(bool))
    return b"|".join(part.tobytes() for part in parts)


def select_candidates(candidates: Sequence["Candidate"], max_labels: int,
                      known: Callable[["Candidate"], bool]) -> List["Candidate"]:
    """The candidates worth labelling, at most ``max_labels``, sorted by (trajectory, step).

    Drops those ``known(c)`` says are labelled already and exact duplicates
    (same numbers, positions, cell, pbc; the first by (trajectory, step) stays);
    if more than ``max_labels`` remain, farthest-point sampling on their
    descriptors picks them, started from the highest ``forces_uncertainty``
    (ties: the first by (trajectory, step)).
    """
    ordered = sorted(candidates, key=lambda c: (c.trajectory, c.step))  # stable: equal keys keep their order
    seen = set()
    fresh = []
    for candidate in ordered:
        identity = _identity(candidate)
        if identity in seen or known(candidate):
            continue
        seen.add(identity)
        fresh.append(candidate)
    if len(fresh) <= max_labels:
        return fresh
    first = int(np.argmax([c.forces_uncertainty for c in fresh]))  # first maximum: the (trajectory, step) tie-break
    picked = farthest_point_sampling(np.stack([c.descriptor for c in fresh]), max_labels, first)
    return [fresh[k] for k in sorted(picked)]


class StreamingSelection:
    """:func:`select_candidates` over one iteration's trajectories, decided as they finish.

    A finished trajectory's fresh candidates are admitted at once when the
    iteration's limit cannot bind whatever the unfinished trajectories flag
    (``admitted + held + unfinished · max_per_trajectory <= limit``); otherwise
    they are held, and :meth:`finish` thins the held ones by farthest-point
    sampling once every trajectory has finished. If the limit never binds, every
    fresh candidate is admitted; if it binds, nothing was admitted early and the
    thinning sees them all. So the labels are those :func:`select_candidates`
    picks from the whole iteration, in whatever order trajectories finish.

    ``admitted``: candidates of this iteration admitted before (a resumed driver);
    ``known(c)``: whether ``c`` is in the store already (labelled or pending).
    """

    def __init__(self, n_trajectories: int, max_per_trajectory: int, limit: int,
                 known: Callable[["Candidate"], bool], admitted: int = 0):
        self.unfinished, self.max_per_trajectory = n_trajectories, max_per_trajectory
        self.limit, self.known, self.admitted = limit, known, admitted
        self.held: List["Candidate"] = []

    def add(self, candidates: Sequence["Candidate"]) -> List["Candidate"]:
        """Takes one finished trajectory's candidates; returns those admitted now (held ones included)."""
        self.unfinished -= 1
        seen = {_identity(c) for c in self.held}
        for candidate in sorted(candidates, key=lambda c: c.step):
            if _identity(candidate) not in seen and not self.known(candidate):
                seen.add(_identity(candidate))
                self.held.append(candidate)
        if self.admitted + len(self.held) + self.unfinished * self.max_per_trajectory > self.limit:
            return []
        return self._admit(self.held)

    def finish(self) -> List["Candidate"]:
        """After the last trajectory: the held candidates worth labelling within the limit."""
        return self._admit(select_candidates(self.held, max(0, self.limit - self.admitted), self.known))

    def _admit(self, chosen: Sequence["Candidate"]) -> List["Candidate"]:
        chosen = sorted(chosen, key=lambda c: (c.trajectory, c.step))
        self.held, self.admitted = [], self.admitted + len(chosen)
        return chosen
