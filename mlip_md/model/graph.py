"""Padded per-atom neighbour layout shared by all interaction layers.

The model receives a flat edge list (see :mod:`mlip_md.contract`). Interaction
layers sum over the neighbours of each atom; doing that as a dense batched
matrix product over a padded ``[N, K]`` layout (``K`` = largest neighbour
count) is several times faster on a CPU than scattering ``[E, n_sens, n_feat]``
products, and its backward pass is again a batched product.
"""

import math
from typing import NamedTuple

import torch


# Sensitivity exponents are clamped here: exp(-80) ≈ 2e-35 is zero for all
# purposes, and exp of inputs that underflow is ~10x slower on CPUs.
EXPONENT_FLOOR = -80.0


def log_cutoff_envelope(distances: torch.Tensor, cutoff: float) -> torch.Tensor:
    """log φ_cut(r), φ_cut(r) = cos²(π r / (2 r_cut)) for r < r_cut, else 0.

    φ_cut and its first derivative vanish at r_cut, so energies and forces
    are continuous when an atom crosses the cutoff. Beyond the cutoff the
    log is -160 = 2 · EXPONENT_FLOOR (φ_cut is 0 after the sensitivity's clamp;
    a literal because TorchScript cannot read module globals).
    """
    cosine = torch.cos((0.5 * math.pi / cutoff) * distances)
    inside = distances < cutoff
    safe = torch.where(inside, cosine * cosine, torch.ones_like(distances))
    return torch.where(inside, torch.log(safe), torch.full_like(distances, -160.0))


class PaddedNeighbors(NamedTuple):
    """Neighbours of every atom, padded to the largest neighbour count ``K``.

    ``radial_terms`` holds, per neighbour, (1/r², 1/r, 1, log φ_cut(r)):
    every sensitivity exponent of every layer is a linear combination of
    these (see :class:`mlip_md.model.layers.InverseSensitivity`). Padding
    slots point at atom 0 and sit at twice the cutoff, where φ_cut = 0.
    """

    species: torch.Tensor  # [N] int64, index into the model's element list
    neighbors: torch.Tensor  # [N, K] int64, neighbour atom index j
    distances: torch.Tensor  # [N, K] float, |r_ij| in Å
    radial_terms: torch.Tensor  # [N, K, 4] float: 1/r², 1/r, 1, log φ_cut(r)


def pad_neighbors(
    species: torch.Tensor,
    edge_index: torch.Tensor,
    edge_vectors: torch.Tensor,
    cutoff: float,
) -> PaddedNeighbors:
    """Builds the padded layout from ``edge_index`` ``[2, E]`` and ``edge_vectors`` ``[E, 3]``.

    Edges may come in any order; they are sorted by the centre atom ``i`` when
    they are not already. Distances stay differentiable with respect to
    ``edge_vectors``.
    """
    n_atoms = species.shape[0]
    centers = edge_index[0]
    others = edge_index[1]
    distances = torch.linalg.vector_norm(edge_vectors, dim=1)  # [E]
    n_edges = centers.shape[0]
    if n_edges > 1 and bool((centers[1:] < centers[:-1]).any()):
        order = torch.argsort(centers, stable=True)
        centers = centers[order]
        others = others[order]
        distances = distances[order]
    counts = torch.bincount(centers, minlength=n_atoms)  # [N]
    width = int(counts.max()) if n_atoms > 0 else 0
    starts = torch.cumsum(counts, 0) - counts  # [N]
    slots = torch.arange(n_edges, device=centers.device) - starts[centers]  # [E]
    flat = centers * width + slots  # [E], position in the [N * K] layout
    padded_distances = torch.full(
        (n_atoms * width,), 2.0 * cutoff, dtype=distances.dtype, device=distances.device
    ).index_copy(0, flat, distances)
    padded_neighbors = torch.zeros(
        n_atoms * width, dtype=torch.long, device=centers.device
    ).index_copy(0, flat, others)
    padded_distances = padded_distances.view(n_atoms, width)
    inverse = padded_distances.reciprocal()
    radial_terms = torch.stack(
        [inverse * inverse, inverse, torch.ones_like(inverse), log_cutoff_envelope(padded_distances, cutoff)],
        dim=-1,
    )
    return PaddedNeighbors(species, padded_neighbors.view(n_atoms, width), padded_distances, radial_terms)
