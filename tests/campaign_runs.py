"""Helpers of the campaign tests: a tiny campaign's settings, running the CLI, reading a campaign's store.

The tiny campaign (8–12 Al atoms, a small ensemble, a few epochs) runs in
the test budget; its oracle is EMT made slow (``campaign_oracles``), which
logs every finished calculation so a label computed twice shows up.
"""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import ase.db
import yaml

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
from campaign_oracles import LOG_VARIABLE  # noqa: E402

TINY = {
    "seed": 0,
    "oracle": {"name": "campaign_oracles:FaultyEMT", "parameters": {"delay": 0.15}, "timeout": 20.0},
    "initial": {"n_configurations": 16, "rattle": 0.05},
    "sampler": {"n_trajectories": 4, "max_steps": 80, "check_interval": 10, "timestep_fs": 2.0,
                "n_atoms": [8, 12], "temperature_start": [300, 600], "temperature_end": [800, 1500]},
    "selection": {"forces_uncertainty": 0.05, "max_labels_per_iteration": 4},
    "retrain": {"valid_fraction": 0.1, "warm_start": True},
    "stop": {"max_iterations": 2},
    "executor": {"workers": 2},
    "model": {"n_interactions": 1, "n_features": 8, "n_sensitivities": 8, "n_atom_layers": 1, "cutoff": 4.5,
              "dist_soft_min": 1.7, "dist_soft_max": 4.0},
    "training": {"max_epochs": 12, "batch_size": 4, "learning_rate": 0.005},
    "ensemble": {"size": 2},
}


def tiny(**sections) -> dict:
    """TINY with sections updated key by key (``oracle={"timeout": 1}``)."""
    values = copy.deepcopy(TINY)
    for name, changes in sections.items():
        if isinstance(changes, dict) and isinstance(values.get(name), dict):
            values[name].update(changes)
        else:
            values[name] = changes
    return values


def environment(log: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(TESTS), LOG_VARIABLE: str(log), "OMP_NUM_THREADS": "1"}


def start_campaign(config: Path, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlip_md", "campaign", str(config), "--out", str(out)],
                            cwd=ROOT, env=environment(log), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def write_config(directory: Path, values: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "campaign.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def labels(out: Path) -> dict:
    """label_id -> status of every row."""
    with ase.db.connect(out / "labels.db") as database:
        return {row.label_id: row.status for row in database.select()}


def state(out: Path, key: str):
    """A campaign state value read without disturbing a running driver (None before the table exists)."""
    try:
        with sqlite3.connect(out / "labels.db", timeout=5) as connection:
            row = connection.execute("SELECT value FROM campaign_state WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else json.loads(row[0])
