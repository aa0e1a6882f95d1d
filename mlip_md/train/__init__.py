"""Training HIP-NN on energies, forces and Hessians."""

from mlip_md.train.errors import ResumeError, TrainingError
from mlip_md.train.losses import (
    Predictions,
    energy_force_errors,
    hessian_vector_error,
    full_hessian_error,
    predict,
    reference_products,
    sample_probes,
)

__all__ = [
    "Predictions",
    "ResumeError",
    "TrainingError",
    "energy_force_errors",
    "full_hessian_error",
    "hessian_vector_error",
    "predict",
    "reference_products",
    "sample_probes",
]
