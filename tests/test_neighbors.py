"""The vesin-based neighbour list against ASE's reference implementation."""

import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from conftest import random_cell
from isolated import run_isolated
from mlip_md.neighbors import neighbor_list


def _edges(atoms, cutoff):
    neighbors = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
    vectors = (
        atoms.positions[neighbors.edge_index[1]]
        - atoms.positions[neighbors.edge_index[0]]
        + neighbors.shifts @ atoms.cell[:]
    )
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), neighbors.distances, atol=1e-12)
    assert (np.diff(neighbors.edge_index[0]) >= 0).all(), "edges must be sorted by centre atom"
    return sorted(zip(*neighbors.edge_index, map(tuple, neighbors.shifts)))


def _reference(atoms, cutoff):
    i, j, shifts = ase_neighbor_list("ijS", atoms, cutoff)
    return sorted(zip(i, j, map(tuple, shifts)))


def _slab_without_vacuum_vector():
    slab = fcc111("Al", (3, 3, 3), vacuum=5.0)
    slab.cell[2] = 0.0  # ASE allows a zero vector along an open direction
    return slab


def _wire():
    wire = bulk("Cu") * (1, 1, 4)
    wire.pbc = [False, False, True]
    wire.positions += 0.3
    return wire


CASES = {
    "fcc_small_cell": (bulk("Al", "fcc", a=4.05), 6.0),
    "triclinic_two_elements": (random_cell(), 6.0),
    "unwrapped_positions": (random_cell(seed=4), 5.0),
    "slab_vacuum": (fcc111("Al", (3, 3, 3), vacuum=5.0), 6.0),
    "slab_zero_vector": (_slab_without_vacuum_vector(), 6.0),
    "wire_one_periodic_axis": (_wire(), 5.0),
    "molecule_open": (molecule("CH3CH2OH"), 4.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_ase_reference(name):
    atoms, cutoff = CASES[name]
    atoms = atoms.copy()
    atoms.rattle(0.05, seed=3)
    if name == "unwrapped_positions":
        atoms.positions += atoms.cell[0] * 2.3 - atoms.cell[2] * 1.7
    assert _edges(atoms, cutoff) == _reference(atoms, cutoff)


def test_degenerate_periodic_cell_is_refused():
    with pytest.raises(ValueError, match="degenerate"):
        neighbor_list(np.zeros((2, 3)), np.diag([3.0, 3.0, 0.0]), True, 2.0)


def test_cost_grows_linearly():
    """Edges per atom stay constant as the system grows: no O(N²) pair search."""
    small = bulk("Al", "fcc", a=4.05, cubic=True) * (3, 3, 3)
    large = bulk("Al", "fcc", a=4.05, cubic=True) * (10, 10, 10)
    counts = [
        neighbor_list(a.positions, a.cell[:], a.pbc, 6.0).n_edges / len(a) for a in (small, large)
    ]
    assert counts[0] == counts[1] == 54


def _canonical(neighbors):
    """Edges as (i, j, shift) rows in lexicographic order, with their vectors."""
    keys = np.column_stack([neighbors.edge_index.T, neighbors.shifts])
    order = np.lexsort(keys.T[::-1])
    return keys[order], neighbors.vectors[order]


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_verlet_list_reuses_and_rebuilds_correctly(dtype, tolerance):
    # float32 vectors must be as accurate as float64 ones rounded (|r| < 5 Å: ulp 4.8e-7 Å).
    from mlip_md.neighbors import VerletList

    atoms = random_cell(seed=9)
    verlet = VerletList(cutoff=5.0, skin=1.0, dtype=dtype)
    rng = np.random.default_rng(0)
    for step in range(12):
        updated = verlet.update(atoms.positions, atoms.cell[:], atoms.pbc)
        assert updated.vectors.dtype == dtype and updated.distances.dtype == dtype
        np.testing.assert_allclose(updated.distances, np.linalg.norm(updated.vectors, axis=1), atol=tolerance)
        current = _canonical(updated)
        fresh = _canonical(neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, 5.0))
        np.testing.assert_array_equal(current[0], fresh[0])
        np.testing.assert_allclose(current[1], fresh[1], atol=tolerance, rtol=0)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)  # well below skin/2 per step
    assert verlet.n_builds < 6, "small moves must reuse the list"
    builds = verlet.n_builds
    atoms.positions[0] += [0.6, 0.0, 0.0]  # more than skin/2
    verlet.update(atoms.positions, atoms.cell[:], atoms.pbc)
    assert verlet.n_builds == builds + 1
    atoms.set_cell(atoms.cell[:] * 1.01, scale_atoms=True)
    strained = verlet.update(atoms.positions, atoms.cell[:], atoms.pbc)
    assert verlet.n_builds == builds + 2
    assert _edges(atoms, 5.0) == sorted(zip(*strained.edge_index, map(tuple, strained.shifts)))


# -- blown-up and degenerate geometries (each once crashed or exhausted the process) ----------

_FAR_APART = {
    # two atoms 1e6 Å apart, no periodicity (vesin divided by zero: SIGFPE)
    "pair_1e6_open": "Atoms('Al2', positions=[[0, 0, 0], [1e6, 0, 0]])",
    # a slab with one atom 1e6 Å above it (SIGFPE), or 1e5 Å (a minute per call)
    "slab_atom_1e6_above": "slab(1e6)",
    "slab_atom_1e5_above": "slab(1e5)",
    # a cluster blown apart along all three axes, and a gas in a (1e6 Å)³ box
    "blown_apart_3d": "cluster_with_outliers()",
    "gas_1e6_box": "Atoms('Al200', positions=np.random.default_rng(0).uniform(0, 1e6, (200, 3)))",
    # a periodic 2,100 x 2,800 Å cell, 5 Å thin: too many vesin cells (SIGFPE)
    "flat_periodic_cell": "Atoms('Al3', positions=[[1, 1, 1], [3, 1, 1], [2000, 2700, 4]], "
                          "cell=[2100, 2800, 5], pbc=True)",
}

_FAR_APART_CODE = """
import time
import numpy as np
from ase import Atoms
from ase.build import fcc111
from ase.neighborlist import neighbor_list as ase_neighbor_list
from mlip_md.neighbors import neighbor_list

def slab(height):
    atoms = fcc111("Al", (2, 2, 3), vacuum=5.0)
    atoms.pbc = [True, True, False]
    return atoms + Atoms("Al", positions=[[0.3, 0.2, height]])

def cluster_with_outliers():
    atoms = Atoms("Al8", positions=np.random.default_rng(1).uniform(0, 6, (8, 3)))
    return atoms + Atoms("Al3", positions=[[1e6, 0, 0], [0, -1e6, 3], [2, 1, 1e6]])

atoms = {case}
start = time.perf_counter()
nl = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, 6.0)
seconds = time.perf_counter() - start
vectors = atoms.positions[nl.edge_index[1]] - atoms.positions[nl.edge_index[0]] + nl.shifts @ atoms.cell[:]
i, j, shifts, distances = ase_neighbor_list("ijSd", atoms, 6.0)
ours = sorted(zip(*nl.edge_index.tolist(), map(tuple, nl.shifts.tolist())))
reference = sorted(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist())))
print(json.dumps({{
    "same_pairs": ours == reference, "n_pairs": len(ours), "seconds": seconds,
    "vector_error": float(np.abs(np.linalg.norm(vectors, axis=1) - nl.distances).max(initial=0)),
    "distance_error": float(np.abs(np.sort(nl.distances) - np.sort(distances)).max(initial=0)),
}}))
"""


@pytest.mark.parametrize("name", sorted(_FAR_APART))
def test_atoms_far_apart_match_ase_in_bounded_time_and_memory(name):
    result = run_isolated(_FAR_APART_CODE.format(case=_FAR_APART[name]), timeout=120, memory_gb=3)
    assert result["same_pairs"], result
    assert result["vector_error"] < 1e-9 and result["distance_error"] < 1e-9
    assert result["seconds"] < 2.0, f"{result['seconds']:.1f} s for {result['n_pairs']} pairs"
    if name.startswith("slab"):
        assert result["n_pairs"] > 0


def test_cell_far_thinner_than_the_cutoff_is_refused_in_bounded_memory():
    # A 1e-6 Å cell vector: ~1e8 periodic images of one atom within 6 Å (memory grew until killed).
    result = run_isolated("""
        from mlip_md.neighbors import neighbor_list
        try:
            neighbor_list([[0.0, 0.0, 0.0]], [[3, 0, 0], [0, 3, 0], [0, 0, 1e-6]], True, 6.0)
        except ValueError as error:
            print(json.dumps({"error": str(error)}))
        """, timeout=60, memory_gb=2)
    assert "cell heights" in result["error"] and "[3, 3, 1e-06] Å" in result["error"]
    assert "about 1e+08 pairs" in result["error"] and "MAX_PAIRS" in result["error"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_pair_estimate_is_close_to_the_real_count(name):
    from mlip_md.neighbors import _binning_box, _estimate_pairs

    atoms, cutoff = CASES[name]
    atoms = atoms.copy()
    atoms.wrap()
    pbc = np.broadcast_to(atoms.pbc, (3,))
    estimate = _estimate_pairs(atoms.positions, _binning_box(atoms.cell[:], pbc), pbc, cutoff)
    actual = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff).n_edges
    assert 0.5 < estimate / actual < 1.5


def test_pair_budget_is_an_argument():
    atoms = bulk("Al", "fcc", a=4.05, cubic=True) * (2, 2, 2)
    assert neighbor_list(atoms.positions, atoms.cell[:], True, 6.0, max_pairs=5000).n_edges == 32 * 54
    with pytest.raises(ValueError, match=r"about 1.\de\+03 pairs, more than the budget of 1e\+03"):
        neighbor_list(atoms.positions, atoms.cell[:], True, 6.0, max_pairs=1000)
