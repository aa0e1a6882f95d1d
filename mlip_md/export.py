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
        if model.species != first.species or model.cutoff != first.cutoff:
            raise ValueError(
                f"ensemble member {index} has species {model.species} and cutoff {model.cutoff}, "
                f"member 0 has {first.species} and {first.cutoff}; members must agree"
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
        n_interactions=len(members[0].interactions),
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
