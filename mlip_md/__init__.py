"""mlip_md: HIP-NN interatomic potentials from QM data to production MD.

Public API:

* :class:`HIPNN` — the model (PyTorch module).
* :func:`export` — write one model or an ensemble as one TorchScript file.
* :func:`load_exported` — open such a file and check its metadata.
* :class:`MLIPCalculator` — ASE calculator serving an exported file.
"""

from mlip_md.version import __version__
from mlip_md.model.hipnn import HIPNN, hierarchicality
from mlip_md.contract import ModelFileError, load_exported
from mlip_md.export import export
from mlip_md.calculator import CloseContactWarning, MLIPCalculator

__all__ = [
    "HIPNN",
    "hierarchicality",
    "export",
    "load_exported",
    "ModelFileError",
    "MLIPCalculator",
    "CloseContactWarning",
    "__version__",
]
