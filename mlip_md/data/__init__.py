"""Labelled configurations: labelling, reading, splitting, reference energies, batching."""

from mlip_md.data.batch import Batch, GraphCache, collate
from mlip_md.data.dataset import (
    Configuration,
    LabelError,
    configuration_from_atoms,
    fit_reference_energies,
    read_configurations,
    split_indices,
)
from mlip_md.data.labels import LabellingError, finite_difference_hessian, label

__all__ = [
    "Batch",
    "Configuration",
    "GraphCache",
    "LabelError",
    "LabellingError",
    "collate",
    "configuration_from_atoms",
    "finite_difference_hessian",
    "fit_reference_energies",
    "label",
    "read_configurations",
    "split_indices",
]
