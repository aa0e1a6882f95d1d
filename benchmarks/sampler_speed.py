"""The campaign's sampler on LAMMPS against the ASE sampler: MD steps per second of one trajectory.

What is measured
----------------
One :class:`mlip_md.active.sampler.TrajectoryTask`, run to the end by the ASE
sampler (``run_trajectory``: ASE's Langevin with ``MLIPCalculator`` in this
process) and by the LAMMPS sampler (``run_lammps_trajectory``: ``lmp`` with
``pair_style mlip`` on 1 and 2 MPI ranks), exactly as a campaign's worker
runs it. The task: fcc aluminium (a = 4.05 Å, 8×8×8 cubic cells, 2,048
atoms, rattled by 0.05 Å), ``--steps`` steps of 1 fs checked every 10,
Langevin friction 0.01/fs on a 300 → 600 K ramp, a flag threshold of 1e9 eV/Å
that never fires. The model: an ensemble of 2 ``mlip_md.HIPNN`` members with
``lammps_speed.py``'s architecture (2 interaction blocks, 20 features, 20
sensitivities, 3 atom layers, cutoff 6 Å) and the stable random weights of
``tests/conftest.py``'s ``make_model(repulsive=True, readout_scale=0.05)``
(plain random weights let atoms run into each other within 100 steps, and the
trajectory ends discarded), exported in float64 (``--dtype``), the campaign's
default.

Steps per second = steps / ``TrajectoryResult.wall_time``: everything the
sampler does, the checks included and, for LAMMPS, starting ``lmp`` (the
launcher's Python, loading torch and the model) and the data files and dumps
it exchanges with the worker. The start-up alone is estimated from a
trajectory of 10 steps. One torch thread per process or MPI rank. The
samplers alternate within each of ``--repeats`` repetitions; medians are
reported, with the LAMMPS/ASE ratio of the medians. Run from the repository
root with nothing else running::

    .venv/bin/python benchmarks/sampler_speed.py [--steps 200] [--repeats 3] [--ranks 1 2] [--cells 8]

Prints a table and writes ``benchmarks/results/sampler_speed.json``.
"""

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before torch is imported; lmp's ranks inherit it

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # conftest.make_model

ARCHITECTURE = dict(n_interactions=2, n_features=20, n_sensitivities=20, n_atom_layers=3, cutoff=6.0)


def make_task(model: str, steps: int, cells: int):
    """The trajectory both samplers run (module docstring), on cells³ cubic fcc cells."""
    from ase.build import bulk

    from mlip_md.active.config import SamplerConfig, SelectionConfig
    from mlip_md.active.sampler import TrajectoryTask

    start = bulk("Al", "fcc", a=4.05, cubic=True) * (cells, cells, cells)
    start.rattle(0.05, seed=1)
    sampler = SamplerConfig(max_steps=steps, timestep_fs=1.0, check_interval=10, friction=0.01,
                            temperature_start=(300.0, 300.0), temperature_end=(600.0, 600.0),
                            temperature_amplitude=(0.0, 0.0), temperature_period_fs=(500.0, 500.0))
    return TrajectoryTask(model, sampler, SelectionConfig(forces_uncertainty=1e9), start, seed=0, iteration=0,
                          trajectory=0, species=("Al",), cutoff=6.0)


def with_ranks(task, ranks: int, steps=None):
    """``task`` for the LAMMPS sampler on ``ranks`` MPI ranks (and ``steps`` steps if given)."""
    sampler = dataclasses.replace(task.sampler, engine="lammps", mpi_ranks=ranks,
                                  max_steps=steps or task.sampler.max_steps)
    return dataclasses.replace(task, sampler=sampler)


def summary(result) -> dict:
    """What the report keeps of a TrajectoryResult."""
    return {"wall_time_s": result.wall_time, "steps": result.steps, "outcome": result.outcome,
            "checks": len(result.checks), "steps_per_s": result.steps / result.wall_time}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="MD steps per trajectory (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="trajectories per sampler (default 3)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="MPI ranks of LAMMPS runs")
    parser.add_argument("--cells", type=int, default=8, help="fcc cubic cells per side (default 8: 2,048 atoms)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = parser.parse_args()

    import mlip_md
    from _report import environment, save_report
    from conftest import make_model
    from mlip_md.active.lammps_sampler import run_lammps_trajectory
    from mlip_md.active.sampler import run_trajectory

    members = [make_model(("Al",), seed=seed, readout_scale=0.05, repulsive=True, **ARCHITECTURE) for seed in (0, 1)]
    lammps = {ranks: f"lammps, {ranks} rank{'s' if ranks > 1 else ''}" for ranks in args.ranks}
    runs = {"ase": [], **{name: [] for name in lammps.values()}, "lammps, 10 steps": []}
    with tempfile.TemporaryDirectory() as directory:
        model = mlip_md.export(members, Path(directory) / "ensemble.pt", dtype=args.dtype)
        task = make_task(model, args.steps, args.cells)
        print(f"{len(task.start)} atoms, {args.steps} steps, ensemble of {len(members)}, {args.dtype}", flush=True)
        for repeat in range(args.repeats):
            runs["ase"].append(summary(run_trajectory(task)))
            for ranks, name in lammps.items():
                runs[name].append(summary(run_lammps_trajectory(with_ranks(task, ranks))))
            runs["lammps, 10 steps"].append(summary(run_lammps_trajectory(with_ranks(task, 1, steps=10))))
            print(f"repetition {repeat + 1}: " + ", ".join(f"{name} {rows[-1]['steps_per_s']:.2f} steps/s"
                                                           for name, rows in runs.items()), flush=True)
    for name, rows in runs.items():
        steps = 10 if name == "lammps, 10 steps" else args.steps
        assert all(row["outcome"] == "accurate" and row["steps"] == steps for row in rows), (name, rows)

    seconds = {name: statistics.median(row["wall_time_s"] for row in rows) for name, rows in runs.items()}
    per_second = {name: statistics.median(row["steps_per_s"] for row in rows) for name, rows in runs.items()}
    print(f"\n{'sampler':<17} {'steps/s':>8} {'s/trajectory':>13} {'vs ASE':>7}")
    results = {}
    for name in ["ase", *lammps.values()]:
        ratio = per_second[name] / per_second["ase"]
        results[name] = {"steps_per_s": per_second[name], "seconds_per_trajectory": seconds[name],
                         "ratio_to_ase": ratio}
        print(f"{name:<17} {per_second[name]:8.2f} {seconds[name]:13.1f} {ratio:6.2f}x")
    if 1 in lammps:
        # T(n) = fixed + n·step from the trajectories of 10 and --steps steps on 1 rank
        step = (seconds[lammps[1]] - seconds["lammps, 10 steps"]) / (args.steps - 10)
        results["lammps_fixed_seconds"] = seconds["lammps, 10 steps"] - 10 * step
        results["lammps_1_rank_steps_per_s_after_start_up"] = 1.0 / step
        print(f"LAMMPS, 1 rank: {results['lammps_fixed_seconds']:.1f} s per trajectory to start lmp and set up, "
              f"then {1.0 / step:.2f} steps/s")
    save_report("sampler_speed", __doc__.split("\n")[0],
                {"steps": args.steps, "repeats": args.repeats, "ranks": args.ranks, "dtype": args.dtype,
                 "atoms": 4 * args.cells**3, "architecture": ARCHITECTURE, "ensemble_size": len(members)},
                environment(), raw=runs, summary=results)


if __name__ == "__main__":
    main()
