"""Hand-made model files that the loaders must refuse (shared by test_export.py and test_lammps.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from mlip_md.contract import METADATA_FILE, REQUIRED_METHODS, quiet_torchscript

_METHODS = {
    "forward": '''
    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        return torch.zeros(1, species.shape[0], dtype=torch.float64)
''',
    "energies_and_gradients": '''
    @torch.jit.export
    def energies_and_gradients(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                               n_owned: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, species.shape[0], dtype=torch.float64), torch.zeros_like(edge_vectors)[None]
''',
    "hessian": '''
    @torch.jit.export
    def hessian(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        n = 3 * species.shape[0]
        return torch.zeros(1, n, n, dtype=torch.float64)
''',
    # Layer stepping: only their presence is checked; the real ones pass opaque graphs and states.
    "layer_graph": '''
    @torch.jit.export
    def layer_graph(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                    n_owned: int) -> torch.Tensor:
        return edge_vectors
''',
    "layer_forward": '''
    @torch.jit.export
    def layer_forward(self, layer: int, graph: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return features
''',
    "layer_reverse": '''
    @torch.jit.export
    def layer_reverse(self, layer: int, graph: torch.Tensor, states: List[torch.Tensor], gradient: torch.Tensor,
                      radial: List[List[torch.Tensor]]) -> torch.Tensor:
        return gradient
''',
    "layer_edge_gradients": '''
    @torch.jit.export
    def layer_edge_gradients(self, graph: torch.Tensor, radial: List[List[torch.Tensor]]) -> torch.Tensor:
        return graph
''',
}


def read_metadata(path) -> tuple:
    extra = {METADATA_FILE: ""}
    with quiet_torchscript():
        module = torch.jit.load(str(path), _extra_files=extra)
    return module, extra[METADATA_FILE]


def with_metadata_text(source, destination, change) -> str:
    """``source`` saved again as ``destination`` with its metadata text passed through ``change``."""
    module, raw = read_metadata(source)
    text = raw.decode() if isinstance(raw, bytes) else raw
    with quiet_torchscript():
        torch.jit.save(module, str(destination), _extra_files={METADATA_FILE: change(text)})
    return str(destination)


def with_metadata(source, destination, change) -> str:
    """``source`` saved again as ``destination`` after ``change(metadata dict)``, written by json.dumps
    (which writes NaN and Infinity unless told not to)."""

    def edit(text: str) -> str:
        metadata = json.loads(text)
        change(metadata)
        return json.dumps(metadata)

    return with_metadata_text(source, destination, edit)


def without_method(source, destination: Path, missing: str) -> str:
    """A TorchScript file with ``source``'s metadata and every contract method but ``missing``."""
    code = "import torch\nfrom typing import List, Tuple\n\n\nclass Partial(torch.nn.Module):\n"
    code += "".join(body for name, body in _METHODS.items() if name != missing and name in REQUIRED_METHODS)
    module_file = Path(destination).with_suffix(".py")
    module_file.write_text(code)
    spec = importlib.util.spec_from_file_location(f"partial_{missing}", module_file)
    namespace = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(namespace)
    _, raw = read_metadata(source)
    with quiet_torchscript():
        torch.jit.save(torch.jit.script(namespace.Partial()), str(destination), _extra_files={METADATA_FILE: raw})
    return str(destination)
