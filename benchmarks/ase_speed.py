"""Energy + forces cost per atom-step through ASE calculators: mlip_md vs hippynn.

What is measured
----------------
Wall time of one ``atoms.get_forces()`` call (energy, forces and, for these
periodic cells, stress, in one pass) on rattled fcc aluminium
(a = 4.05 Å, cubic cell replicated k×k×k, 4k³ atoms, rattle σ = 0.05 Å,
fixed seed), one CPU thread, reported as the median over ``--repeats`` calls
divided by the number of atoms: µs per atom-step.

Calculators (same architecture, random weights):

* ``ours f32`` / ``ours f64``: ``mlip_md.HIPNN`` (2 interaction blocks,
  20 features, 20 sensitivities, 3 atom layers, cutoff 6 Å) written with
  ``mlip_md.export(dtype=...)`` and served by ``mlip_md.MLIPCalculator`` with
  its default ``skin=1.0`` (vesin list for 7 Å, rebuilt once an atom has
  moved more than skin/2; every call recomputes the edge vectors and keeps
  the pairs within 6 Å).
* ``ours f32 skin=0``: the same with ``skin=0``, a fresh 6 Å list every call.
* ``hippynn f32`` / ``hippynn f64``: hippynn's ``Hipnn`` + ``HEnergy`` graph
  (see :func:`hippynn_energy_node`) behind
  ``hippynn.interfaces.ase_interface.HippynnCalculator`` with its default
  ``skin=1.0``: its ASE neighbour list holds pairs within cutoff + 2·skin and
  is rebuilt only once some atom has moved more than ``skin``, so with the
  small per-call moves used here it is built once, during warm-up.
* ``hippynn f32 skin=0``: the same calculator with ``skin=0``, which rebuilds
  its (6 Å) neighbour list on every call, as ours does.

Our calculators are created with ``keep_freed_memory=True`` (``--default-malloc``: False)
(:func:`mlip_md.tuning.keep_freed_memory`, as ``mlip-md`` and the LAMMPS
plugin do); the setting is process-wide, so hippynn runs with it too. To show
hippynn as its users run it, ``hippynn f32/f64, own process`` are the two
hippynn calculators in a separate Python process (this script with
``--hippynn-worker``) where no mlip_md calculator exists, so glibc's malloc
keeps its defaults. That process waits on a pipe and makes its two calls
when its turn in the rotation below comes, so its rows are interleaved with
the others like every row.

Before every call the atoms are moved by a random displacement (σ = 1e-3 Å,
the same for every calculator) so nothing is served from a cache. Each
repetition runs every calculator once, in an order rotated from one
repetition to the next, so machine noise hits all of them alike. Three
warm-up calls per calculator precede the timed ones.

Also timed (median of ``--repeats``): building our neighbour list alone
(``mlip_md.neighbors.neighbor_list``, shown as a fraction of our step) and
one full rebuild of hippynn's default (skin=1.0) neighbour list, the cost its
skin amortises over the steps between rebuilds.

Run from the repository root::

    .venv/bin/python benchmarks/ase_speed.py [--sizes 108 500 2048] [--repeats 7] [--no-hippynn] [--default-malloc]

Prints a table and writes ``benchmarks/results/ase_speed.json``.
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

import ase  # noqa: E402
import ase.units  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

import mlip_md  # noqa: E402
from mlip_md.neighbors import neighbor_list  # noqa: E402
from _report import environment, import_hippynn, save_report  # noqa: E402

torch.set_num_threads(1)

CUTOFF = 6.0  # Å
OUR_ARCHITECTURE = dict(n_interactions=2, n_features=20, n_sensitivities=20, n_atom_layers=3, cutoff=CUTOFF)
HIPPYNN_ARCHITECTURE = dict(
    possible_species=[0, 13],  # 0 is hippynn's padding species
    n_interaction_layers=2,
    n_features=20,
    n_sensitivities=20,
    n_atom_layers=3,
    dist_soft_min=0.85,
    dist_soft_max=4.8,  # = 0.8 * cutoff, mlip_md's default
    dist_hard_max=CUTOFF,
    resnet=False,  # plain HIP-NN layers, as in mlip_md (hippynn's default is True)
)
LATTICE = 4.05  # Å
RATTLE = 0.05  # Å
MOVE = 1e-3  # Å, σ of the displacement applied before every call
WARMUP = 3
SEED = 0
LABEL_WIDTH = 40  # first column of the printed table


# -- systems and calculators ---------------------------------------------------


def replication(n_atoms: int) -> int:
    """k such that the cubic 4-atom fcc cell repeated k×k×k has ``n_atoms`` atoms."""
    k = round((n_atoms / 4) ** (1 / 3))
    if 4 * k**3 != n_atoms:
        raise SystemExit(f"--sizes: {n_atoms} is not 4k³ (108, 256, 500, 864, 1372, 2048, ...)")
    return k


def fcc_aluminium(n_atoms: int) -> ase.Atoms:
    """Rattled fcc Al with ``n_atoms`` = 4k³ atoms (cubic cell repeated k×k×k)."""
    k = replication(n_atoms)
    atoms = bulk("Al", "fcc", a=LATTICE, cubic=True) * (k, k, k)
    atoms.rattle(stdev=RATTLE, seed=SEED)
    return atoms


def export_ours(directory: str) -> dict:
    """Exports one random-weight mlip_md model in both precisions; returns {dtype: path}."""
    torch.manual_seed(SEED)
    model = mlip_md.HIPNN(species=["Al"], **OUR_ARCHITECTURE)
    paths = {}
    for dtype in ("float32", "float64"):
        paths[dtype] = mlip_md.export(model, Path(directory) / f"al_{dtype}.pt", dtype=dtype)
    return paths


def hippynn_energy_node():
    """hippynn graph: species, positions, cell -> Hipnn -> HEnergy (random weights)."""
    from hippynn.graphs import inputs, networks, targets

    species = inputs.SpeciesNode(db_name="Z")
    positions = inputs.PositionsNode(db_name="R")
    cell = inputs.CellNode(db_name="C")
    network = networks.Hipnn(
        "HIPNN", (species, positions, cell), periodic=True, module_kwargs=dict(HIPPYNN_ARCHITECTURE)
    )
    return targets.HEnergyNode("HEnergy", network)


def hippynn_calculator(dtype: str, skin: float):
    """HippynnCalculator on a fresh graph (same seed, so same weights), in ``dtype``."""
    from hippynn.interfaces.ase_interface import HippynnCalculator

    torch.manual_seed(SEED)
    calculator = HippynnCalculator(hippynn_energy_node(), skin=skin, en_unit=ase.units.eV)
    return calculator.to(getattr(torch, dtype))


def calculator_factories(model_paths: dict, with_hippynn: bool, keep: bool = True) -> dict:
    """{label: zero-argument function returning a fresh calculator}; ``keep``: our keep_freed_memory."""
    factories = {
        "ours f32": lambda: mlip_md.MLIPCalculator(model_paths["float32"], keep_freed_memory=keep),
        "ours f64": lambda: mlip_md.MLIPCalculator(model_paths["float64"], keep_freed_memory=keep),
        "ours f32 skin=0": lambda: mlip_md.MLIPCalculator(model_paths["float32"], skin=0.0, keep_freed_memory=keep),
    }
    if with_hippynn:
        factories["hippynn f32"] = lambda: hippynn_calculator("float32", skin=1.0)
        factories["hippynn f64"] = lambda: hippynn_calculator("float64", skin=1.0)
        factories["hippynn f32 skin=0"] = lambda: hippynn_calculator("float32", skin=0.0)
    return factories


# -- timing ----------------------------------------------------------------------


def timed_forces(atoms: ase.Atoms) -> float:
    """Seconds for one ``atoms.get_forces()``; checks the forces are finite."""
    start = time.perf_counter()
    forces = atoms.get_forces()
    elapsed = time.perf_counter() - start
    if not np.isfinite(forces).all():
        raise RuntimeError(f"{atoms.calc.__class__.__name__} returned non-finite forces")
    return elapsed


OWN_PROCESS = "hippynn, own process"  # the worker's turn in the rotation of time_steps


def time_steps(systems: dict, repeats: int, rng: np.random.Generator, worker=None) -> dict:
    """Interleaved step timings: {label: [seconds, ...]} (warm-up calls dropped).

    ``worker`` (a :class:`HippynnWorker` or None) takes one turn per repetition.
    """
    labels = list(systems) + ([OWN_PROCESS] if worker is not None else [])
    times = {label: [] for label in systems}
    for repetition in range(WARMUP + repeats):
        move = rng.normal(0.0, MOVE, size=(len(next(iter(systems.values()))), 3))
        rotation = repetition % len(labels)
        for label in labels[rotation:] + labels[:rotation]:
            if label == OWN_PROCESS:
                elapsed = worker.step()
            else:
                atoms = systems[label]
                atoms.positions = atoms.positions + move
                elapsed = {label: timed_forces(atoms)}
            if repetition >= WARMUP:
                for name, seconds in elapsed.items():
                    times.setdefault(name, []).append(seconds)
    return times


def median_seconds(function, repeats: int) -> float:
    """Median wall time of ``function()`` over ``repeats`` calls (after one warm-up)."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def neighbor_costs(atoms: ase.Atoms, hippynn_calc, repeats: int) -> dict:
    """Median seconds to build our neighbour list and (if given) hippynn's skin=1 list."""
    ours = lambda: neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, CUTOFF)  # noqa: E731
    costs = {"ours_nl_s": median_seconds(ours, repeats), "ours_pairs_per_atom": ours().n_edges / len(atoms)}
    if hippynn_calc is not None:
        primitive = hippynn_calc.nl.nl
        rebuild = lambda: primitive.build(atoms.pbc, atoms.cell.complete(), atoms.positions)  # noqa: E731
        costs["hippynn_nl_rebuild_s"] = median_seconds(rebuild, repeats)
        costs["hippynn_pairs_per_atom"] = len(primitive.pair_first) / len(atoms)
    return costs


def measure_size(n_atoms: int, factories: dict, repeats: int, rng: np.random.Generator, worker) -> dict:
    """All measurements for one system size."""
    base = fcc_aluminium(n_atoms)
    systems = {}
    for label, make in factories.items():
        systems[label] = base.copy()
        systems[label].calc = make()
    times = time_steps(systems, repeats, rng, worker)
    result = {
        "n_atoms": n_atoms,
        "us_per_atom_step": {label: 1e6 * statistics.median(t) / n_atoms for label, t in times.items()},
        "us_per_atom_step_min": {label: 1e6 * min(t) / n_atoms for label, t in times.items()},
        "step_times_s": times,
    }
    hippynn_calc = systems["hippynn f32"].calc if "hippynn f32" in systems else None
    if hippynn_calc is not None:
        # Builds of hippynn's default list over warm-up + timed calls (1 = never rebuilt after the first call).
        result["hippynn_nl_builds"] = hippynn_calc.nl.nupdates
    result.update(neighbor_costs(base, hippynn_calc, repeats))
    return result


class HippynnWorker:
    """hippynn's calculators for one size in a separate process, driven over a pipe.

    :meth:`step` asks it for one ``get_forces()`` of each of its calculators
    and returns their wall times as measured there.
    """

    def __init__(self, n_atoms: int):
        command = [sys.executable, __file__, "--hippynn-worker", "--sizes", str(n_atoms)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the hippynn worker process failed to start")

    def step(self) -> dict:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def hippynn_worker(n_atoms: int, channel) -> None:
    """Serves :class:`HippynnWorker`: one call per calculator for every "step" line on stdin,
    answered on ``channel`` (the pipe to the parent)."""
    factories = {
        "hippynn f32, own process": lambda: hippynn_calculator("float32", skin=1.0),
        "hippynn f64, own process": lambda: hippynn_calculator("float64", skin=1.0),
    }
    systems = {}
    for label, make in factories.items():
        systems[label] = fcc_aluminium(n_atoms)
        systems[label].calc = make()
    rng = np.random.default_rng(SEED)
    print("ready", file=channel, flush=True)
    for _ in sys.stdin:
        move = rng.normal(0.0, MOVE, size=(n_atoms, 3))
        elapsed = {}
        for label, atoms in systems.items():
            atoms.positions = atoms.positions + move
            elapsed[label] = timed_forces(atoms)
        print(json.dumps(elapsed), file=channel, flush=True)


# -- summary and output -----------------------------------------------------------


def summarise(per_size: list) -> dict:
    """Ratios hippynn/ours per size, neighbour-list fractions and growth with size."""
    summary = {"ratio_hippynn_over_ours": {}, "ours_nl_fraction_of_step": {}, "growth_largest_over_smallest": {}}
    pairs = [("hippynn f32", "ours f32"), ("hippynn f64", "ours f64"), ("hippynn f32 skin=0", "ours f32 skin=0"),
             ("hippynn f32, own process", "ours f32"), ("hippynn f64, own process", "ours f64")]
    for size in per_size:
        cost = size["us_per_atom_step"]
        n = str(size["n_atoms"])
        summary["ratio_hippynn_over_ours"][n] = {
            f"{theirs} / {ours}": cost[theirs] / cost[ours] for theirs, ours in pairs if theirs in cost
        }
        nl_us = 1e6 * size["ours_nl_s"] / size["n_atoms"]
        summary["ours_nl_fraction_of_step"][n] = {label: nl_us / cost[label] for label in ("ours f32", "ours f64")}
    first, last = per_size[0]["us_per_atom_step"], per_size[-1]["us_per_atom_step"]
    summary["growth_largest_over_smallest"] = {label: last[label] / first[label] for label in first}
    return summary


def _row(label: str, cells) -> None:
    print(f"{label:<{LABEL_WIDTH}}" + "".join(cells))


def print_table(per_size: list, summary: dict) -> None:
    sizes = [size["n_atoms"] for size in per_size]
    growth = len(sizes) > 1
    header = f"{'µs per atom-step: median (min)':<{LABEL_WIDTH}}" + "".join(f"{n:>16d}" for n in sizes)
    header += f"{'median ' + str(sizes[-1]) + '/' + str(sizes[0]):>18}" if growth else ""
    print(header)
    print("-" * len(header))
    for label in per_size[0]["us_per_atom_step"]:
        cells = [f"{s['us_per_atom_step'][label]:9.1f} ({s['us_per_atom_step_min'][label]:5.1f})" for s in per_size]
        cells += [f"{summary['growth_largest_over_smallest'][label]:18.2f}"] if growth else []
        _row(label, cells)
    print()
    _row("our neighbour list alone (µs/atom)", (f"{1e6 * s['ours_nl_s'] / s['n_atoms']:16.1f}" for s in per_size))
    for label in ("ours f32", "ours f64"):
        fractions = summary["ours_nl_fraction_of_step"]
        _row(f"  fraction of {label} step (median)", (f"{fractions[str(n)][label]:16.1%}" for n in sizes))
    _row("our pairs per atom (6 Å, full list)", (f"{s['ours_pairs_per_atom']:16.1f}" for s in per_size))
    if "hippynn_nl_rebuild_s" not in per_size[0]:
        return
    rebuild_us = (1e6 * s["hippynn_nl_rebuild_s"] / s["n_atoms"] for s in per_size)
    _row("hippynn NL rebuild, skin=1 (µs/atom)", (f"{us:16.1f}" for us in rebuild_us))
    _row("hippynn pairs per atom (8 Å list)", (f"{s['hippynn_pairs_per_atom']:16.1f}" for s in per_size))
    _row("hippynn NL builds, skin=1 (all calls)", (f"{s['hippynn_nl_builds']:16d}" for s in per_size))
    print()
    ratios = summary["ratio_hippynn_over_ours"]
    for ratio in ratios[str(sizes[0])]:
        _row(f"{ratio} (median)", (f"{ratios[str(n)][ratio]:16.2f}" for n in sizes))


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[108, 500, 2048], help="atom counts, 4k³ each")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per calculator and size")
    parser.add_argument("--no-hippynn", action="store_true", help="measure mlip_md only")
    parser.add_argument("--default-malloc", action="store_true",
                        help="our calculators with keep_freed_memory=False (the library default)")
    parser.add_argument("--hippynn-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for n_atoms in args.sizes:
        replication(n_atoms)
    return args


def main():
    args = parse_arguments()
    if args.hippynn_worker:
        channel, sys.stdout = sys.stdout, sys.stderr  # anything hippynn prints stays off the pipe
        import_hippynn()
        hippynn_worker(args.sizes[0], channel)
        return
    hippynn_version = None if args.no_hippynn else import_hippynn()
    info = environment(hippynn_version)
    hippynn_text = "not measured"
    if hippynn_version is not None:
        hippynn_text = f"{hippynn_version} (custom kernels: {info['hippynn_custom_kernels']})"
    print(f"torch {info['torch']}, {info['torch_threads']} thread(s); hippynn {hippynn_text}; "
          f"load average {info['load_average_at_start'][0]:.2f}")
    print(f"fcc Al, rattle {RATTLE} Å, move {MOVE} Å per call, {WARMUP} warm-up + {args.repeats} timed calls\n")
    rng = np.random.default_rng(SEED)
    with tempfile.TemporaryDirectory() as directory:
        factories = calculator_factories(export_ours(directory), hippynn_version is not None,
                                         keep=not args.default_malloc)
        per_size = []
        for n_atoms in sorted(args.sizes):
            worker = HippynnWorker(n_atoms) if hippynn_version is not None else None
            per_size.append(measure_size(n_atoms, factories, args.repeats, rng, worker))
            if worker is not None:
                worker.close()
    summary = summarise(per_size)
    print_table(per_size, summary)
    info["load_average_at_end"] = os.getloadavg()
    save_report(
        "ase_speed",
        "energy+forces(+stress) per ASE get_forces() call, median µs per atom-step",
        settings=dict(cutoff=CUTOFF, lattice=LATTICE, rattle=RATTLE, move=MOVE, warmup=WARMUP,
                      repeats=args.repeats, seed=SEED, keep_freed_memory=not args.default_malloc, ours=OUR_ARCHITECTURE, hippynn=HIPPYNN_ARCHITECTURE),
        environment=info,
        sizes=per_size,
        summary=summary,
    )


if __name__ == "__main__":
    main()
