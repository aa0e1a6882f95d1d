"""Padded per-atom neighbour layout shared by all interaction layers.

The model receives a flat edge list (see :mod:`mlip_md.contract`). Interaction
layers sum over the neighbours of each atom; doing that as a dense batched
matrix product over a padded ``[N, K]`` layout (``K`` = largest neighbour
count) is faster on a CPU than scattering ``[E, n_sens, n_feat]`` products,
and its backward pass is again a batched product.
"""

import math
from typing import NamedTuple, Optional

import torch


# Sensitivities are computed as powers of 2 (see InverseSensitivity); their
# base-2 exponents are clamped at a floor, below which a sensitivity is
# constant (zero for all purposes): exp2 of inputs that underflow is slow on
# CPUs. The floor depends on the dtype:
# * float64: 2^-115 ≈ 2e-35. The hand-written gradient multiplies a clamped
#   sensitivity by its exponent's slope, which grows as 2/(r_cut − r) near the
#   cutoff; even an edge 1e-15 Å from r_cut then adds < 1e-19 eV/Å.
# * float32: 2^-60 ≈ 8.7e-19, far above float32's smallest normal number
#   (1.2e-38), so its products with gradients stay normal numbers (at 2^-115
#   they would be subnormal, which Intel CPUs multiply many times slower).
#   No float32 edge comes closer to r_cut than ~5e-7 Å, which bounds what a
#   clamped sensitivity adds to a force near 4e-12 eV/Å; summed over a
#   54-neighbour, 20-sensitivity environment it moves an energy by ~1e-15 eV.
EXPONENT_FLOOR = -115.0
FLOAT32_EXPONENT_FLOOR = -60.0
LOG2_E = 1.4426950408889634  # log2(e)


def log_cutoff_envelope(distances: torch.Tensor, cutoff: float) -> torch.Tensor:
    """log φ_cut(r), φ_cut(r) = cos²(π r / (2 r_cut)) for r < r_cut, else 0.

    φ_cut and its first derivative vanish at r_cut, so energies and forces
    are continuous when an atom crosses the cutoff. Beyond the cutoff the
    log is −160 (a literal: TorchScript cannot read module globals); times
    log2(e) that lies far below EXPONENT_FLOOR, so φ_cut is 0 after the
    sensitivity's clamp. No cosine of a float is exactly 0 (π/2 is not
    representable), so the log is finite everywhere, and so is its
    gradient, which the fill then zeroes beyond the cutoff.
    """
    cosine = torch.cos((0.5 * math.pi / cutoff) * distances)
    return torch.log(cosine * cosine).masked_fill_(distances >= cutoff, -160.0)


class PaddedNeighbors(NamedTuple):
    """Neighbours of every atom, padded to the largest neighbour count ``K``.

    ``radial_terms`` holds, per neighbour, (1/r², 1/r, 1, log φ_cut(r)):
    every sensitivity exponent of every layer is a linear combination of
    these (see :class:`mlip_md.model.layers.InverseSensitivity`). They are
    stored term-major, ``[4, N, K]``: stacking them so is a plain copy, where
    interleaving them (``[N, K, 4]``) would be a strided one as costly as a
    layer's exponentials.
    Padding slots point at atom 0 and sit at twice the cutoff, where φ_cut = 0.
    """

    species: torch.Tensor  # [N] int64, index into the model's element list
    # The rows are all N atoms, or only the first R (pad_neighbors' n_rows): then [R, K] below.
    neighbors: torch.Tensor  # [N, K] int64, neighbour atom index j
    distances: torch.Tensor  # [N, K] float, |r_ij| in Å
    radial_terms: torch.Tensor  # [4, N, K] float: 1/r², 1/r, 1, log φ_cut(r)
    occupied: torch.Tensor  # [N, K] bool, slots holding an edge; in row-major order they are the sorted edges
    order: Optional[torch.Tensor]  # [E] int64, input edge of each sorted edge; None when the input was sorted


def edge_lengths(edge_vectors: torch.Tensor) -> torch.Tensor:
    """|r_e| of ``edge_vectors`` ``[E, 3]`` → ``[E]`` (Å).

    Written out by component: faster than torch.linalg.vector_norm in float32.
    """
    x, y, z = edge_vectors.unbind(1)
    return torch.sqrt(x * x + y * y + z * z)


def pad_neighbors(
    species: torch.Tensor,
    edge_index: torch.Tensor,
    distances: torch.Tensor,
    cutoff: float,
    n_rows: int = -1,
) -> PaddedNeighbors:
    """Builds the padded layout from ``edge_index`` ``[2, E]`` and edge lengths ``distances`` ``[E]`` (Å).

    Edges may come in any order; they are sorted by the centre atom ``i`` when
    they are not already. The layout stays differentiable with respect to
    ``distances``. ``n_rows`` ≥ 0: rows for the first ``n_rows`` atoms only
    (every edge's centre must be one of them), whose neighbours may be any of
    the N atoms of ``species`` (see :mod:`mlip_md.model.layered`).
    """
    n_atoms = species.shape[0] if n_rows < 0 else n_rows
    centers = edge_index[0]
    others = edge_index[1]
    n_edges = centers.shape[0]
    order: Optional[torch.Tensor] = None  # None: already sorted
    if n_edges > 1 and bool((centers[1:] < centers[:-1]).any()):
        order = torch.argsort(centers, stable=True)
        centers = centers[order]
        others = others[order]
        distances = distances[order]
    counts = torch.bincount(centers, minlength=n_atoms)  # [N]
    width = int(counts.max()) if n_atoms > 0 else 0
    # With the edges sorted by centre, the occupied slots of the row-major
    # [N, K] layout, in order, are the edges in order: masked_scatter places
    # them (faster than index_copy at computed positions).
    occupied = torch.arange(width, device=centers.device) < counts.unsqueeze(1)  # [N, K]
    padded_distances = torch.full(
        (n_atoms, width), 2.0 * cutoff, dtype=distances.dtype, device=distances.device
    ).masked_scatter_(occupied, distances)
    padded_neighbors = torch.zeros(n_atoms, width, dtype=torch.long, device=centers.device).masked_scatter_(
        occupied, others
    )
    return PaddedNeighbors(
        species, padded_neighbors, padded_distances, radial_terms_of(padded_distances, cutoff), occupied, order
    )


def radial_terms_of(distances: torch.Tensor, cutoff: float) -> torch.Tensor:
    """(1/r², 1/r, 1, log φ_cut(r)) of ``distances`` ``[...]`` → ``[4, ...]``."""
    inverse = distances.reciprocal()
    return torch.stack(
        [inverse * inverse, inverse, torch.ones_like(inverse), log_cutoff_envelope(distances, cutoff)]
    )


def distance_gradient(radial_gradient: torch.Tensor, distances: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Chain rule from ∂E/∂(1/r², 1/r, 1, log φ_cut) ``[4, N, K]`` to ∂E/∂r ``[N, K]`` (eV/Å).

    d(1/r²)/dr = −2/r³, d(1/r)/dr = −1/r², d log φ_cut/dr = −(π/r_cut) tan(π r/(2 r_cut))
    inside the cutoff and 0 beyond it (where log φ_cut is the constant −160).
    """
    inverse = distances.reciprocal()
    inverse_squared = inverse * inverse
    angle = (0.5 * math.pi / cutoff) * distances
    envelope = torch.where(
        distances < cutoff, (-math.pi / cutoff) * torch.tan(angle), torch.zeros_like(distances)
    )
    return (
        radial_gradient[0] * (-2.0 * inverse_squared * inverse)
        - radial_gradient[1] * inverse_squared
        + radial_gradient[3] * envelope
    )


def edge_gradients(
    distance_gradients: torch.Tensor, graph: PaddedNeighbors, edge_vectors: torch.Tensor, distances: torch.Tensor
) -> torch.Tensor:
    """∂E_m/∂r_e ``[M, E, 3]`` from ∂E_m/∂r ``[M, N, K]`` in the padded layout: g_e = ∂E/∂r · r_e / r.

    ``edge_vectors`` ``[E, 3]`` and their lengths ``distances`` ``[E]`` are the
    edges the layout was built from, in their input order.
    """
    n_members = distance_gradients.shape[0]
    per_edge = distance_gradients.masked_select(graph.occupied).view(n_members, -1)  # [M, E], sorted edges
    order = graph.order  # a local, so that TorchScript refines its Optional type
    if order is not None:
        per_edge = torch.empty_like(per_edge).index_copy_(1, order, per_edge)  # input order
    return (per_edge / distances).unsqueeze(-1) * edge_vectors


def padded_unit_vectors(graph: PaddedNeighbors, edge_vectors: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """r_e/|r_e| in the padded layout, ``[N, K, 3]``, zero on padding slots.

    ``edge_vectors`` ``[E, 3]`` and their lengths ``distances`` ``[E]`` are the
    edges the layout was built from, in their input order.
    """
    units = edge_vectors / distances.unsqueeze(1)
    order = graph.order  # a local, so that TorchScript refines its Optional type
    if order is not None:
        units = units.index_select(0, order)  # sorted by centre, as the layout
    n_atoms, width = graph.neighbors.shape
    padded = torch.zeros(n_atoms, width, 3, dtype=units.dtype, device=units.device)
    return padded.masked_scatter_(graph.occupied.unsqueeze(-1).expand(n_atoms, width, 3), units)
