"""The label store: one SQLite file (``DIR/labels.db``), the campaign's single source of truth.

It is an ASE database (open it with ``ase db DIR/labels.db``) with three more
tables in the same file: the campaign state (iteration, phase, config), the
finished trajectories of the current sampling round, and the per-iteration
report entries. Everything that must change together is written in one
transaction (:meth:`LabelStore.transaction`), so a driver killed at any
moment leaves either the old or the new state, never half of it.

Rows: one per configuration sent to the oracle (or read from
``initial.data``), with ``status`` ``pending``, ``done`` or ``failed`` and
their provenance as key-value pairs (see :data:`PROVENANCE`). A row's
``label_id`` is a content hash of the structure and the oracle's settings
(:func:`label_id`): the same configuration is never labelled twice, and its
train/validation split (:func:`split_of`) never changes as labels are added.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional

import ase.db
import numpy as np
from ase import Atoms

STATUSES = ("pending", "done", "failed")
# Key-value pairs of a row, besides label_id and status (null values are left out).
PROVENANCE = {
    "iteration": "campaign iteration that asked for the label",
    "trajectory": "trajectory index within the iteration (-1: initial data)",
    "source": "sampler, initial (generated) or initial.data (read from a file)",
    "model_sha256": "SHA-256 of the ensemble file that flagged it",
    "t0": "schedule T0 (K)", "t1": "schedule T1 (K)", "amplitude": "schedule A (K)",
    "period_fs": "schedule τ (fs)", "strain": "schedule strain at t_max",
    "flag_step": "MD step at which it was flagged", "flag_temperature": "target temperature there (K)",
    "predicted_forces_uncertainty": "max over atoms of the ensemble's σ_F (eV/Å)",
    "predicted_energy_uncertainty": "the ensemble's σ_E/√N (eV)",
    "true_forces_error": "max over atoms of |F_model − F_oracle| (eV/Å), once labelled",
    "oracle": "oracle name", "oracle_hash": "SHA-256 of the oracle's settings",
    "wall_time": "seconds the oracle took (all attempts)", "attempts": "oracle attempts",
    "error": "why a failed label failed", "split": "train or valid (by label_id)",
}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS campaign_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS campaign_trajectories (iteration INTEGER, trajectory INTEGER, result TEXT NOT NULL, "
    "PRIMARY KEY (iteration, trajectory))",
    "CREATE TABLE IF NOT EXISTS campaign_iterations (iteration INTEGER PRIMARY KEY, entry TEXT NOT NULL)",
)


def label_id(atoms: Atoms, oracle_hash: str) -> str:
    """Content hash (32 hex digits) of numbers, positions, cell, pbc and the oracle's settings."""
    digest = hashlib.sha256()
    for array in (np.asarray(atoms.numbers, np.int64), np.asarray(atoms.positions, np.float64),
                  np.asarray(atoms.cell[:], np.float64), np.asarray(atoms.pbc, np.bool_)):
        digest.update(repr(array.shape).encode() + np.ascontiguousarray(array).tobytes())
    digest.update(oracle_hash.encode())
    return digest.hexdigest()[:32]


def split_of(identifier: str, valid_fraction: float) -> str:
    """``"valid"`` or ``"train"`` from the label id alone, so adding labels never moves one."""
    return "valid" if int(identifier[:8], 16) / 16**8 < valid_fraction else "train"


def _pairs(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Key-value pairs an ASE row takes: nulls dropped, numpy scalars made Python numbers."""
    pairs = {}
    for key, value in values.items():
        if value is None:
            continue
        pairs[key] = value.item() if isinstance(value, np.generic) else value
    return pairs


class LabelStore:
    """``labels.db``: labels with provenance and the campaign's state, in one SQLite file."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))
        self.db = ase.db.connect(self.path, type="db", use_lock_file=False, serial=True)
        with self.transaction() as connection:
            for statement in _SCHEMA:
                connection.execute(statement)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A transaction over the labels and the campaign tables (an ``sqlite3.Connection``):
        committed when the block ends, rolled back if it raises."""
        with self.db as database:
            database.count()  # makes ASE create its tables in this transaction
            yield database.connection

    def _query(self, sql: str, parameters: tuple = ()) -> list:
        """Rows of a read, inside the open transaction if there is one."""
        if self.db.connection is not None:
            return self.db.connection.execute(sql, parameters).fetchall()
        with self.transaction() as connection:
            return connection.execute(sql, parameters).fetchall()

    # -- campaign state --------------------------------------------------------------------------------------
    def state(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM campaign_state WHERE key = ?", (key,))
        return default if not rows else json.loads(rows[0][0])

    @staticmethod
    def set_state(connection, **values: Any) -> None:
        """Sets state keys inside a transaction (``connection`` from :meth:`transaction`)."""
        for key, value in values.items():
            connection.execute("INSERT OR REPLACE INTO campaign_state (key, value) VALUES (?, ?)",
                               (key, json.dumps(value, allow_nan=False)))

    # -- trajectories and report entries ---------------------------------------------------------------------
    @staticmethod
    def save_trajectory(connection, iteration: int, trajectory: int, result: Mapping) -> None:
        connection.execute("INSERT OR REPLACE INTO campaign_trajectories VALUES (?, ?, ?)",
                           (iteration, trajectory, json.dumps(result)))

    def trajectories(self, iteration: int) -> Dict[int, dict]:
        """The finished trajectories of ``iteration``, by index (their ``to_dict`` form)."""
        rows = self._query("SELECT trajectory, result FROM campaign_trajectories WHERE iteration = ?", (iteration,))
        return {index: json.loads(text) for index, text in rows}

    @staticmethod
    def save_entry(connection, iteration: int, entry: Mapping) -> None:
        connection.execute("INSERT OR REPLACE INTO campaign_iterations VALUES (?, ?)",
                           (iteration, json.dumps(entry, allow_nan=False)))

    def entries(self) -> List[dict]:
        """Report entries of every iteration so far, in order."""
        rows = self._query("SELECT entry FROM campaign_iterations ORDER BY iteration")
        return [json.loads(text) for (text,) in rows]

    # -- labels ------------------------------------------------------------------------------------------------
    def row(self, identifier: str):
        """The row of ``identifier``, or None."""
        rows = list(self.db.select(label_id=identifier))
        return rows[0] if rows else None

    def add(self, atoms: Atoms, identifier: str, status: str, provenance: Mapping[str, Any],
            data: Optional[Mapping[str, Any]] = None) -> bool:
        """Writes a new row (inside a transaction); False, writing nothing, if ``identifier`` is stored already."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if self.row(identifier) is not None:
            return False
        self.db.write(atoms, key_value_pairs={**_pairs(provenance), "label_id": identifier, "status": status},
                      data=dict(data or {}))
        return True

    def update(self, identifier: str, status: str, atoms: Optional[Atoms] = None,
               data: Optional[Mapping[str, Any]] = None, **provenance: Any) -> None:
        """Changes a row's status and provenance, and its labels when ``atoms`` carries them (inside a transaction)."""
        row = self.row(identifier)
        if row is None:
            raise KeyError(f"no label {identifier} in {self.path}")
        self.db.update(row.id, atoms=atoms, data=dict(data or {}) or None, status=status, **_pairs(provenance))

    def rows(self, **selection: Any) -> list:
        """Rows matching key-value pairs (e.g. ``status="done"``), ordered by label id."""
        return sorted(self.db.select(**selection), key=lambda row: row.label_id)

    def counts(self) -> Dict[str, int]:
        """Rows by status."""
        return {status: self.db.count(status=status) for status in STATUSES}

    def known(self, identifier: str) -> bool:
        return self.row(identifier) is not None
