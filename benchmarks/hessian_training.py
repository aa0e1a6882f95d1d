"""Hessian training through the shipped trainer: projected Hessian-vector products (probes) vs full Hessians.

What is measured
----------------
For each molecule and seed, two trainings with ``python -m mlip_md train
CONFIG --out DIR`` (what ``mlip-md train`` runs), each to the end in a fresh
process, one after the other, that differ only in ``training.hessian_mode``:

* ``probes``: 1 Rademacher probe per configuration and minibatch (one extra
  double-backward pass per minibatch);
* ``full``: every configuration's whole [3n, 3n] Hessian (3·max(n)
  double-backward passes per minibatch, the batch Hessian being block
  diagonal).

The configuration: the defaults of :mod:`mlip_md.train.config` (loss:
per-atom energy MSE + force MSE, weight average 0.99, learning-rate decay on
a validation plateau) with ``loss.hessian: 0.1`` (mean squared
Hessian-element error; beside the squared energy and force errors, 0.1 gave
lower Hessian and force errors than 1 in both modes, and less scatter
between seeds), float64, batch size 4, learning rate 1e-3,
``early_stopping_patience`` = the epochs (every run trains them all),
validation 10 %, test 25 % of the data; model: 2 interaction layers,
20 features, 20 sensitivities, 3 atom layers, cutoff 5 Å, soft range
0.85–4 Å. An epoch's time is the ``seconds`` of its line in
``member_0/metrics.jsonl``: minibatch steps, validation, checkpoints. The
validation computes full Hessians only in the first, the last and every
10th epoch (``training.valid_hessian_every``), so the median epoch is a
training epoch, while the mean includes those validations too. Reported per
molecule and mode, as medians over the seeds (``--seeds``, default 0 1 2: a
test set of 10 configurations scatters by tens of percent from seed to
seed): median and mean epoch time, their ratios full/probes, and the
test-set Hessian RMSE (eV/Å², from full model Hessians) and force MAE of the
final model (``metrics.json``). Targets at 21 atoms: probe epochs ≥ 24×
faster than full-Hessian epochs, Hessian RMSE within 15 % of full training's.

Molecules (GFN2-xTB labels from tblite at accuracy 0.01, Hessians by central
differences of forces, both by :func:`mlip_md.data.labels.label`; cached
under ``benchmarks/results/data/`` by ``_molecules.py``):

* ``ethanol`` (9 atoms): ``generate_molecule(40, "CH3CH2OH")``, 500 K MD frames;
* ``aspirin`` (21 atoms): the geometry of ``hessian_speed.py`` rattled
  (σ = 0.05 Å), 40 configurations;
* ``alkane`` (59 atoms, n-C19H40, opt-in): all-trans chain rattled
  (σ = 0.05 Å), 12 configurations.

Threads: ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` are removed from the
training processes' environment, so ``mlip-md train`` takes the cores it
may run on; ``--threads N`` sets them to N.

Run from the repository root, with nothing else running::

    .venv/bin/python benchmarks/hessian_training.py [--molecules ethanol aspirin] [--epochs 60 60] [--threads N]

The alkane (``--molecules alkane --epochs 2``) labels its data with tblite
on its first run, and its full-Hessian epochs are long.

Prints a table and writes ``benchmarks/results/hessian_training.json``
(``hessian_training_<molecule><configurations>..._<k>probes.json`` for other
molecules, ``--n-configurations`` or ``--n-probes``).
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from ase.io import read

from _molecules import dataset
from _report import environment, save_report, train_with_cli

MOLECULES = {"ethanol": 40, "aspirin": 40, "alkane": 12}  # name: configurations
DEFAULT_EPOCHS = {"ethanol": 60, "aspirin": 60, "alkane": 2}  # full-Hessian epochs dominate the run time
ARCHITECTURE = dict(n_interactions=2, n_features=20, n_sensitivities=20, n_atom_layers=3, cutoff=5.0)
BATCH_SIZE = 4
LEARNING_RATE = 1e-3
VALID_FRACTION, TEST_FRACTION = 0.1, 0.25
SEEDS = (0, 1, 2)
MODES = ("probes", "full")


def make_config(path: Path, mode: str, epochs: int, n_probes: int, seed: int = SEEDS[0]) -> dict:
    return {
        "data": {"train": str(path), "valid_fraction": VALID_FRACTION, "test_fraction": TEST_FRACTION},
        "model": {**ARCHITECTURE, "species": ["C", "H", "O"]},
        "training": {"max_epochs": epochs, "early_stopping_patience": epochs, "batch_size": BATCH_SIZE,
                     "learning_rate": LEARNING_RATE, "dtype": "float64", "seed": seed, "hessian_mode": mode,
                     "n_probes": n_probes, "probe_kind": "rademacher"},
        "loss": {"hessian": 0.1},
    }


def measure(name: str, n_configurations: int, epochs: int, args, scratch: Path) -> dict:
    path = dataset(name, n_configurations)
    result = {"n_atoms": len(read(path, 0)), "n_configurations": n_configurations, "epochs": epochs}
    print(f"{name}: {result['n_atoms']} atoms, {n_configurations} configurations, {epochs} epochs", flush=True)
    for mode in MODES:
        runs = [train_with_cli(make_config(path, mode, epochs, args.n_probes, seed), scratch / f"{name}_{mode}_{seed}",
                               args.threads) for seed in args.seeds]
        result[mode] = {"runs": runs, **{key: statistics.median(run[key] for run in runs)
                                         for key in ("median_epoch_seconds", "mean_epoch_seconds")},
                        "test": {key: statistics.median(run["test"][key] for run in runs)
                                 for key in ("hessian_rmse", "forces_mae", "energy_mae")}}
        print(f"  {mode}: median epoch {result[mode]['median_epoch_seconds']:.3f} s, test Hessian RMSE "
              f"{[round(run['test']['hessian_rmse'], 3) for run in runs]}", flush=True)
    for statistic in ("median", "mean"):
        key = f"{statistic}_epoch_seconds"
        result[f"full_over_probes_{statistic}"] = result["full"][key] / result["probes"][key]
    rmse = {mode: result[mode]["test"]["hessian_rmse"] for mode in MODES}
    result["hessian_rmse_probes_over_full"] = rmse["probes"] / rmse["full"]
    return result


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"], choices=list(MOLECULES),
                        help="default ethanol aspirin; alkane (59 atoms) is opt-in (slow labels, long epochs)")
    parser.add_argument("--epochs", type=int, nargs="+", default=None,
                        help=f"epochs per molecule (one value for all, or one per molecule); default {DEFAULT_EPOCHS}")
    parser.add_argument("--n-configurations", type=int, default=None,
                        help=f"configurations of every molecule (labelled, cached); default {MOLECULES}")
    parser.add_argument("--n-probes", type=int, default=1, help="Rademacher probes per configuration and minibatch")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="training seeds (default 0 1 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of the training processes (default: unset, they pick their own)")
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = [DEFAULT_EPOCHS[m] for m in args.molecules]
    elif len(args.epochs) == 1:
        args.epochs = args.epochs * len(args.molecules)
    elif len(args.epochs) != len(args.molecules):
        parser.error("--epochs: give one value, or one per molecule")
    return args


def main():
    args = parse_arguments()
    info = environment()
    print(f"torch {info['torch']}, float64, batch {BATCH_SIZE}, {args.n_probes} Rademacher probe(s), "
          f"threads {args.threads or 'unset'}; load average {info['load_average_at_start'][0]:.2f}\n", flush=True)
    sizes = {m: args.n_configurations or MOLECULES[m] for m in args.molecules}
    with tempfile.TemporaryDirectory(prefix="hessian_training_") as scratch:
        results = {name: measure(name, sizes[name], epochs, args, Path(scratch))
                   for name, epochs in zip(args.molecules, args.epochs)}

    print(f"\n{'':<22}{'median epoch s':^32}{'mean epoch s':^32}{'test H RMSE eV/Å²':^24}{'test F MAE eV/Å':^16}")
    print(f"{'molecule':<9}{'atoms':>6}{'epochs':>7}" + f"{'probes':>10}{'full':>10}{'full/probes':>12}" * 2
          + f"{'probes':>8}{'full':>8}{'ratio':>8}{'probes':>8}{'full':>8}")
    for name, r in results.items():
        probes, full = r["probes"], r["full"]
        times = "".join(f"{probes[key]:10.3f}{full[key]:10.3f}{full[key] / probes[key]:12.1f}"
                        for key in ("median_epoch_seconds", "mean_epoch_seconds"))
        print(f"{name:<9}{r['n_atoms']:>6}{r['epochs']:>7}{times}{probes['test']['hessian_rmse']:8.3f}"
              f"{full['test']['hessian_rmse']:8.3f}{r['hessian_rmse_probes_over_full']:8.2f}"
              f"{probes['test']['forces_mae']:8.3f}{full['test']['forces_mae']:8.3f}")
    if "aspirin" in results:
        r = results["aspirin"]
        print(f"aspirin targets: full/probes {r['full_over_probes_median']:.1f} (>= 24), Hessian RMSE probes/full "
              f"{r['hessian_rmse_probes_over_full']:.2f} (<= 1.15)")

    name = "hessian_training"
    if args.molecules != ["ethanol", "aspirin"] or args.n_configurations is not None:
        name += "_" + "_".join(f"{m}{sizes[m]}" for m in args.molecules)  # a partial run keeps the full report
    if args.n_probes != 1:
        name += f"_{args.n_probes}probes"
    save_report(
        name,
        __doc__.split("\n\n")[0],
        settings={"molecules": sizes, "epochs": dict(zip(args.molecules, args.epochs)), "n_probes": args.n_probes,
                  "threads": args.threads, "seeds": args.seeds,
                  "configs": {m: {mode: make_config(dataset(m, sizes[m]), mode, e, args.n_probes) for mode in MODES}
                              for m, e in zip(args.molecules, args.epochs)}},
        environment=info,
        results=results,
    )


if __name__ == "__main__":
    main()
