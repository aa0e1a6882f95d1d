"""Training on several processes of one machine, as users run it: ensemble members in worker
processes, and one model split across torchrun processes.

What is measured
----------------
Each training runs to the end in a fresh process (or process group), one
after the other, on the EMT aluminium set of ``train_speed.py`` with its
architecture, batch size and learning rate:

* ``members in turn`` vs ``members in workers``: an ensemble of 2 trained
  by ``python -m mlip_md train`` with ``training.workers: 1`` (one process,
  torch threads = the cores) and ``training.workers: 2`` (two worker
  processes, the cores shared out: one thread each on 2 cores). Reported:
  the process wall time and the ratio workers / in turn; ideal with
  perfectly parallel work, ≈ 0.5 × (the speed-up 2 threads give one
  process).
* ``alone, 1 thread`` vs ``2 at once, 1 thread each``: one model trained by
  ``python -m mlip_md train`` with ``OMP_NUM_THREADS=1``, alone and as two
  identical trainings started together: the slow-down each suffers from
  the other (ideal 1.0 on 2 cores: each has its core).
* ``1 process`` vs ``torchrun 2 processes``: one model, the same global
  batch, trained by ``python -m mlip_md train`` and by ``torchrun
  --standalone --nproc-per-node 2 -m mlip_md train`` (one thread each).
  Reported: the median epoch time (``seconds`` in ``metrics.jsonl``) of
  each and their ratio, and the largest relative difference of the two
  loss curves (training and validation errors per epoch).

Run from the repository root, with nothing else running::

    .venv/bin/python benchmarks/parallel_training.py [--epochs 5] [--n-configurations 800]

Prints a table and writes ``benchmarks/results/parallel_training.json``.
"""

import argparse
import json
import tempfile
import threading
from pathlib import Path

from _report import environment, save_report, train_with_cli
from train_speed import ARCHITECTURE, LEARNING_RATE, SEED, TEST_FRACTION, VALID_FRACTION, data_file

ERRORS = ("energy_rmse", "energy_mae", "forces_rmse", "forces_mae")


def config(path: Path, args, members: int = 1, workers: int = 1) -> dict:
    return {
        "data": {"train": str(path), "valid_fraction": VALID_FRACTION, "test_fraction": TEST_FRACTION},
        "model": {**ARCHITECTURE, "species": ["Al"]},
        "training": {"max_epochs": args.epochs, "early_stopping_patience": args.epochs, "batch_size": args.batch_size,
                     "learning_rate": LEARNING_RATE, "seed": SEED, "workers": workers},
        "ensemble": {"size": members},
    }


def curve(run: Path) -> list:
    """Training and validation errors of every epoch of member 0."""
    lines = (run / "member_0" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)[split][key] for line in lines for split in ("train", "valid") for key in ERRORS]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n-configurations", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    path = data_file(args.n_configurations)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for name, workers in (("members in turn", 1), ("members in workers", 2)):
            print(f"{name} ...", flush=True)
            results[name] = train_with_cli(config(path, args, members=2, workers=workers), scratch / name)
        print("alone, 1 thread ...", flush=True)
        results["alone, 1 thread"] = train_with_cli(config(path, args), scratch / "alone", threads=1)
        print("2 at once, 1 thread each ...", flush=True)
        together = {}
        runs = [threading.Thread(target=lambda k: together.update({k: train_with_cli(
            config(path, args), scratch / f"together{k}", threads=1)}), args=(k,)) for k in (0, 1)]
        for run in runs:
            run.start()
        for run in runs:
            run.join()
        results["2 at once, 1 thread each"] = together[0]
        slowdown = max(r["median_epoch_seconds"] for r in together.values()) / results["alone, 1 thread"][
            "median_epoch_seconds"]
        print("1 process ...", flush=True)
        results["1 process"] = train_with_cli(config(path, args), scratch / "one")
        print("torchrun 2 processes ...", flush=True)
        results["torchrun 2 processes"] = train_with_cli(config(path, args), scratch / "two", processes=2)
        one, two = curve(scratch / "one" / "run"), curve(scratch / "two" / "run")
        deviation = max(abs(a - b) / max(abs(a), 1e-300) for a, b in zip(one, two))
    ratios = {
        "members: workers / in turn (process wall time)":
            results["members in workers"]["process_seconds"] / results["members in turn"]["process_seconds"],
        "2 at once / alone, 1 thread each (slower one's median epoch)": slowdown,
        "one model: torchrun 2 / 1 process (median epoch)":
            results["torchrun 2 processes"]["median_epoch_seconds"] / results["1 process"]["median_epoch_seconds"],
    }
    print(f"\n{'run':<24}{'process s':>11}{'median epoch s':>16}")
    for name, result in results.items():
        print(f"{name:<24}{result['process_seconds']:>11.1f}{result['median_epoch_seconds']:>16.2f}")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    print(f"largest relative difference of the loss curves, torchrun 2 vs 1 process: {deviation:.1e}")
    save_report("parallel_training", __doc__.split("\n")[0], vars(args), environment(),
                results=results, ratios=ratios, loss_curve_relative_difference=deviation)


if __name__ == "__main__":
    main()
