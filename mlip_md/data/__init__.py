"""Labelled configurations: reading, splitting, reference energies, batching."""

from mlip_md.data.batch import Batch, GraphCache, collate
from mlip_md.data.dataset import (
    Configuration,
    LabelError,
    configuration_from_atoms,
    fit_reference_energies,
    read_configurations,
    split_indices,
)

__all__ = [
    "Batch",
    "Configuration",
    "GraphCache",
    "LabelError",
    "collate",
    "configuration_from_atoms",
    "fit_reference_energies",
    "read_configurations",
    "split_indices",
]
