"""Checkpoint files of one member's run, and the check that a resume continues the same run.

A checkpoint holds the model, optimiser, scheduler and loop state together
with what defines the run: the whole configuration and a fingerprint of the
data (content hashes of the data files and of the split). Resuming compares
both, so a changed seed, regenerated data or other settings are refused with
the differences named rather than silently continued.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional

import torch

from mlip_md.atomic import write_atomically
from mlip_md.train.config import Config
from mlip_md.train.errors import ResumeError

# Settings a resumed run may change: the length of the run, the export precision, how often validation
# Hessians are computed and how the work is spread over processes and threads.
RESUMABLE = ("training.max_epochs", "training.early_stopping_patience", "training.export_dtype",
             "training.valid_hessian_every", "training.workers", "training.threads")
# Where the data lie; the fingerprint compares what they contain, so moved files still resume.
DATA_PATHS = ("data.train", "data.test")


def save(state: dict, path: str) -> None:
    """Writes a checkpoint atomically, so an interrupted run never corrupts the last good one."""
    write_atomically(path, lambda partial: torch.save(state, partial))


def load(path: str) -> dict:
    return torch.load(path, weights_only=True)


def _flatten(sections: Mapping[str, Any]) -> Dict[str, Any]:
    return {f"{name}.{key}": value for name, values in sections.items() for key, value in values.items()}


def differences(saved: Mapping[str, Any], config: Config, fingerprint: Mapping[str, Optional[str]]) -> List[str]:
    """What differs between a checkpoint's run and this one, as ``"training.seed: 0 -> 1"`` or
    ``"data.train content changed"``; empty when the run may resume."""
    old, new = _flatten(saved.get("config", {})), _flatten(config.to_dict())
    ignored = RESUMABLE + DATA_PATHS
    changed = [
        f"{key}: {old.get(key, 'unset')!r} -> {new.get(key, 'unset')!r}"
        for key in sorted(set(old) | set(new))
        if key not in ignored and old.get(key) != new.get(key)
    ]
    saved_fingerprint = saved.get("fingerprint")
    if saved_fingerprint is None:
        return changed + ["data: the checkpoint records no data fingerprint"]
    return changed + [
        f"{name} changed"
        for name in sorted(set(saved_fingerprint) | set(fingerprint))
        if saved_fingerprint.get(name) != fingerprint.get(name)
    ]


def check_resumable(
    saved: Mapping[str, Any], config: Config, fingerprint: Mapping[str, Optional[str]], path: str, directory: str
) -> None:
    """Raises :class:`ResumeError` naming every difference between the checkpoint at ``path`` and
    this run; the message suggests a new output directory or deleting ``directory``."""
    changed = differences(saved, config, fingerprint)
    if changed:
        sections = sorted({re.split(r"[. :]", item)[0] for item in changed})
        raise ResumeError(
            f"{path} was written with different {', '.join(sections)} settings: {'; '.join(changed)}. "
            "Resume with the original configuration and data, or start fresh: give a new output "
            f"directory (--out) or delete {directory}"
        )


def trim_log(path: str, epochs: int) -> None:
    """Keeps the records of the first ``epochs`` epochs in ``metrics.jsonl``: lines written after the
    last checkpoint (an interrupted epoch) or by an earlier run in a fresh directory go."""
    if not os.path.exists(path):
        return
    with open(path) as handle:
        lines = [line for line in handle if line.strip() and json.loads(line)["epoch"] <= epochs]
    with open(path, "w") as handle:
        handle.writelines(lines)
