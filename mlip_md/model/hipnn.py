"""HIP-NN: Hierarchically Interacting Particle Neural Network.

Lubbers, Smith & Barros, J. Chem. Phys. 148, 241715 (2018).

The network maps a species one-hot ``z⁰`` through ``n_interactions`` blocks,
each an interaction layer followed by ``n_atom_layers`` dense layers. Every
level ``n`` (0 = the one-hot, n ≥ 1 = the output of block n) has a linear
energy read-out; the per-atom energy is the sum over levels,

    E_i = Σ_n E_i⁽ⁿ⁾,   E_i⁽⁰⁾ = e_ref[species_i],   E_i⁽ⁿ⁾ = w_n · z_i⁽ⁿ⁾.

The level-0 terms are the per-species reference energies (eV), normally fit
by least squares on the training set before training the rest.

``HIPNN.blocks`` (:class:`~mlip_md.model.layers.InteractionBlock`) is the one
description of the network, and every pass walks it: :meth:`HIPNN.level_energies`
(plain torch, differentiable by autograd), and a forward pass that keeps each
block's :class:`~mlip_md.model.layers.BlockState` for the hand-written reverse
pass (:mod:`mlip_md.model.reverse`, forces) or for the Hessian's tangents
(:mod:`mlip_md.model.hessian`), which walk those states back, last block first.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from mlip_md.model.graph import PaddedNeighbors, distance_gradient, edge_lengths, pad_neighbors
from mlip_md.model.hessian import LayerTerms, position_hessian, tangent_terms, use_pair_matrices
from mlip_md.model.layers import BlockState, Interaction, InteractionBlock
from mlip_md.model.reverse import reverse_pass
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
    __jit_unused_properties__ = ["interactions", "readouts"]

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
        # Block n maps level n − 1's features to level n's; every pass walks this list.
        self.blocks = nn.ModuleList(
            InteractionBlock(
                self.n_species if level == 0 else n_features, n_features, n_sensitivities, n_atom_layers,
                dist_soft_min, dist_soft_max, cutoff, activation, first=level == 0,
            )
            for level in range(n_interactions)
        )

    @property
    def interactions(self) -> List[Interaction]:
        """The interaction layer of every block."""
        return [block.interaction for block in self.blocks]

    @property
    def readouts(self) -> List[nn.Linear]:
        """The energy read-out of every block (level 1 on)."""
        return [block.readout for block in self.blocks]

    def neighbor_layout(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor
    ) -> PaddedNeighbors:
        """The padded neighbour layout of one structure (shared by ensemble members)."""
        return pad_neighbors(species, edge_index, edge_lengths(edge_vectors), self.cutoff)

    def level_energies(self, graph: PaddedNeighbors) -> torch.Tensor:
        """Per-atom energies of every hierarchy level, ``[n_interactions + 1, N]`` in eV."""
        levels = [self.reference_energies[graph.species]]
        features = self._one_hot(graph)
        for block in self.blocks:
            features = block(features, graph)  # [N, n_features]
            levels.append(block.energies(features))
        return torch.stack(levels)

    def energies_and_distance_gradients(
        self, graph: PaddedNeighbors, n_owned: int, block_slots: int = 8192
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies ``[N]`` (eV) and ∂E/∂r ``[N, K]`` (eV/Å), E = Σ_{i < n_owned} E_i.

        The energies of :meth:`level_energies`, with a hand-written reverse
        pass (:func:`mlip_md.model.reverse.reverse_pass`) instead of autograd.
        The neighbour work, tensors ``[B, K, ·]``, runs on blocks of atoms of
        about ``block_slots`` neighbour slots that stay in the CPU cache; only
        the sensitivities are kept between the passes. Needs the full
        (symmetric) neighbour list of the contract; see
        :func:`mlip_md.model.reverse.interaction_reverse`. Faster than
        autograd for energy + forces, and itself differentiable (a Hessian is
        one autograd pass through it).
        """
        rows = max(1, block_slots // max(1, graph.neighbors.shape[1]))
        energies, states = self._saving_forward(graph, rows, False)
        radial_gradient = reverse_pass(states, graph.neighbors, rows, n_owned)
        return energies, distance_gradient(radial_gradient, graph.distances, self.cutoff)

    def layer_forward(
        self, layer: int, features: torch.Tensor, graph: PaddedNeighbors, rows: int
    ) -> Tuple[torch.Tensor, torch.Tensor, BlockState]:
        """Block ``layer`` (0-based) alone, on the R atoms with rows in ``graph`` (layer stepping,
        :mod:`mlip_md.model.layered`).

        ``features`` ``[N, F_in]``: level ``layer``'s features of all N atoms
        (ignored for layer 0, whose input is the species one-hot). Returns the
        block's output features ``[R, F_out]``, the level's per-atom energies
        ``[R]`` in eV (with the reference energies at layer 0) and the block's
        state for :func:`mlip_md.model.layered.layer_reverse`; the blocks of
        ``rows`` atoms are those of :meth:`energies_and_distance_gradients`.
        """
        results: List[Tuple[torch.Tensor, torch.Tensor, BlockState]] = []
        for index, block in enumerate(self.blocks):  # TorchScript cannot index a ModuleList by a variable
            if index == layer:
                block_input = self._one_hot(graph) if index == 0 else features
                output, state = block.forward_saving(block_input, graph, rows, False)
                energies = block.energies(output)
                if index == 0:
                    energies = energies + self.reference_energies[graph.species[: output.shape[0]]]
                results.append((output, energies, state))
        if len(results) == 0:
            raise ValueError(f"layer {layer} is not a block of this model")
        return results[0]

    def _one_hot(self, graph: PaddedNeighbors) -> torch.Tensor:
        """The species one-hot ``[N, n_species]``, the first block's input."""
        return nn.functional.one_hot(graph.species, self.n_species).to(self.reference_energies.dtype)

    def _saving_forward(
        self, graph: PaddedNeighbors, rows: int, second: bool
    ) -> Tuple[torch.Tensor, List[BlockState]]:
        """Per-atom energies ``[N]`` (eV) and the :class:`~mlip_md.model.layers.BlockState` of every
        block, from :meth:`~mlip_md.model.layers.InteractionBlock.forward_saving` on blocks of
        ``rows`` atoms (with f'' if ``second``)."""
        energies = self.reference_energies[graph.species]
        features = self._one_hot(graph)
        states: List[BlockState] = []
        for block in self.blocks:
            features, state = block.forward_saving(features, graph, rows, second)
            energies = energies + block.energies(features)
            states.append(state)
        return energies, states

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
        """Per-block :class:`~mlip_md.model.hessian.LayerTerms`, ∂E/∂r ``[N, K]`` and Σ_blocks C
        ``[N, K]`` (see :func:`mlip_md.model.hessian.tangent_terms`): the saving forward pass
        on one block of all atoms, then a reverse pass."""
        _, states = self._saving_forward(graph, max(1, graph.neighbors.shape[0]), True)
        return tangent_terms(states, graph, unit_vectors, self.cutoff, pair_matrices)

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
