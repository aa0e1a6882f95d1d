"""The same model and structure through ASE (MLIPCalculator) and LAMMPS (pair_style mlip).

    .venv/bin/python examples/lammps_vs_ase.py [--model mlip_md_demo/run/model.pt]

Without --model (or when the file is missing) a random aluminium model is
exported to a temporary file. Prints energy, forces and stress side by side
for a rattled 108-atom fcc aluminium cell.
"""

import argparse
import os
import tempfile

import numpy as np
from ase.build import bulk

import mlip_md
from mlip_md.lammps import QUIET, setup_model, start_lammps


def lammps_results(model: str, atoms) -> dict:
    """Energy (eV), forces (eV/Å, by atom ID) and stress (eV/Å³, ASE order and sign) from LAMMPS."""
    lmp = start_lammps(QUIET)
    # a cubic cell is already in LAMMPS's orientation; the atom map lets gather_atoms order by ID
    setup_model(lmp, model, atoms, ["Al"], settings=["atom_modify map array"])
    lmp.commands_list(["thermo_style custom step pe pxx pyy pzz pyz pxz pxy", "run 0"])
    n = len(atoms)
    forces = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3), shape=(3 * n,)).reshape(n, 3).copy()
    bar_to_ev_per_a3 = 1.0 / lmp.extract_global("nktv2p")
    # ASE stress = -pressure tensor (no kinetic part: no velocities)
    stress = -np.array([lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")]) * bar_to_ev_per_a3
    results = {"energy": lmp.get_thermo("pe"), "forces": forces, "stress": stress}
    lmp.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mlip_md_demo/run/model.pt", help="exported model with Al")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        model = args.model
        if not os.path.isfile(model):
            model = mlip_md.export(mlip_md.HIPNN(["Al"]), os.path.join(directory, "random_al.pt"))
            print(f"{args.model} not found (run mlip-md demo to train one); using a random model")
        atoms = bulk("Al", "fcc", a=4.05, cubic=True) * (3, 3, 3)
        atoms.rattle(0.1, seed=1)
        atoms.calc = mlip_md.MLIPCalculator(model)
        ase = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": atoms.get_stress()}
        lmp = lammps_results(model, atoms)
    print(f"{len(atoms)} Al atoms, model {args.model if model == args.model else 'random'}")
    print(f"{'':24} {'ASE':>18} {'LAMMPS':>18} {'|difference|':>14}")
    print(f"{'energy (eV)':24} {ase['energy']:18.10f} {lmp['energy']:18.10f} {abs(ase['energy'] - lmp['energy']):14.2e}")
    print(f"{'force on atom 0 (eV/Å)':24} {ase['forces'][0, 0]:18.10f} {lmp['forces'][0, 0]:18.10f} "
          f"{abs(ase['forces'][0, 0] - lmp['forces'][0, 0]):14.2e}")
    print(f"{'max |ΔF| (eV/Å)':24} {'':18} {'':18} {np.abs(ase['forces'] - lmp['forces']).max():14.2e}")
    print(f"{'stress xx (eV/Å³)':24} {ase['stress'][0]:18.10f} {lmp['stress'][0]:18.10f} "
          f"{abs(ase['stress'][0] - lmp['stress'][0]):14.2e}")
    print(f"{'max |Δσ| (eV/Å³)':24} {'':18} {'':18} {np.abs(ase['stress'] - lmp['stress']).max():14.2e}")


if __name__ == "__main__":
    main()
