"""Hessian training cost: projected Hessian-vector products (probes) vs full Hessians.

What is measured
----------------
Wall time of one training epoch of mlip_md's HIPNN (every minibatch of the
training set once: collate, forward, energy + force + Hessian loss, backward,
Adam step; no validation in the timed part), one CPU thread, float64, with
the loss of :mod:`mlip_md.train.trainer` (``energy_rmse`` 1, ``forces_rmse``
1, ``hessian`` 1) in its two Hessian modes:

* ``probes``: ``training.hessian_mode: probes``, 1 Rademacher probe per
  configuration and minibatch (one extra double-backward pass);
* ``full``: ``training.hessian_mode: full``, every configuration's whole
  [3n, 3n] Hessian (3·max(n) double-backward passes per minibatch, since the
  batch Hessian is block diagonal).

Both start from the same weights and see the same minibatches; each epoch
runs the two in alternating order. Reported per molecule: median epoch time
of each, the ratio full/probes, and the Hessian RMSE (eV/Å², over Hessian
elements, from full model Hessians) on a held-out test set (25 %) after the
same number of epochs, plus the energy and force test errors.

Molecules (GFN2-xTB labels from tblite at accuracy 0.01, Hessians by central
differences of forces, both by :func:`mlip_md.data.labels.label`; cached
under ``benchmarks/results/data/`` by ``_molecules.py``):

* ``ethanol`` (9 atoms): ``generate_molecule(40, "CH3CH2OH")``, 500 K MD frames;
* ``aspirin`` (21 atoms): the geometry of ``hessian_speed.py`` rattled
  (σ = 0.05 Å), 24 configurations;
* ``alkane`` (59 atoms, n-C19H40): all-trans chain rattled (σ = 0.05 Å),
  12 configurations: about the size of C60 with half its orbitals (116
  instead of 240), so that its tblite Hessian labels stay affordable.

Model: 2 interaction layers, 20 features, 20 sensitivities, 3 atom layers,
cutoff 5 Å, soft range 0.85–4 Å; batch size 4, learning rate 1e-3.

Run from the repository root::

    .venv/bin/python benchmarks/hessian_training.py [--molecules ethanol aspirin] [--epochs 60 60]

The alkane (``--molecules alkane --epochs 2``) is opt-in: its first run
labels it with tblite, and its full-Hessian epochs are long.

Prints a table and writes ``benchmarks/results/hessian_training.json``
(``hessian_training_<molecules>.json`` for a subset of the molecules).
"""

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before torch (and tblite) are imported

import argparse  # noqa: E402
import copy  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mlip_md  # noqa: E402
from mlip_md.data import collate  # noqa: E402
from mlip_md.species import SpeciesMap  # noqa: E402
from mlip_md.train.config import config_from_dict  # noqa: E402
from mlip_md.train.trainer import _loss, build_model, evaluate, load_data  # noqa: E402
from _molecules import dataset  # noqa: E402
from _report import save_report  # noqa: E402

torch.set_num_threads(1)

MOLECULES = {"ethanol": 40, "aspirin": 24, "alkane": 12}  # name: configurations
DEFAULT_EPOCHS = {"ethanol": 60, "aspirin": 60, "alkane": 2}  # full-Hessian epochs dominate the run time
ARCHITECTURE = dict(n_interactions=2, n_features=20, n_sensitivities=20, n_atom_layers=3, cutoff=5.0)
BATCH_SIZE = 4
LEARNING_RATE = 1e-3
TEST_FRACTION = 0.25
SEED = 0


def make_config(path, mode: str, epochs: int, n_probes: int = 1):
    return config_from_dict({
        "data": {"train": str(path), "valid_fraction": 0.0, "test_fraction": TEST_FRACTION},
        "model": {**ARCHITECTURE, "species": ["C", "H", "O"]},
        "training": {"max_epochs": epochs, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
                     "dtype": "float64", "seed": SEED, "hessian_mode": mode, "n_probes": n_probes,
                     "probe_kind": "rademacher"},
        "loss": {"energy_rmse": 1, "forces_rmse": 1, "hessian": 1},
    })


class Run:
    """One model trained in one Hessian mode; ``epoch()`` returns the epoch's wall time."""

    def __init__(self, config, data, model):
        self.config, self.data, self.model = config, data, model
        self.species_map = SpeciesMap(data.species)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        self.epochs = 0

    def epoch(self) -> float:
        order = np.random.default_rng([SEED, self.epochs]).permutation(len(self.data.train))
        start_time = time.perf_counter()
        for start in range(0, len(order), BATCH_SIZE):
            batch = collate(self.data.train, order[start : start + BATCH_SIZE], self.species_map, torch.float64)
            self.optimizer.zero_grad()
            seed = int(np.random.SeedSequence([SEED, self.epochs, start]).generate_state(1)[0])
            loss, _ = _loss(self.config, self.model, batch, torch.Generator().manual_seed(seed))
            loss.backward()
            self.optimizer.step()
        self.epochs += 1
        return time.perf_counter() - start_time


def measure(name: str, n_configurations: int, epochs: int, n_probes: int = 1) -> dict:
    path = dataset(name, n_configurations)
    configs = {mode: make_config(path, mode, epochs, n_probes) for mode in ("probes", "full")}
    data = load_data(configs["probes"])
    for cache in (data.train, data.test):
        for index in range(len(cache)):
            cache.graph(index)
    initial = build_model(configs["probes"], data.species, data.train.configurations, SEED)
    runs = {mode: Run(configs[mode], data, copy.deepcopy(initial)) for mode in ("probes", "full")}
    n_atoms = data.train.configurations[0].n_atoms
    print(f"{name}: {n_atoms} atoms, train/test {len(data.train)}/{len(data.test)}, {epochs} epochs", flush=True)
    times = {mode: [] for mode in runs}
    for epoch in range(epochs):
        for mode in (("probes", "full") if epoch % 2 == 0 else ("full", "probes")):
            times[mode].append(runs[mode].epoch())
        print(f"  epoch {epoch + 1}: probes {times['probes'][-1]:.2f} s, full {times['full'][-1]:.2f} s", flush=True)
    result = {"n_atoms": n_atoms, "n_train": len(data.train), "n_test": len(data.test), "epochs": epochs}
    for mode, run in runs.items():
        metrics = evaluate(run.model, data.test, run.species_map, BATCH_SIZE)
        result[mode] = {"epoch_seconds": times[mode], "median_epoch_seconds": statistics.median(times[mode]),
                        "test": metrics}
    result["full_over_probes"] = result["full"]["median_epoch_seconds"] / result["probes"]["median_epoch_seconds"]
    result["hessian_rmse_probes_over_full"] = (
        result["probes"]["test"]["hessian_rmse"] / result["full"]["test"]["hessian_rmse"]
    )
    return result


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"], choices=list(MOLECULES),
                        help="default ethanol aspirin; alkane (59 atoms) is opt-in (slow labels and full-Hessian epochs)")
    parser.add_argument("--epochs", type=int, nargs="+", default=None,
                        help="epochs per molecule (one value for all, or one per molecule); "
                             f"default {DEFAULT_EPOCHS}")
    parser.add_argument("--n-probes", type=int, default=1, help="Rademacher probes per molecule and minibatch")
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
    info = {"python": platform.python_version(), "torch": torch.__version__, "mlip_md": mlip_md.__version__,
            "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "load_average_at_start": os.getloadavg()}
    print(f"torch {info['torch']}, {info['torch_threads']} thread(s), float64, batch {BATCH_SIZE}, "
          f"1 Rademacher probe; load average {info['load_average_at_start'][0]:.2f}\n")
    results = {name: measure(name, MOLECULES[name], epochs, args.n_probes)
               for name, epochs in zip(args.molecules, args.epochs)}

    print(f"\n{'molecule':<10}{'atoms':>6}{'epochs':>7}{'probes s/epoch':>16}{'full s/epoch':>14}"
          f"{'full/probes':>13}{'H RMSE probes':>15}{'H RMSE full':>13}{'probes/full':>13}"
          f"{'F MAE probes':>14}{'F MAE full':>12}")
    for name, r in results.items():
        print(f"{name:<10}{r['n_atoms']:>6}{r['epochs']:>7}{r['probes']['median_epoch_seconds']:16.3f}"
              f"{r['full']['median_epoch_seconds']:14.3f}{r['full_over_probes']:13.1f}"
              f"{r['probes']['test']['hessian_rmse']:15.3f}{r['full']['test']['hessian_rmse']:13.3f}"
              f"{r['hessian_rmse_probes_over_full']:13.2f}"
              f"{r['probes']['test']['forces_mae']:14.3f}{r['full']['test']['forces_mae']:12.3f}")
    print("(times: median epoch wall time; H RMSE: test-set Hessian RMSE, eV/Å²; F MAE: test force MAE, eV/Å)")

    name = "hessian_training"
    if args.molecules != ["ethanol", "aspirin"]:  # a partial run does not overwrite the full report
        name += "_" + "_".join(args.molecules)
    if args.n_probes != 1:
        name += f"_{args.n_probes}probes"
    save_report(
        name,
        __doc__.split("\n\n")[0],
        settings={"molecules": {m: MOLECULES[m] for m in args.molecules}, "epochs": dict(zip(args.molecules, args.epochs)),
                  "architecture": ARCHITECTURE, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
                  "test_fraction": TEST_FRACTION, "dtype": "float64", "n_probes": args.n_probes, "probe_kind": "rademacher",
                  "loss": {"energy_rmse": 1, "forces_rmse": 1, "hessian": 1}, "seed": SEED},
        environment=info,
        results=results,
    )


if __name__ == "__main__":
    main()
