"""Retraining the ensemble on the store's labels: one executor task per member, then one exported file.

Each member trains with :class:`mlip_md.train.trainer.MemberRun` in
``DIR/iterations/NNN/member_M`` (checkpoint after every epoch), so a campaign
killed mid-training resumes its members where they stopped; a finished member
returns at once. The validation set is the labels whose content hash puts
them there (:func:`mlip_md.active.store.split_of`), never a permutation of the
row count, so adding labels never moves one from validation into training.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from mlip_md.data.batch import GraphCache
from mlip_md.data.dataset import Configuration, content_hash
from mlip_md.evaluate import evaluate_configurations, evaluate_exported
from mlip_md.export import export
from mlip_md.train.config import Config
from mlip_md.train.splits import DataSplit, check_data
from mlip_md.train.trainer import member_model, train_member


@dataclass(frozen=True)
class MemberTask:
    """One ensemble member's training, as submitted to an executor (it pickles)."""

    config: Config
    train: Tuple[Configuration, ...]
    valid: Tuple[Configuration, ...]
    species: Tuple[str, ...]
    member: int
    directory: str
    warm_start: Optional[str] = None  # best.pt of the same member in the previous iteration


def data_split(config: Config, train: Sequence[Configuration], valid: Sequence[Configuration],
               species: Sequence[str]) -> DataSplit:
    """The member's sets with neighbour lists, checked as a training run checks its data."""
    check_data(config, train, {"validation set": valid})
    fingerprint = {"data.train content": content_hash(train), "data.test content": content_hash(valid),
                   "data split": "by label content hash"}
    cutoff = config.model.cutoff
    return DataSplit(GraphCache(train, cutoff), GraphCache(valid, cutoff), GraphCache([], cutoff), list(species),
                     fingerprint)


def train_member_task(task: MemberTask) -> Dict[str, torch.Tensor]:
    """Trains (or resumes, or finds finished) one member; returns its best weights (a state dict)."""
    data = data_split(task.config, task.train, task.valid, task.species)
    model = train_member(task.config, data, task.member, task.directory, initial_weights=task.warm_start)
    return model.state_dict()


def member_tasks(config: Config, train: Sequence[Configuration], valid: Sequence[Configuration],
                 species: Sequence[str], directory: str, previous: Optional[str]) -> List[MemberTask]:
    """A task per member in ``directory/member_M``, warm-started from ``previous/member_M`` if given."""
    tasks = []
    for member in range(config.ensemble.size):
        warm = None if previous is None else os.path.join(previous, f"member_{member}", "best.pt")
        tasks.append(MemberTask(config, tuple(train), tuple(valid), tuple(species), member,
                                os.path.join(directory, f"member_{member}"),
                                warm if warm and os.path.exists(warm) else None))
    return tasks


@dataclass(frozen=True)
class ExportTask:
    """The members' weights to export as one ensemble file and score (an executor task: the driver
    itself runs no model)."""

    config: Config
    states: Tuple[Dict[str, torch.Tensor], ...]
    train: Tuple[Configuration, ...]  # for the members' reference energies, overwritten by the weights
    valid: Tuple[Configuration, ...]
    species: Tuple[str, ...]
    path: str
    metadata: dict
    test: Optional[str]  # labelled file scored by the exported ensemble


def export_members(config: Config, states: Sequence[Dict[str, torch.Tensor]], train: Sequence[Configuration],
                   species: Sequence[str], path: str, metadata: dict) -> str:
    """Rebuilds the members from their weights and exports them as one ensemble file."""
    members = [member_model(config, species, train, member, state) for member, state in enumerate(states)]
    return export(members, path, dtype=config.training.export_dtype,
                  extra_metadata={"training_config": config.to_dict(), **metadata})


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_task(task: ExportTask) -> dict:
    """Exports the ensemble; returns its path, SHA-256 and errors on ``test`` and the validation labels
    (the ``mlip-md eval`` JSON, or None)."""
    path = export_members(task.config, task.states, task.train, task.species, task.path, task.metadata)
    return {"model": path, "model_sha256": file_sha256(path),
            "test": evaluate_exported(path, task.test) if task.test else None,
            "valid": evaluate_configurations(path, task.valid) if task.valid else None}
