"""The training, validation and test sets of a run, read and checked before any training.

Every problem the data can have that would end a run (an element the model
lacks, a test element no training configuration has, missing Hessian labels)
is found here, before the first epoch, instead of after the training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set

import numpy as np
from ase.data import chemical_symbols

from mlip_md.data import GraphCache, read_configurations, split_indices
from mlip_md.data.dataset import Configuration, content_hash
from mlip_md.species import validate_species
from mlip_md.train.config import Config
from mlip_md.train.errors import TrainingError


@dataclass
class DataSplit:
    """Configurations of the three sets, with their neighbour lists cached once.

    ``fingerprint`` identifies the data of the run (content hashes of the files
    and of the split), for checkpoints to compare on resume.
    """

    train: GraphCache
    valid: GraphCache
    test: GraphCache
    species: List[str]
    fingerprint: Dict[str, Optional[str]] = field(default_factory=dict)


def _elements(configurations: Sequence[Configuration]) -> Set[str]:
    return {chemical_symbols[z] for c in configurations for z in np.unique(c.numbers)}


def _unlabelled(configurations: Sequence[Configuration]) -> List[str]:
    """Sources of the configurations with neither a full Hessian nor HVP pairs."""
    return [c.source for c in configurations if c.hessian is None and c.hvp_probes is None]


def _check_hessian_labels(required: Dict[str, Sequence[Configuration]],
                          optional: Dict[str, Sequence[Configuration]]) -> None:
    """Hessian training (loss.hessian > 0) needs one kind of Hessian label (full, or HVP pairs) on
    every configuration of the ``required`` sets (those drawn from data.train); an ``optional`` set
    (a separate test file) may have none, but not some."""
    missing = {name: _unlabelled(configurations) for name, configurations in required.items()}
    if any(missing.values()):
        total = sum(len(configurations) for configurations in required.values())
        where = ", ".join(f"{len(sources)} in the {name}" for name, sources in missing.items() if sources)
        example = next(sources[0] for sources in missing.values() if sources)
        raise TrainingError(
            f"Hessian training is on (loss.hessian > 0) but {sum(map(len, missing.values()))} of {total} "
            f"configuration(s) have no Hessian labels (hessian or hvp pairs): {where}; e.g. {example}. "
            "Label every configuration of data.train or set loss.hessian to 0"
        )
    for name, configurations in optional.items():
        sources = _unlabelled(configurations)
        if 0 < len(sources) < len(configurations):
            raise TrainingError(
                f"Hessian training is on (loss.hessian > 0) and the {name} mixes configurations with and "
                f"without Hessian labels: {len(sources)} of {len(configurations)} have none, e.g. {sources[0]}; "
                "label all of them or none"
            )
    labelled = [c for configurations in required.values() for c in configurations]
    if all(c.hessian is not None for c in labelled):
        return
    if not all(c.hvp_probes is not None for c in labelled):
        raise TrainingError(f"loss.hessian > 0 but the {', '.join(required)} mix full Hessians and HVP pairs; "
                            "use one kind")
    counts = sorted({len(c.hvp_probes) for c in labelled})
    if len(counts) > 1:
        raise TrainingError(f"stored HVP probes per configuration differ ({counts}); store the same number for each")


def check_data(config: Config, train: Sequence[Configuration], sets: Dict[str, Sequence[Configuration]],
               hessians_optional: Sequence[str] = ()) -> List[str]:
    """The model's element list, after checking ``train`` and the other ``sets`` (name → configurations).

    Raises :class:`TrainingError` for an element outside ``model.species``, an
    element of a validation or test set that no training configuration has
    (the model could not learn it), and, with loss.hessian > 0, a configuration
    without Hessian labels: the sets named in ``hessians_optional`` (a separate
    test file) may lack them altogether, but not on some configurations only.
    """
    trained = _elements(train)
    species = validate_species(config.model.species) if config.model.species else sorted(trained)
    for name, configurations in {"training set": train, **sets}.items():
        elements = _elements(configurations)
        unknown = sorted(elements - set(species))
        if config.model.species and unknown:
            raise TrainingError(
                f"the {name} contains element(s) {unknown} that model.species {species} lacks; "
                "add them to model.species (or leave it null to take the training data's elements)"
            )
        untrained = sorted(elements - trained)
        if untrained:
            raise TrainingError(
                f"the {name} contains element(s) {untrained} that no training configuration has, "
                f"so the model cannot learn them; add configurations with {untrained} to data.train"
            )
    if config.loss.hessian > 0:
        required = {"training set": train, **{k: v for k, v in sets.items() if k not in hessians_optional}}
        _check_hessian_labels(required, {k: v for k, v in sets.items() if k in hessians_optional})
    return list(species)


def _split_hash(indices: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for index in indices:
        digest.update(np.asarray(index, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()


def load_data(config: Config) -> DataSplit:
    """Reads the data files of ``config``, splits them reproducibly (``training.seed``) and checks them."""
    data = config.data
    configurations = read_configurations(data.train, data.energy_key, data.forces_key, require_forces=False)
    test_file = read_configurations(data.test, data.energy_key, data.forces_key, require_forces=False) if data.test else None
    indices = split_indices(
        len(configurations), data.valid_fraction, 0.0 if data.test else data.test_fraction, config.training.seed
    )
    train, valid, test = ([configurations[k] for k in index] for index in indices)
    test = test if test_file is None else test_file
    test_name = f"test set ({data.test})" if data.test else "test set"
    species = check_data(config, train, {"validation set": valid, test_name: test},
                         hessians_optional=[test_name] if data.test else [])
    fingerprint = {
        "data.train content": content_hash(configurations),
        "data.test content": None if test_file is None else content_hash(test_file),
        "data split": _split_hash(indices),
    }
    cutoff = config.model.cutoff
    return DataSplit(GraphCache(train, cutoff), GraphCache(valid, cutoff), GraphCache(test, cutoff), species, fingerprint)
