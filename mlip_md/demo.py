"""The main job on built-in defaults (``mlip-md demo``).

EMT aluminium data → a trained HIP-NN → one exported file → NVE molecular
dynamics with it in ASE and, with the same file, in LAMMPS → a short
active-learning campaign that grows the data where an ensemble disagrees. Everything lands
in one output directory; ``demo.json`` there records the options that shaped
its files, so a re-run with the same options reuses the data and resumes
training, and a re-run with other options is refused before anything is
overwritten.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ase import Atoms
from ase.build import bulk

from mlip_md.atomic import write_atomically
from mlip_md.calculator import MLIPCalculator
from mlip_md.md import EnergyRecord, run_nve

RECORD_FILE = "demo.json"
DATA_FILE = "aluminium.extxyz"
# Options that shape the files in the output directory (data, checkpoints, model);
# the MD options only shape what is printed and may change between runs.
RECORDED = ("configs", "epochs", "cutoff", "dtype", "seed")


@dataclass(frozen=True)
class DemoOptions:
    """Settings of the demo; the command line's defaults are these."""

    configs: int = 80  # EMT structures to label
    epochs: int = 30
    cutoff: float = 6.0  # Å
    dtype: str = "float64"  # of the exported model
    seed: int = 0
    repeat: int = 3  # fcc cubic cells per direction of the MD cell (3: 108 atoms)
    steps: int = 200
    timestep: float = 1.0  # fs
    temperature: float = 300.0  # K, initial
    log_interval: int = 20
    threads: int = 0  # torch threads; 0 leaves torch's choice
    lammps: bool = True  # step 5, the LAMMPS run
    campaign_iterations: int = 2  # step 6, sampling rounds of the campaign (0 skips it)

    def recorded(self) -> dict:
        return {name: getattr(self, name) for name in RECORDED}


def check_record(out: str, options: DemoOptions) -> bool:
    """Whether ``out`` already holds this demo's files; ValueError if they came from other options.

    Returns False for an empty or new directory. A directory with files but
    no record (not made by ``mlip-md demo``) is refused too.
    """
    path = os.path.join(out, RECORD_FILE)
    if not os.path.exists(path):
        if os.path.isdir(out) and os.listdir(out):
            raise ValueError(f"{out} is not empty and has no {RECORD_FILE}: not a demo directory; "
                             "use a new --out or delete it")
        return False
    with open(path) as handle:
        recorded = json.load(handle).get("options", {})
    wanted = options.recorded()
    differences = [f"--{name.replace('_', '-')} {recorded.get(name)} there, {wanted[name]} now"
                   for name in RECORDED if recorded.get(name) != wanted[name]]
    if differences:
        raise ValueError(f"{out} holds a demo run made with other options ({'; '.join(differences)}); "
                         "use a new --out or delete it")
    return True


def _write_record(out: str, options: DemoOptions) -> None:
    def write(partial: str) -> None:
        with open(partial, "w") as handle:
            json.dump({"options": options.recorded()}, handle, indent=2)

    write_atomically(os.path.join(out, RECORD_FILE), write)


def make_data(out: str, options: DemoOptions, reuse: bool) -> str:
    """Step 1: EMT-labelled aluminium in ``out/aluminium.extxyz`` (kept when ``reuse`` and present)."""
    from mlip_md.data.generate import generate_aluminium, write_images

    path = os.path.join(out, DATA_FILE)
    if reuse and os.path.isfile(path):
        print(f"1. reusing the {options.configs} EMT-labelled aluminium structures of {path}")
        return path
    path = write_images(generate_aluminium(options.configs, seed=options.seed), path)
    print(f"1. labelled {options.configs} aluminium structures with EMT: {path}")
    return path


def train_model(out: str, data: str, options: DemoOptions) -> str:
    """Steps 2 and 3: trains HIP-NN on ``data`` in ``out/run`` (resuming its checkpoints), exports it."""
    from mlip_md.train.config import config_from_dict
    from mlip_md.train.trainer import train

    config = config_from_dict({
        "data": {"train": data, "valid_fraction": 0.1, "test_fraction": 0.1},
        "model": {"species": ["Al"], "cutoff": options.cutoff, "dist_soft_min": 1.7, "dist_soft_max": 5.0},
        "training": {"max_epochs": options.epochs, "batch_size": 8, "learning_rate": 0.003, "seed": options.seed,
                     "export_dtype": options.dtype},
    })
    summary = train(config, os.path.join(out, "run"), show_progress=True)
    test = summary["members"][0]["test"]
    print(f"2. trained HIP-NN for {options.epochs} epochs; test errors: energy {test['energy_mae']:.1f} meV/atom, "
          f"forces {test['forces_mae']:.3f} eV/Å (MAE)")
    print(f"3. exported model: {summary['model']}")
    return summary["model"]


def _show(record: EnergyRecord) -> None:
    print(f"{record.step:6d} {record.time_fs:8.1f} {record.potential:14.6f} {record.kinetic:13.6f} "
          f"{record.total:14.6f} {record.temperature:8.1f}")


def ase_nve(model: str, options: DemoOptions) -> Atoms:
    """Step 4: NVE in ASE from a rattled fcc cell; returns the final frame, compared with EMT."""
    from ase.calculators.emt import EMT

    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * ((options.repeat,) * 3)
    atoms.rattle(0.05, seed=options.seed)
    atoms.calc = MLIPCalculator(model)
    print(f"4. NVE: {len(atoms)} Al atoms, {options.steps} steps of {options.timestep} fs "
          f"from {options.temperature} K")
    print(f"{'step':>6} {'time/fs':>8} {'Epot/eV/atom':>14} {'Ekin/eV/atom':>13} {'Etot/eV/atom':>14} {'T/K':>8}")
    records = run_nve(atoms, options.steps, options.timestep, options.temperature, options.log_interval,
                      options.seed, _show)
    print(f"total-energy drift: {records[-1].total - records[0].total:+.2e} eV/atom "
          f"over {records[-1].time_fs:.0f} fs")
    model_energy = atoms.get_potential_energy() / len(atoms)
    final = atoms.copy()
    final.calc = EMT()
    print(f"final frame: model {model_energy:.4f} eV/atom, EMT {final.get_potential_energy() / len(atoms):.4f} eV/atom")
    return atoms


def lammps_nve(model: str, atoms: Atoms, options: DemoOptions) -> None:
    """Step 5: the same file in LAMMPS (pair_style mlip): energy of ``atoms`` vs ASE, then LAMMPS NVE."""
    from mlip_md.lammps import QUIET, setup_model, start_lammps

    atoms = atoms.copy()
    atoms.wrap()
    atoms.calc = MLIPCalculator(model)
    ase_energy = atoms.get_potential_energy()
    lmp = start_lammps(QUIET)
    setup_model(lmp, model, atoms, ["Al"])
    lmp.commands_list(["thermo_modify norm yes", "run 0"])
    lammps_energy = lmp.get_thermo("pe") * len(atoms)
    print(f"5. LAMMPS (pair_style mlip, same file, same frame): energy {lammps_energy:.8f} eV, "
          f"ASE {ase_energy:.8f} eV, difference {abs(lammps_energy - ase_energy):.1e} eV")
    lmp.commands_list([f"velocity all create {options.temperature} {options.seed + 1} mom yes rot yes dist gaussian",
                       "fix integrate all nve", f"timestep {options.timestep / 1000.0}"])
    print(f"   LAMMPS NVE, {len(atoms)} atoms, {options.steps} steps from {options.temperature} K")
    print(f"   {'':6} {'step':>6} {'Etot/eV/atom':>14} {'T/K':>8}")
    totals = []
    for step in range(0, options.steps + 1, options.log_interval):
        lmp.command("run 0 post no" if step == 0 else f"run {options.log_interval} pre no post no")
        totals.append(lmp.get_thermo("etotal"))
        print(f"   LAMMPS {step:6d} {totals[-1]:14.6f} {lmp.get_thermo('temp'):8.1f}")
    print(f"   LAMMPS total-energy drift: {totals[-1] - totals[0]:+.2e} eV/atom")
    lmp.close()


def campaign_values(data: str, options: DemoOptions) -> dict:
    """The demo campaign's configuration: the demo's data (labels and MD starts) and model, 2 members."""
    return {
        "seed": options.seed,
        "oracle": {"name": "emt"},
        "initial": {"data": data},
        "sampler": {"n_trajectories": 4, "max_steps": 300, "timestep_fs": 2.0, "check_interval": 10,
                    "start": data, "temperature_start": [300.0, 600.0], "temperature_end": [1000.0, 1500.0]},
        "selection": {"forces_uncertainty": 0.1, "max_labels_per_iteration": 8},
        "retrain": {"warm_start": True},
        "stop": {"max_iterations": options.campaign_iterations},
        "executor": {"workers": 2},
        "model": {"species": ["Al"], "cutoff": options.cutoff, "dist_soft_min": 1.7, "dist_soft_max": 5.0},
        "training": {"max_epochs": options.epochs, "batch_size": 8, "learning_rate": 0.003, "seed": options.seed,
                     "export_dtype": options.dtype},
        "ensemble": {"size": 2},
    }


def run_campaign_step(out: str, data: str, options: DemoOptions) -> None:
    """Step 6: a short active-learning campaign in ``out/campaign`` (resumed on a re-run)."""
    from mlip_md.active import campaign_config_from_dict, run_campaign

    print(f"6. active learning: {options.campaign_iterations} round(s) of ensemble MD heated from the data's "
          "structures, EMT labels where the two members disagree by > 0.1 eV/Å, retraining")
    status = run_campaign(campaign_config_from_dict(campaign_values(data, options)), os.path.join(out, "campaign"))
    print(f"   labels: {status['labels']['done']} done, {status['labels']['failed']} failed; report: "
          f"{os.path.join(status['out'], 'report.json')} and report/*.png; model: {status['model']}")


def run_demo(out: str, options: DemoOptions = DemoOptions()) -> str:
    """Runs steps 1-6 into the directory ``out``; returns the exported model's path (step 3).

    Refuses (ValueError) an ``out`` made with other data or training options
    before writing anything (see :func:`check_record`).
    """
    reuse = check_record(out, options)
    _write_record(out, options)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    data = make_data(out, options, reuse)
    model = train_model(out, data, options)
    atoms = ase_nve(model, options)
    if options.lammps:
        lammps_nve(model, atoms, options)
    if options.campaign_iterations:
        run_campaign_step(out, data, options)
    return model
