"""Campaign throughput on each executor: labels per hour with a slow oracle, and the driver's share of wall time.

What is measured
----------------
One small aluminium campaign (the shape of ``inputs/campaign_aluminium_emt.yaml``
sized for a 2-core machine: ``--initial`` rattled disordered starts labelled
first, then ``--iterations`` rounds of 8 trajectories of 8–16 atoms, up to 8
labels each, an ensemble of 2 trained for a few epochs), run end to end by
``mlip-md campaign`` in a fresh process for every executor kind (local, mpi,
parsl, dask) with 1 and 2 workers. The oracle is ASE's EMT slept ``--delay`` s
per call (``campaign_oracles:FaultyEMT`` from ``tests/``) to stand in for
DFT. mpi runs under ``mpiexec -n workers+1 python -m mpi4py.futures``.

Printed per run: the process's wall time, done labels, labels per hour of
that wall time, labels per hour of the labelling alone (the initial
labels / the initial labelling's wall time, pool start included; the ideal
is 3600 · workers / delay), and the driver's share: Σ
wall_time.driver / Σ wall_time.total of ``report.json`` (time inside the
phases that the driver spends outside waiting for its tasks), target ≤ 5 %.
Every run gives the same labels (same seed), so the figures compare engines
on the same work. Start with nothing else running; ``--repeats`` runs each
setting several times and prints medians.

Run from the repository root::

    .venv/bin/python benchmarks/campaign_throughput.py [--delay 1.0] [--initial 16] [--iterations 1] [--repeats 1]

Writes ``benchmarks/results/campaign_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import environment, save_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KINDS = ("local", "mpi", "parsl", "dask")


def campaign_settings(delay: float, initial: int, iterations: int, kind: str, workers: int) -> dict:
    return {
        "seed": 0,
        "oracle": {"name": "campaign_oracles:FaultyEMT", "parameters": {"delay": delay}, "timeout": 600.0},
        "initial": {"n_configurations": initial, "rattle": 0.05},
        "sampler": {"n_trajectories": 8, "max_steps": 200, "check_interval": 10, "timestep_fs": 2.0,
                    "n_atoms": [8, 16], "temperature_start": [300, 600], "temperature_end": [800, 1500]},
        "selection": {"forces_uncertainty": 0.05, "max_labels_per_iteration": 8},
        "stop": {"max_iterations": iterations},
        "executor": {"kind": kind, "workers": workers},
        "model": {"n_interactions": 1, "n_features": 8, "n_sensitivities": 8, "n_atom_layers": 1, "cutoff": 4.5,
                  "dist_soft_min": 1.7, "dist_soft_max": 4.0},
        "training": {"max_epochs": 10, "batch_size": 4, "learning_rate": 0.005},
        "ensemble": {"size": 2},
    }


def run_campaign_cli(settings: dict, kind: str, workers: int, directory: Path) -> dict:
    """Runs one campaign by the CLI in a fresh process; its wall time and the figures of its report."""
    directory.mkdir(parents=True)
    config = directory / "campaign.yaml"
    config.write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "mlip_md", "campaign", str(config), "--out", str(directory / "out")]
    if kind == "mpi":
        command = [str(BIN / "mpiexec"), "-n", str(workers + 1), sys.executable, "-m", "mpi4py.futures", *command[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if finished.returncode != 0:
        raise RuntimeError(f"{kind} with {workers} worker(s) failed:\n{finished.stdout[-3000:]}")
    report = json.loads((directory / "out" / "report.json").read_text())
    walls = [entry["wall_time"] for entry in report["iterations"]]
    with sqlite3.connect(directory / "out" / "labels.db") as connection:  # the campaign's state table
        row = connection.execute("SELECT value FROM campaign_state WHERE key = 'initial_wall_time'").fetchone()
    initial = json.loads(row[0])["labelling"]
    done = report["status"]["labels"]["done"]
    return {"seconds": seconds, "labels": done, "labels_per_hour": 3600 * done / seconds,
            "driver_share": sum(w["driver"] for w in walls) / sum(w["total"] for w in walls),
            "initial_labelling_seconds": initial,
            "labelling_labels_per_hour": 3600 * settings["initial"]["n_configurations"] / initial}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay", type=float, default=1.0, help="s slept per oracle call (default %(default)s)")
    parser.add_argument("--initial", type=int, default=16, help="initial labels (default %(default)s)")
    parser.add_argument("--iterations", type=int, default=1, help="sampling rounds (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting, medians printed")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    args = parser.parse_args()
    results = {}
    scratch = Path(tempfile.mkdtemp(prefix="campaign_throughput_"))
    try:
        for kind in args.kinds:
            for workers in (1, 2):
                settings = campaign_settings(args.delay, args.initial, args.iterations, kind, workers)
                runs = [run_campaign_cli(settings, kind, workers, scratch / f"{kind}_{workers}_{repeat}")
                        for repeat in range(args.repeats)]
                median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                results[f"{kind}/{workers}"] = {"runs": runs, "median": median}
                print(f"{kind:>6} {workers} worker(s): {median['seconds']:7.1f} s, {median['labels']:.0f} labels, "
                      f"{median['labels_per_hour']:6.0f} labels/h, labelling alone "
                      f"{median['labelling_labels_per_hour']:6.0f} labels/h, driver {100 * median['driver_share']:.1f} %",
                      flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\nspeed-up of 2 workers over 1 (labels per hour):")
    for kind in args.kinds:
        one, two = results[f"{kind}/1"]["median"], results[f"{kind}/2"]["median"]
        print(f"{kind:>6}: whole campaign {two['labels_per_hour'] / one['labels_per_hour']:.2f}x, "
              f"labelling {two['labelling_labels_per_hour'] / one['labelling_labels_per_hour']:.2f}x")
    save_report("campaign_throughput", __doc__.split("\n")[0], vars(args), environment(), results=results)


if __name__ == "__main__":
    main()
