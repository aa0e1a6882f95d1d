"""Training time per epoch, end to end: mlip_md's shipped trainer vs hippynn's standard training.

What is measured
----------------
Each training runs to the end in a fresh process, one after the other, as
its users run it, on the same data, split, batch size and architecture:

* ``ours``: ``python -m mlip_md train CONFIG --out DIR`` (what ``mlip-md
  train`` runs) with a YAML configuration written by this script: the
  defaults of :mod:`mlip_md.train.config` (loss: per-atom energy MSE +
  force-component MSE, weight average 0.99, learning-rate decay on a
  validation plateau) but for the settings below, and
  ``early_stopping_patience`` = the epochs, so that every run trains them
  all. Three runs: float64 (the default), float32, and float32 energy-only
  (``loss.forces_mse: 0``: no forces in the training steps). An epoch's
  time is the ``seconds`` of its line in ``member_0/metrics.jsonl``:
  minibatch steps, validation, checkpoints.
* ``hippynn``: its standard experiment path, in this script's own
  subprocess (``--hippynn-run``): ``Hipnn`` (periodic) → ``HEnergyNode``,
  ``PerAtom`` energy and ``GradientNode`` forces (sign −1); training loss
  ``MSELoss.of_node`` of the per-atom energy + ``MSELoss.of_node`` of the
  forces (the same loss as ours), validation losses their RMSEs and
  ``MAELoss``; a ``Database`` given the split as ``split_mask_*`` arrays
  (``auto_split``); ``hierarchical_energy_initialization``;
  ``setup_training`` + ``train_model`` with ``SetupParams`` (Adam, no
  scheduler, CPU), at torch's default float32. Every epoch trains, then
  evaluates 10 % of the training set and the validation set, and saves the
  model and a checkpoint when it improves. An epoch's time is the interval
  between the end-of-epoch callbacks of ``train_model`` (the first from the
  call of ``train_model``).

Reported for each: median and mean epoch time, the process's wall time
(start-up, data, training, final evaluation, export), the test-set energy
MAE (meV/atom) and force MAE (eV/Å) of the final model (ours: from its
``metrics.json``; hippynn: the model ``train_model`` returns to, its best,
evaluated by this script on the test configurations); ratios ours/hippynn
per epoch and ours E+F/E-only (float32); for ours also the validation
energy RMSE's largest rise from one epoch to the next after the fifth, and
the non-finite steps recovered.

Settings: 2 interaction layers, 20 features, 20 sensitivities, 3 atom
layers, cutoff 6 Å, soft distance range 1.7–5.0 Å; batch size 16, learning
rate 1e-3, 25 epochs. Data: 800 EMT aluminium configurations (30–108 atoms,
``generate_aluminium(800, seed=0)``, cached in ``benchmarks/results/data/``),
split by ``split_indices(800, 0.1, 0.1, seed=0)`` as ``load_data`` does.
Threads: ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` are removed from every
training process's environment, so each picks its own (``mlip-md train``:
the cores it may run on; hippynn: torch's default); ``--threads N`` sets
them to N for all.

Run from the repository root, with nothing else running::

    .venv/bin/python benchmarks/train_speed.py [--epochs 25] [--n-configurations 800] [--threads N]

Prints a table and writes ``benchmarks/results/train_speed.json``.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from mlip_md.train.distributed import cores
from _report import epoch_statistics, environment, import_hippynn, run_process, save_report, train_with_cli

DATA_DIRECTORY = Path(__file__).resolve().parent / "results" / "data"
CUTOFF, SOFT_MIN, SOFT_MAX = 6.0, 1.7, 5.0
ARCHITECTURE = dict(n_interactions=2, n_features=20, n_sensitivities=20, n_atom_layers=3,
                    cutoff=CUTOFF, dist_soft_min=SOFT_MIN, dist_soft_max=SOFT_MAX)
HIPPYNN_ARCHITECTURE = dict(
    possible_species=[0, 13], n_interaction_layers=2, n_features=20, n_sensitivities=20, n_atom_layers=3,
    dist_soft_min=SOFT_MIN, dist_soft_max=SOFT_MAX, dist_hard_max=CUTOFF, resnet=False,
)
LEARNING_RATE = 1e-3
SEED = 0
VALID_FRACTION = TEST_FRACTION = 0.1
OUR_RUNS = {"ours f64 E+F": ("float64", True), "ours f32 E+F": ("float32", True), "ours f32 E only": ("float32", False)}


def data_file(n: int) -> Path:
    """The cached EMT aluminium data set of ``n`` configurations (generated on first use)."""
    from mlip_md.data.generate import generate_aluminium, write_images

    path = DATA_DIRECTORY / f"aluminium_{n}_seed{SEED}.extxyz"
    if not path.exists():
        print(f"generating {n} EMT aluminium configurations -> {path}", flush=True)
        write_images(generate_aluminium(n, seed=SEED), path)
    return path


def our_config(path: Path, args, dtype: str, forces: bool) -> dict:
    return {
        "data": {"train": str(path), "valid_fraction": VALID_FRACTION, "test_fraction": TEST_FRACTION},
        "model": {**ARCHITECTURE, "species": ["Al"]},
        "training": {"max_epochs": args.epochs, "early_stopping_patience": args.epochs, "batch_size": args.batch_size,
                     "learning_rate": LEARNING_RATE, "dtype": dtype, "seed": SEED},
        "loss": {"energy_mse": 1.0, "forces_mse": 1.0 if forces else 0.0},
    }


# -- hippynn, run in its own process by --hippynn-run ------------------------------


def hippynn_arrays(configurations) -> dict:
    """hippynn's database layout: Z [n, max_atoms] (0 = padding), R, F [n, max_atoms, 3], C [n, 3, 3],
    T and EpA (energy per atom) [n, 1], and the split as boolean ``split_mask_*`` arrays."""
    n, width = len(configurations), max(c.n_atoms for c in configurations)
    arrays = {"Z": np.zeros((n, width), dtype=np.int64), "R": np.zeros((n, width, 3), dtype=np.float32),
              "F": np.zeros((n, width, 3), dtype=np.float32), "C": np.zeros((n, 3, 3), dtype=np.float32),
              "T": np.zeros((n, 1), dtype=np.float32), "EpA": np.zeros((n, 1), dtype=np.float32)}
    for k, c in enumerate(configurations):
        arrays["Z"][k, : c.n_atoms] = c.numbers
        arrays["R"][k, : c.n_atoms] = c.positions
        arrays["F"][k, : c.n_atoms] = c.forces
        arrays["C"][k] = c.cell
        arrays["T"][k, 0] = c.energy
        arrays["EpA"][k, 0] = c.energy / c.n_atoms
    from mlip_md.data import split_indices

    for name, index in zip(("train", "valid", "test"), split_indices(n, VALID_FRACTION, TEST_FRACTION, SEED)):
        arrays[f"split_mask_{name}"] = np.isin(np.arange(n), index)
    return arrays


def hippynn_run(args) -> None:
    """Trains hippynn by its experiment routines in ``args.hippynn_run`` and writes ``result.json`` there."""
    import time

    import torch
    from hippynn.databases import Database
    from hippynn.experiment import SetupParams, assemble_for_training, setup_training, train_model
    from hippynn.graphs import GraphModule, inputs, loss, networks, physics, targets
    from hippynn.pretraining import hierarchical_energy_initialization
    from hippynn.tools import active_directory

    from mlip_md.data import read_configurations

    torch.manual_seed(SEED)
    species, positions = inputs.SpeciesNode(db_name="Z"), inputs.PositionsNode(db_name="R")
    cell = inputs.CellNode(db_name="C")
    network = networks.Hipnn("HIPNN", (species, positions, cell), periodic=True, module_kwargs=HIPPYNN_ARCHITECTURE)
    henergy = targets.HEnergyNode("HEnergy", network)
    henergy.mol_energy.db_name = "T"
    energy_per_atom = physics.PerAtom("EpA", henergy.mol_energy)
    energy_per_atom.db_name = "EpA"
    forces = physics.GradientNode("forces", (henergy.mol_energy, positions), sign=-1)
    forces.db_name = "F"
    energy_mse, forces_mse = loss.MSELoss.of_node(energy_per_atom), loss.MSELoss.of_node(forces)
    train_loss = energy_mse + forces_mse
    validation_losses = {"Loss": train_loss, "EpA-RMSE": energy_mse ** 0.5, "F-RMSE": forces_mse ** 0.5,
                         "EpA-MAE": loss.MAELoss.of_node(energy_per_atom), "F-MAE": loss.MAELoss.of_node(forces)}
    training_modules, db_info = assemble_for_training(train_loss, validation_losses)
    database = Database(hippynn_arrays(read_configurations(str(data_file(args.n_configurations)))), **db_info,
                        seed=SEED, auto_split=True, pin_memory=False)
    hierarchical_energy_initialization(henergy, database, trainable_after=False)
    setup = SetupParams(stopping_key="Loss", batch_size=args.batch_size, optimizer=torch.optim.Adam,
                        learning_rate=LEARNING_RATE, max_epochs=args.epochs, device="cpu")
    with active_directory(args.hippynn_run):
        training_modules, controller, tracker = setup_training(training_modules, setup)
        stamps = [time.perf_counter()]  # and one at the end of every epoch
        train_model(training_modules, database, controller, tracker,
                    callbacks=[lambda *_: stamps.append(time.perf_counter())], batch_callbacks=None)

    model = GraphModule([species, positions, cell], [henergy.mol_energy, forces])
    test = database.splits["test"]
    energy_errors, force_errors = [], []
    for start in range(0, len(test["Z"]), args.batch_size):
        Z, R, C, T, F = (test[key][start : start + args.batch_size] for key in ("Z", "R", "C", "T", "F"))
        energy, predicted = model(Z, R, C)
        real = Z > 0
        energy_errors.append(((energy.reshape(-1) - T.reshape(-1)) / real.sum(1)).detach())
        force_errors.append((predicted - F)[real].detach().reshape(-1))
    energy_error, force_error = torch.cat(energy_errors).double(), torch.cat(force_errors).double()
    result = {**epoch_statistics(np.diff(stamps).tolist()), "threads": torch.get_num_threads(),
              "hippynn_epoch_times": tracker.epoch_times,
              "test": {"energy_mae": 1000 * energy_error.abs().mean().item(),
                       "energy_rmse": 1000 * energy_error.square().mean().sqrt().item(),
                       "forces_mae": force_error.abs().mean().item(),
                       "forces_rmse": force_error.square().mean().sqrt().item()}}
    (Path(args.hippynn_run) / "result.json").write_text(json.dumps(result))


def hippynn(args, directory: Path) -> dict:
    """Runs ``--hippynn-run`` in a fresh process; its result with the process's wall time."""
    directory.mkdir(parents=True)
    command = [sys.executable, __file__, "--hippynn-run", str(directory), "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--n-configurations", str(args.n_configurations)]
    process_seconds = run_process(command, directory / "log.txt", args.threads)
    return {**json.loads((directory / "result.json").read_text()), "process_seconds": process_seconds}


# -- main --------------------------------------------------------------------------


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=25, help="training epochs of every run")
    parser.add_argument("--batch-size", type=int, default=16, help="configurations per minibatch")
    parser.add_argument("--n-configurations", type=int, default=800, help="EMT Al configurations (cached)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of every training process (default: unset, each picks its own)")
    parser.add_argument("--no-hippynn", action="store_true", help="measure mlip_md only")
    parser.add_argument("--hippynn-run", help=argparse.SUPPRESS)  # internal: the hippynn training process
    return parser.parse_args()


def main():
    args = parse_arguments()
    if args.hippynn_run:
        return hippynn_run(args)
    hippynn_version = None if args.no_hippynn else import_hippynn()
    info = environment(hippynn_version)
    path = data_file(args.n_configurations)
    print(f"torch {info['torch']}, hippynn {hippynn_version}, load average {info['load_average_at_start'][0]:.2f}; "
          f"{args.n_configurations} EMT Al configurations, batch {args.batch_size}, {args.epochs} epochs, "
          f"threads {args.threads or 'unset'}\n", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="train_speed_") as scratch:
        for name, (dtype, forces) in OUR_RUNS.items():
            directory = Path(scratch) / name.replace(" ", "_").replace("+", "")
            results[name] = {**train_with_cli(our_config(path, args, dtype, forces), directory, args.threads),
                             "threads": args.threads or cores()}
            print(f"{name}: median epoch {results[name]['median_epoch_seconds']:.2f} s", flush=True)
        if hippynn_version is not None:
            results["hippynn f32 E+F"] = hippynn(args, Path(scratch) / "hippynn")
            print(f"hippynn f32 E+F: median epoch {results['hippynn f32 E+F']['median_epoch_seconds']:.2f} s",
                  flush=True)

    median = {name: r["median_epoch_seconds"] for name, r in results.items()}
    ratios = {"ours f32 E+F / ours f32 E only": median["ours f32 E+F"] / median["ours f32 E only"]}
    if "hippynn f32 E+F" in median:
        for dtype in ("f32", "f64"):
            ratios[f"ours {dtype} E+F / hippynn f32 E+F"] = median[f"ours {dtype} E+F"] / median["hippynn f32 E+F"]

    print(f"\n{'training':<17}{'threads':>8}{'median epoch s':>16}{'mean epoch s':>14}{'process s':>11}"
          f"{'test E MAE meV/atom':>21}{'test F MAE eV/Å':>17}")
    for name, r in results.items():
        force_mae = r["test"]["forces_mae"]
        print(f"{name:<17}{r['threads']:>8}{r['median_epoch_seconds']:16.2f}{r['mean_epoch_seconds']:14.2f}"
              f"{r['process_seconds']:11.1f}{r['test']['energy_mae']:21.2f}"
              f"{'n/a' if force_mae is None else f'{force_mae:.4f}':>17}")
    print()
    for name, value in ratios.items():
        print(f"median epoch, {name}: {value:.2f}")
    for name in OUR_RUNS:
        rmse = results[name]["valid_energy_rmse"]
        results[name]["largest_rise_after_epoch_5"] = max(rmse[k] / rmse[k - 1] for k in range(5, len(rmse)))
        print(f"{name}: validation energy RMSE {rmse[0]:.1f} -> {rmse[-1]:.2f} meV/atom, largest rise from one epoch "
              f"to the next after the fifth {results[name]['largest_rise_after_epoch_5']:.2f}x, "
              f"{results[name]['recoveries']} non-finite steps recovered")

    save_report(
        "train_speed",
        __doc__.split("\n\n")[0],
        settings={"epochs": args.epochs, "batch_size": args.batch_size, "n_configurations": args.n_configurations,
                  "valid_fraction": VALID_FRACTION, "test_fraction": TEST_FRACTION, "learning_rate": LEARNING_RATE,
                  "threads": args.threads, "architecture": ARCHITECTURE, "hippynn_architecture": HIPPYNN_ARCHITECTURE,
                  "our_configs": {name: our_config(path, args, *run) for name, run in OUR_RUNS.items()},
                  "data_file": str(path), "seed": SEED},
        environment=info,
        results=results,
        ratios=ratios,
    )


if __name__ == "__main__":
    main()
