"""Active learning vs random MD snapshots on EMT aluminium: labels needed for an out-of-distribution error.

What is measured
----------------
1. **Label efficiency.** Three parts, all labelled by ASE's EMT through
   :func:`mlip_md.data.label`:

   * An out-of-distribution (OOD) test set made here: liquid Al (Langevin MD
     with EMT of fcc cells of 32–108 atoms, melted at 3000 K, then held at a
     temperature drawn from 1500–2500 K; several frames 100 fs apart per
     trajectory), fcc cells under a random symmetric strain of up to ±6 % per
     component (rattled 0.05 Å), and fcc cells with one self-interstitial at
     an octahedral site (rattled 0.03–0.1 Å); ``--ood-per-kind`` of each.
   * The campaign: :func:`mlip_md.active.run_campaign` with a configuration
     built here in the shape of ``inputs/campaign_aluminium_emt.yaml`` but
     sized for a 2-core machine (16 initial labels, 32–64 atoms, 8
     trajectories of 600 steps, up to 3 flagged frames each, 12 labels per
     iteration, 6 iterations, ensemble of 3, 40 epochs from scratch) and
     ``test:`` = the OOD file, so its ``report.json`` holds the OOD errors of
     every iteration's model.
   * The random baseline: one long list of random MD snapshots (each from its
     own trajectory: a disordered start drawn by
     :func:`mlip_md.active.sampler.disordered_start` with the campaign's
     sampler settings, or an fcc cell, in equal shares, same atom-count range;
     an isotropic strain drawn from the campaign's strain range; EMT-driven
     Langevin MD at a temperature uniform in the campaign's range
     (min temperature_start – max temperature_end), with its timestep and
     friction; the frame at a step uniform in 1..max_steps). For every label
     count n of the campaign (train + validation labels of each iteration's
     model) an ensemble is trained by :func:`mlip_md.train.trainer.train` on
     the first n snapshots (nested sets) with the campaign's model, training,
     loss and ensemble sections and its ``retrain.valid_fraction``, and its
     exported model is scored on the OOD set by
     :func:`mlip_md.evaluate.evaluate_exported` (ensemble mean).

   Printed: labels | campaign OOD force MAE, RMSE and energy MAE | the same
   for random; the force MAE of each OOD kind; and the labels M at which the
   campaign reaches the baseline's final force MAE X (at N labels),
   interpolating log(MAE) linearly in labels between iterations (the target
   is M/N <= 0.5). Also the Spearman
   correlation of predicted σ_F and true force error of each iteration's new
   labels (``report.json``).
2. **Driver overhead**, from the campaign's ``report.json``:
   Σ wall_time.driver / Σ wall_time.total (time the driver spends outside
   waiting for its tasks, within the phases), and (wall clock of the whole
   ``run_campaign`` call − Σ wall_time.tasks) / that wall clock, which also
   counts the start of the process pool, the reports and their plots.
   Target <= 5 %.

Everything lands in ``--out`` and is reused by a later run with the same
options (the campaign resumes, a finished one at once; finished baseline
trainings are read back), so an interrupted run can be started again.
Start with nothing else running: timings and the process pool share 2 cores.

Run from the repository root::

    .venv/bin/python benchmarks/campaign_efficiency.py [--quick] [--out DIR] [--ood-per-kind 20] [--seed 0]

Prints the tables and writes ``DIR/campaign_efficiency.json``.
"""

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before torch is imported; inherited by the worker processes

import argparse  # noqa: E402
import copy  # noqa: E402
import concurrent.futures as futures  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402

from _report import environment  # noqa: E402

LATTICE = 4.05  # Å, fcc Al
# fcc supercells (conventional cells repeated, at least 2 along each axis): atoms -> repeats.
SUPERCELLS = {4 * a * b * c: (a, b, c) for a, b, c in
              [(2, 2, 2), (2, 2, 3), (2, 2, 4), (2, 3, 3), (2, 3, 4), (3, 3, 3)]}
OOD_ATOMS = (32, 108)
LIQUID = dict(melt_temperature=3000.0, melt_steps=1000, hold_steps=500, interval=100, frames=5,
              temperatures=(1500.0, 2500.0), friction=0.02)
STRAIN, STRAIN_RATTLE = 0.06, 0.05
INTERSTITIAL_RATTLE = (0.03, 0.1)
OOD_KINDS = ("liquid", "strained", "interstitial")

# The campaign, in the shape of inputs/campaign_aluminium_emt.yaml; SIZES override parts of it.
CAMPAIGN = {
    "oracle": {"name": "emt"},
    "initial": {"n_configurations": 16, "rattle": 0.1},
    "sampler": {
        "n_trajectories": 8, "max_steps": 600, "timestep_fs": 2.0, "check_interval": 20, "friction": 0.01,
        "temperature_start": [300, 600], "temperature_end": [1000, 2000], "temperature_amplitude": [0, 300],
        "temperature_period_fs": [400, 2000], "strain": [-0.04, 0.04], "start": "disordered",
        "n_atoms": [32, 64], "composition": {"Al": 1.0}, "density": 2.70, "min_distance": 2.0,
    },
    "selection": {"forces_uncertainty": 0.1, "max_per_trajectory": 3, "max_labels_per_iteration": 12},
    "retrain": {"valid_fraction": 0.1, "warm_start": False},  # as the baseline: every model from scratch
    "stop": {"max_iterations": 6, "max_labels": 400, "accurate_fraction": 0.9},
    "executor": {"workers": 2, "threads_per_worker": 1},
    "model": {"n_interactions": 2, "n_features": 20, "n_sensitivities": 20, "n_atom_layers": 3, "cutoff": 6.0,
              "dist_soft_min": 1.7, "dist_soft_max": 5.0},
    "training": {"max_epochs": 40, "batch_size": 8, "learning_rate": 0.002, "early_stopping_patience": 15},
    "ensemble": {"size": 3},
}
SIZES = {
    "default": {"ood_per_kind": 20, "campaign": {}},
    "quick": {"ood_per_kind": 4, "campaign": {
        "initial": {"n_configurations": 8},
        "sampler": {"n_trajectories": 4, "max_steps": 200, "n_atoms": [32, 48]},
        "selection": {"max_labels_per_iteration": 4, "max_per_trajectory": 2},
        "stop": {"max_iterations": 2},
        "training": {"max_epochs": 5},
        "ensemble": {"size": 2},
    }},
}
TARGET_RATIO, TARGET_OVERHEAD = 0.5, 0.05


def _merged(base: dict, override: dict) -> dict:
    """``base`` with the sections of ``override`` merged in, one level deep."""
    merged = copy.deepcopy(base)
    for section, values in override.items():
        merged[section] = {**merged.get(section, {}), **values}
    return merged


def _parallel_map(function, items, workers: int = 2) -> list:
    """``[function(item) ...]`` on a spawned process pool (one torch thread each), in order."""
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(function, items))


def _write_json(values, path: Path) -> None:
    path.write_text(json.dumps(values, indent=2) + "\n")


# -- structures -----------------------------------------------------------------------------------


def fcc_cell(n_atoms: tuple, rng: np.random.Generator):
    """A cubic-cell fcc Al supercell with an atom count in ``n_atoms`` (inclusive), drawn uniformly."""
    counts = [n for n in SUPERCELLS if n_atoms[0] <= n <= n_atoms[1]]
    if not counts:
        raise ValueError(f"no fcc supercell of {n_atoms[0]}-{n_atoms[1]} atoms in {sorted(SUPERCELLS)}")
    return bulk("Al", "fcc", a=LATTICE, cubic=True) * SUPERCELLS[counts[rng.integers(len(counts))]]


def _langevin(atoms, temperature: float, timestep_fs: float, friction: float, rng: np.random.Generator):
    """EMT on ``atoms``, thermal momenta at ``temperature`` (K) and a Langevin integrator (friction 1/fs)."""
    from mlip_md.md import thermalize_momenta

    atoms.calc = EMT()
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    return Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature, friction=friction / units.fs,
                    fixcm=False, rng=rng)


def liquid_frames(n_frames: int, rng: np.random.Generator) -> list:
    """Labelled liquid snapshots of one trajectory: fcc melted at 3000 K, then held at 1500-2500 K."""
    from mlip_md.data import label

    atoms = fcc_cell(OOD_ATOMS, rng)
    dynamics = _langevin(atoms, LIQUID["melt_temperature"], 1.0, LIQUID["friction"], rng)
    dynamics.run(LIQUID["melt_steps"])
    temperature = float(rng.uniform(*LIQUID["temperatures"]))
    dynamics.set_temperature(temperature_K=temperature)
    dynamics.run(LIQUID["hold_steps"])
    frames = []
    for _ in range(n_frames):
        dynamics.run(LIQUID["interval"])
        frames.append(label(atoms, EMT(), info={"kind": "liquid", "temperature": temperature}))
    return frames


def strained_fcc(rng: np.random.Generator):
    """fcc Al under a random symmetric strain (each component uniform in ±6 %), rattled."""
    atoms = fcc_cell(OOD_ATOMS, rng)
    strain = rng.uniform(-STRAIN, STRAIN, (3, 3))
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.5 * (strain + strain.T)), scale_atoms=True)
    atoms.positions += rng.normal(0.0, STRAIN_RATTLE, atoms.positions.shape)
    return atoms


def interstitial_fcc(rng: np.random.Generator):
    """fcc Al with an extra atom at the octahedral site of a random conventional cell, rattled."""
    atoms = fcc_cell((OOD_ATOMS[0], OOD_ATOMS[1] - 1), rng)
    repeats = np.array(atoms.cell.lengths()) / LATTICE
    corner = np.array([rng.integers(round(r)) for r in repeats])
    atoms.append("Al")
    atoms.positions[-1] = (corner + 0.5) * LATTICE
    atoms.positions += rng.normal(0.0, rng.uniform(*INTERSTITIAL_RATTLE), atoms.positions.shape)
    return atoms


def _ood_kind(job: tuple) -> list:
    """One piece of the OOD set (a pool task): ``("liquid", n, seed)`` or ``(kind, n, seed)``."""
    from mlip_md.data import label

    kind, n, seed = job
    rng = np.random.default_rng(seed)
    if kind == "liquid":
        return liquid_frames(n, rng)
    build = {"strained": strained_fcc, "interstitial": interstitial_fcc}[kind]
    return [label(build(rng), EMT(), info={"kind": kind}) for _ in range(n)]


def ood_set(path: Path, per_kind: int, seed: int) -> dict:
    """Writes (or reuses) the OOD file; returns its description. A file made with other options is refused."""
    from mlip_md.data.generate import write_images

    meta_path, meta = path.with_suffix(".json"), {"per_kind": per_kind, "seed": seed}
    if path.exists():
        saved = json.loads(meta_path.read_text())
        if {k: saved.get(k) for k in meta} != meta:
            raise SystemExit(f"{path} was made with {saved}, not {meta}: use another --out")
        return saved
    started = time.perf_counter()
    jobs = [("liquid", min(LIQUID["frames"], per_kind - k), [seed, 1, k]) for k in range(0, per_kind, LIQUID["frames"])]
    jobs += [(kind, per_kind, [seed, 2, index]) for index, kind in enumerate(OOD_KINDS[1:])]
    images = [atoms for part in _parallel_map(_ood_kind, jobs) for atoms in part]
    write_images(images, path)
    sizes = [len(atoms) for atoms in images]
    meta.update(n=len(images), atoms=[min(sizes), max(sizes)], seconds=time.perf_counter() - started)
    _write_json(meta, meta_path)
    return meta


def ood_files(path: Path) -> dict:
    """``{"all": the OOD file, kind: a file of that kind's structures}`` (the latter written on first use)."""
    import ase.io

    from mlip_md.data.generate import write_images

    files = {"all": path, **{kind: path.with_name(f"{path.stem}_{kind}.extxyz") for kind in OOD_KINDS}}
    if not all(files[kind].exists() for kind in OOD_KINDS):
        images = ase.io.read(path, ":")
        for kind in OOD_KINDS:
            write_images([atoms for atoms in images if atoms.info["kind"] == kind], files[kind])
    return files


def score(model_path, files: dict) -> dict:
    """OOD errors of an exported model: ``{"test": on the whole set, "kinds": {kind: on that kind}}``."""
    from mlip_md.evaluate import evaluate_exported

    return {"test": evaluate_exported(model_path, files["all"]),
            "kinds": {kind: evaluate_exported(model_path, files[kind]) for kind in OOD_KINDS}}


# -- the campaign ---------------------------------------------------------------------------------


def campaign_config(size: str, seed: int, ood_path: Path):
    """The campaign configuration of ``size`` (see CAMPAIGN and SIZES)."""
    from mlip_md.active import campaign_config_from_dict

    values = _merged(CAMPAIGN, SIZES[size]["campaign"])
    values.update(seed=seed, test=str(ood_path.resolve()))
    return campaign_config_from_dict(values)


def run_campaign_timed(config, directory: Path) -> dict:
    """Runs (or resumes) the campaign; returns report.json plus the wall clock of the call that finished it."""
    from mlip_md.active import run_campaign

    timing_path = directory.parent / "campaign_wall_clock.json"
    report_path = directory / "report.json"
    finished = report_path.exists() and json.loads(report_path.read_text())["status"]["finished"]
    partway = not finished and directory.joinpath("labels.db").exists()
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"  [campaign {time.perf_counter() - started:6.1f} s] {line}", flush=True)

    status = run_campaign(config, directory, log=log)
    seconds = time.perf_counter() - started
    if not finished:  # a resumed, already finished campaign keeps the wall clock of the run that did the work
        _write_json({"seconds": seconds, "resumed_partway": partway}, timing_path)
    report = json.loads(report_path.read_text())
    report["wall_clock"] = json.loads(timing_path.read_text())
    report["wall_clock"].update(this_call_seconds=seconds, finished_before_this_call=finished)
    print(f"campaign: {status['stop_reason']}; labels {status['labels']}; {seconds:.0f} s this call")
    return report


def campaign_curve(report: dict, files: dict) -> list:
    """Per iteration: labels its model was trained on (train + validation), its OOD errors (report.json's,
    and per kind), Spearman, new labels, trajectory outcomes, wall times."""
    curve = []
    for entry in report["iterations"]:
        n_valid = entry["valid"]["n_configs"] if entry.get("valid") else 0
        curve.append({"iteration": entry["iteration"], "labels": entry["n_train_labels"] + n_valid,
                      "test": entry["test"], "kinds": score(entry["model"], files)["kinds"],
                      "spearman": entry.get("spearman"), "n_new": entry.get("n_new"),
                      "trajectories": entry.get("trajectories"), "wall_time": entry.get("wall_time")})
    return curve


def driver_overhead(report: dict) -> dict:
    """Σ driver / Σ total over the iterations, and (whole call − Σ tasks) / whole call."""
    times = [entry["wall_time"] for entry in report["iterations"]]
    total = sum(t["total"] for t in times)
    driver = sum(t.get("driver", float("nan")) for t in times)
    tasks = sum(t.get("tasks", float("nan")) for t in times)
    wall = report["wall_clock"]["seconds"]
    return {"sum_total_s": total, "sum_driver_s": driver, "sum_tasks_s": tasks, "wall_clock_s": wall,
            "driver_over_total": driver / total if total else None,
            "untasked_over_wall_clock": (wall - tasks) / wall if wall else None}


# -- the random baseline ----------------------------------------------------------------------------


def random_snapshot(job: tuple):
    """One labelled random MD snapshot (a pool task): ``(sampler settings, seed)``."""
    from mlip_md.active.sampler import disordered_start
    from mlip_md.data import label

    sampler, seed = job
    rng = np.random.default_rng(seed)
    atoms = disordered_start(sampler, rng) if rng.random() < 0.5 else fcc_cell(sampler.n_atoms, rng)
    steps = int(rng.integers(1, sampler.max_steps + 1))
    strain = float(rng.uniform(*sampler.strain)) * steps / sampler.max_steps
    atoms.set_cell(atoms.cell[:] * (1.0 + strain), scale_atoms=True)
    low, high = min(sampler.temperature_start), max(sampler.temperature_end)
    temperature = float(rng.uniform(low, high))
    _langevin(atoms, temperature, sampler.timestep_fs, sampler.friction, rng).run(steps)
    return label(atoms, EMT(), info={"kind": "random_md", "temperature": temperature, "step": steps})


def random_pool(path: Path, n: int, sampler, seed: int) -> list:
    """The first ``n`` snapshots of the baseline's list (snapshot k is seeded by k alone, so lists nest)."""
    import ase.io

    from mlip_md.data.generate import write_images

    images = ase.io.read(path, ":") if path.exists() else []
    if len(images) < n:
        started = time.perf_counter()
        jobs = [(sampler, [seed, 3, k]) for k in range(len(images), n)]
        images += _parallel_map(random_snapshot, jobs)
        write_images(images, path)
        print(f"random pool: {len(jobs)} EMT MD snapshots in {time.perf_counter() - started:.0f} s", flush=True)
    return images[:n]


def train_baseline(job: tuple) -> dict:
    """Trains the ensemble on one nested random set and scores it on the OOD set (a pool task)."""
    import torch

    from mlip_md.data.generate import write_images
    from mlip_md.train.trainer import train

    images, config, directory, files = job
    result_path = directory / "ood.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    torch.set_num_threads(1)
    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(config)
    config.data.train = write_images(images, directory / "train.extxyz")
    started = time.perf_counter()
    summary = train(config, str(directory), show_progress=False)
    result = {"labels": len(images), "n_train": summary["n_train"], "n_valid": summary["n_valid"],
              "train_seconds": time.perf_counter() - started, **score(summary["model"], files)}
    _write_json(result, result_path)
    return result


def baseline_curve(config, budgets: list, directory: Path, files: dict, seed: int) -> list:
    """Random-baseline OOD errors at every budget (largest first on the pool, to finish together)."""
    pool = random_pool(directory / "pool.extxyz", max(budgets), config.sampler, seed)
    training = copy.deepcopy(config.training_config(""))
    training.model.species = None  # the data's elements, as the campaign's first training found them
    jobs = [(pool[:n], training, directory / f"n{n:04d}", files) for n in sorted(budgets, reverse=True)]
    started = time.perf_counter()
    results = _parallel_map(train_baseline, jobs)
    print(f"baseline: {len(jobs)} trainings in {time.perf_counter() - started:.0f} s", flush=True)
    return sorted(results, key=lambda r: r["labels"])


# -- analysis and output ----------------------------------------------------------------------------


def labels_to_reach(curve: list, target: float):
    """Labels at which ``curve`` ([(labels, mae)] by iteration) first reaches ``target``, log(mae) linear
    in labels between points; None if it never does."""
    previous = None
    for labels, mae in curve:
        if mae is not None and mae <= target:
            if previous is None:
                return float(labels)
            (n0, m0), (n1, m1) = previous, (labels, mae)
            return n0 + (n1 - n0) * (math.log(m0) - math.log(target)) / (math.log(m0) - math.log(m1))
        if mae is not None:
            previous = (labels, mae)
    return None


def headline(campaign: list, baseline: list) -> dict:
    """The campaign's labels M for the baseline's final OOD force MAE X at N labels, and M / N."""
    final = baseline[-1]
    target, n = final["test"]["forces_mae"], final["labels"]
    reached = labels_to_reach([(c["labels"], c["test"]["forces_mae"]) for c in campaign], target)
    return {"baseline_final_forces_mae": target, "baseline_labels": n, "campaign_labels": reached,
            "ratio": None if reached is None else reached / n, "target_ratio": TARGET_RATIO}


def _number(value, form: str) -> str:
    return "-" if value is None else form.format(value)


def _errors(test: dict) -> str:
    """Force MAE and RMSE (eV/Å) and energy MAE (meV/atom), as table cells."""
    return (f"{_number(test.get('forces_mae'), '{:.4f}'):>7} {_number(test.get('forces_rmse'), '{:.4f}'):>7} "
            f"{_number(test.get('energy_mae'), '{:.2f}'):>7}")


def print_tables(campaign: list, baseline: list, result: dict, overhead: dict) -> None:
    by_labels = {b["labels"]: b for b in baseline}
    print(f"\nOOD errors (all {len(OOD_KINDS)} kinds): force MAE, force RMSE (eV/Å), energy MAE (meV/atom)")
    print(f"{'iter':>4} {'labels':>6} | {'campaign':^23} | {'random':^23} | {'Spearman':>8} {'new':>4}")
    print(f"{'':>4} {'':>6} | {'F MAE':>7} {'F RMSE':>7} {'E MAE':>7} | {'F MAE':>7} {'F RMSE':>7} {'E MAE':>7} |")
    for c in campaign:
        random_test = by_labels.get(c["labels"], {}).get("test", {})
        print(f"{c['iteration']:>4} {c['labels']:>6} | {_errors(c['test'])} | {_errors(random_test)} | "
              f"{_number(c['spearman'], '{:.2f}'):>8} {_number(c['n_new'], '{}'):>4}")
    print(f"\nOOD force MAE (eV/Å) by kind: {', '.join(OOD_KINDS)}")
    print(f"{'labels':>6} | {'campaign':^26} | {'random':^26}")
    for c in campaign:
        kinds = [c["kinds"], by_labels.get(c["labels"], {}).get("kinds", {})]
        cells = [" ".join(f"{_number(k.get(kind, {}).get('forces_mae'), '{:.4f}'):>8}" for kind in OOD_KINDS)
                 for k in kinds]
        print(f"{c['labels']:>6} | {cells[0]} | {cells[1]}")
    x, n, m = result["baseline_final_forces_mae"], result["baseline_labels"], result["campaign_labels"]
    if m is None:
        print(f"\nthe campaign does not reach the random baseline's final OOD force MAE ({x:.4f} eV/Å at {n} labels)")
    else:
        print(f"\nthe campaign reaches the random baseline's final OOD force MAE ({x:.4f} eV/Å at {n} labels) "
              f"with {m:.1f} labels (ratio {m / n:.2f}; target <= {TARGET_RATIO})")
    print(f"driver overhead: Σ driver / Σ total = {overhead['sum_driver_s']:.1f} / {overhead['sum_total_s']:.1f} s "
          f"= {100 * overhead['driver_over_total']:.2f} %; (wall clock − Σ tasks) / wall clock = "
          f"({overhead['wall_clock_s']:.1f} − {overhead['sum_tasks_s']:.1f}) / {overhead['wall_clock_s']:.1f} s "
          f"= {100 * overhead['untasked_over_wall_clock']:.2f} % (target <= {100 * TARGET_OVERHEAD:g} %)")


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory, reused on a rerun (default benchmarks/results/campaign_efficiency"
                             "[_quick])")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (~2 min)")
    parser.add_argument("--ood-per-kind", type=int, default=None,
                        help="OOD structures of each kind: liquid, strained, interstitial (default 20; quick 4)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the OOD set, the campaign and the random pool")
    return parser.parse_args()


def main():
    args = parse_arguments()
    size = "quick" if args.quick else "default"
    out = args.out or Path(__file__).resolve().parent / "results" / f"campaign_efficiency{'_quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    per_kind = args.ood_per_kind or SIZES[size]["ood_per_kind"]
    info = environment()
    started = time.perf_counter()
    ood_path = out / "ood.extxyz"
    ood = ood_set(ood_path, per_kind, args.seed)
    print(f"OOD set: {ood['n']} EMT-labelled structures ({per_kind} liquid, strained, interstitial; "
          f"{ood['atoms'][0]}-{ood['atoms'][1]} atoms) -> {ood_path}", flush=True)
    files = ood_files(ood_path)
    config = campaign_config(size, args.seed, ood_path)
    report = run_campaign_timed(config, out / "campaign")
    campaign = campaign_curve(report, files)
    baseline = baseline_curve(config, sorted({c["labels"] for c in campaign}), out / "baseline", files, args.seed)
    result, overhead = headline(campaign, baseline), driver_overhead(report)
    print_tables(campaign, baseline, result, overhead)
    total = time.perf_counter() - started
    earlier = " in an earlier run" if report["wall_clock"]["finished_before_this_call"] else ""
    print(f"\nwhole benchmark: {total:.0f} s this run (campaign {report['wall_clock']['seconds']:.0f} s{earlier}); "
          f"load average at start {info['load_average_at_start'][0]:.2f}")
    path = out / "campaign_efficiency.json"
    _write_json({"description": __doc__.split("\n\n")[0], "size": size, "seed": args.seed,
                 "campaign_config": config.to_dict(), "environment": info, "ood": ood, "campaign": campaign,
                 "baseline": baseline, "headline": result, "driver_overhead": overhead,
                 "seconds": total}, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
