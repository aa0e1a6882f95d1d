"""Runs one structure through LAMMPS with pair_style mlip; used by test_lammps.py under mpiexec.

    mpiexec -n RANKS python tests/lammps_driver.py SPEC.json

SPEC (JSON) keys: model, elements (element or NULL per atom type), cell
(lower-triangular 3×3, Å), boundary (e.g. "p p p", "s s s"), positions (Å),
types (1-based), ids, optional: processors, newton ("on"/"off"), hybrid
(bool: overlay with pair_style zero), delete_ids, ensemble (bool), nve
({"steps", "timestep_fs", "temperature", "every", "skin"}), pair_options, out (.npz).
Rank 0 writes energy (eV), virial (6, eV: xx yy zz xy xz yz), forces, per-atom
energies, per-atom virials (eV) and, for ensembles, per-atom force
uncertainty, all sorted by atom ID.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from mpi4py import MPI

from ase import Atoms

from mlip_md.lammps import QUIET, setup_model, start_lammps


def _setup(lmp, spec: dict) -> None:
    settings = ["atom_modify map array sort 0 0", f"newton {spec.get('newton', 'on')}"]
    if "processors" in spec:
        settings.append(f"processors {spec['processors']}")
    atoms = Atoms(positions=spec["positions"], cell=spec["cell"], pbc=[b == "p" for b in spec["boundary"].split()])
    setup_model(lmp, spec["model"], atoms, spec["elements"], pair_options=spec.get("pair_options", ""),
                overlay="zero 4.0" if spec.get("hybrid") else None, settings=settings,
                types=spec["types"], ids=spec["ids"])
    if spec.get("hybrid"):
        lmp.command("pair_coeff * * zero")
    if spec["boundary"] != " ".join("p" if p else "f" for p in atoms.pbc):
        lmp.command(f"change_box all boundary {spec['boundary']}")
    if spec.get("delete_ids"):
        lmp.command(f"group gone id {' '.join(map(str, spec['delete_ids']))}")
        lmp.command("delete_atoms group gone compress no")
    lmp.commands_list([
        "compute pe_atom all pe/atom",
        "compute virial_atom all stress/atom NULL virial",
        "compute virial all pressure NULL virial",
        "compute graph all pair mlip",
        "thermo_style custom step pe ke etotal c_virial[*] c_graph[*]",
        "thermo_modify norm no",
    ])
    if spec.get("ensemble"):
        lmp.command("fix sigma all pair 1 mlip forces_uncertainty 0")


def _gather(lmp, name: str, count: int) -> np.ndarray:
    values = lmp.gather_concat(name, 1, count)
    return np.ctypeslib.as_array(values, shape=(lmp.get_natoms() * count,)).reshape(-1, count).copy()


def _results(lmp, spec: dict) -> dict:
    ids = np.ctypeslib.as_array(lmp.gather_concat("id", 0, 1), shape=(lmp.get_natoms(),)).copy()
    order = np.argsort(ids)
    nktv2p = lmp.extract_global("nktv2p")
    volume = lmp.get_thermo("vol")
    results = {
        "ids": ids[order],
        "energy": lmp.get_thermo("pe"),
        # compute pressure (bar) = W / (V · nktv2p); stress/atom (bar·Å³) = −w_i / nktv2p
        "virial": np.ctypeslib.as_array(lmp.extract_compute("virial", 0, 1), shape=(6,)) * volume / nktv2p,
        "forces": _gather(lmp, "f", 3)[order],
        "atom_energies": _gather(lmp, "c_pe_atom", 1)[order, 0],
        "atom_virials": -_gather(lmp, "c_virial_atom", 6)[order] / nktv2p,
        "atoms_per_rank": np.array(MPI.COMM_WORLD.allgather(lmp.extract_global("nlocal"))),
        # compute pair mlip summed over ranks: nodes, edges, model s, pair s, exchanged ghosts, exchange s
        "graph": np.ctypeslib.as_array(lmp.extract_compute("graph", 0, 1), shape=(6,)).copy(),
    }
    if spec.get("ensemble"):
        results["forces_uncertainty"] = _gather(lmp, "f_sigma", 1)[order, 0]
    return results


def _nve(lmp, nve: dict) -> tuple:
    """Total energy (eV) and temperature (K) every ``every`` steps of a velocity-Verlet run."""
    lmp.commands_list([
        f"neighbor {nve.get('skin', 2.0)} bin",
        f"velocity all create {nve['temperature']} 4928459 mom yes rot yes dist gaussian loop geom",
        f"timestep {nve['timestep_fs'] / 1000.0}",
        "fix integrate all nve",
        f"thermo {nve['every']}",
    ])
    energies, temperatures = [], []
    for _ in range(nve["steps"] // nve["every"] + 1):
        lmp.command("run 0 post no" if not energies else f"run {nve['every']} post no")
        energies.append(lmp.get_thermo("etotal"))
        temperatures.append(lmp.get_thermo("temp"))
    return np.array(energies), np.array(temperatures)


def main(spec_path: str) -> None:
    with open(spec_path) as handle:
        spec = json.load(handle)
    lmp = start_lammps(QUIET)
    _setup(lmp, spec)
    lmp.command("run 0 post no")
    results = _results(lmp, spec)
    if "nve" in spec:
        results["nve_energies"], results["nve_temperatures"] = _nve(lmp, spec["nve"])
        ids = np.ctypeslib.as_array(lmp.gather_concat("id", 0, 1), shape=(lmp.get_natoms(),))
        results["positions"] = _gather(lmp, "x", 3)[np.argsort(ids)]  # atoms migrated: sort again
        results["neighbor_builds"] = lmp.get_thermo("nbuild")
    if lmp.extract_setting("world_rank") == 0:
        np.savez(spec["out"], **results)
    lmp.close()


if __name__ == "__main__":
    main(sys.argv[1])
