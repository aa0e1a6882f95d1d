"""Layer stepping: HIP-NN one interaction block at a time, for domain decomposition.

Under MPI domain decomposition (LAMMPS's ``pair_style mlip comm layer``) a
rank holds R owned atoms and ghost copies of the other atoms within one
cutoff (plus skin) of them: N nodes, owned first. Only the owned atoms have
rows in the padded layout (``pad_neighbors(..., n_rows=R)``); their
neighbours may be any node. One step is:

forward, block ``l`` = 0 … L−1
    the owned atoms' output features ``[R, F]`` and level energies ``[R]``
    from level ``l``'s features of all N nodes; the caller then copies each
    ghost's features from its owner (LAMMPS forward communication) before
    block ``l + 1``.
reverse, block ``l`` = L−1 … 0
    from ∂E/∂(block output) of the owned atoms (the level's read-out plus
    what block ``l + 1`` returned, completed by the caller), ∂E/∂(block
    input) ``[N, F]`` of all nodes (:func:`mlip_md.model.reverse.block_reverse`):
    an owned atom gets the shares of its owned neighbours by the symmetry of
    the full list, a ghost those of the owned atoms that list it
    (:func:`~mlip_md.model.reverse.ghost_shares`). The ghosts' rows are
    partial sums that the caller adds to their owners (LAMMPS reverse
    communication) before block ``l − 1``; E is Σ of the owned atoms'
    energies over all ranks, so the owners' rows then hold the full gradient.

The distance gradients of every block are summed per block of rows and
turned into edge gradients at the end. The results equal one pass over the
whole system to rounding.
"""

from typing import List, NamedTuple, Optional, Tuple

import torch

from mlip_md.model.graph import PaddedNeighbors, distance_gradient, edge_gradients, edge_lengths, pad_neighbors
from mlip_md.model.layers import BlockState
from mlip_md.model.reverse import block_reverse


class LayerGraph(NamedTuple):
    """A rank's graph for layer stepping (opaque to callers of the exported methods)."""

    layout: PaddedNeighbors  # species of all N nodes; rows [R, K] of the owned atoms
    edge_vectors: torch.Tensor  # [E', 3] r_ij of the edges within the cutoff, Å
    distances: torch.Tensor  # [E'] their lengths, Å
    kept: Optional[torch.Tensor]  # [E'] input position of each kept edge; None when all were kept
    n_edges: int  # E, the caller's edge count
    rows: int  # atoms per block of the blocked passes


def layer_graph(
    species: torch.Tensor,
    edge_index: torch.Tensor,
    edge_vectors: torch.Tensor,
    n_owned: int,
    cutoff: float,
    block_slots: int = 8192,
) -> LayerGraph:
    """The :class:`LayerGraph` of ``n_owned`` owned atoms among ``species`` ``[N]`` nodes.

    ``edge_index`` ``[2, E]`` and ``edge_vectors`` ``[E, 3]`` follow the
    contract (:mod:`mlip_md.contract`) but hold only the edges of owned
    atoms: every pair (i, j) within the cutoff with i < ``n_owned``, j any node.
    """
    if n_owned < 1 or n_owned > species.shape[0]:
        raise ValueError(f"layer_graph: n_owned must be between 1 and the node count, got {n_owned}")
    n_edges = edge_vectors.shape[0]
    if n_edges > 0 and bool((edge_index[0] >= n_owned).any()):
        raise ValueError("layer_graph: an edge starts at a node beyond n_owned; give only the owned atoms' edges")
    distances = edge_lengths(edge_vectors)
    kept: Optional[torch.Tensor] = None
    inside = distances < cutoff
    if not bool(inside.all()):  # edges beyond the cutoff contribute exactly zero
        kept = torch.nonzero(inside).squeeze(1)
        edge_index = edge_index.index_select(1, kept)
        edge_vectors = edge_vectors.index_select(0, kept)
        distances = distances.index_select(0, kept)
    layout = pad_neighbors(species, edge_index, distances, cutoff, n_owned)
    rows = max(1, block_slots // max(1, layout.neighbors.shape[1]))
    return LayerGraph(layout, edge_vectors, distances, kept, n_edges, rows)


def layer_reverse(
    state: BlockState, gradient: torch.Tensor, graph: LayerGraph, radial_blocks: List[torch.Tensor]
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """One member's reverse pass through one block (see the module docstring).

    ``gradient`` ``[R, F_out]``: ∂E/∂(block output) of the owned atoms from
    the blocks above, empty for the last block; the level's read-out is added
    here. Returns ∂E/∂(block input) ``[N, F_in]`` (empty for the first block,
    whose input is the species one-hot) and ``radial_blocks`` with this
    block's share added (see :func:`~mlip_md.model.reverse.block_reverse`).
    """
    n_rows = graph.layout.neighbors.shape[0]
    readout = state.readout_weight.expand(n_rows, state.readout_weight.shape[1])
    total = readout if gradient.numel() == 0 else gradient + readout
    return block_reverse(state, total, graph.layout.neighbors, graph.rows, radial_blocks)


def layer_edge_gradients(graph: LayerGraph, radial_blocks: List[List[torch.Tensor]], cutoff: float) -> torch.Tensor:
    """∂E_m/∂r_e ``[M, E, 3]`` of the owned atoms' energy, in the caller's edge order, from each
    member's ``radial_blocks`` after the reverse pass of the first block."""
    layout = graph.layout
    per_member = [distance_gradient(torch.cat(blocks, dim=1), layout.distances, cutoff) for blocks in radial_blocks]
    gradients = edge_gradients(torch.stack(per_member), layout, graph.edge_vectors, graph.distances)
    kept = graph.kept
    if kept is not None:  # dropped edges: gradient 0
        gradients = gradients.new_zeros(gradients.shape[0], graph.n_edges, 3).index_copy(1, kept, gradients)
    return gradients
