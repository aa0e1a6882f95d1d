"""Analytic Hessian vs central finite differences of forces, mlip_md.MLIPCalculator.

What is measured
----------------
For a float64 export of a random-weight ``mlip_md.HIPNN`` (species C, H, O, N;
2 interaction blocks, 20 features, 20 sensitivities, 3 atom layers, cutoff
5 Å) served by ``mlip_md.MLIPCalculator``, one CPU thread:

* ``analytic``: ``calc.get_hessian(atoms)`` (the exported module's
  ``hessian``: forward-mode tangents of its hand-written gradient, all 3N
  coordinates at once);
* ``finite differences``: H[:, k] = −(F(x + h e_k) − F(x − h e_k)) / 2h over
  all 3N coordinates, i.e. 6N ``get_forces()`` calls of the same calculator,
  h = ``--step`` Å (default 1e-4: in float64 the truncation error, O(h²),
  still dominates the round-off, O(ε/h), there; the scan below shows it).

Median wall time over ``--repeats`` interleaved repetitions (after a
warm-up) of both and of one energy+forces call, the speed-up FD / analytic,
and the agreement
max|H_an − H_fd| / max|H_fd| for h/10, h and 10·h (which should scale as h²
until round-off takes over), plus the analytic Hessian's asymmetry.

Systems (all rattled by σ = 0.01 Å with a fixed seed to break symmetries):
aspirin, C9H8O4, 21 atoms, built here from standard bond lengths and angles
(acetoxy group perpendicular to the ring), and C60 (60 atoms, truncated
icosahedron with 1.44 Å bonds), both with open boundaries; and periodic
diamond, 2×2×2 conventional cells (64 atoms, a = 3.567 Å, a 7.1 Å cell:
several images of a pair lie within the cutoff).

The model's cos² cutoff envelope is C¹ but not C²: its second derivative
jumps at r = r_cut. Whenever a displacement ±h moves a pair across the
cutoff, the finite difference straddles that jump and its error no longer
falls as h². The table therefore shows the clearance min |r_ij − r_cut|;
agreement is only meaningful for h well below it.

Run from the repository root::

    .venv/bin/python benchmarks/hessian_speed.py [--repeats 7] [--step 1e-4] [--keep-freed-memory]

Prints a table and writes ``benchmarks/results/hessian_speed.json``.
"""

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before torch is imported

import argparse  # noqa: E402
import itertools  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import ase  # noqa: E402
import ase.build  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.neighborlist import natural_cutoffs, neighbor_list as ase_neighbor_list  # noqa: E402

import mlip_md  # noqa: E402
from mlip_md.data.labels import finite_difference_hessian  # noqa: E402
from _report import save_report  # noqa: E402

torch.set_num_threads(1)

ARCHITECTURE = dict(n_interactions=2, n_features=20, n_sensitivities=20, n_atom_layers=3, cutoff=5.0)
SPECIES = ["C", "H", "O", "N"]
SEED = 0
RATTLE = 0.01  # Å


# -- geometries ----------------------------------------------------------------------


def place(a, b, c, bond: float, angle: float, dihedral: float) -> np.ndarray:
    """Position of atom d bonded to c: |cd| = bond (Å), angle bcd and dihedral abcd (degrees)."""
    bc = (c - b) / np.linalg.norm(c - b)
    normal = np.cross(b - a, bc)
    normal /= np.linalg.norm(normal)
    in_plane = np.cross(normal, bc)
    theta, phi = np.radians(angle), np.radians(dihedral)
    local = bond * np.array([-np.cos(theta), np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi)])
    return c + local[0] * bc + local[1] * in_plane + local[2] * normal


def aspirin() -> ase.Atoms:
    """Aspirin (2-acetoxybenzoic acid, C9H8O4), 21 atoms, from textbook bond lengths and angles."""
    angles = np.radians(60.0 * np.arange(6))
    ring = 1.39 * np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], axis=1)  # C1..C6
    ring_h = [2.47 * np.array([np.cos(t), np.sin(t), 0.0]) for t in angles[2:]]  # on C3..C6
    c1, c2, c3, c6 = ring[0], ring[1], ring[2], ring[5]
    # Carboxylic acid on C1 (in the ring plane, C=O towards the ester, O-H syn to C=O).
    c7 = place(c3, c2, c1, 1.48, 120.0, 180.0)
    o1 = place(c6, c1, c7, 1.22, 122.0, 180.0)
    o2 = place(c6, c1, c7, 1.31, 114.0, 0.0)
    h_acid = place(c1, c7, o2, 0.97, 107.0, 180.0)
    # Acetoxy group on C2, twisted perpendicular to the ring; Z ester (C=O eclipsing O-C2).
    o3 = place(c6, c1, c2, 1.40, 120.0, 180.0)
    c8 = place(c1, c2, o3, 1.36, 117.0, 90.0)
    o4 = place(c2, o3, c8, 1.20, 123.0, 0.0)
    c9 = place(c2, o3, c8, 1.50, 111.0, 180.0)
    methyl_h = [place(o3, c8, c9, 1.09, 109.5, dihedral) for dihedral in (60.0, 180.0, 300.0)]
    positions = [*ring, c7, c8, c9, o1, o2, o3, o4, *ring_h, h_acid, *methyl_h]
    return ase.Atoms("C6" + "CCC" + "OOOO" + "H4" + "H" + "H3", positions=positions)


def fullerene() -> ase.Atoms:
    """C60: the truncated icosahedron, every edge 1.44 Å."""
    golden = (1 + 5**0.5) / 2
    seeds = [(0, 1, 3 * golden), (1, 2 + golden, 2 * golden), (golden, 2, golden**3)]  # edge length 2
    vertices = set()
    for seed in seeds:
        for signs in itertools.product((1, -1), repeat=3):
            signed = [s * x for s, x in zip(signs, seed)]
            for shift in range(3):  # cyclic (even) permutations
                vertices.add(tuple(round(v, 9) for v in signed[shift:] + signed[:shift]))
    positions = 0.72 * np.array(sorted(vertices))
    assert len(positions) == 60
    return ase.Atoms("C60", positions=positions)


def build_systems() -> dict:
    """{name: Atoms}: the two test molecules and the diamond cell, checked, then rattled."""
    diamond = ase.build.bulk("C", "diamond", a=3.567, cubic=True) * (2, 2, 2)
    systems = {"aspirin": (aspirin(), 21), "C60": (fullerene(), 90), "diamond": (diamond, 128)}
    for atoms, n_bonds in systems.values():
        check_geometry(atoms, n_bonds)
        atoms.rattle(stdev=RATTLE, seed=SEED)
    return {name: atoms for name, (atoms, _) in systems.items()}


def cutoff_clearance(atoms: ase.Atoms) -> float:
    """Smallest |r_ij − r_cut| over all pairs (periodic images included), Å."""
    distances = ase_neighbor_list("d", atoms, ARCHITECTURE["cutoff"] + 1.0)
    return float(np.abs(distances - ARCHITECTURE["cutoff"]).min())


def check_geometry(atoms: ase.Atoms, expected_bonds: int) -> None:
    """Guards the hand-built geometries: only the intended covalent contacts exist."""
    first, _ = ase_neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.2))
    if len(first) != 2 * expected_bonds:
        formula = atoms.get_chemical_formula()
        raise RuntimeError(f"{formula}: {len(first) // 2} bonded contacts, expected {expected_bonds}")


# -- Hessians ----------------------------------------------------------------------------


def one_force_call(calculator, atoms: ase.Atoms) -> np.ndarray:
    """Forces of a fresh copy of ``atoms`` (so nothing comes from the calculator's cache)."""
    calculator.reset()
    return calculator.get_forces(atoms.copy())


def relative_deviation(analytic: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(analytic - reference).max() / np.abs(reference).max())


def timed(function):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def measure(name: str, atoms: ase.Atoms, calculator, repeats: int, step: float) -> dict:
    """Interleaved timings of both Hessians and the agreement for h/10, h, 10 h."""
    functions = {
        "analytic": lambda: calculator.get_hessian(atoms),
        "finite_differences": lambda: finite_difference_hessian(atoms, calculator, step, symmetrize=False),
        "one_force_call": lambda: one_force_call(calculator, atoms),
    }
    analytic, fd = functions["analytic"](), functions["finite_differences"]()  # also warm-up
    times = {label: [] for label in functions}
    labels = list(functions)
    for repetition in range(repeats):
        rotation = repetition % len(labels)
        for label in labels[rotation:] + labels[:rotation]:
            seconds, _ = timed(functions[label])
            times[label].append(seconds)
    agreement = {f"{step:g}": relative_deviation(analytic, fd)}
    for h in (step / 10, step * 10):
        agreement[f"{h:g}"] = relative_deviation(analytic, finite_difference_hessian(atoms, calculator, h, symmetrize=False))
    median = {label: statistics.median(t) for label, t in times.items()}
    return {
        "system": name,
        "n_atoms": len(atoms),
        "cutoff_clearance_A": cutoff_clearance(atoms),
        "median_s": median,
        "times_s": times,
        "speedup_fd_over_analytic": median["finite_differences"] / median["analytic"],
        "max_rel_deviation_by_step": dict(sorted(agreement.items(), key=lambda item: float(item[0]))),
        "analytic_asymmetry": float(np.abs(analytic - analytic.T).max() / np.abs(analytic).max()),
        "max_abs_hessian_eV_per_A2": float(np.abs(analytic).max()),
    }


# -- output ------------------------------------------------------------------------------


def print_table(results: list, step: float) -> None:
    header = f"{'system':<10}{'N':>4}{'force call (ms)':>17}{'analytic (ms)':>15}{'FD (ms)':>11}{'FD/analytic':>13}"
    print(f"median wall time, FD with h = {step:g} Å (6N force calls)")
    print(header + "\n" + "-" * len(header))
    for r in results:
        median = {label: 1e3 * seconds for label, seconds in r["median_s"].items()}
        print(
            f"{r['system']:<10}{r['n_atoms']:>4}{median['one_force_call']:17.2f}{median['analytic']:15.1f}"
            f"{median['finite_differences']:11.1f}{r['speedup_fd_over_analytic']:13.2f}"
        )
    steps = list(results[0]["max_rel_deviation_by_step"])
    header = f"{'system':<10}{'min|r-rc| (Å)':>15}" + "".join(f"{'h=' + h:>10}" for h in steps)
    header += f"{'asymmetry':>11}"
    print("\nmax|H_an - H_fd| / max|H_fd| for FD step h (Å); asymmetry = max|H_an - H_an^T| / max|H_an|")
    print(header + "\n" + "-" * len(header))
    for r in results:
        deviations = "".join(f"{r['max_rel_deviation_by_step'][h]:10.1e}" for h in steps)
        print(f"{r['system']:<10}{r['cutoff_clearance_A']:15.4f}{deviations}{r['analytic_asymmetry']:11.1e}")


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions of each Hessian")
    parser.add_argument("--step", type=float, default=1e-4, help="finite-difference step h in Å")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="create the calculator with keep_freed_memory=True (glibc malloc keeps freed memory)")
    return parser.parse_args()


def main():
    args = parse_arguments()
    systems = build_systems()
    torch.manual_seed(SEED)
    model = mlip_md.HIPNN(species=SPECIES, **ARCHITECTURE)
    with tempfile.TemporaryDirectory() as directory:
        calculator = mlip_md.MLIPCalculator(mlip_md.export(model, Path(directory) / "chon.pt", dtype="float64"),
                                            keep_freed_memory=args.keep_freed_memory)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float64 model, cutoff 5 Å, "
              f"{args.repeats} repeats, keep_freed_memory={args.keep_freed_memory}\n")
        results = [measure(name, atoms, calculator, args.repeats, args.step) for name, atoms in systems.items()]
    print_table(results, args.step)
    save_report(
        "hessian_speed",
        "analytic Hessian (MLIPCalculator.get_hessian) vs central finite differences of forces",
        settings=dict(architecture=ARCHITECTURE, species=SPECIES, dtype="float64", step=args.step,
                      repeats=args.repeats, seed=SEED, keep_freed_memory=args.keep_freed_memory),
        environment=dict(python=platform.python_version(), torch=torch.__version__, ase=ase.__version__,
                         mlip_md=mlip_md.__version__, torch_threads=torch.get_num_threads(),
                         load_average=os.getloadavg()),
        results=results,
    )


if __name__ == "__main__":
    main()
