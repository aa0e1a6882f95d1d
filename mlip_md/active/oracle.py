"""The oracle: any ASE calculator, called with a time limit and retries, whose failures are data.

:func:`make_calculator` turns ``oracle.name`` into a calculator: ``emt``
(ASE's EMT, the embedded default), ``tblite`` (GFN2-xTB by default, with the
tight SCF accuracy 0.01 that Hessian-vector labels need) or ``module:Class``
for any ASE calculator (VASP, Quantum ESPRESSO, PySCF through ASE, ...),
built with ``oracle.parameters`` as keyword arguments.

:func:`label_configuration` runs in a worker: it labels one configuration
with :func:`mlip_md.data.label` (energy, forces, stress of 3-D periodic
cells) and, with ``oracle.hvp_probes = k``, k Hessian-vector pairs by
central differences of the oracle's forces. A failure, a NaN or a call past
``oracle.timeout`` is retried ``oracle.retries`` times and then returned as
a ``failed`` :class:`LabelResult` with its error text; it never raises. The
result is also written to ``task.result_path`` before it is returned, so a
driver killed while the result travels back finds it on resume instead of
labelling again.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import numpy as np
from ase import Atoms
from ase.io.jsonio import decode, encode

from mlip_md.active.config import OracleConfig
from mlip_md.atomic import write_atomically
from mlip_md.data.labels import LabellingError, label

TBLITE_DEFAULTS = {"method": "GFN2-xTB", "accuracy": 0.01, "verbosity": 0}


class OracleError(ValueError):
    """``oracle.name`` or ``oracle.parameters`` do not make a calculator; the message says why."""


class OracleTimeout(Exception):
    """A label took longer than ``oracle.timeout``."""


def _import_class(name: str):
    module_name, _, class_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise OracleError(f"oracle.name {name!r}: cannot import module {module_name!r}: {error}") from None
    calculator_class = getattr(module, class_name, None)
    if not callable(calculator_class):
        raise OracleError(f"oracle.name {name!r}: module {module_name!r} has no class {class_name!r}")
    return calculator_class


def make_calculator(oracle: OracleConfig):
    """A fresh calculator for ``oracle``; OracleError naming the problem if it cannot be built."""
    if oracle.name == "emt":
        from ase.calculators.emt import EMT

        calculator_class, parameters = EMT, dict(oracle.parameters)
    elif oracle.name == "tblite":
        try:
            from tblite.ase import TBLite
        except ImportError:
            raise OracleError("oracle.name tblite needs the tblite package: pip install tblite") from None
        calculator_class, parameters = TBLite, {**TBLITE_DEFAULTS, **oracle.parameters}
    else:
        calculator_class, parameters = _import_class(oracle.name), dict(oracle.parameters)
    try:
        return calculator_class(**parameters)
    except TypeError as error:
        raise OracleError(f"oracle.parameters {parameters} do not fit {oracle.name}: {error}") from None


def _forces(atoms: Atoms, calculator, positions: np.ndarray) -> np.ndarray:
    displaced = atoms.copy()
    displaced.positions = positions
    displaced.calc = calculator
    return displaced.get_forces(apply_constraint=False).ravel()


def hessian_vector_products(atoms: Atoms, calculator, probes: np.ndarray, step: float) -> np.ndarray:
    """H·v for each probe row ``v`` (``[P, 3N]``), eV/Å², by central differences of the forces:
    H v ≈ −(F(x + h v) − F(x − h v)) / 2h (2 force calls per probe)."""
    products = np.empty_like(probes)
    for row, probe in enumerate(probes):
        shift = step * probe.reshape(-1, 3)
        plus = _forces(atoms, calculator, atoms.positions + shift)
        minus = _forces(atoms, calculator, atoms.positions - shift)
        products[row] = -(plus - minus) / (2 * step)
    if not np.isfinite(products).all():
        raise LabellingError("the oracle's forces gave non-finite Hessian-vector products")
    return products


def _within(seconds: float, function: Callable[[], Any]) -> Any:
    """``function()``, or OracleTimeout after ``seconds`` (0: no limit).

    In a process's main thread SIGALRM interrupts the call (Python code and
    waits on external programs alike); elsewhere the call runs in a daemon
    thread that is abandoned when the time is up.
    """
    if seconds <= 0:
        return function()
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def expire(signum, frame):
            raise OracleTimeout(f"the oracle took longer than oracle.timeout = {seconds:g} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return function()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    outcome: Dict[str, Any] = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the waiting thread
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise OracleTimeout(f"the oracle took longer than oracle.timeout = {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@dataclass(frozen=True)
class LabelTask:
    """One configuration for the oracle, as submitted to an executor (it pickles)."""

    label_id: str
    atoms: Atoms
    oracle: OracleConfig
    seed: int  # of the Hessian-vector probes
    result_path: str  # JSON result, written atomically before returning


@dataclass
class LabelResult:
    """What the oracle made of one configuration: labels (``status`` done) or the error (failed)."""

    label_id: str
    status: str
    atoms: Optional[Atoms]  # labelled copy (SinglePointCalculator: energy, forces, stress), None if failed
    hvp_probes: Optional[np.ndarray]  # [P, 3N]
    hvp_products: Optional[np.ndarray]  # [P, 3N] eV/Å²
    error: Optional[str]
    attempts: int
    wall_time: float  # s, all attempts

    def to_json(self) -> str:
        labels = None
        if self.atoms is not None:
            results = self.atoms.calc.results
            labels = {key: results[key] for key in ("energy", "forces", "stress") if key in results}
        values = {**self.__dict__, "atoms": None if self.atoms is None else self.atoms.copy(), "labels": labels}
        if values["atoms"] is not None:
            values["atoms"].calc = None
        return encode(values)

    @classmethod
    def from_json(cls, text: str) -> "LabelResult":
        from ase.calculators.singlepoint import SinglePointCalculator

        values = decode(text)
        labels = values.pop("labels")
        if values["atoms"] is not None:
            values["atoms"].calc = SinglePointCalculator(values["atoms"], **labels)
        return cls(**values)


def _attempt(task: LabelTask) -> tuple:
    calculator = make_calculator(task.oracle)
    labelled = label(task.atoms, calculator)
    if task.oracle.hvp_probes == 0:
        return labelled, None, None
    rng = np.random.default_rng([task.seed, int(task.label_id[:8], 16)])
    probes = rng.choice([-1.0, 1.0], size=(task.oracle.hvp_probes, 3 * len(task.atoms)))
    return labelled, probes, hessian_vector_products(task.atoms, calculator, probes, task.oracle.hvp_step)


def label_configuration(task: LabelTask) -> LabelResult:
    """Labels ``task.atoms`` within ``oracle.timeout`` per attempt and ``1 + oracle.retries`` attempts.

    Never raises for the oracle's failures (errors, timeouts, NaN): they come
    back as a ``failed`` result with the last error's text. Writes the result
    to ``task.result_path`` (atomically) before returning it, and returns the
    result found there instead of labelling again.
    """
    if os.path.exists(task.result_path):  # finished before its pool broke: never label twice
        return read_result(task.result_path)
    start, errors = time.perf_counter(), []
    result = None
    for attempt in range(1, task.oracle.retries + 2):
        try:
            labelled, probes, products = _within(task.oracle.timeout, lambda: _attempt(task))
        except Exception as error:  # the oracle is any user calculator: whatever it raises is a failed label
            errors.append(f"attempt {attempt}: {type(error).__name__}: {error}")
            continue
        result = LabelResult(task.label_id, "done", labelled, probes, products, None, attempt,
                             time.perf_counter() - start)
        break
    if result is None:
        result = LabelResult(task.label_id, "failed", None, None, None, "; ".join(errors), len(errors),
                             time.perf_counter() - start)
    _write_text(task.result_path, result.to_json())
    return result


def _write_text(path: str, text: str) -> None:
    def write(partial: str) -> None:
        with open(partial, "w") as handle:
            handle.write(text)

    write_atomically(path, write)


def read_result(path: str) -> LabelResult:
    """A result written by :func:`label_configuration`."""
    with open(path) as handle:
        return LabelResult.from_json(handle.read())
