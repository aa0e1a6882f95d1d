"""HIP-NN: Hierarchically Interacting Particle Neural Network.

Lubbers, Smith & Barros, J. Chem. Phys. 148, 241715 (2018).

The network maps a species one-hot ``z⁰`` through ``n_interactions`` blocks,
each an interaction layer followed by ``n_atom_layers`` dense layers. Every
level ``n`` (0 = the one-hot, n ≥ 1 = the output of block n) has a linear
energy read-out; the per-atom energy is the sum over levels,

    E_i = Σ_n E_i⁽ⁿ⁾,   E_i⁽⁰⁾ = e_ref[species_i],   E_i⁽ⁿ⁾ = w_n · z_i⁽ⁿ⁾.

The level-0 terms are the per-species reference energies (eV), normally fit
by least squares on the training set before training the rest.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from mlip_md.model.graph import PaddedNeighbors, distance_gradient, edge_lengths, pad_neighbors
from mlip_md.model.hessian import (
    LayerTerms,
    atom_block_terms,
    neighbor_terms,
    position_hessian,
    radial_slopes,
    sensitivity_slopes,
    use_pair_matrices,
)
from mlip_md.model.layers import (
    Interaction,
    exponent_floor,
    gather_neighbors,
    interaction_reverse,
    make_activation,
    reverse_weights,
    sensitivities_from,
)
from mlip_md.species import validate_species


class HIPNN(nn.Module):
    """A HIP-NN potential.

    Args:
        species: element symbols the model knows, e.g. ``["Al", "Cu"]``; their
            order defines the species index used in the model's inputs.
        n_interactions: number of interaction blocks (default 2).
        n_features: width of the hidden atom features (default 20).
        n_sensitivities: Gaussian sensitivities per interaction layer (default 20).
        n_atom_layers: dense layers after each interaction layer (default 3).
        cutoff: pair cutoff radius r_cut in Å (default 6.0).
        dist_soft_min: smallest sensitivity centre in Å (default 0.85).
        dist_soft_max: largest sensitivity centre in Å (default 0.8 · cutoff).
        activation: ``"softplus"`` (default, as in the paper), ``"silu"``,
            ``"celu"`` or ``"tanh"``; smooth, so forces and Hessians exist.

    ``forward(species [N], edge_index [2, E], edge_vectors [E, 3])`` returns
    per-atom energies ``[N]`` in eV; see :mod:`mlip_md.contract` for the edge
    convention.
    """

    __jit_ignored_attributes__ = ["config"]

    def __init__(
        self,
        species: List[str],
        n_interactions: int = 2,
        n_features: int = 20,
        n_sensitivities: int = 20,
        n_atom_layers: int = 3,
        cutoff: float = 6.0,
        dist_soft_min: float = 0.85,
        dist_soft_max: Optional[float] = None,
        activation: str = "softplus",
    ):
        super().__init__()
        species = validate_species(species)
        if n_interactions < 1:
            raise ValueError(f"n_interactions must be at least 1, got {n_interactions}")
        if n_features < 1 or n_atom_layers < 0:
            raise ValueError(f"need n_features >= 1 and n_atom_layers >= 0, got {n_features}, {n_atom_layers}")
        if dist_soft_max is None:
            dist_soft_max = 0.8 * cutoff
        self.config: Dict[str, object] = dict(
            species=list(species),
            n_interactions=int(n_interactions),
            n_features=int(n_features),
            n_sensitivities=int(n_sensitivities),
            n_atom_layers=int(n_atom_layers),
            cutoff=float(cutoff),
            dist_soft_min=float(dist_soft_min),
            dist_soft_max=float(dist_soft_max),
            activation=str(activation),
        )
        self.species = list(species)
        self.n_species = len(species)
        self.n_features = int(n_features)
        self.cutoff = float(cutoff)
        self.reference_energies = nn.Parameter(torch.zeros(self.n_species))  # [n_species], eV
        self.interactions = nn.ModuleList()
        self.atom_layers = nn.ModuleList()
        self.readouts = nn.ModuleList()
        n_in = self.n_species
        for _ in range(n_interactions):
            self.interactions.append(
                Interaction(
                    n_in, n_features, n_sensitivities, dist_soft_min, dist_soft_max, cutoff, activation
                )
            )
            dense: List[nn.Module] = []
            for _ in range(n_atom_layers):
                dense += [nn.Linear(n_features, n_features), make_activation(activation)]
            self.atom_layers.append(nn.Sequential(*dense))
            self.readouts.append(nn.Linear(n_features, 1, bias=False))
            n_in = n_features

    def neighbor_layout(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor
    ) -> PaddedNeighbors:
        """The padded neighbour layout of one structure (shared by ensemble members)."""
        return pad_neighbors(species, edge_index, edge_lengths(edge_vectors), self.cutoff)

    def level_energies(self, graph: PaddedNeighbors) -> torch.Tensor:
        """Per-atom energies of every hierarchy level, ``[n_interactions + 1, N]`` in eV."""
        levels = [self.reference_energies[graph.species]]
        features = nn.functional.one_hot(graph.species, self.n_species).to(self.reference_energies.dtype)
        for interaction, dense, readout in zip(self.interactions, self.atom_layers, self.readouts):
            features = dense(interaction(features, graph))  # [N, n_features]
            levels.append(readout(features).squeeze(-1))
        return torch.stack(levels)

    def energies_and_distance_gradients(
        self, graph: PaddedNeighbors, n_owned: int, block_slots: int = 8192
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies ``[N]`` (eV) and ∂E/∂r ``[N, K]`` (eV/Å), E = Σ_{i < n_owned} E_i.

        The energies of :meth:`level_energies`, with a hand-written reverse
        pass instead of autograd. The neighbour work, tensors ``[B, K, ·]``,
        runs on blocks of atoms of about ``block_slots`` neighbour slots that
        stay in the CPU cache; only the sensitivities are kept between the
        passes. Needs the full (symmetric) neighbour list of the contract;
        see :func:`mlip_md.model.layers.interaction_reverse`. Faster than
        autograd for energy + forces, and itself differentiable (a Hessian is
        one autograd pass through it).
        """
        block = max(1, block_slots // max(1, graph.neighbors.shape[1]))
        energies, inputs, sensitivities, interaction_saved, dense_saved = self._forward_saving(graph, block)
        radial_gradient = self._reverse(graph, block, n_owned, inputs, sensitivities, interaction_saved, dense_saved)
        return energies, distance_gradient(radial_gradient, graph.distances, self.cutoff)

    def _uniform_input(self, level: int) -> bool:
        """Whether the input features of interaction layer ``level`` are 1 everywhere:
        the species one-hot of a one-species model (see :meth:`Interaction.pre_activation`)."""
        return level == 0 and self.n_species == 1

    def _forward_saving(self, graph: PaddedNeighbors, block: int) -> Tuple[
        torch.Tensor, List[torch.Tensor], List[List[torch.Tensor]], List[List[torch.Tensor]], List[List[torch.Tensor]]
    ]:
        """Forward pass keeping what :meth:`_reverse` needs, per interaction layer: its input
        features ``[N, n_in]``; its sensitivities, block by block; f'(pre-activation),
        V, V rearranged, the sensitivity coefficients, W_self and the read-out weight; and per
        dense layer its weight and f'(pre-activation). Returns the per-atom energies first."""
        energies = self.reference_energies[graph.species]
        features = nn.functional.one_hot(graph.species, self.n_species).to(self.reference_energies.dtype)
        inputs: List[torch.Tensor] = []
        sensitivities: List[List[torch.Tensor]] = []
        interaction_saved: List[List[torch.Tensor]] = []
        dense_saved: List[List[torch.Tensor]] = []
        level = 0
        for interaction, dense, readout in zip(self.interactions, self.atom_layers, self.readouts):
            uniform_input = self._uniform_input(level)
            level += 1
            inputs.append(features)
            coefficients = interaction.sensitivity.coefficients()
            pre_blocks: List[torch.Tensor] = []
            sensitivity_blocks: List[torch.Tensor] = []
            for start in range(0, features.shape[0], block):
                block_pre, block_sensitivities = interaction.pre_activation(
                    features, graph.neighbors[start : start + block], graph.radial_terms[:, start : start + block],
                    features[start : start + block], coefficients, uniform_input,
                )
                pre_blocks.append(block_pre)
                sensitivity_blocks.append(block_sensitivities)
            sensitivities.append(sensitivity_blocks)
            pre = torch.cat(pre_blocks)
            features = interaction.activation(pre)
            transposed = reverse_weights(interaction.interaction_weights, coefficients.shape[1])
            interaction_saved.append([
                interaction.activation.derivative(pre, features), interaction.interaction_weights, transposed,
                coefficients, interaction.self_interaction.weight, readout.weight,
            ])
            layer_saved: List[torch.Tensor] = []
            for layer in dense:
                # hasattr is resolved when scripting: activations have `derivative`.
                if hasattr(layer, "derivative"):
                    features = layer(pre)
                    layer_saved.append(layer.derivative(pre, features))
                else:
                    pre = layer(features)
                    layer_saved.append(layer.weight)
            dense_saved.append(layer_saved)
            energies = energies + readout(features).squeeze(-1)
        return energies, inputs, sensitivities, interaction_saved, dense_saved

    def _reverse(
        self,
        graph: PaddedNeighbors,
        block: int,
        n_owned: int,
        inputs: List[torch.Tensor],
        sensitivities: List[List[torch.Tensor]],
        interaction_saved: List[List[torch.Tensor]],
        dense_saved: List[List[torch.Tensor]],
    ) -> torch.Tensor:
        """Reverse pass, last layer first: ∂E/∂(1/r², 1/r, 1, log φ_cut) ``[4, N, K]``."""
        n_atoms = graph.neighbors.shape[0]
        dtype, device = graph.radial_terms.dtype, graph.radial_terms.device
        owned = (torch.arange(n_atoms, device=device) < n_owned).to(dtype).unsqueeze(1)
        # Summed over the levels block by block, while each block is still in cache.
        radial_blocks: List[torch.Tensor] = []
        gradient = torch.zeros(n_atoms, 1, dtype=dtype, device=device)  # ∂E/∂(layer output features)
        for level in range(len(inputs) - 1, -1, -1):
            activation_derivative, weights, transposed, radial_coefficients, self_weight, readout_weight = (
                interaction_saved[level]
            )
            gradient = gradient + readout_weight * owned
            layer_saved = dense_saved[level]
            for index in range(len(layer_saved) - 2, -1, -2):
                gradient = (gradient * layer_saved[index + 1]) @ layer_saved[index]
            pre_gradient = gradient * activation_derivative  # [N, n_out]
            neighbor_parts: List[torch.Tensor] = []
            for index, start in enumerate(range(0, n_atoms, block)):
                radial, neighbor_part = interaction_reverse(
                    pre_gradient, inputs[level], start, graph.neighbors[start : start + block],
                    sensitivities[level][index], weights, transposed, radial_coefficients, level > 0,
                    self._uniform_input(level),
                )
                if level == len(inputs) - 1:
                    radial_blocks.append(radial)
                else:
                    radial_blocks[index] = radial_blocks[index] + radial
                neighbor_parts.append(neighbor_part)
            if level > 0:
                # self-interaction part plus neighbour part
                gradient = pre_gradient @ self_weight + torch.cat(neighbor_parts)
        return torch.cat(radial_blocks, dim=1)

    def position_hessian(
        self, graph: PaddedNeighbors, unit_vectors: torch.Tensor, pair_matrices: Optional[bool] = None
    ) -> torch.Tensor:
        """∂²E/∂x∂x ``[3N, 3N]`` in eV/Å² for E = Σ_i E_i (row and column 3a + c: axis c of atom a).

        ``unit_vectors`` ``[N, K, 3]``: r_ij/|r_ij| of every slot of ``graph``,
        zero on padding slots. Forward-mode tangents of the hand-written
        gradient, all coordinates at once (see :mod:`mlip_md.model.hessian`);
        needs the full (symmetric) neighbour list. ``pair_matrices``: how the
        neighbour products run (:func:`mlip_md.model.hessian.neighbor_weights`;
        None: :func:`~mlip_md.model.hessian.use_pair_matrices` decides).
        """
        n_atoms, width = graph.neighbors.shape
        if pair_matrices is None:
            pair_matrices = use_pair_matrices(n_atoms, width, self.n_features)
        layers, gradient, curvature = self._hessian_terms(graph, unit_vectors, pair_matrices)
        return position_hessian(
            layers, gradient, curvature, graph.neighbors, graph.occupied, graph.distances, unit_vectors
        )

    def _hessian_terms(
        self, graph: PaddedNeighbors, unit_vectors: torch.Tensor, pair_matrices: bool
    ) -> Tuple[List[LayerTerms], torch.Tensor, torch.Tensor]:
        """Per-layer :class:`LayerTerms`, ∂E/∂r ``[N, K]`` and Σ_layers C ``[N, K]`` (see
        :mod:`mlip_md.model.hessian`): :meth:`_hessian_forward`, then a reverse pass."""
        neighbors = graph.neighbors
        n_atoms, width = neighbors.shape
        saved, dense_weights, derivatives, second_derivatives = self._hessian_forward(graph)
        layers: List[LayerTerms] = []
        dtype, device = graph.distances.dtype, graph.distances.device
        gradient = torch.zeros(n_atoms, 1, dtype=dtype, device=device)  # ∂E/∂(block output)
        distance_gradient = torch.zeros(n_atoms, width, dtype=dtype, device=device)
        curvature_sum = torch.zeros_like(distance_gradient)
        for level in range(len(saved) - 1, -1, -1):
            inputs, gathered, sensitivities, slope, curvature, weights, self_weight, readout_weight = saved[level]
            n_in, n_sens, n_out = inputs.shape[1], sensitivities.shape[2], weights.shape[1]
            gradient = gradient + readout_weight
            layer_weights, layer_derivatives = dense_weights[level], derivatives[level]
            output_gradients = [gradient]  # ∂E/∂(output of each activation), last first
            for index in range(len(layer_weights) - 1, -1, -1):
                gradient = (gradient * layer_derivatives[index + 1]) @ layer_weights[index]
                output_gradients.insert(0, gradient)
            jacobian, block_curvature = atom_block_terms(
                layer_weights, layer_derivatives, second_derivatives[level], output_gradients
            )
            pre_gradient = gradient * layer_derivatives[0]  # [N, F_out]
            environment_gradient = (pre_gradient @ weights.t()).view(n_atoms, n_in, n_sens)  # G
            sensitivity_gradient = torch.bmm(gathered, environment_gradient)  # [N, K, S]
            distance_gradient = distance_gradient + (sensitivity_gradient * slope).sum(-1)
            curvature_sum = curvature_sum + (sensitivity_gradient * curvature).sum(-1)
            projected = (inputs @ weights.view(n_in, n_sens * n_out)).view(n_atoms, n_sens, n_out)
            radial = torch.bmm(
                slope.view(-1, 1, n_sens), projected.index_select(0, neighbors.reshape(-1)).view(-1, n_sens, n_out)
            ).view(n_atoms, width, n_out)
            empty = inputs.new_empty(0)
            forward_weights, reverse_weights_, incoming, neighbor = empty, empty, empty, empty
            if level > 0:  # the first layer's input, the one-hot, has no tangent
                (forward_weights, reverse_weights_, incoming, neighbor), passed = neighbor_terms(
                    sensitivities, slope, weights, environment_gradient, neighbors, unit_vectors, pair_matrices
                )
                gradient = pre_gradient @ self_weight + passed
            layers.insert(0, LayerTerms(
                jacobian, block_curvature, self_weight, radial, forward_weights, reverse_weights_, incoming, neighbor
            ))
        return layers, distance_gradient, curvature_sum

    def _hessian_forward(self, graph: PaddedNeighbors) -> Tuple[
        List[List[torch.Tensor]], List[List[torch.Tensor]], List[List[torch.Tensor]], List[List[torch.Tensor]]
    ]:
        """Forward pass for :meth:`_hessian_terms`. Per layer: [input z, neighbours' z ``[N, K, F_in]``,
        s, w = ∂s/∂r, w2 = ∂²s/∂r² ``[N, K, S]``, V, W, read-out weight]; the dense weights;
        f' and f'' of each activation ``[N, F]`` (the interaction's first)."""
        slopes, curvatures = radial_slopes(graph.distances, self.cutoff)
        features = nn.functional.one_hot(graph.species, self.n_species).to(self.reference_energies.dtype)
        saved: List[List[torch.Tensor]] = []
        dense_weights: List[List[torch.Tensor]] = []
        derivatives: List[List[torch.Tensor]] = []
        second_derivatives: List[List[torch.Tensor]] = []
        for interaction, dense, readout in zip(self.interactions, self.atom_layers, self.readouts):
            coefficients = interaction.sensitivity.coefficients()
            sensitivities = sensitivities_from(graph.radial_terms, coefficients)  # [N, K, S]
            slope, curvature = sensitivity_slopes(
                sensitivities, slopes, curvatures, coefficients, exponent_floor(sensitivities.dtype)
            )
            gathered = gather_neighbors(features, graph.neighbors)  # [N, K, F_in]
            environment = torch.bmm(gathered.transpose(1, 2), sensitivities)  # [N, F_in, S]
            pre = environment.reshape(features.shape[0], -1) @ interaction.interaction_weights
            pre = pre + interaction.self_interaction(features)
            output = interaction.activation(pre)
            saved.append([
                features, gathered, sensitivities, slope, curvature,
                interaction.interaction_weights, interaction.self_interaction.weight, readout.weight,
            ])
            layer_weights: List[torch.Tensor] = []
            layer_derivatives = [interaction.activation.derivative(pre, output)]
            layer_second = [interaction.activation.second_derivative(pre, output)]
            for layer in dense:
                if hasattr(layer, "derivative"):
                    output = layer(pre)
                    layer_derivatives.append(layer.derivative(pre, output))
                    layer_second.append(layer.second_derivative(pre, output))
                else:
                    pre = layer(output)
                    layer_weights.append(layer.weight)
            dense_weights.append(layer_weights)
            derivatives.append(layer_derivatives)
            second_derivatives.append(layer_second)
            features = output
        return saved, dense_weights, derivatives, second_derivatives

    def forward(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor
    ) -> torch.Tensor:
        """Per-atom energies ``[N]`` in eV."""
        return self.level_energies(self.neighbor_layout(species, edge_index, edge_vectors)).sum(0)

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config.items())


def hierarchicality(level_totals: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Hierarchicality regulariser of the paper, Σ_n≥1 E_n² / (E_n² + E_{n−1}² + eps).

    ``level_totals`` ``[n_levels, B]``: energy of each level summed over the
    atoms of each of B structures (eV). Returns the mean over structures.
    """
    squares = level_totals * level_totals
    return (squares[1:] / (squares[1:] + squares[:-1] + eps)).sum(0).mean()
