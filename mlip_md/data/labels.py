"""Labelling: a reference calculator's energy, forces, stress and Hessian on a copy of a structure.

:func:`label` is the one place where mlip_md turns a structure into training
data; data generation, the benchmarks, the tests and the active-learning
oracle all call it. The labels sit in a ``SinglePointCalculator`` (energy,
forces, stress) and in ``info["hessian"]`` (flat ``(3N)²``), which is how
``ase.io.write`` stores them in extended XYZ and trajectory files and how
:func:`mlip_md.data.read_configurations` reads them back.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Optional

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

# Keys a previous calculation may have left in info/arrays; they would shadow the new labels.
_STALE_INFO = ("energy", "free_energy", "stress", "virial", "hessian")
_STALE_ARRAYS = ("forces", "hessian")
# What a failing reference calculator raises (ASE's CalculationFailed is a RuntimeError);
# anything else is a programming error and propagates unchanged.
_CALCULATOR_ERRORS = (RuntimeError, ValueError, ArithmeticError, OSError)


class LabellingError(RuntimeError):
    """The reference calculator failed on a configuration or returned unusable values.

    The message names the configuration and the problem; callers that label
    many configurations (the active-learning oracle) record it and move on.
    """


def describe(atoms: Atoms, info: Optional[Mapping] = None) -> str:
    """How error messages name a configuration: formula, atom count and its ``kind`` if any."""
    kind = {**atoms.info, **(info or {})}.get("kind")
    return f"{atoms.get_chemical_formula()} ({len(atoms)} atoms{f', kind {kind}' if kind else ''})"


def _checked(values, what: str, source: str, shape: tuple) -> np.ndarray:
    """``values`` as a float array of ``shape``; a :class:`LabellingError` from ``source`` if not, or not finite."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != shape:
        raise LabellingError(f"{source} returned {what} of shape {values.shape}, expected {shape}")
    if not np.isfinite(values).all():
        raise LabellingError(f"{source} returned non-finite {what} (NaN or inf)")
    return values


def _wants_stress(atoms: Atoms, calculator, stress: Optional[bool], name: str) -> bool:
    implemented = "stress" in getattr(calculator, "implemented_properties", ())
    if stress is None:
        return bool(atoms.pbc.all()) and implemented
    if stress and not atoms.pbc.all():
        raise ValueError(f"{name}: a stress label needs a 3-D periodic cell, pbc is {atoms.pbc.tolist()}")
    return stress


@contextlib.contextmanager
def _failures_named(source: str):
    """Turns what a failing calculator raises into a :class:`LabellingError` that names ``source``."""
    try:
        yield
    except LabellingError:
        raise
    except _CALCULATOR_ERRORS as error:
        raise LabellingError(f"{source} failed: {type(error).__name__}: {error}") from error


def finite_difference_hessian(atoms: Atoms, calculator, step: float = 5e-3, symmetrize: bool = True) -> np.ndarray:
    """Central differences of ``calculator``'s forces, ``(3N, 3N)`` eV/Å²; row k is −∂F/∂x_k.

    ``symmetrize`` returns (H + Hᵀ)/2 (labels); ``False`` keeps the raw rows (test oracle).
    """
    size = 3 * len(atoms)
    hessian = np.zeros((size, size))
    for row in range(size):
        forces = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.calc = calculator
            displaced.positions[row // 3, row % 3] += sign * step
            forces.append(displaced.get_forces(apply_constraint=False).ravel())
        hessian[row] = -(forces[0] - forces[1]) / (2 * step)
    return 0.5 * (hessian + hessian.T) if symmetrize else hessian


def _without_labels(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` without the labels of an earlier calculation in ``info``/``arrays``."""
    copy = atoms.copy()
    for key in _STALE_INFO:
        copy.info.pop(key, None)
    for key in _STALE_ARRAYS:
        copy.arrays.pop(key, None)
    return copy


def label(
    atoms: Atoms,
    calculator,
    *,
    stress: Optional[bool] = None,
    hessian: bool = False,
    hessian_step: float = 5e-3,
    info: Optional[Mapping] = None,
) -> Atoms:
    """A copy of ``atoms`` labelled by ``calculator`` (any ASE calculator; ``atoms`` is left alone).

    The copy carries a ``SinglePointCalculator`` with the energy (eV), forces
    (eV/Å, without constraints applied) and, for a 3-D periodic cell whose
    calculator implements it, the stress (Voigt, eV/Å³).

    Args:
        atoms: the configuration.
        calculator: the reference calculator; it is attached to a copy.
        stress: None labels stress when the cell is 3-D periodic and the
            calculator implements it; True demands it (ValueError for a
            cell that is not periodic in 3-D); False never labels it.
        hessian: also label ``info["hessian"]``: central differences of the
            forces with ``hessian_step`` (Å), symmetrised, flat ``(3N)²``
            eV/Å² (6N more force calls).
        info: extra ``info`` entries for the copy (e.g. ``{"kind": "md_300K"}``).

    Labels a previous calculation left in ``info``/``arrays`` (energy, stress,
    hessian, forces) are dropped so they cannot shadow the new ones.

    Raises :class:`LabellingError`, naming the configuration, when the
    calculator fails or returns values of the wrong shape, NaN or inf.
    """
    name = describe(atoms, info)
    source, n_atoms = f"{name}: {type(calculator).__name__}", len(atoms)
    with_stress = _wants_stress(atoms, calculator, stress, name)
    work = atoms.copy()
    work.calc = calculator
    with _failures_named(source):
        labels = {
            "energy": float(_checked(work.get_potential_energy(), "energy", source, ())),
            "forces": _checked(work.get_forces(apply_constraint=False), "forces", source, (n_atoms, 3)),
        }
        if with_stress:
            labels["stress"] = _checked(work.get_stress(apply_constraint=False), "stress", source, (6,))
        if hessian:
            matrix = finite_difference_hessian(work, calculator, hessian_step)
            hessian_label = _checked(matrix, "Hessian", source, (3 * n_atoms,) * 2).ravel()
    labelled = _without_labels(atoms)
    labelled.info.update(info or {})
    if hessian:
        labelled.info["hessian"] = hessian_label
    labelled.calc = SinglePointCalculator(labelled, **labels)
    return labelled
