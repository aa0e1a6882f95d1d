"""The exported-model contract: the one place that defines the deployable file.

An exported model is a single TorchScript file written by
:func:`mlip_md.export`. ``torch.jit.load`` opens it without mlip_md (Python or
C++ libtorch). Everything a consumer needs is here.

Inputs (of both methods below)
    ``species``       ``[N]`` int64   species index of each atom: position of its
                                      element in ``metadata["species"]``.
    ``edge_index``    ``[2, E]`` int64 rows ``(i, j)``, a *full* list: every pair
                                      within ``metadata["cutoff"]`` appears as
                                      (i, j) and (j, i). Any order; sorted by
                                      ``i`` is fastest.
    ``edge_vectors``  ``[E, 3]`` float ``r_ij = x_j − x_i`` (periodic image
                                      included) in Å, dtype ``metadata["dtype"]``.

Methods
    ``forward(species, edge_index, edge_vectors)`` → ``[M, N]`` float
        per-atom energies in eV, one row per ensemble member
        (``M = metadata["ensemble_size"]``, 1 for a single model).
        Differentiable with autograd (training, custom derivatives).
    ``energies_and_gradients(species, edge_index, edge_vectors, n_owned=-1)``
        → (``[M, N]`` per-atom energies in eV, ``[M, E, 3]`` g_e = ∂E_m/∂r_e
        in eV/Å) for E_m = Σ_{i < n_owned} E_{m,i} (all atoms if
        ``n_owned < 0``), from a hand-written reverse pass: no autograd graph,
        faster than autograd of ``forward``, and itself differentiable
        (Hessians). Its reverse pass uses the symmetry of the full list; it is
        exact as long as every atom within ``n_interactions − 1`` edges of
        an atom ``i < n_owned`` has all its edges in the list (always true
        of a complete list; a domain-decomposed graph must include them).
    ``hessian(species, edge_index, edge_vectors)`` → ``[M, 3N, 3N]`` float
        ∂²E_m/∂x∂x in eV/Å² of each member's total energy with respect to
        the atom positions x (row and column ``3a + c``: axis c of atom a;
        an edge moves with both its atoms, whatever its periodic image).
        Forward-mode tangents of the hand-written gradient, no autograd;
        needs a complete list.

Layer stepping (domain decomposition; :mod:`mlip_md.model.layered`)
    A rank holds R owned atoms (nodes ``[0, R)``) and ghost copies of other
    atoms (nodes ``[R, N)``), and evaluates the owned atoms only, one
    interaction block at a time, exchanging the ghosts' features and feature
    gradients with their owners between blocks. ``L = metadata["n_interactions"]``,
    ``F = metadata["n_features"]``; the graph and states are opaque values
    the caller passes back unchanged.

    ``layer_graph(species [N], edge_index [2, E], edge_vectors [E, 3], n_owned)``
        → graph. The edges are those of the owned atoms only: every pair
        (i, j) within the cutoff with i < ``n_owned`` (1 ≤ ``n_owned`` ≤ N).
    ``layer_forward(layer, graph, features)`` → (``[M, N, F]`` block output,
        ``[M, R]`` level energies in eV, states), for layer = 0 … L−1.
        ``features`` ``[M, N, F]`` is the previous call's output with its
        ghost rows (returned as zeros) set to their owners' rows (ignored for
        layer 0, whose input is the species). E_m,i = Σ_layers level energies.
    ``layer_reverse(layer, graph, states, gradient, radial)`` → (``[M, N, F]``
        feature gradient, radial), for layer = L−1 … 0 with that layer's
        states. ``gradient`` is the previous call's feature gradient with
        each ghost row added to its owner's row (an empty tensor for layer
        L−1), ``radial`` the previous call's (an empty list for L−1). For
        E = Σ over all ranks of the owned atoms' energies, the owned rows of
        the returned gradient are partial sums until the ghost rows of all
        ranks are added. Layer 0 returns an empty gradient.
    ``layer_edge_gradients(graph, radial)`` → ``[M, E, 3]`` g_e of E for the
        given edges (in their order), from the last ``layer_reverse``.

    Forces then follow from g_e as below, with the ghosts' shares added to
    their owners; the results equal ``energies_and_gradients`` of the whole
    system to rounding.

Derived quantities (``g_e = ∂E/∂r_e`` for the total energy E):
    forces  F_k = Σ_{e: i_e = k} g_e − Σ_{e: j_e = k} g_e         (eV/Å)
    virial  W = −Σ_e r_e ⊗ g_e,  stress σ = −W / V              (eV/Å³, ASE sign)

Both loaders (:func:`load_exported` and the LAMMPS plugin) refuse a file
that lacks one of :data:`REQUIRED_METHODS`.

Metadata: a JSON object stored as the extra file :data:`METADATA_FILE`
with the keys of :data:`REQUIRED_METADATA` (see :func:`make_metadata`).
It is strict JSON (RFC 8259), the dialect both loaders parse: no NaN or
Infinity, which :func:`encode_metadata` refuses to write.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List

import torch

FORMAT_NAME = "mlip_md.exported_model"
FORMAT_VERSION = 4  # 2: energies_and_gradients added; 3: hessian added; 4: layer stepping
METADATA_FILE = "mlip_md_metadata.json"
UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# CMakeLists.txt reads the names between the parentheses below.
REQUIRED_METHODS = (
    "forward", "energies_and_gradients", "hessian",
    "layer_graph", "layer_forward", "layer_reverse", "layer_edge_gradients",
)
# The plugin's exported_model.cpp words this error the same (tests/test_lammps.py checks both).
NOT_A_JSON_OBJECT = "metadata is not a JSON object (strict JSON: no NaN or Infinity)"

REQUIRED_METADATA = (
    "format",  # always FORMAT_NAME
    "format_version",  # int, FORMAT_VERSION of the writer
    "species",  # list of element symbols; index = species index
    "cutoff",  # float, Å: edges longer than this contribute nothing
    "n_interactions",  # int L, message-passing layers (interaction blocks)
    "n_features",  # int F, width of the features each block passes on (layer stepping exchanges them)
    "dtype",  # "float32" or "float64", dtype of edge_vectors and outputs
    "units",  # UNITS
    "ensemble_size",  # int M, rows of the output
)


@contextlib.contextmanager
def quiet_torchscript():
    """Silences torch's deprecation notices for TorchScript.

    TorchScript is the format libtorch (and so the LAMMPS plugin) loads
    without Python; torch ≥ 2.10 warns on every script/save/load call.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


class ModelFileError(ValueError):
    """An exported model file that cannot be used (not a model, bad metadata, wrong version)."""


@dataclass
class ExportedModel:
    """A loaded exported model: the TorchScript module and its metadata."""

    module: torch.jit.ScriptModule
    metadata: Dict[str, Any]

    @property
    def species(self) -> List[str]:
        return list(self.metadata["species"])

    @property
    def cutoff(self) -> float:
        return float(self.metadata["cutoff"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.metadata["dtype"]]

    @property
    def ensemble_size(self) -> int:
        return int(self.metadata["ensemble_size"])


def make_metadata(
    species: List[str],
    cutoff: float,
    n_interactions: int,
    n_features: int,
    dtype: str,
    ensemble_size: int,
    **extra: Any,
) -> Dict[str, Any]:
    """The metadata dictionary of an exported file; ``extra`` adds JSON-able keys."""
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "species": list(species),
        "cutoff": float(cutoff),
        "n_interactions": int(n_interactions),
        "n_features": int(n_features),
        "dtype": dtype,
        "units": dict(UNITS),
        "ensemble_size": int(ensemble_size),
    }
    metadata.update(extra)
    return metadata


def _non_finite_keys(value: Any, key: str) -> List[str]:
    """The keys (``a.b[2]`` paths) under ``key`` whose value is a NaN or infinite float."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [key]
    if isinstance(value, dict):
        return [found for name, item in value.items() for found in _non_finite_keys(item, f"{key}.{name}")]
    if isinstance(value, (list, tuple)):
        return [found for index, item in enumerate(value) for found in _non_finite_keys(item, f"{key}[{index}]")]
    return []


def encode_metadata(metadata: Dict[str, Any]) -> str:
    """``metadata`` as strict JSON; ValueError naming the key of any NaN or infinite number."""
    bad = [found for name, value in metadata.items() for found in _non_finite_keys(value, name)]
    if bad:
        raise ValueError(
            f"metadata key(s) {bad} hold NaN or infinite numbers, which strict JSON (the dialect both "
            "model loaders read) cannot store; replace them (e.g. with null or a string)"
        )
    return json.dumps(metadata, allow_nan=False)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # json.loads accepts NaN and Infinity unless told not to


def decode_metadata(raw: str | bytes, source: str) -> Dict[str, Any]:
    """Parses metadata as strictly as the plugin does; :class:`ModelFileError` if it is not a JSON object."""
    try:
        metadata = json.loads(raw, parse_constant=_refuse_constant)
    except ValueError as error:  # JSONDecodeError, NaN/Infinity, bad UTF-8
        raise ModelFileError(f"{source}: {NOT_A_JSON_OBJECT}") from error
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{source}: {NOT_A_JSON_OBJECT}")
    return metadata


def validate_metadata(metadata: Dict[str, Any], source: str) -> None:
    """Raises :class:`ModelFileError` naming what is wrong with ``metadata``."""
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{source}: metadata format is {metadata.get('format')!r}, expected {FORMAT_NAME!r}")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{source}: model format version {version!r} is not supported; "
            f"this mlip_md reads version {FORMAT_VERSION}. Re-export the model with a matching mlip_md."
        )
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelFileError(f"{source}: metadata lacks the key(s) {missing}")
    if metadata["dtype"] not in DTYPES:
        raise ModelFileError(f"{source}: unknown dtype {metadata['dtype']!r}; expected one of {sorted(DTYPES)}")


def load_exported(path: str | os.PathLike, device: str | torch.device = "cpu") -> ExportedModel:
    """Opens an exported model file and checks its metadata.

    Raises FileNotFoundError for a missing file and :class:`ModelFileError`
    for a file that is not a TorchScript model, has no mlip_md metadata, or
    has an unknown format version.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    extra_files = {METADATA_FILE: ""}
    try:
        with quiet_torchscript():
            module = torch.jit.load(path, map_location=device, _extra_files=extra_files)
    except Exception as error:  # torch raises RuntimeError/ValueError/zipfile errors
        raise ModelFileError(
            f"{path} is not a readable TorchScript model file ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'})"
        ) from error
    raw = extra_files[METADATA_FILE]
    if not raw:
        raise ModelFileError(
            f"{path} is a TorchScript file without mlip_md metadata ({METADATA_FILE}); "
            "write models with mlip_md.export"
        )
    metadata = decode_metadata(raw, path)
    validate_metadata(metadata, path)
    for method in REQUIRED_METHODS:
        if not hasattr(module, method):
            raise ModelFileError(f"{path}: the module lacks the method {method}; re-export it with mlip_md.export")
    module.eval()
    return ExportedModel(module, metadata)
