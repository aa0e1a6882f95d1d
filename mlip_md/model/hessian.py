"""Analytic position Hessians of HIP-NN by tangents of the hand-written gradient.

The gradient of :meth:`mlip_md.model.hipnn.HIPNN.energies_and_distance_gradients`
is differentiated in forward mode: one tangent per Cartesian coordinate of an
atom, all of them carried side by side as the last dimension ``T`` of every
tangent tensor, so that each step is a batched matrix product rather than one
backward pass per Hessian row.

Notation (one interaction layer; the neighbour slot k of atom i holds atom
j = n(i, k) at distance d_ik; S sensitivities; input features z, b = 1..F_in;
output features a = 1..F_out; V the interaction weights, ``[(b, S), a]``)::

    forward   p_i[a] = Σ_k Σ_{b,S} V[(b,S), a] s_ikS z_jb + (W z_i)[a] + c[a]
    reverse   G_i[b, S] = Σ_a V[(b,S), a] g_i[a]          g = ∂E/∂p
              ∂E/∂s_ikS = Σ_b z_jb G_i[b, S],  ∂E/∂d_ik = Σ_S ∂E/∂s_ikS w_ikS
              ∂E/∂z_j ∋ Σ_k Σ_S s_jkS G_n(j,k)[·, S]  (the full list is symmetric)

with w = ∂s/∂d and w2 = ∂²s/∂d². A tangent of the distances ḋ [N, K, T]
enters every sensitivity as ṡ_ikS = w_ikS ḋ_ik: rank one in (S, T), so
every sum over S is taken once, before T appears. What is left per layer are
T-independent coefficients (:class:`LayerTerms`)::

    R_ik[a]    = Σ_S w_ikS Σ_b z_jb V[(b,S), a]     ṗ_i ∋ Σ_k R_ik ḋ_ik,  ḃ_ik ∋ Σ_a R_ik[a] ġ_i[a]
    U_ik[a, b] = Σ_S s_ikS V[(b,S), a]              ṗ_i ∋ Σ_k U_ik ż_j,   ∂E/∂z_j tangent ∋ Σ_k U_jkᵀ ġ_n(j,k)
    M_ik[b]    = Σ_S w_ikS G_i[b, S]                ḃ_ik ∋ Σ_b M_ik[b] ż_jb  (taken to the Hessian directly)
    P_ik[b]    = Σ_S w_ikS G_j[b, S]                ∂E/∂z_i tangent ∋ Σ_k P_ik ḋ_ik
    C_ik       = Σ_S ∂E/∂s_ikS w2_ikS               ḃ_ik ∋ C_ik ḋ_ik

where ḃ is the tangent of b = ∂E/∂d. The only products whose cost grows
with T times the neighbour work are the U terms, [F_out, K·F_in] by
[K·F_in, T] per atom, or for small systems one [N·F_out, N·F_in] by
[N·F_in, T] product (:func:`neighbor_weights`). Finally, with u = r/d per slot,
∂E/∂x_a = Σ_slots b (δ_{a j} − δ_{a i}) u, whose tangent gives the Hessian
(:func:`assemble_columns` for the ḃ part, :func:`geometric_hessian` for the
b · ∂u/∂x part).
"""

import math
from typing import List, NamedTuple, Tuple

import torch

from mlip_md.model.graph import PaddedNeighbors
from mlip_md.model.layers import BlockState, exponent_floor, gather_neighbors, output_gradients


class LayerTerms(NamedTuple):
    """The T-independent coefficients of one interaction block (see the module docstring).

    The block's atom-wise part, y = f_L(W_L ⋯ f_1(W_1 f_0(p))) (the interaction
    activation and the dense layers), acts on tangents through two per-atom
    matrices: ẏ = J ṗ, and ∂E/∂p's tangent is Jᵀ (∂E/∂y)˙ + Q ṗ (see
    :func:`atom_block_terms`).
    """

    jacobian: torch.Tensor  # [N, F_out, F_out] J = ∂y/∂p
    curvature: torch.Tensor  # [N, F_out, F_out] Q = ∂²(g · y)/∂p², g = ∂E/∂y held fixed
    self_weight: torch.Tensor  # [F_out, F_in] W
    radial: torch.Tensor  # [N, K, F_out] R
    forward_weights: torch.Tensor  # [U; −u⊗M] per slot or per pair (see neighbor_weights); empty for the first layer
    reverse_weights: torch.Tensor  # Uᵀ per slot or per pair (see neighbor_weights); empty for the first layer
    incoming: torch.Tensor  # [N, 3, F_in] Σ_{(i,k) → j} u_ik ⊗ M_ik at atom j; empty for the first layer
    neighbor: torch.Tensor  # [N, K, F_in] P; empty for the first layer


def atom_block_terms(
    weights: List[torch.Tensor],
    derivatives: List[torch.Tensor],
    second_derivatives: List[torch.Tensor],
    output_gradients: List[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """J ``[N, F, F]`` and Q ``[N, F, F]`` of y = f_L(W_L ⋯ f_1(W_1 f_0(p))).

    Activation k has f'(x_k), f''(x_k) ``[N, F]`` at its input x_k (x_0 = p,
    x_k = W_k y_{k−1} + c_k) and ∂E/∂y_k ``[N, F]``; ``weights`` are W_1 … W_L.
    With A_k = ∂x_k/∂p: Q = Σ_k A_kᵀ diag(∂E/∂y_k ⊙ f''(x_k)) A_k and J = diag(f'(x_L)) A_L.
    """
    n_atoms, width = derivatives[0].shape
    identity = torch.eye(width, dtype=derivatives[0].dtype, device=derivatives[0].device)
    pre_jacobian = identity.expand(n_atoms, width, width)  # A_0
    jacobian = pre_jacobian
    curvature = torch.zeros(n_atoms, width, width, dtype=identity.dtype, device=identity.device)
    for k in range(len(derivatives)):
        if k > 0:
            pre_jacobian = torch.matmul(weights[k - 1], jacobian)
        weighted = (output_gradients[k] * second_derivatives[k]).unsqueeze(-1) * pre_jacobian
        curvature = curvature + torch.bmm(pre_jacobian.transpose(1, 2), weighted)
        jacobian = derivatives[k].unsqueeze(-1) * pre_jacobian
    return jacobian, curvature


def radial_slopes(distances: torch.Tensor, cutoff: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """First and second derivatives by r of (1/r², 1/r, 1, log φ_cut(r)), each ``[4, ...]``.

    log φ_cut = log cos²(a r), a = π/(2 r_cut): slope −2a tan(a r), curvature
    −2a²/cos²(a r) inside the cutoff, 0 beyond (see
    :func:`mlip_md.model.graph.log_cutoff_envelope`).
    """
    inverse = distances.reciprocal()
    inverse_squared = inverse * inverse
    scale = 0.5 * math.pi / cutoff
    inside = distances < cutoff
    tangent = torch.tan(scale * distances)
    zeros = torch.zeros_like(distances)
    envelope_slope = torch.where(inside, (-2.0 * scale) * tangent, zeros)
    envelope_curvature = torch.where(inside, (-2.0 * scale * scale) * (1.0 + tangent * tangent), zeros)
    slopes = torch.stack([-2.0 * inverse_squared * inverse, -inverse_squared, zeros, envelope_slope])
    curvatures = torch.stack([6.0 * inverse_squared * inverse_squared, 2.0 * inverse_squared * inverse, zeros,
                              envelope_curvature])
    return slopes, curvatures


def sensitivity_slopes(
    sensitivities: torch.Tensor, slopes: torch.Tensor, curvatures: torch.Tensor, coefficients: torch.Tensor,
    floor: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """w = ∂s/∂r and w2 = ∂²s/∂r², ``[N, K, S]``, of s = exp(Σ_t coefficients[t] · term_t(r)).

    ``slopes``/``curvatures`` from :func:`radial_slopes`, ``coefficients`` ``[4, S]``;
    sensitivities clamped at 2^``floor`` are constant: their w and w2 are 0.
    """
    slope = slopes.movedim(0, -1) @ coefficients  # [N, K, S] ∂exponent/∂r
    curvature = curvatures.movedim(0, -1) @ coefficients
    free = (sensitivities > 2.0**floor).to(sensitivities.dtype)
    weighted = sensitivities * free
    return weighted * slope, weighted * (slope * slope + curvature)


def distance_seeds(neighbors: torch.Tensor, unit_vectors: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """ḋ ``[N, K, 3 (last − first)]``: tangents of the slot distances for unit moves of atoms first..last−1.

    Tangent (m, c) moves atom m along axis c: ḋ_ik = u_ik[c] (δ_{n(i,k), m} − δ_{i, m}).
    ``unit_vectors`` ``[N, K, 3]`` is zero on padding slots, whose distance is fixed.
    """
    n_atoms, width = neighbors.shape
    moved = torch.arange(first, last, device=neighbors.device)
    as_neighbor = (neighbors.unsqueeze(-1) == moved).to(unit_vectors.dtype)  # [N, K, Mc]
    as_center = (torch.arange(n_atoms, device=neighbors.device).unsqueeze(1) == moved).to(unit_vectors.dtype)
    signs = as_neighbor - as_center.unsqueeze(1)  # [N, K, Mc]
    return (signs.unsqueeze(-1) * unit_vectors.unsqueeze(2)).view(n_atoms, width, -1)


def use_pair_matrices(n_atoms: int, width: int, n_features: int) -> bool:
    """Whether the neighbour products run on per-pair matrices (see :func:`neighbor_weights`).

    Per-pair matrices cost N·F × N·F per tangent against N·K·F² per slot, but
    as one plain matrix product with no gather, and they sum the images of a
    pair first: that pays while N ≤ 1.5 K (small molecules, small periodic
    cells), up to 2^24 elements (128 MB in float64).
    """
    return 2 * n_atoms <= 3 * width and (n_atoms * n_features) ** 2 <= 1 << 24


def neighbor_weights(
    stacked: torch.Tensor, neighbors: torch.Tensor, n_out: int, pair_matrices: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward and reverse weights of the neighbour products from per-slot blocks.

    ``stacked`` ``[N, K, R, F_in]``: for slot (i, k), U_ik in rows 0..F_out−1
    (``n_out`` = F_out) and further rows (−u_ik ⊗ M_ik). Per slot, the
    forward weights are ``[N, R, K·F_in]`` and the reverse ones (U_ikᵀ)
    ``[N, F_in, K·F_out]``, for the neighbours' tangents gathered slot by
    slot. With ``pair_matrices`` the slots of one pair of atoms (several
    periodic images) are summed first: ``[N·R, N·F_in]`` and ``[N·F_in, N·F_out]``.
    """
    n_atoms, width, rows, n_in = stacked.shape
    if not pair_matrices:
        forward = stacked.permute(0, 2, 1, 3).reshape(n_atoms, rows, width * n_in)
        reverse = stacked[:, :, :n_out].permute(0, 3, 1, 2).reshape(n_atoms, n_in, width * n_out)
        return forward, reverse
    centers = torch.arange(n_atoms, device=neighbors.device).unsqueeze(1).expand(n_atoms, width).reshape(-1)
    pairs = torch.zeros(n_atoms * n_atoms, rows * n_in, dtype=stacked.dtype, device=stacked.device)
    pairs = pairs.index_add_(0, centers * n_atoms + neighbors.reshape(-1), stacked.reshape(-1, rows * n_in))
    pairs = pairs.view(n_atoms, n_atoms, rows, n_in)  # [i, j, row, b]
    forward = pairs.permute(0, 2, 1, 3).reshape(n_atoms * rows, n_atoms * n_in)
    reverse = pairs[:, :, :n_out].permute(0, 3, 1, 2).reshape(n_atoms * n_in, n_atoms * n_out)
    return forward, reverse


def neighbor_terms(
    sensitivities: torch.Tensor,
    slope: torch.Tensor,
    weights: torch.Tensor,
    environment_gradient: torch.Tensor,
    neighbors: torch.Tensor,
    unit_vectors: torch.Tensor,
    pair_matrices: bool,
) -> Tuple[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The terms of a layer above the first that act on its input's tangents, and the
    neighbour part of ∂E/∂(input).

    From s and w ``[N, K, S]``, V ``[F_in · S, F_out]`` and G ``[N, F_in, S]``:
    ((forward weights, reverse weights, incoming, P) of :class:`LayerTerms`,
    Σ_k Σ_S s_ikS G_n(i,k)[·, S] ``[N, F_in]``).
    """
    n_atoms, width, n_sens = sensitivities.shape
    n_in, n_out = environment_gradient.shape[1], weights.shape[1]
    rearranged = weights.view(n_in, n_sens, n_out).permute(1, 2, 0).reshape(n_sens, n_out * n_in)
    products = (sensitivities.view(-1, n_sens) @ rearranged).view(n_atoms, width, n_out, n_in)  # U
    center = torch.bmm(slope, environment_gradient.transpose(1, 2))  # M, [N, K, F_in]
    moments = unit_vectors.unsqueeze(-1) * center.unsqueeze(2)  # u ⊗ M, [N, K, 3, F_in]
    flat_neighbors = neighbors.reshape(-1)
    incoming = torch.zeros(n_atoms, 3, n_in, dtype=moments.dtype, device=moments.device)
    incoming = incoming.index_add_(0, flat_neighbors, moments.view(-1, 3, n_in))
    forward, reverse = neighbor_weights(torch.cat([products, -moments], dim=2), neighbors, n_out, pair_matrices)
    neighbor_environment = environment_gradient.index_select(0, flat_neighbors).view(-1, n_in, n_sens)
    neighbor = torch.bmm(neighbor_environment, slope.view(-1, n_sens, 1)).view(n_atoms, width, n_in)  # P
    passed = torch.bmm(neighbor_environment, sensitivities.view(-1, n_sens, 1)).view(n_atoms, width, n_in).sum(1)
    return (forward, reverse, incoming, neighbor), passed


def block_terms(
    state: BlockState,
    gradient: torch.Tensor,
    neighbors: torch.Tensor,
    unit_vectors: torch.Tensor,
    radial_derivatives: Tuple[torch.Tensor, torch.Tensor],
    pair_matrices: bool,
) -> Tuple[LayerTerms, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's step of the reverse pass that collects the :class:`LayerTerms`.

    From the block's :class:`~mlip_md.model.layers.BlockState` (one block of
    rows, f'' saved), ∂E/∂(block output) ``gradient`` ``[N, F_out]`` and
    :func:`radial_slopes` of the distances: (the block's terms, ∂E/∂(block
    input) ``[N, F_in]`` (an empty tensor for the first block), its share of
    b = ∂E/∂d ``[N, K]`` and of Σ C ``[N, K]``).
    """
    sensitivities = state.sensitivities[0]  # [N, K, S]
    n_atoms, width, n_sens = sensitivities.shape
    inputs, weights = state.features, state.interaction_weights
    n_in, n_out = inputs.shape[1], weights.shape[1]
    slope, curvature = sensitivity_slopes(
        sensitivities, radial_derivatives[0], radial_derivatives[1], state.coefficients,
        exponent_floor(sensitivities.dtype),
    )
    gradients = output_gradients(state, gradient)  # ∂E/∂(output of each activation)
    jacobian, block_curvature = atom_block_terms(
        state.dense_weights, state.derivatives, state.second_derivatives, gradients
    )
    pre_gradient = gradients[0] * state.derivatives[0]  # [N, F_out]
    environment_gradient = (pre_gradient @ weights.t()).view(n_atoms, n_in, n_sens)  # G
    sensitivity_gradient = torch.bmm(gather_neighbors(inputs, neighbors), environment_gradient)  # [N, K, S]
    projected = (inputs @ weights.view(n_in, n_sens * n_out)).view(n_atoms, n_sens, n_out)
    radial = torch.bmm(
        slope.view(-1, 1, n_sens), projected.index_select(0, neighbors.reshape(-1)).view(-1, n_sens, n_out)
    ).view(n_atoms, width, n_out)
    empty = inputs.new_empty(0)
    forward_weights, reverse_weights, incoming, neighbor, input_gradient = empty, empty, empty, empty, empty
    if state.input_gradient:  # the first block's input, the one-hot, has no tangent
        (forward_weights, reverse_weights, incoming, neighbor), passed = neighbor_terms(
            sensitivities, slope, weights, environment_gradient, neighbors, unit_vectors, pair_matrices
        )
        input_gradient = pre_gradient @ state.self_weight + passed
    terms = LayerTerms(
        jacobian, block_curvature, state.self_weight, radial, forward_weights, reverse_weights, incoming, neighbor
    )
    return (terms, input_gradient, (sensitivity_gradient * slope).sum(-1),
            (sensitivity_gradient * curvature).sum(-1))


def tangent_terms(
    states: List[BlockState], graph: PaddedNeighbors, unit_vectors: torch.Tensor, cutoff: float,
    pair_matrices: bool,
) -> Tuple[List[LayerTerms], torch.Tensor, torch.Tensor]:
    """Per-block :class:`LayerTerms` (first block first), b = ∂E/∂d ``[N, K]`` and Σ_blocks C
    ``[N, K]`` of E = Σ_i E_i, by a reverse pass over the blocks' saved ``states``
    (one block of rows each, f'' saved; see :func:`block_terms`)."""
    neighbors = graph.neighbors
    radial_derivatives = radial_slopes(graph.distances, cutoff)
    layers: List[LayerTerms] = []
    gradient = torch.zeros(neighbors.shape[0], 1, dtype=graph.distances.dtype, device=graph.distances.device)
    distance_gradient = torch.zeros_like(graph.distances)
    curvature = torch.zeros_like(graph.distances)
    for level in range(len(states) - 1, -1, -1):
        state = states[level]
        terms, gradient, distance_part, curvature_part = block_terms(
            state, gradient + state.readout_weight, neighbors, unit_vectors, radial_derivatives, pair_matrices
        )
        layers.insert(0, terms)
        distance_gradient = distance_gradient + distance_part
        curvature = curvature + curvature_part
    return layers, distance_gradient, curvature


def _neighbor_product(weights: torch.Tensor, tangents: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """Σ over each atom's neighbour slots of ``weights`` (from :func:`neighbor_weights`) times the
    neighbours' ``tangents`` ``[N, F, T]`` → ``[N, R, T]``."""
    n_atoms, width = neighbors.shape
    n_tangents = tangents.shape[2]
    if weights.dim() == 2:  # per-pair matrices
        return (weights @ tangents.reshape(-1, n_tangents)).view(n_atoms, -1, n_tangents)
    gathered = tangents.index_select(0, neighbors.reshape(-1)).view(n_atoms, width * tangents.shape[1], n_tangents)
    return torch.bmm(weights, gathered)


def distance_gradient_tangents(
    layers: List[LayerTerms], curvature: torch.Tensor, neighbors: torch.Tensor, seeds: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tangents for distance tangents ``seeds`` ḋ ``[N, K, T]``: ḃ ``[N, K, T]`` of b = ∂E/∂d but
    for its M terms, and those terms' share of the Hessian columns ``[N, 3, T]``.

    ``curvature`` ``[N, K]`` is Σ_layers C. A forward pass carries ṗ and ż
    up the layers, a reverse pass ġ back down (see the module docstring).
    """
    n_atoms, width, n_tangents = seeds.shape
    columns = seeds.new_zeros(n_atoms, 3, n_tangents)
    # Forward: tangents ṗ of every layer's pre-activations.
    pre_tangents: List[torch.Tensor] = []
    features = seeds.new_empty(0)  # ż of the layer's input; the first layer's (the one-hot) is 0
    for level, layer in enumerate(layers):
        pre = torch.bmm(layer.radial.transpose(1, 2), seeds)  # [N, F_out, T]
        if level > 0:
            n_out = pre.shape[1]
            products = _neighbor_product(layer.forward_weights, features, neighbors)  # [N, F_out + 3, T]
            pre = pre + products[:, :n_out] + torch.matmul(layer.self_weight, features)
            columns = columns + products[:, n_out:] + torch.bmm(layer.incoming, features)
        pre_tangents.append(pre)
        features = torch.bmm(layer.jacobian, pre)
    # Reverse: tangents ġ of ∂E/∂p down the layers, collecting ḃ on the way.
    result = curvature.unsqueeze(-1) * seeds
    gradient = seeds.new_empty(0)  # tangent of ∂E/∂(block output); 0 at the top (the read-outs are fixed)
    for level in range(len(layers) - 1, -1, -1):
        layer = layers[level]
        pre = torch.bmm(layer.curvature, pre_tangents[level])
        if level < len(layers) - 1:
            pre = pre + torch.bmm(layer.jacobian.transpose(1, 2), gradient)
        result = result + torch.bmm(layer.radial, pre)
        if level > 0:
            gradient = (
                torch.bmm(layer.neighbor.transpose(1, 2), seeds)
                + _neighbor_product(layer.reverse_weights, pre, neighbors)
                + torch.matmul(layer.self_weight.t(), pre)
            )
    return result, columns


def assemble_columns(
    neighbors: torch.Tensor, unit_vectors: torch.Tensor, gradient_tangents: torch.Tensor
) -> torch.Tensor:
    """The ḃ part of the Hessian columns, ``[N, 3, T]``: Σ_slots ḃ (δ_{a j} − δ_{a i}) u."""
    n_atoms, width, n_tangents = gradient_tangents.shape
    outgoing = torch.bmm(unit_vectors.transpose(1, 2), gradient_tangents)  # [N, 3, T]
    products = unit_vectors.view(-1, 3, 1) * gradient_tangents.view(-1, 1, n_tangents)  # [N·K, 3, T]
    incoming = torch.zeros_like(outgoing).index_add_(0, neighbors.reshape(-1), products)
    return incoming - outgoing


def geometric_hessian(
    neighbors: torch.Tensor,
    occupied: torch.Tensor,
    distances: torch.Tensor,
    unit_vectors: torch.Tensor,
    distance_gradient: torch.Tensor,
) -> torch.Tensor:
    """Σ_slots b ∂²d/∂x∂x, ``[N, N, 3, 3]`` (atom, atom, axis, axis): the part of the
    Hessian from the turning of the unit vectors.

    ∂²d/∂x_j∂x_j = ∂²d/∂x_i∂x_i = −∂²d/∂x_i∂x_j = (I − u uᵀ)/d for slot (i, j).
    """
    n_atoms, width = neighbors.shape
    identity = torch.eye(3, dtype=unit_vectors.dtype, device=unit_vectors.device)
    scale = torch.where(occupied, distance_gradient / distances, torch.zeros_like(distances)).view(-1, 1, 1)
    units = unit_vectors.view(-1, 3)
    blocks = (scale * (identity - units.unsqueeze(2) * units.unsqueeze(1))).view(-1, 9)  # [N·K, 9]
    centers = torch.arange(n_atoms, device=neighbors.device).unsqueeze(1).expand(n_atoms, width).reshape(-1)
    others = neighbors.reshape(-1)
    index = torch.cat([centers * (n_atoms + 1), others * (n_atoms + 1), centers * n_atoms + others,
                       others * n_atoms + centers])
    values = torch.cat([blocks, blocks, -blocks, -blocks])
    hessian = torch.zeros(n_atoms * n_atoms, 9, dtype=blocks.dtype, device=blocks.device)
    return hessian.index_add_(0, index, values).view(n_atoms, n_atoms, 3, 3)


def position_hessian(
    layers: List[LayerTerms],
    distance_gradient: torch.Tensor,
    curvature: torch.Tensor,
    neighbors: torch.Tensor,
    occupied: torch.Tensor,
    distances: torch.Tensor,
    unit_vectors: torch.Tensor,
    tangent_budget: int = 1 << 21,
    min_chunk: int = 8,
) -> torch.Tensor:
    """∂²E/∂x∂x ``[3N, 3N]`` (row and column 3a + c: axis c of atom a).

    ``distance_gradient`` b ``[N, K]`` and ``curvature`` Σ C ``[N, K]`` come
    from the same pass as ``layers``. Atoms are moved in chunks whose
    largest tangent tensor, ``[N, K·F, T]``, holds about ``tangent_budget``
    elements, but at least ``min_chunk`` atoms (T = 3 per atom: fewer make
    the batched products too narrow to run fast).
    """
    n_atoms, width = neighbors.shape
    features = max([layer.jacobian.shape[1] for layer in layers])
    chunk = max(min_chunk, tangent_budget // max(1, 3 * n_atoms * width * features))
    hessian = geometric_hessian(neighbors, occupied, distances, unit_vectors, distance_gradient)
    hessian = hessian.permute(0, 2, 1, 3).contiguous()  # [N, 3, N, 3]
    for first in range(0, n_atoms, chunk):
        last = min(n_atoms, first + chunk)
        seeds = distance_seeds(neighbors, unit_vectors, first, last)
        tangents, columns = distance_gradient_tangents(layers, curvature, neighbors, seeds)
        columns = columns + assemble_columns(neighbors, unit_vectors, tangents)
        hessian[:, :, first:last, :] += columns.view(n_atoms, 3, last - first, 3)
    return hessian.view(3 * n_atoms, 3 * n_atoms)
