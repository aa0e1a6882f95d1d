"""The vesin-based neighbour list against ASE's reference implementation."""

import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from conftest import random_cell
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
