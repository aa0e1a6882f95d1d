"""The ``mlip-md`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from ase.build import bulk

import mlip_md
from mlip_md.calculator import MLIPCalculator
from mlip_md.contract import load_exported
from mlip_md.lammps import PluginBuildError
from mlip_md.md import EnergyRecord, run_nve


def _demo(args: argparse.Namespace) -> int:
    """The main job on built-in defaults: EMT Al data -> trained HIP-NN -> exported file -> ASE and LAMMPS MD."""
    import torch
    from ase.calculators.emt import EMT

    from mlip_md.data.generate import generate_aluminium, write_images
    from mlip_md.train.config import config_from_dict
    from mlip_md.train.trainer import train

    if args.threads:
        torch.set_num_threads(args.threads)
    data = write_images(generate_aluminium(args.configs, seed=args.seed), os.path.join(args.out, "aluminium.extxyz"))
    print(f"1. labelled {args.configs} aluminium structures with EMT: {data}")
    config = config_from_dict({
        "data": {"train": data, "valid_fraction": 0.1, "test_fraction": 0.1},
        "model": {"species": ["Al"], "cutoff": args.cutoff, "dist_soft_min": 1.7, "dist_soft_max": 5.0},
        "training": {"max_epochs": args.epochs, "batch_size": 8, "learning_rate": 0.003, "seed": args.seed,
                     "export_dtype": args.dtype},
    })
    summary = train(config, os.path.join(args.out, "run"), show_progress=True)
    test = summary["members"][0]["test"]
    print(f"2. trained HIP-NN for {args.epochs} epochs; test errors: energy {test['energy_mae']:.1f} meV/atom, "
          f"forces {test['forces_mae']:.3f} eV/Å (MAE)")
    print(f"3. exported model: {summary['model']}")
    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * ((args.repeat,) * 3)
    atoms.rattle(0.05, seed=args.seed)
    atoms.calc = MLIPCalculator(summary["model"])
    print(f"4. NVE: {len(atoms)} Al atoms, {args.steps} steps of {args.timestep} fs from {args.temperature} K")
    print(f"{'step':>6} {'time/fs':>8} {'Epot/eV/atom':>14} {'Ekin/eV/atom':>13} {'Etot/eV/atom':>14} {'T/K':>8}")

    def show(r: EnergyRecord) -> None:
        print(f"{r.step:6d} {r.time_fs:8.1f} {r.potential:14.6f} {r.kinetic:13.6f} {r.total:14.6f} {r.temperature:8.1f}")

    records = run_nve(atoms, args.steps, args.timestep, args.temperature, args.log_interval, args.seed, show)
    drift = records[-1].total - records[0].total
    print(f"total-energy drift: {drift:+.2e} eV/atom over {records[-1].time_fs:.0f} fs")
    model_energy = atoms.get_potential_energy() / len(atoms)
    atoms.calc = EMT()
    print(f"final frame: model {model_energy:.4f} eV/atom, EMT {atoms.get_potential_energy() / len(atoms):.4f} eV/atom")
    if not args.no_lammps:
        _demo_lammps(summary["model"], atoms, args)
    return 0


def _demo_lammps(model: str, atoms, args: argparse.Namespace) -> None:
    """Demo step 5: the same model file in LAMMPS (pair_style mlip): ASE vs LAMMPS, then LAMMPS NVE."""
    from mlip_md.lammps import create_atoms_from_ase, start_lammps

    atoms = atoms.copy()
    atoms.wrap()
    atoms.calc = MLIPCalculator(model)
    ase_energy = atoms.get_potential_energy()
    lmp = start_lammps(["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_list(["units metal", "atom_style atomic"])
    create_atoms_from_ase(lmp, atoms, ["Al"])
    lmp.commands_list(["pair_style mlip", f"pair_coeff * * {model} Al", "thermo_modify norm yes", "run 0"])
    lammps_energy = lmp.get_thermo("pe") * len(atoms)
    print(f"5. LAMMPS (pair_style mlip, same file, same frame): energy {lammps_energy:.8f} eV, "
          f"ASE {ase_energy:.8f} eV, difference {abs(lammps_energy - ase_energy):.1e} eV")
    lmp.commands_list([f"velocity all create {args.temperature} {args.seed + 1} mom yes rot yes dist gaussian",
                       "fix integrate all nve", f"timestep {args.timestep / 1000.0}"])
    print(f"   LAMMPS NVE, {len(atoms)} atoms, {args.steps} steps from {args.temperature} K")
    print(f"   {'':6} {'step':>6} {'Etot/eV/atom':>14} {'T/K':>8}")
    totals = []
    for step in range(0, args.steps + 1, args.log_interval):
        lmp.command("run 0 post no" if step == 0 else f"run {args.log_interval} pre no post no")
        totals.append(lmp.get_thermo("etotal"))
        print(f"   LAMMPS {step:6d} {totals[-1]:14.6f} {lmp.get_thermo('temp'):8.1f}")
    print(f"   LAMMPS total-energy drift: {totals[-1] - totals[0]:+.2e} eV/atom")
    lmp.close()


def _generate(args: argparse.Namespace) -> int:
    """Writes a labelled data set: EMT aluminium or a GFN2-xTB molecule."""
    from mlip_md.data.generate import generate_aluminium, generate_molecule, write_images

    if args.system == "aluminium":
        images = generate_aluminium(args.n, seed=args.seed, temperatures=args.temperatures)
    else:
        images = generate_molecule(args.n, args.molecule, seed=args.seed, temperature=args.temperatures[0],
                                   hessians=not args.no_hessians)
    path = write_images(images, args.out)
    sizes = [len(atoms) for atoms in images]
    print(f"wrote {len(images)} configurations ({min(sizes)}-{max(sizes)} atoms) to {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    """Trains the models of a YAML configuration and exports them to OUT/model.pt."""
    from mlip_md.train.config import load_config
    from mlip_md.train.trainer import train

    summary = train(load_config(args.config), args.out)
    print(json.dumps({"model": summary["model"], "test": summary["members"][0]["test"]}, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Prints the errors of an exported model on a data file as JSON."""
    from mlip_md.train.evaluate import evaluate_exported

    print(json.dumps(evaluate_exported(args.model, args.data), indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    """Prints the metadata of an exported model as JSON."""
    print(json.dumps(load_exported(args.model).metadata, indent=2))
    return 0


def _lammps_plugin(args: argparse.Namespace) -> int:
    """Builds the LAMMPS plugin if needed and prints its absolute path."""
    from mlip_md.lammps import build_plugin

    print(build_plugin(rebuild=args.rebuild, verbose=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlip-md", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mlip_md {mlip_md.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="EMT Al data -> train HIP-NN -> export -> ASE NVE MD -> LAMMPS NVE (the main job)")
    demo.add_argument("--configs", type=int, default=80, help="EMT structures to label (default 80)")
    demo.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    demo.add_argument("--out", default="mlip_md_demo", help="output directory (default: mlip_md_demo)")
    demo.add_argument("--repeat", type=int, default=3, help="fcc cubic cells per direction (default 3: 108 atoms)")
    demo.add_argument("--steps", type=int, default=200, help="MD steps (default 200)")
    demo.add_argument("--timestep", type=float, default=1.0, help="time step in fs (default 1)")
    demo.add_argument("--temperature", type=float, default=300.0, help="initial temperature in K (default 300)")
    demo.add_argument("--log-interval", type=int, default=20, help="steps between printed lines (default 20)")
    demo.add_argument("--cutoff", type=float, default=6.0, help="model cutoff in Å (default 6)")
    demo.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    demo.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-lammps", action="store_true", help="skip step 5, the LAMMPS run")
    demo.set_defaults(handler=_demo)

    generate = commands.add_parser("generate", help="make an example labelled data set with a reference calculator")
    generate.add_argument("system", choices=["aluminium", "molecule"],
                          help="aluminium: fcc Al labelled with ASE's EMT; molecule: GFN2-xTB MD frames (tblite)")
    generate.add_argument("--molecule", default="CH3CH2OH", help="ASE G2 molecule name (default CH3CH2OH)")
    generate.add_argument("--no-hessians", action="store_true", help="molecule: skip finite-difference Hessians")
    generate.add_argument("--n", type=int, default=500, help="number of configurations (default 500)")
    generate.add_argument("--out", default="data/aluminium.extxyz", help="output file; format from the extension")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 600.0, 900.0],
                          help="MD temperatures in K (default 300 600 900; molecule: the first)")
    generate.set_defaults(handler=_generate)

    train = commands.add_parser("train", help="train HIP-NN models from a YAML configuration")
    train.add_argument("config", help="YAML configuration (see mlip_md/train/config.py for every key)")
    train.add_argument("--out", required=True, help="output directory: model.pt, metrics.json, checkpoints")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="errors of an exported model on a labelled data file")
    evaluate.add_argument("model", help="exported model file")
    evaluate.add_argument("data", help="ASE-readable file with energies (and forces)")
    evaluate.set_defaults(handler=_eval)

    info = commands.add_parser("info", help="print the metadata of an exported model")
    info.add_argument("model", help="exported model file")
    info.set_defaults(handler=_info)

    plugin = commands.add_parser("lammps-plugin", help="build pair_style mlip for LAMMPS (cached) and print its path")
    plugin.add_argument("--rebuild", action="store_true", help="build even if a cached plugin exists")
    plugin.set_defaults(handler=_lammps_plugin)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, PluginBuildError) as error:
        print(f"mlip-md {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
