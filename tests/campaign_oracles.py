"""Reference calculators for campaign tests: EMT made slow, or failing on chosen configurations.

They are real oracles (``oracle.name: campaign_oracles:FaultyEMT``) that the
campaign imports in its workers. Which configurations fail is a function of
their positions, so a rerun fails the same ones. When the environment names
a log file (``MLIP_MD_TEST_ORACLE_LOG``), every finished calculation appends
a line with its configuration's hash: a label computed twice shows up twice.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
from ase.calculators.emt import EMT

LOG_VARIABLE = "MLIP_MD_TEST_ORACLE_LOG"


def configuration_key(atoms) -> str:
    return hashlib.sha256(np.ascontiguousarray(atoms.positions).tobytes()).hexdigest()[:16]


class FaultyEMT(EMT):
    """EMT with a ``delay`` (s) per calculation and a ``fault`` on every configuration whose key falls in
    the ``fault_share`` of hashes: ``raise`` (RuntimeError), ``hang`` (sleeps an hour), ``nan`` (NaN forces)."""

    def __init__(self, delay: float = 0.0, fault: str = "none", fault_share: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.delay, self.fault, self.fault_share = delay, fault, fault_share

    def _faulty(self, atoms) -> bool:
        return int(configuration_key(atoms)[:8], 16) / 16**8 < self.fault_share

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        time.sleep(self.delay)
        faulty = self._faulty(atoms)
        if faulty and self.fault == "raise":
            raise RuntimeError("SCF did not converge (injected)")
        if faulty and self.fault == "hang":
            time.sleep(3600)
        super().calculate(atoms, properties, system_changes)
        if faulty and self.fault == "nan":
            self.results["forces"] = np.full_like(self.results["forces"], np.nan)
        log = os.environ.get(LOG_VARIABLE)
        if log:
            with open(log, "a") as handle:
                handle.write(configuration_key(atoms) + "\n")
