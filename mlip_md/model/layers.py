"""Building blocks of HIP-NN: activations, sensitivities, the interaction layer and the block."""

import math
from typing import List, NamedTuple, Tuple

import torch
from torch import nn

from mlip_md.model.graph import EXPONENT_FLOOR, FLOAT32_EXPONENT_FLOOR, LOG2_E, PaddedNeighbors


class Activation(nn.Module):
    """A smooth activation y = f(x) that also gives f'(x) and f''(x), written from x and y.

    The hand-written reverse pass (:mod:`mlip_md.model.reverse`) takes f', its
    tangents (:mod:`mlip_md.model.hessian`) f' and f''.
    """

    def derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def second_derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def saving(
        self, x: torch.Tensor, derivatives: List[torch.Tensor], second_derivatives: List[torch.Tensor], second: bool
    ) -> torch.Tensor:
        """y = f(x), appending f'(x) to ``derivatives`` and, if ``second``, f''(x) to ``second_derivatives``."""
        y = self.forward(x)
        derivatives.append(self.derivative(x, y))
        if second:
            second_derivatives.append(self.second_derivative(x, y))
        return y


class Softplus(Activation):
    """softplus(x) = log(1 + eˣ); f' = sigmoid(x), f'' = σ(1 − σ).

    torch's fused op with its threshold (x above it is returned as is) at
    40, where log1p(e^−x) < 1e-17: exact to rounding in float32 and float64.
    Fused rather than composed as max(x, 0) + log1p(e^−|x|): its double
    backward (training on forces) is faster, with equal gradients.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(x, 1.0, 40.0)

    def derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    def second_derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sigmoid = torch.sigmoid(x)
        return sigmoid * (1.0 - sigmoid)


class SiLU(Activation):
    """silu(x) = x·sigmoid(x); f' = σ(x)·(1 + x·(1 − σ(x))), f'' = σ(1 − σ)·(2 + x·(1 − 2σ))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(x)

    def derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sigmoid = torch.sigmoid(x)
        return sigmoid * (1.0 + x * (1.0 - sigmoid))

    def second_derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sigmoid = torch.sigmoid(x)
        return sigmoid * (1.0 - sigmoid) * (2.0 + x * (1.0 - 2.0 * sigmoid))


class Tanh(Activation):
    """tanh(x); f' = 1 − y², f'' = −2y(1 − y²)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1.0 - y * y

    def second_derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -2.0 * y * (1.0 - y * y)


class CELU(Activation):
    """celu(x) with α = 1: x above 0, eˣ − 1 below; f' = 1 above 0, y + 1 below; f'' = 0 above 0,
    y + 1 below (f'' jumps at 0: the Hessian is discontinuous there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.celu(x, 1.0)

    def derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, torch.ones_like(x), y + 1.0)

    def second_derivative(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, torch.zeros_like(x), y + 1.0)


ACTIVATIONS = {"softplus": Softplus, "silu": SiLU, "tanh": Tanh, "celu": CELU}


def make_activation(name: str) -> Activation:
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
    costs time. The exponential is taken in base 2, where torch's CPU kernel
    is faster than its exp: s = 2^(exponent · log2 e), the base-2 exponent
    clamped at :func:`exponent_floor` of the dtype.
    """
    floor = exponent_floor(radial_terms.dtype)
    exponents = radial_terms.movedim(0, -1) @ (coefficients * log2_e)  # a transposed operand, no copy
    if not exponents.requires_grad:
        # In place: one [..., K, n_sens] buffer instead of three (less cache traffic).
        return exponents.clamp_min_(floor).exp2_()
    # threshold == clamp_min here, with a faster eager-autograd backward (training).
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
    trained, the widths as log σ_ν: Adam moves every parameter by about the
    learning rate per step, which for σ_ν itself (a few hundredths of an Å⁻¹)
    is several percent, and widths trained directly collapsed towards zero
    (1/σ² ~ 10¹², where the exponent's expanded form below loses every digit
    in float32 and gave NaN energies). φ_cut is
    :func:`mlip_md.model.graph.log_cutoff_envelope`'s cos².
    """

    __jit_unused_properties__ = ["widths"]

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
        self.log_widths = nn.Parameter(torch.full((n_sensitivities,), math.log(spacing)))  # [n_sens], log(1/Å)

    @property
    def widths(self) -> torch.Tensor:
        """σ_ν ``[n_sens]`` in 1/Å."""
        return self.log_widths.exp()

    def coefficients(self) -> torch.Tensor:
        """``[4, n_sens]``: the exponent of s_ν is (1/r², 1/r, 1, log φ_cut) · ``coefficients[:, ν]``.

        −(u − c)²/(2σ²) + log φ_cut, u = 1/r, expanded as a u² + b u + d + log φ_cut.
        """
        precision = torch.exp(-2.0 * self.log_widths)  # 1/σ², [n_sens]
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

    def blocked_pre_activation(
        self, features: torch.Tensor, graph: PaddedNeighbors, rows: int, coefficients: torch.Tensor,
        uniform_input: bool,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """:meth:`pre_activation` ``[R, n_out]`` of the R atoms that have rows in ``graph`` (all N
        atoms, or the first R: see :mod:`mlip_md.model.layered`), computed on blocks of ``rows``
        atoms, and the sensitivities ``[B, K, n_sens]`` of each block, kept for the reverse pass."""
        pre_blocks: List[torch.Tensor] = []
        sensitivity_blocks: List[torch.Tensor] = []
        n_rows = graph.neighbors.shape[0]
        for start in range(0, n_rows, rows):
            stop = min(start + rows, n_rows)
            block_pre, block_sensitivities = self.pre_activation(
                features, graph.neighbors[start:stop], graph.radial_terms[:, start:stop],
                features[start:stop], coefficients, uniform_input,
            )
            pre_blocks.append(block_pre)
            sensitivity_blocks.append(block_sensitivities)
        return torch.cat(pre_blocks), sensitivity_blocks


class Dense(nn.Module):
    """An atom-wise layer y = f(W x + c), ``[N, F]`` → ``[N, F]``."""

    def __init__(self, n_features: int, activation: str):
        super().__init__()
        self.linear = nn.Linear(n_features, n_features)
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))


class BlockState(NamedTuple):
    """What the reverse (forces) and tangent (Hessian) passes keep of one block's forward pass.

    The block's atom-wise part is y = f_L(W_L ⋯ f_1(W_1 f_0(p))): p the
    interaction layer's pre-activation, f_0 its activation, W_k and f_k the
    dense layers; x_0 = p and x_k = W_k y_{k−1} + c_k are the activations' inputs.
    """

    features: torch.Tensor  # [N, F_in] z, the interaction layer's input
    sensitivities: List[torch.Tensor]  # [B, K, S] of each block of rows of the padded layout
    coefficients: torch.Tensor  # [4, S] InverseSensitivity.coefficients()
    interaction_weights: torch.Tensor  # [F_in · S, F_out] V
    self_weight: torch.Tensor  # [F_out, F_in] W
    dense_weights: List[torch.Tensor]  # [F_out, F_out] W_1 … W_L
    derivatives: List[torch.Tensor]  # [N, F_out] f'_k(x_k), k = 0 … L
    second_derivatives: List[torch.Tensor]  # [N, F_out] f''_k(x_k), k = 0 … L; empty unless asked for
    readout_weight: torch.Tensor  # [1, F_out] w of the level's energy read-out
    input_gradient: bool  # whether ∂E/∂z is wanted: False for the species one-hot of the first block
    uniform_input: bool  # z is 1 everywhere (see Interaction.pre_activation)


class InteractionBlock(nn.Module):
    """One hierarchy level: an interaction layer, ``n_atom_layers`` :class:`Dense` layers and
    the level's linear energy read-out.

    ``first``: the block whose input is the species one-hot (``n_in`` wide).
    """

    def __init__(
        self,
        n_in: int,
        n_features: int,
        n_sensitivities: int,
        n_atom_layers: int,
        dist_soft_min: float,
        dist_soft_max: float,
        cutoff: float,
        activation: str,
        first: bool,
    ):
        super().__init__()
        self.interaction = Interaction(
            n_in, n_features, n_sensitivities, dist_soft_min, dist_soft_max, cutoff, activation
        )
        self.dense = nn.ModuleList([Dense(n_features, activation) for _ in range(n_atom_layers)])
        self.readout = nn.Linear(n_features, 1, bias=False)
        self.input_gradient = not first
        # The one-hot of a one-species model is 1 everywhere.
        self.uniform_input = first and n_in == 1

    def forward(self, features: torch.Tensor, graph: PaddedNeighbors) -> torch.Tensor:
        """``features`` ``[N, n_in]`` → the block's output features ``[N, n_features]``."""
        features = self.interaction(features, graph)
        for layer in self.dense:
            features = layer(features)
        return features

    def energies(self, features: torch.Tensor) -> torch.Tensor:
        """The level's per-atom energies ``[N]`` (eV) from the block's output ``features``."""
        return self.readout(features).squeeze(-1)

    def forward_saving(
        self, features: torch.Tensor, graph: PaddedNeighbors, rows: int, second: bool
    ) -> Tuple[torch.Tensor, BlockState]:
        """:meth:`forward` on blocks of ``rows`` atoms, with the :class:`BlockState` of the pass
        (f'' too if ``second``)."""
        interaction = self.interaction
        coefficients = interaction.sensitivity.coefficients()
        pre, sensitivities = interaction.blocked_pre_activation(
            features, graph, rows, coefficients, self.uniform_input
        )
        derivatives: List[torch.Tensor] = []
        second_derivatives: List[torch.Tensor] = []
        output = interaction.activation.saving(pre, derivatives, second_derivatives, second)
        dense_weights: List[torch.Tensor] = []
        for layer in self.dense:
            dense_weights.append(layer.linear.weight)
            output = layer.activation.saving(layer.linear(output), derivatives, second_derivatives, second)
        state = BlockState(
            features, sensitivities, coefficients, interaction.interaction_weights,
            interaction.self_interaction.weight, dense_weights, derivatives, second_derivatives,
            self.readout.weight, self.input_gradient, self.uniform_input,
        )
        return output, state


def output_gradients(state: BlockState, gradient: torch.Tensor) -> List[torch.Tensor]:
    """∂E/∂y_k ``[N, F_out]`` of every activation of a block, k = 0 … L, from ∂E/∂y_L
    ``gradient`` (see :class:`BlockState`): the reverse pass through its dense layers."""
    gradients = [gradient]
    for k in range(len(state.dense_weights) - 1, -1, -1):
        gradient = (gradient * state.derivatives[k + 1]) @ state.dense_weights[k]
        gradients.insert(0, gradient)
    return gradients
