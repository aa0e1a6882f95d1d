"""Building blocks of HIP-NN: sensitivities and the interaction layer."""

import math
from typing import Optional, Tuple

import torch
from torch import nn

from mlip_md.model.graph import EXPONENT_FLOOR, FLOAT32_EXPONENT_FLOOR, LOG2_E, PaddedNeighbors


# Activations carry their first and second derivatives, written from the input
# x and the output y = f(x), for the hand-written reverse pass (see
# :meth:`mlip_md.model.hipnn.HIPNN.energies_and_distance_gradients`) and its
# tangents (:mod:`mlip_md.model.hessian`).


class Softplus(nn.Module):
    """softplus(x) = log(1 + eˣ); f' = sigmoid(x), f'' = σ(1 − σ).

    torch's fused op with its threshold (x above it is returned as is) at
    40, where log1p(e^−x) < 1e-17: exact to rounding in float32 and float64.
    Its double backward (training on forces) was measured 1.12x faster per
    training step than the composed max(x, 0) + log1p(e^−|x|), with equal gradients.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(x, 1.0, 40.0)

    def derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    def second_derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sigmoid = torch.sigmoid(x)
        return sigmoid * (1.0 - sigmoid)


class SiLU(nn.SiLU):
    """silu(x) = x·sigmoid(x); f' = σ(x)·(1 + x·(1 − σ(x))), f'' = σ(1 − σ)·(2 + x·(1 − 2σ))."""

    def derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sigmoid = torch.sigmoid(x)
        return sigmoid * (1.0 + x * (1.0 - sigmoid))

    def second_derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sigmoid = torch.sigmoid(x)
        return sigmoid * (1.0 - sigmoid) * (2.0 + x * (1.0 - 2.0 * sigmoid))


class Tanh(nn.Tanh):
    """tanh(x); f' = 1 − y², f'' = −2y(1 − y²)."""

    def derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.0 - y * y

    def second_derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -2.0 * y * (1.0 - y * y)


class CELU(nn.CELU):
    """celu(x) with α = 1: x above 0, eˣ − 1 below; f' = 1 above 0, y + 1 below; f'' = 0 above 0,
    y + 1 below (f'' jumps at 0: the Hessian is discontinuous there)."""

    def __init__(self):
        super().__init__(alpha=1.0)

    def derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, torch.ones_like(x), y + 1.0)

    def second_derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, torch.zeros_like(x), y + 1.0)


ACTIVATIONS = {"softplus": Softplus, "silu": SiLU, "tanh": Tanh, "celu": CELU}


def make_activation(name: str) -> nn.Module:
    """Returns a fresh activation module by name; errors list the valid names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def exponent_floor(
    dtype: torch.dtype, float64_floor: float = EXPONENT_FLOOR, float32_floor: float = FLOAT32_EXPONENT_FLOOR
) -> float:
    """The base-2 exponent floor of the sensitivities for ``dtype`` (see :mod:`mlip_md.model.graph`)."""
    return float32_floor if dtype == torch.float32 else float64_floor


def sensitivities_from(radial_terms: torch.Tensor, coefficients: torch.Tensor, log2_e: float = LOG2_E) -> torch.Tensor:
    """Sensitivities ``[..., K, n_sens]`` from ``radial_terms`` ``[4, ..., K]`` and ``coefficients`` ``[4, n_sens]``.

    All exponents come from one small matrix product followed by one
    exponential: the fewest ``[..., K, n_sens]`` temporaries, which is what
    costs time. The exponential is taken in base 2 (torch's exp2 is 2.5–3.5x
    faster than its exp on CPUs): s = 2^(exponent · log2 e), the base-2
    exponent clamped at :func:`exponent_floor` of the dtype.
    """
    floor = exponent_floor(radial_terms.dtype)
    exponents = radial_terms.movedim(0, -1) @ (coefficients * log2_e)  # a transposed operand, no copy
    if not exponents.requires_grad:
        # In place: one [..., K, n_sens] buffer instead of three (less cache traffic).
        return exponents.clamp_min_(floor).exp2_()
    # threshold == clamp_min here; its eager-autograd backward (training) is ~3x faster.
    return torch.exp2(nn.functional.threshold(exponents, floor, floor))


def gather_neighbors(features: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """Rows of ``features`` ``[N, F]`` for each neighbour slot ``[B, K]`` → ``[B, K, F]``."""
    n_block, width = neighbors.shape
    if features.requires_grad:
        # Under autograd torch.gather: its backward (a scatter-add) is fast in eager mode.
        index = neighbors.reshape(-1, 1).expand(-1, features.shape[1])
        return torch.gather(features, 0, index).view(n_block, width, features.shape[1])
    # Otherwise index_select, the fastest forward gather.
    return features.index_select(0, neighbors.reshape(-1)).view(n_block, width, features.shape[1])


def masked_sums(n_in: int, under_autograd: bool) -> bool:
    """Whether a neighbour sum over ``n_in`` input features takes one masked sum per feature.

    For narrow inputs (up to 4: the species one-hot of the first layer) under
    autograd, a batched product with an inner size this small has a slow
    backward and masked sums are faster; without autograd the batched product is.
    """
    return n_in <= 4 and under_autograd


def neighbor_sum(sensitivities: torch.Tensor, neighbor_features: torch.Tensor) -> torch.Tensor:
    """Σ_k s[i, k, ν] z[i, k, b]: ``[B, K, n_sens]``, ``[B, K, n_in]`` → ``[B, n_in, n_sens]``."""
    n_in = neighbor_features.shape[2]
    if masked_sums(n_in, sensitivities.requires_grad or neighbor_features.requires_grad):
        columns = [(sensitivities * neighbor_features[:, :, b : b + 1]).sum(1) for b in range(n_in)]
        return torch.stack(columns, dim=1)
    # Oriented so that the gradient of the sensitivities comes out contiguous.
    return torch.bmm(neighbor_features.transpose(1, 2), sensitivities)


def neighbor_sum_reverse(environment_gradient: torch.Tensor, neighbor_features: torch.Tensor) -> torch.Tensor:
    """∂E/∂sensitivities ``[B, K, n_sens]`` from ∂E/∂environment ``[B, n_in, n_sens]`` (reverse of
    :func:`neighbor_sum`)."""
    n_in = neighbor_features.shape[2]
    if masked_sums(n_in, environment_gradient.requires_grad or neighbor_features.requires_grad):
        gradient = neighbor_features[:, :, 0:1] * environment_gradient[:, 0:1, :]
        for b in range(1, n_in):
            gradient = gradient + neighbor_features[:, :, b : b + 1] * environment_gradient[:, b : b + 1, :]
        return gradient
    return torch.bmm(neighbor_features, environment_gradient)


class InverseSensitivity(nn.Module):
    """HIP-NN sensitivities: Gaussians in inverse distance times the cutoff envelope.

    s_ν(r) = exp(-(1/r − 1/μ_ν)² / (2 σ_ν²)) · φ_cut(r)

    The centres 1/μ_ν start evenly spaced in 1/r between 1/dist_soft_max and
    1/dist_soft_min, the widths σ_ν (Å⁻¹) equal to that spacing; both are
    trained. φ_cut is :func:`mlip_md.model.graph.log_cutoff_envelope`'s cos².
    """

    def __init__(self, n_sensitivities: int, dist_soft_min: float, dist_soft_max: float, cutoff: float):
        super().__init__()
        if not 0 < dist_soft_min < dist_soft_max <= cutoff:
            raise ValueError(
                "need 0 < dist_soft_min < dist_soft_max <= cutoff, got "
                f"{dist_soft_min}, {dist_soft_max}, {cutoff}"
            )
        if n_sensitivities < 2:
            raise ValueError(f"n_sensitivities must be at least 2, got {n_sensitivities}")
        inverse_centers = torch.linspace(1.0 / dist_soft_max, 1.0 / dist_soft_min, n_sensitivities)
        spacing = (1.0 / dist_soft_min - 1.0 / dist_soft_max) / (n_sensitivities - 1)
        self.inverse_centers = nn.Parameter(inverse_centers)  # [n_sens], 1/Å
        self.widths = nn.Parameter(torch.full((n_sensitivities,), spacing))  # [n_sens], 1/Å

    def coefficients(self) -> torch.Tensor:
        """``[4, n_sens]``: the exponent of s_ν is (1/r², 1/r, 1, log φ_cut) · ``coefficients[:, ν]``.

        −(u − c)²/(2σ²) + log φ_cut, u = 1/r, expanded as a u² + b u + d + log φ_cut.
        """
        precision = self.widths.reciprocal().square()  # [n_sens]
        centers = self.inverse_centers
        return torch.stack(
            [-0.5 * precision, centers * precision, -0.5 * centers * centers * precision, torch.ones_like(centers)]
        )

    def forward(self, radial_terms: torch.Tensor) -> torch.Tensor:
        """``radial_terms`` ``[4, ..., K]`` (1/r², 1/r, 1, log φ_cut) → ``[..., K, n_sens]``."""
        return sensitivities_from(radial_terms, self.coefficients())

    def extra_repr(self) -> str:
        return f"n_sensitivities={self.inverse_centers.shape[0]}"


class Interaction(nn.Module):
    """HIP-NN interaction layer.

    z'_i = f( Σ_{ν,b} V_{ν,b,a} Σ_j s_ν(r_ij) z_{j,b} + W z_i + c )
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_sensitivities: int,
        dist_soft_min: float,
        dist_soft_max: float,
        cutoff: float,
        activation: str,
    ):
        super().__init__()
        self.sensitivity = InverseSensitivity(n_sensitivities, dist_soft_min, dist_soft_max, cutoff)
        # V flattened over (b, ν) so that the neighbour sum feeds one matmul.
        scale = 1.0 / math.sqrt(n_sensitivities * n_in)
        self.interaction_weights = nn.Parameter(torch.randn(n_sensitivities * n_in, n_out) * scale)
        self.self_interaction = nn.Linear(n_in, n_out)
        self.activation = make_activation(activation)

    def pre_activation(
        self,
        features: torch.Tensor,
        neighbors: torch.Tensor,
        radial_terms: torch.Tensor,
        own_features: torch.Tensor,
        coefficients: torch.Tensor,
        uniform_input: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pre-activation ``[B, n_out]`` and sensitivities ``[B, K, n_sens]`` of B atoms
        (a block of rows of the padded layout).

        ``features`` ``[N, n_in]`` of all atoms, ``neighbors`` ``[B, K]`` and
        ``radial_terms`` ``[4, B, K]`` of the block, ``own_features`` ``[B, n_in]``,
        ``coefficients`` this layer's ``self.sensitivity.coefficients()`` (computed
        once by the caller, not once per block). ``uniform_input``: every input
        feature is 1 (n_in = 1: the first layer of a one-species model), so the
        neighbour sum is the sum of the sensitivities and nothing is gathered.
        """
        sensitivities = sensitivities_from(radial_terms, coefficients)  # [B, K, n_sens]
        if uniform_input:
            environment = sensitivities.sum(1, keepdim=True)  # [B, 1, n_sens]
        else:
            environment = neighbor_sum(sensitivities, gather_neighbors(features, neighbors))  # [B, n_in, n_sens]
        interaction = environment.reshape(neighbors.shape[0], -1) @ self.interaction_weights  # [B, n_out]
        return interaction + self.self_interaction(own_features), sensitivities

    def forward(self, features: torch.Tensor, graph: PaddedNeighbors) -> torch.Tensor:
        """``features`` ``[N, n_in]`` → ``[N, n_out]``."""
        coefficients = self.sensitivity.coefficients()
        return self.activation(
            self.pre_activation(features, graph.neighbors, graph.radial_terms, features, coefficients)[0]
        )


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
    :meth:`InverseSensitivity.coefficients` c ``[4, n_sens]``:
    Σ_ν c[t, ν] s[k, ν] Σ_b z[k, b] g[b, ν]. The log2 e of the base-2
    exponent cancels the ln 2 of d2^x/dx. Row 2 (the constant term) has no
    use; it comes along because MKL multiplies 4 rows 1.4–2x faster than 3.
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
    # Computed transposed: ~2.5x faster than products @ coefficients.t().
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
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reverse pass of the neighbour part of :meth:`Interaction.pre_activation` for the
    block of B atoms from ``start``.

    Args:
        pre_gradient: ∂E/∂pre-activation ``[N, n_out]`` of all atoms.
        features: the layer's input features ``[N, n_in]``.
        neighbors, sensitivities: the block's ``[B, K]`` and ``[B, K, n_sens]``.
        interaction_weights: V ``[n_in · n_sens, n_out]``;
        transposed_weights: from :func:`reverse_weights`;
        radial_coefficients: the layer's :meth:`InverseSensitivity.coefficients`.
        input_gradient: also return ∂E/∂features of the block's atoms.
        uniform_input: every input feature is 1, as in :meth:`Interaction.pre_activation`.

    Returns ∂E/∂(1/r², 1/r, 1, log φ_cut) ``[4, B, K]`` and, if ``input_gradient``,
    the neighbour-sum part of ∂E/∂features ``[B, n_in]`` (else an empty tensor).
    The latter uses the symmetry of the full neighbour list: atom j receives
    Σ_i s(r_ij) ∂E/∂(environment of i) over the atoms i that list j, and
    these are the atoms j lists, at the same distances. So it is again a
    neighbour sum, over j's own row, with no scatter.

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
    if not input_gradient:
        return radial_gradient, torch.empty(0, dtype=features.dtype, device=features.device)
    environments = neighbor_sum(sensitivities, gather_neighbors(pre_gradient, neighbors))  # [B, n_out, n_sens]
    return radial_gradient, environments.reshape(n_block, -1) @ transposed_weights
