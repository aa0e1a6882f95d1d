"""The hand-written reverse pass of HIP-NN: ∂E/∂(distances) from the saved forward pass.

:meth:`mlip_md.model.hipnn.HIPNN.energies_and_distance_gradients` runs the
blocks' :meth:`~mlip_md.model.layers.InteractionBlock.forward_saving` on
blocks of atoms small enough for their ``[B, K, ·]`` neighbour tensors to
stay in the CPU cache; :func:`reverse_pass` walks the saved
:class:`~mlip_md.model.layers.BlockState` of every level back, last first,
on the same blocks of atoms.
"""

from typing import List, Optional, Tuple

import torch

from mlip_md.model.layers import BlockState, gather_neighbors, neighbor_sum, neighbor_sum_reverse, output_gradients


def reverse_weights(interaction_weights: torch.Tensor, n_sensitivities: int) -> torch.Tensor:
    """V ``[n_in · n_sens, n_out]`` rearranged to ``[(a, ν), b]`` (``[n_out · n_sens, n_in]``) for
    :func:`interaction_reverse`, computed once per layer."""
    n_in_sens, n_out = interaction_weights.shape
    n_in = n_in_sens // n_sensitivities
    return interaction_weights.view(n_in, -1, n_out).permute(2, 1, 0).reshape(-1, n_in)


def radial_reverse(
    environment_gradient: torch.Tensor,
    neighbor_features: Optional[torch.Tensor],
    sensitivities: torch.Tensor,
    radial_coefficients: torch.Tensor,
) -> torch.Tensor:
    """∂E/∂(1/r², 1/r, 1, log φ_cut) ``[4, B, K]`` of a block of B atoms.

    From ∂E/∂environment g ``[B, n_in, n_sens]``, the neighbours' input
    features z ``[B, K, n_in]`` (None: n_in = 1 and every z is 1), the
    sensitivities s ``[B, K, n_sens]`` and the layer's
    :meth:`~mlip_md.model.layers.InverseSensitivity.coefficients` c ``[4, n_sens]``:
    Σ_ν c[t, ν] s[k, ν] Σ_b z[k, b] g[b, ν]. The log2 e of the base-2
    exponent cancels the ln 2 of d2^x/dx. Row 2 (the constant term) has no
    use; it comes along because MKL multiplies 4 rows faster than 3.
    """
    n_block, width, n_sens = sensitivities.shape
    if neighbor_features is None:
        # Σ_ν (c[t, ν] g[ν]) s[k, ν]: one batched product, no [B, K, n_sens] temporary.
        weighted = radial_coefficients.unsqueeze(0) * environment_gradient  # [B, 4, n_sens]
        return torch.bmm(weighted, sensitivities.transpose(1, 2)).transpose(0, 1)  # [4, B, K], a view
    sensitivity_gradient = neighbor_sum_reverse(environment_gradient, neighbor_features)  # [B, K, n_sens]
    if environment_gradient.requires_grad or sensitivities.requires_grad or neighbor_features.requires_grad:
        products = sensitivity_gradient * sensitivities  # ∂E/∂exponent
    else:
        products = sensitivity_gradient.mul_(sensitivities)  # in place: a fresh buffer
    # A transposed product: MKL runs it faster than products @ coefficients.t().
    return torch.mm(radial_coefficients, products.view(n_block * width, n_sens).t()).view(4, n_block, width)


def interaction_reverse(
    pre_gradient: torch.Tensor,
    features: torch.Tensor,
    start: int,
    neighbors: torch.Tensor,
    sensitivities: torch.Tensor,
    interaction_weights: torch.Tensor,
    transposed_weights: torch.Tensor,
    radial_coefficients: torch.Tensor,
    input_gradient: bool,
    uniform_input: bool = False,
    n_rows: int = -1,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reverse pass of the neighbour part of :meth:`~mlip_md.model.layers.Interaction.pre_activation` for the
    block of B atoms from ``start``.

    Args:
        pre_gradient: ∂E/∂pre-activation ``[N, n_out]`` of all atoms.
        features: the layer's input features ``[N, n_in]``.
        neighbors, sensitivities: the block's ``[B, K]`` and ``[B, K, n_sens]``.
        interaction_weights: V ``[n_in · n_sens, n_out]``;
        transposed_weights: from :func:`reverse_weights`;
        radial_coefficients: the layer's sensitivity coefficients ``[4, n_sens]``.
        input_gradient: also return ∂E/∂features of the block's atoms.
        uniform_input: every input feature is 1 (see :class:`~mlip_md.model.layers.BlockState`).
        n_rows: ≥ 0 when only the first ``n_rows`` atoms have rows (see
            :mod:`mlip_md.model.layered`); ``pre_gradient`` is then zero beyond them.

    Returns ∂E/∂(1/r², 1/r, 1, log φ_cut) ``[4, B, K]`` and, if ``input_gradient``,
    the neighbour-sum part of ∂E/∂features ``[B, n_in]`` (else an empty tensor).
    The latter uses the symmetry of the full neighbour list: atom j receives
    Σ_i s(r_ij) ∂E/∂(environment of i) over the atoms i that list j, and
    these are the atoms j lists, at the same distances. So it is again a
    neighbour sum, over j's own row, with no scatter. With ``n_rows`` ≥ 0,
    also the shares of the atoms without rows (:func:`ghost_shares`): their
    indices ``[P]`` and ``[P, n_in]`` (else empty tensors).

    Below the exponent floor a sensitivity is constant and its true
    derivative 0; this pass uses the floor's sensitivity (2^−115 in float64,
    2^−60 in float32) times the exponent's slope instead of masking, a
    difference far below rounding (see :mod:`mlip_md.model.graph`).
    """
    n_block = neighbors.shape[0]
    n_in = features.shape[1]
    block_gradient = pre_gradient[start : start + n_block]
    environment_gradient = (block_gradient @ interaction_weights.t()).view(n_block, n_in, sensitivities.shape[2])
    neighbor_features = None if uniform_input else gather_neighbors(features, neighbors)
    radial_gradient = radial_reverse(environment_gradient, neighbor_features, sensitivities, radial_coefficients)
    no_atoms = torch.empty(0, dtype=torch.long, device=features.device)
    if not input_gradient:
        return radial_gradient, features.new_empty(0), no_atoms, features.new_empty(0)
    environments = neighbor_sum(sensitivities, gather_neighbors(pre_gradient, neighbors))  # [B, n_out, n_sens]
    own = environments.reshape(n_block, -1) @ transposed_weights
    if n_rows < 0:
        return radial_gradient, own, no_atoms, features.new_empty(0)
    atoms, shares = ghost_shares(environment_gradient, neighbors, sensitivities, n_rows)
    return radial_gradient, own, atoms, shares


def ghost_shares(
    environment_gradient: torch.Tensor, neighbors: torch.Tensor, sensitivities: torch.Tensor, n_rows: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """What a block of B rows adds to ∂E/∂features of its neighbours that have no rows (index ≥
    ``n_rows``): (their indices ``[P]``, shares ``[P, n_in]``), one per such slot (i, j):
    Σ_ν s(r_ij)_ν ∂E/∂(environment of i)_{b, ν}.

    ``environment_gradient`` ``[B, n_in, n_sens]``, ``neighbors`` ``[B, K]``,
    ``sensitivities`` ``[B, K, n_sens]``. Only the rows that have such slots
    take part, each with its G such slots gathered first (G: the most of any
    row), so the product costs G, not K, slots a row.
    """
    outside = neighbors >= n_rows  # padding slots point at atom 0, a row
    counts = outside.sum(1)
    rows = torch.nonzero(counts).squeeze(1)
    n_in, n_sens = environment_gradient.shape[1], environment_gradient.shape[2]
    if rows.shape[0] == 0:
        return rows, environment_gradient.new_empty(0, n_in)
    width = neighbors.shape[1]
    counts = counts.index_select(0, rows)
    # each row's outside slots first, in slot order (a stable sort of 0 = outside, 1 = inside)
    inside = (~outside.index_select(0, rows)).to(torch.uint8)
    columns = torch.argsort(inside, dim=1, stable=True)[:, : int(counts.max())]  # [b, G]
    slots = (rows.unsqueeze(1) * width + columns).reshape(-1)
    gathered = sensitivities.reshape(-1, n_sens).index_select(0, slots).view(rows.shape[0], -1, n_sens)  # [b, G, S]
    # [b, n_in, G]: MKL runs this orientation about twice as fast as [b, G, n_in]
    shares = torch.bmm(environment_gradient.index_select(0, rows), gathered.transpose(1, 2))
    valid = torch.arange(columns.shape[1], device=rows.device) < counts.unsqueeze(1)
    atoms = neighbors.reshape(-1).index_select(0, slots).view(columns.shape)
    return atoms[valid], shares.transpose(1, 2)[valid]


def block_reverse(
    state: BlockState, gradient: torch.Tensor, neighbors: torch.Tensor, rows: int, radial_blocks: List[torch.Tensor]
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """One block's reverse pass from ∂E/∂(block output) ``gradient`` ``[R, F_out]`` of the R atoms
    with rows in ``neighbors`` ``[R, K]``: all N atoms of ``state.features``, or the first R.

    Returns ∂E/∂(block input) ``[N, F_in]`` (an empty tensor when the state
    wants no input gradient) and ``radial_blocks``, ∂E/∂(1/r², 1/r, 1, log φ_cut)
    ``[4, B, K]`` per block of ``rows`` atoms, with this block's share added
    (started when ``radial_blocks`` is empty). The rows' atoms get their
    neighbours' shares by the symmetry of the full list (see
    :func:`interaction_reverse`), from the neighbours that have rows; atoms
    without rows get theirs from :func:`ghost_shares` (see
    :mod:`mlip_md.model.layered`).
    """
    pre_gradient = output_gradients(state, gradient)[0] * state.derivatives[0]  # [R, F_out]
    n_rows, n_atoms = pre_gradient.shape[0], state.features.shape[0]
    partial = n_rows < n_atoms and state.input_gradient
    # the atoms without rows take no part in the symmetric sums: zero rows
    gathered = torch.cat([pre_gradient, pre_gradient.new_zeros(n_atoms - n_rows, pre_gradient.shape[1])]) \
        if partial else pre_gradient
    weights = state.interaction_weights
    transposed = reverse_weights(weights, state.coefficients.shape[1])
    summed: List[torch.Tensor] = []
    neighbor_parts: List[torch.Tensor] = []
    ghost_atoms: List[torch.Tensor] = []
    ghost_parts: List[torch.Tensor] = []
    for index, start in enumerate(range(0, n_rows, rows)):
        block_neighbors = neighbors[start : start + rows]
        radial, neighbor_part, atoms, shares = interaction_reverse(
            gathered, state.features, start, block_neighbors, state.sensitivities[index],
            weights, transposed, state.coefficients, state.input_gradient, state.uniform_input,
            n_rows if partial else -1,
        )
        # Summed over the levels block by block, while each block is still in cache.
        summed.append(radial if len(radial_blocks) == 0 else radial_blocks[index] + radial)
        neighbor_parts.append(neighbor_part)
        ghost_atoms.append(atoms)
        ghost_parts.append(shares)
    if not state.input_gradient:
        return pre_gradient.new_empty(0), summed
    # self-interaction part plus neighbour part
    own = pre_gradient @ state.self_weight + torch.cat(neighbor_parts)
    if not partial:
        return own, summed
    input_gradient = torch.cat([own, own.new_zeros(n_atoms - n_rows, own.shape[1])])
    return input_gradient.index_add_(0, torch.cat(ghost_atoms), torch.cat(ghost_parts)), summed


def reverse_pass(states: List[BlockState], neighbors: torch.Tensor, rows: int, n_owned: int) -> torch.Tensor:
    """∂E/∂(1/r², 1/r, 1, log φ_cut) ``[4, N, K]`` of E = Σ_{i < n_owned} E_i, from the
    :class:`~mlip_md.model.layers.BlockState` of every level (first block first)
    saved on blocks of ``rows`` atoms of ``neighbors`` ``[N, K]``."""
    n_atoms = neighbors.shape[0]
    dtype, device = states[0].features.dtype, neighbors.device
    owned = (torch.arange(n_atoms, device=device) < n_owned).to(dtype).unsqueeze(1)
    radial_blocks: List[torch.Tensor] = []
    gradient = torch.zeros(n_atoms, 1, dtype=dtype, device=device)  # ∂E/∂(block output features)
    for level in range(len(states) - 1, -1, -1):
        state = states[level]
        gradient, radial_blocks = block_reverse(
            state, gradient + state.readout_weight * owned, neighbors, rows, radial_blocks
        )
    return torch.cat(radial_blocks, dim=1)
