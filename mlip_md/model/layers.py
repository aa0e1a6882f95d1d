"""Building blocks of HIP-NN: sensitivities and the interaction layer."""

import math

import torch
from torch import nn

from mlip_md.model.graph import PaddedNeighbors

ACTIVATIONS = {"softplus": nn.Softplus, "silu": nn.SiLU, "tanh": nn.Tanh, "celu": nn.CELU}


def make_activation(name: str) -> nn.Module:
    """Returns a fresh activation module by name; errors list the valid names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class InverseSensitivity(nn.Module):
    """Gaussian sensitivities in inverse distance (without the cutoff factor).

    g_ν(r) = exp(-(1/r − 1/μ_ν)² / (2 σ_ν²)); the full HIP-NN sensitivity is
    s_ν(r) = g_ν(r) · φ_cut(r) with φ_cut from
    :func:`mlip_md.model.graph.cutoff_envelope`, applied in :class:`Interaction`.

    The centres 1/μ_ν start evenly spaced in 1/r between 1/dist_soft_max and
    1/dist_soft_min, the widths σ_ν (Å⁻¹) equal to that spacing; both are
    trained.
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

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        """``distances`` ``[N, K]`` in Å → Gaussians ``[N, K, n_sens]``.

        The Gaussian exponent is expanded as a quadratic in u = 1/r,
        −(u − c)²/(2σ²) = a u² + b u + d, so that all ``n_sens`` exponents come
        from one small matrix product: far fewer ``[N, K, n_sens]``
        temporaries than the broadcast form, which is what costs time here.
        """
        inverse = distances.reciprocal()  # [N, K]
        powers = torch.stack([inverse * inverse, inverse, torch.ones_like(inverse)], dim=-1)  # [N, K, 3]
        precision = self.widths.reciprocal().square()  # [n_sens]
        centers = self.inverse_centers
        coefficients = torch.stack(
            [-0.5 * precision, centers * precision, -0.5 * centers * centers * precision]
        )  # [3, n_sens]
        # Exponents below -80 are clamped: exp(-80) ≈ 2e-35 is zero for all
        # purposes, and exp of underflowing inputs is ~10x slower on CPUs.
        return torch.exp(torch.clamp_min(powers @ coefficients, -80.0))

    def extra_repr(self) -> str:
        return f"n_sensitivities={self.inverse_centers.shape[0]}"


class Interaction(nn.Module):
    """HIP-NN interaction layer.

    z'_i = f( Σ_{ν,b} V_{ν,b,a} Σ_j s_ν(r_ij) z_{j,b} + W z_i + c ),
    s_ν(r) = g_ν(r) · φ_cut(r).

    The cutoff factor multiplies the neighbour features rather than the
    ``[N, K, n_sens]`` Gaussians: the same sum, fewer large temporaries.
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
        # V flattened over (ν, b) so that the neighbour sum feeds one matmul.
        scale = 1.0 / math.sqrt(n_sensitivities * n_in)
        self.interaction_weights = nn.Parameter(torch.randn(n_sensitivities * n_in, n_out) * scale)
        self.self_interaction = nn.Linear(n_in, n_out)
        self.activation = make_activation(activation)

    def forward(self, features: torch.Tensor, graph: PaddedNeighbors) -> torch.Tensor:
        """``features`` ``[N, n_in]`` → ``[N, n_out]``."""
        n_atoms, width = graph.neighbors.shape
        gaussians = self.sensitivity(graph.distances)  # [N, K, n_sens]
        neighbor_features = features.index_select(0, graph.neighbors.reshape(-1))
        neighbor_features = neighbor_features.view(n_atoms, width, features.shape[1])  # [N, K, n_in]
        neighbor_features = neighbor_features * graph.envelope.unsqueeze(-1)
        environment = torch.bmm(gaussians.transpose(1, 2), neighbor_features)  # [N, n_sens, n_in]
        interaction = environment.reshape(n_atoms, -1) @ self.interaction_weights  # [N, n_out]
        return self.activation(interaction + self.self_interaction(features))
