"""Building blocks of HIP-NN: sensitivities and the interaction layer."""

import math

import torch
from torch import nn

from mlip_md.model.graph import EXPONENT_FLOOR, PaddedNeighbors

ACTIVATIONS = {"softplus": nn.Softplus, "silu": nn.SiLU, "tanh": nn.Tanh, "celu": nn.CELU}


def make_activation(name: str) -> nn.Module:
    """Returns a fresh activation module by name; errors list the valid names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


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
        self.exponent_floor = EXPONENT_FLOOR

    def forward(self, radial_terms: torch.Tensor) -> torch.Tensor:
        """``radial_terms`` ``[N, K, 4]`` (1/r², 1/r, 1, log φ_cut) → ``[N, K, n_sens]``.

        The exponent −(u − c)²/(2σ²) + log φ_cut, u = 1/r, is expanded as
        a u² + b u + d + log φ_cut, so all ``n_sens`` exponents come from one
        small matrix product followed by one exp: the fewest ``[N, K, n_sens]``
        temporaries, which is what costs time here.
        """
        precision = self.widths.reciprocal().square()  # [n_sens]
        centers = self.inverse_centers
        coefficients = torch.stack(
            [-0.5 * precision, centers * precision, -0.5 * centers * centers * precision, torch.ones_like(centers)]
        )  # [4, n_sens]
        exponents = radial_terms @ coefficients  # [N, K, n_sens]
        # threshold == clamp_min here; its eager-autograd backward (training)
        # is ~3x faster.
        return torch.exp(nn.functional.threshold(exponents, self.exponent_floor, self.exponent_floor))

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

    def forward(self, features: torch.Tensor, graph: PaddedNeighbors) -> torch.Tensor:
        """``features`` ``[N, n_in]`` → ``[N, n_out]``."""
        n_atoms, width = graph.neighbors.shape
        sensitivities = self.sensitivity(graph.radial_terms)  # [N, K, n_sens]
        # Advanced indexing rather than index_select: in eager autograd
        # (training) its backward is ~2x faster than index_select's.
        neighbor_features = features[graph.neighbors]  # [N, K, n_in]
        if features.shape[1] <= 4:
            # Narrow inputs (the species one-hot of the first layer): a batched
            # product with an inner size this small is slow, above all its
            # backward; a masked sum per input feature is not.
            columns = [(sensitivities * neighbor_features[:, :, b : b + 1]).sum(1) for b in range(features.shape[1])]
            environment = torch.stack(columns, dim=1)  # [N, n_in, n_sens]
        else:
            # Oriented so that the gradient of the sensitivities comes out contiguous.
            environment = torch.bmm(neighbor_features.transpose(1, 2), sensitivities)  # [N, n_in, n_sens]
        interaction = environment.reshape(n_atoms, -1) @ self.interaction_weights  # [N, n_out]
        return self.activation(interaction + self.self_interaction(features))
