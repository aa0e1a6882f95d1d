"""mlip_md: HIP-NN interatomic potentials from QM data to production MD.

Public API:

* :class:`HIPNN` — the model (PyTorch module).
* :func:`export` — write one model or an ensemble as one TorchScript file.
* :func:`load_exported` — open such a file and check its metadata.
* :class:`MLIPCalculator` — ASE calculator serving an exported file.
"""

__version__ = "0.1.0"

from mlip_md.model.hipnn import HIPNN, hierarchicality  # noqa: E402
from mlip_md.contract import ModelFileError, load_exported  # noqa: E402
from mlip_md.export import export  # noqa: E402
from mlip_md.calculator import CloseContactWarning, MLIPCalculator  # noqa: E402

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
