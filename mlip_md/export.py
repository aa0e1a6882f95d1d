"""Writes trained models as one deployable TorchScript file (see :mod:`mlip_md.contract`)."""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from mlip_md.atomic import write_atomically
from mlip_md.contract import DTYPES, METADATA_FILE, REQUIRED_METHODS, encode_metadata, make_metadata, quiet_torchscript
from mlip_md.model.graph import edge_gradients, edge_lengths, pad_neighbors, padded_unit_vectors
from mlip_md.model.hipnn import HIPNN
from mlip_md.model.layered import LayerGraph, layer_edge_gradients, layer_graph, layer_reverse
from mlip_md.model.layers import BlockState
from mlip_md.version import __version__


class DeployedEnsemble(nn.Module):
    """M members sharing species and cutoff; forward returns ``[M, N]`` per-atom energies (eV)."""

    def __init__(self, members: List[HIPNN]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.cutoff = members[0].cutoff

    def _within_cutoff(
        self, edge_index: torch.Tensor, edge_vectors: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The edges shorter than the cutoff: (edge_index, edge_vectors, distances, kept positions).

        Edges beyond the cutoff contribute exactly zero; dropping them first
        keeps the padded layout small when a caller passes a skin. The kept
        positions are None when every edge is kept.
        """
        distances = edge_lengths(edge_vectors)
        inside = distances < self.cutoff
        if bool(inside.all()):
            return edge_index, edge_vectors, distances, None
        kept = torch.nonzero(inside).squeeze(1)
        edge_index = edge_index.index_select(1, kept)
        return edge_index, edge_vectors.index_select(0, kept), distances.index_select(0, kept), kept

    def forward(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor
    ) -> torch.Tensor:
        edge_index, _, distances, _ = self._within_cutoff(edge_index, edge_vectors)
        layout = pad_neighbors(species, edge_index, distances, self.cutoff)
        energies: List[torch.Tensor] = []
        for member in self.members:
            energies.append(member.level_energies(layout).sum(0))
        return torch.stack(energies)

    @torch.jit.export
    def energies_and_gradients(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_owned: int = -1
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom energies ``[M, N]`` (eV) and ∂E_m/∂r_e ``[M, E, 3]`` (eV/Å) without autograd.

        E_m = Σ_{i < n_owned} E_{m,i} (all atoms for ``n_owned < 0``); see
        :mod:`mlip_md.contract` for when atoms beyond ``n_owned`` may lack edges.
        """
        if n_owned < 0:
            n_owned = species.shape[0]
        n_edges = edge_vectors.shape[0]
        edge_index, edge_vectors, distances, kept = self._within_cutoff(edge_index, edge_vectors)
        layout = pad_neighbors(species, edge_index, distances, self.cutoff)
        energies: List[torch.Tensor] = []
        distance_gradients: List[torch.Tensor] = []
        for member in self.members:
            member_energies, member_gradients = member.energies_and_distance_gradients(layout, n_owned)
            energies.append(member_energies)
            distance_gradients.append(member_gradients)
        gradients = edge_gradients(torch.stack(distance_gradients), layout, edge_vectors, distances)  # [M, E_kept, 3]
        if kept is not None:  # dropped edges: gradient 0
            gradients = gradients.new_zeros(gradients.shape[0], n_edges, 3).index_copy(1, kept, gradients)
        return torch.stack(energies), gradients

    @torch.jit.export
    def layer_graph(
        self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_owned: int
    ) -> LayerGraph:
        """Layer stepping: a rank's graph, with only the owned atoms' edges (see :mod:`mlip_md.contract`)."""
        return layer_graph(species, edge_index, edge_vectors, n_owned, self.cutoff)

    @torch.jit.export
    def layer_forward(
        self, layer: int, graph: LayerGraph, features: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, List[BlockState]]:
        """Layer stepping, forward: block ``layer`` of every member on the owned atoms.

        ``features`` ``[M, N, F]`` of all nodes (ignored for layer 0). Returns the
        output features ``[M, N, F]`` (rows of the owned atoms; zero for the
        others, which the caller fills from their owners), the level's energies
        ``[M, R]`` (eV) and the members' states for :meth:`layer_reverse`.
        """
        layout = graph.layout
        n_nodes, n_owned = layout.species.shape[0], layout.neighbors.shape[0]
        outputs: List[torch.Tensor] = []
        energies: List[torch.Tensor] = []
        states: List[BlockState] = []
        for index, member in enumerate(self.members):
            member_features = features[index] if layer > 0 else features
            output, member_energies, state = member.layer_forward(layer, member_features, layout, graph.rows)
            outputs.append(output)
            energies.append(member_energies)
            states.append(state)
        owned = torch.stack(outputs)
        padded = owned.new_zeros(owned.shape[0], n_nodes, owned.shape[2])
        padded[:, :n_owned] = owned
        return padded, torch.stack(energies), states

    @torch.jit.export
    def layer_reverse(
        self, layer: int, graph: LayerGraph, states: List[BlockState], gradient: torch.Tensor,
        radial: List[List[torch.Tensor]],
    ) -> Tuple[torch.Tensor, List[List[torch.Tensor]]]:
        """Layer stepping, reverse: block ``layer`` of every member, last block first.

        ``gradient`` ``[M, N, F]``: what :meth:`layer_reverse` of block
        ``layer + 1`` returned, with the ghosts' rows added to their owners
        (an empty tensor for the last block); ``radial``: what it returned
        (an empty list for the last block). Returns ∂E/∂(block input)
        ``[M, N, F]`` of all nodes (ghost rows: partial sums for their
        owners; empty for layer 0) and the updated ``radial``.
        """
        n_owned = graph.layout.neighbors.shape[0]
        input_gradients: List[torch.Tensor] = []
        updated: List[List[torch.Tensor]] = []
        for index in range(len(states)):
            member_gradient = gradient[index, :n_owned] if gradient.numel() > 0 else gradient
            member_radial = radial[index] if len(radial) > 0 else torch.jit.annotate(List[torch.Tensor], [])
            input_gradient, member_radial = layer_reverse(states[index], member_gradient, graph, member_radial)
            input_gradients.append(input_gradient)
            updated.append(member_radial)
        if layer == 0:
            return gradient.new_empty(0), updated
        return torch.stack(input_gradients), updated

    @torch.jit.export
    def layer_edge_gradients(self, graph: LayerGraph, radial: List[List[torch.Tensor]]) -> torch.Tensor:
        """Layer stepping, last: ∂E_m/∂r_e ``[M, E, 3]`` (eV/Å) of the owned atoms' energy, from
        ``radial`` after :meth:`layer_reverse` of block 0."""
        return layer_edge_gradients(graph, radial, self.cutoff)

    @torch.jit.export
    def hessian(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        """∂²E_m/∂x∂x ``[M, 3N, 3N]`` (eV/Å²) of each member's total energy; row and
        column 3a + c are axis c of atom a. Forward-mode tangents of the
        hand-written gradient, no autograd."""
        edge_index, edge_vectors, distances, _ = self._within_cutoff(edge_index, edge_vectors)
        layout = pad_neighbors(species, edge_index, distances, self.cutoff)
        unit_vectors = padded_unit_vectors(layout, edge_vectors, distances)
        hessians: List[torch.Tensor] = []
        for member in self.members:
            hessians.append(member.position_hessian(layout, unit_vectors))
        return torch.stack(hessians)


def _check_members(models: Sequence[HIPNN]) -> None:
    if not models:
        raise ValueError("export needs at least one model")
    for model in models:
        if not isinstance(model, HIPNN):
            raise TypeError(f"export takes HIPNN models, got {type(model).__name__}")
    first = models[0]
    for index, model in enumerate(models[1:], start=1):
        shape = (model.species, model.cutoff, len(model.blocks), model.n_features)
        expected = (first.species, first.cutoff, len(first.blocks), first.n_features)
        if shape != expected:
            raise ValueError(
                f"ensemble member {index} has species, cutoff, interaction blocks and features {shape}, "
                f"member 0 has {expected}; members must agree (LAMMPS exchanges features layer by layer)"
            )


def export(
    model: Union[HIPNN, Sequence[HIPNN]],
    path: Union[str, os.PathLike],
    dtype: str = "float64",
    extra_metadata: Dict[str, Any] | None = None,
) -> str:
    """Writes one model, or a list of models as an ensemble, to one TorchScript file.

    Args:
        model: a :class:`HIPNN` or a list of them (ensemble members).
        path: destination; written atomically (a crash never leaves a half
            file) with the mode of any new file (0666 less the umask).
        dtype: ``"float64"`` or ``"float32"``, the precision of the deployed model.
        extra_metadata: JSON-able entries added to the metadata (e.g. training
            config); NaN and infinite numbers are refused (ValueError naming
            the key), as strict JSON has none.

    Returns the absolute path written.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    models = [model] if isinstance(model, nn.Module) else list(model)
    _check_members(models)
    members = []
    for member in models:
        member = copy.deepcopy(member).to(DTYPES[dtype]).eval()
        for parameter in member.parameters():
            parameter.requires_grad_(False)
        members.append(member)
    metadata = make_metadata(
        species=members[0].species,
        cutoff=members[0].cutoff,
        n_interactions=len(members[0].blocks),
        n_features=members[0].n_features,
        dtype=dtype,
        ensemble_size=len(members),
        model_config=[m.config for m in members],
        mlip_md_version=__version__,
        **(extra_metadata or {}),
    )
    encoded = encode_metadata(metadata)
    exported = [name for name in REQUIRED_METHODS if name != "forward"]
    with quiet_torchscript():
        scripted = torch.jit.freeze(torch.jit.script(DeployedEnsemble(members).eval()), preserved_attrs=exported)
    with quiet_torchscript():
        return write_atomically(path, lambda partial: torch.jit.save(
            scripted, partial, _extra_files={METADATA_FILE: encoded}))
