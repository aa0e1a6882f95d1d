"""The HIP-NN model: sensitivities, interaction layers, hierarchical energy."""

from mlip_md.model.hipnn import HIPNN, hierarchicality

__all__ = ["HIPNN", "hierarchicality"]
