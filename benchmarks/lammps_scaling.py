"""LAMMPS pair_style mlip on many MPI ranks: the ghost-shell and layer-exchange schemes, on paper and here.

What is counted
---------------
Under LAMMPS's domain decomposition each MPI rank owns the atoms of one
subdomain (box L_x×L_y×L_z cut by a processor grid p_x×p_y×p_z into
w_d = L_d / p_d). ``pair_style mlip`` runs a message-passing model with n
interaction layers and pair cutoff r_c in one of two schemes:

* **shell** (``pair_style mlip comm shell``): a rank's model graph is its owned
  atoms plus every atom within n hops (pairs shorter than r_c) of one, each
  atom once (periodic images merged); every node runs every layer's dense
  part, and nodes reached within n − 1 hops carry their k neighbours as edges.
  LAMMPS's ghost shell is n·r_c + skin thick.
* **layer** (``pair_style mlip comm layer``): a rank evaluates its owned atoms
  only (edges: their k neighbours each); after every layer but the last the
  owners' features go to the ghost atoms (LAMMPS's ghosts within r_c + skin,
  less the periodic images of the rank's own atoms, which share their
  atom's node), and their gradients come back:
  2(n − 1) exchanges of M·F doubles per ghost per step (M ensemble members,
  F features).

The counting model (``rank_counts``; pure functions, no LAMMPS) of one rank:

* density ρ = 4/a³ of fcc with lattice constant a; k = number of lattice
  neighbours closer than r_c, counted on the lattice (54 for Al, a = 4.05 Å,
  r_c = 6 Å).
* **Atoms within h hops** (shell): Steiner's volume of a box grown by d,
  abc + 2d(ab+bc+ca) + πd²(a+b+c) + 4/3·πd³, with its three terms measured on
  the lattice instead of taken for a ball: a face's slab thickness t_h, an
  edge's cross-section e_h (replacing πd²/4) and a corner's volume c_h
  (replacing πd³/6), only for the divided directions (p_d > 1; an undivided
  direction spans the periodic box, where images are merged: no growth) and
  capped at the box (w_d + 2t_h ≥ L_d: the direction is covered, each atom
  counted once). The faces' reach is not h·r_c: fcc's (100) planes lie
  s = a/2 apart and one hop advances at most m₁ planes, the largest plane
  offset among the neighbour vectors (m₁ = 2 for 6 Å: the third plane's
  nearest atom is √10·s = 6.40 Å away), so h hops cover exactly h·m₁ planes
  beyond the last owned one: t_h = h·m₁·s = 4.05 h Å where a ball would
  give 6 h Å (δ = r_c − m₁·s = 1.95 Å lost per hop, from the lattice, not
  fitted). e_h and c_h come from an exact breadth-first hop search on a
  periodic lattice sample in which one, two or three directions are cut
  (``hop_terms``): the excess over the owned atoms, less the faces' (and
  edges') share, per edge length and per corner. A wall that lies on an
  atomic plane (as in the validation boxes, whose k lattice cells split
  evenly) leaves half of that rattled plane on each side: the sample then
  assigns each atom of the plane to either side at random, which adds
  half a plane to the faces and changes e_h and c_h; walls between planes
  give the values above whatever their position. For 6 Å the search gives
  e_h = t_h² and c_h ≈ (0.5–0.7)·t_h³: the region h hops reach is nearly the
  box grown by t_h in every direction (the diagonal offset (2, 2, 0)·s,
  5.73 Å, advances two planes in two directions at once), not a rounded
  one. Nodes = atoms within n hops; edges = k · atoms within n − 1 hops.
* **LAMMPS ghosts** (layer's exchange, and either scheme's position and force
  communication): LAMMPS communicates slabs dimension by dimension, so its
  ghosts fill the box grown by g = r_c + skin in every direction, corners
  included (a prism, not Steiner's rounded volume), in every direction, divided
  or not (periodic images are separate ghosts). A slab holds the atomic planes
  that lie within g of the wall, a plane on the wall half (rattled), a plane
  within the rattle amplitude of g partly; walls between planes average g/s
  planes. Layer: nodes = owned = ρ·w_x·w_y·w_z, edges = k·nodes, exchanged
  ghosts = atoms of the grown prism − atoms of the prism grown in the
  undivided directions only (the images of owned atoms).

Totals are summed over ranks with each rank's own walls (on a plane or not).

Validation here
---------------
fcc Al (a = 4.05 Å, 4k³ atoms; 4,000 and 32,000 by default), rattled by
0.05 Å as in ``lammps_speed.py``, metal units, skin 2 Å, on 1, 2 and 4 ranks
(``mpiexec -n R`` of this script in ``--worker`` mode) for each scheme
(``comm shell`` and ``comm layer``), with a float32 export of ``mlip_md.HIPNN(["Al"],
**ARCHITECTURE)`` (``lammps_speed.py``'s: 2 layers, r_c = 6 Å, 20 features,
20 sensitivities, 3 dense layers). The processor grid is LAMMPS's own choice
for the box (``lammps_grid``, its ``ProcMap`` rule: the factorisation with
the least subdomain surface, first in LAMMPS's order: 1×1×2 for 2 ranks,
1×2×2 for 4), set with ``processors`` so the prediction uses the same
subdomains, and read back (``extract_global("procgrid")``). After ``run 2``
(first neighbour list, first torch calls) and ``--repeats`` runs of
``--steps`` steps, ``compute pair mlip`` gives the nodes, edges (and, for
the layer scheme, exchanged ghosts and exchange seconds) summed over ranks,
printed against the
prediction, and the model seconds per step and rank (least of the runs: the
machine may be shared) against the work model below, where ranks ≤ cores.
The layer scheme's exchange seconds (c[6]) include waiting for the slower
neighbour, so here they measure imbalance more than transfer; they are
printed per ghost and exchange, not used. The system is
``lammps_speed.py``'s (``start``), timed by its ``time_lammps``.

Extrapolation
-------------
64, 256, 1,024 and 4,096 ranks × 1M, 10M and 100M atoms of fcc Al in a cubic
box (the ``lammps_grid`` grid): per rank owned atoms, subdomain edges, nodes
and edges of each scheme, their redundancy (nodes / owned, edges / (k·owned)),
the layer scheme's ghosts and bytes exchanged per step, and a predicted
parallel efficiency:

    efficiency = owned-only work / (the rank's work + its communication)

* work = c_node·nodes + c_edge·edges. The weights are the model's multiply-adds
  per node and per edge of a forward plus hand-written reverse pass
  (``operations``): per edge and layer the sensitivities (4 + 1 exponential
  per sensitivity, twice) and the neighbour sum S·F_in (forward, its
  sensitivity gradient, and for layers after the first its feature
  gradient); per node and layer the interaction matrix S·F_in·F, the self
  term, the dense layers F² each, read-out and activations, forward and
  reverse. Their absolute scale (seconds per multiply-add) is calibrated on
  this machine from the 1-rank model seconds of the largest validation run
  (``compute pair mlip``'s c[3]), or with ``--no-lammps`` from timing the
  exported module on the same graph in this process, or ``--us-per-atom``.
  The model pads each node's neighbours to a row of k slots (the most any
  node has) and computes every slot, so the shell scheme as implemented also
  pays k slots for each node of the outermost hop, which has no edges: work
  = (c_node + k·c_edge)·nodes. Both forms are printed ("shell": by edges,
  the scheme's own cost; "padded": the current layout); for the layer scheme
  (rows for the owned atoms only) they coincide. The layer scheme also pays,
  in every block after the first, for each owned atom within r_c of a
  divided wall, its shares of its ghost neighbours' gradients, which go to
  their owners (``ghost_share_ops``: counted for all k slots, an upper bound).
* communication per exchange = messages · latency + bytes / bandwidth +
  2 · bytes / copy bandwidth (packed into and unpacked from buffers), with
  messages = 2 per divided direction and swap (more than one swap where g
  exceeds a subdomain's width, as LAMMPS does). The layer scheme pays
  2(n − 1) exchanges of M·F doubles per ghost; both schemes pay LAMMPS's own
  position (forward) and force (reverse) exchange, 3 doubles per ghost of
  their ghost shells (n·r_c + skin and r_c + skin thick). Latency,
  bandwidth and copy bandwidth default to InfiniBand-like 2 µs, 10 GB/s and
  5 GB/s (``--latency-us``, ``--bandwidth-gbs``, ``--copy-gbs``). Not
  modelled: neighbour-list builds (larger for the shell's ghosts), load
  imbalance, per-call overheads of small graphs.

Run from the repository root (a few minutes with the defaults)::

    .venv/bin/python benchmarks/lammps_scaling.py [--sizes 4000 32000] [--ranks 1 2 4] [--no-lammps]

Prints the tables and writes ``benchmarks/results/lammps_scaling.json``.
"""

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before torch is imported

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional, Sequence, Tuple  # noqa: E402

import numpy as np  # noqa: E402

from lammps_speed import ARCHITECTURE, plugin_counters, repeats_for, start, time_lammps, time_model  # noqa: E402

SCHEMES = ("shell", "layer")
HIGHLIGHT = (1024, 1_000_000)  # the size of the ANI-Al paper's runs (1.3M atoms)


@dataclass(frozen=True)
class Setup:
    """What the counts depend on: lattice, model shape, skin, rattle amplitude."""

    lattice_constant: float = 4.05  # fcc Al, Å
    cutoff: float = ARCHITECTURE["cutoff"]  # Å
    layers: int = ARCHITECTURE["n_interactions"]
    skin: float = 2.0  # Å, LAMMPS's metal default
    features: int = ARCHITECTURE["n_features"]
    sensitivities: int = ARCHITECTURE["n_sensitivities"]
    atom_layers: int = ARCHITECTURE["n_atom_layers"]
    ensemble: int = 1
    rattle: float = 0.05  # Å, uniform ± in each coordinate

    @property
    def spacing(self) -> float:
        """Distance between fcc (100) planes, Å."""
        return self.lattice_constant / 2

    @property
    def density(self) -> float:
        return 4 / self.lattice_constant ** 3


# ---------------------------------------------------------------- lattice

def neighbour_offsets(setup: Setup) -> np.ndarray:
    """fcc neighbour vectors closer than the cutoff, ``[k, 3]`` integers in units of s = a/2
    (fcc = the points of the simple cubic lattice of spacing s with an even coordinate sum)."""
    reach = int(setup.cutoff / setup.spacing) + 1
    grid = np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)))
    squares = (grid ** 2).sum(1) * setup.spacing ** 2
    keep = (grid.sum(1) % 2 == 0) & (squares > 0) & (squares < setup.cutoff ** 2)
    return grid[keep]


def rattle_warning(setup: Setup) -> Optional[str]:
    """A note when a lattice distance lies so close to the cutoff that rattling changes k."""
    reach = int(setup.cutoff / setup.spacing) + 2
    grid = np.array(list(itertools.product(range(0, reach + 1), repeat=3)))
    grid = grid[grid.sum(1) % 2 == 0]
    distances = np.sqrt((grid ** 2).sum(1)) * setup.spacing
    closest = float(np.min(np.abs(distances - setup.cutoff)))
    if closest < 2 * math.sqrt(3) * setup.rattle:
        return (f"a lattice distance lies {closest:.3f} Å from the cutoff: rattled by ±{setup.rattle} Å, "
                "atoms have more or fewer than k neighbours and the counts blur")
    return None


def _hop_excess(offsets: np.ndarray, hops: int, divided: int, aligned: int, period: int, seed: int) -> List[int]:
    """Atoms reached within 0..hops hops that are not owned, on a periodic sample of period³
    points of spacing s (fcc: those with an even coordinate sum) where the owned atoms fill half the period in each of the first
    ``divided`` directions; the first ``aligned`` of those have their walls on atomic planes, each
    plane owned, half of its atoms at random (rattling), the others between planes."""
    rng = np.random.default_rng(seed)
    index = np.indices((period,) * 3)
    lattice = index.sum(0) % 2 == 0
    owned = lattice.copy()
    half = period // 2
    for d in range(divided):
        c = index[d]
        if d < aligned:
            # exactly half of each wall plane's atoms inside, chosen at random
            draw = rng.random(lattice.shape)
            coin = np.zeros(lattice.shape, dtype=bool)
            for plane in (0, half):
                sites = lattice & (c == plane)
                coin |= sites & (draw < np.median(draw[sites]))
            owned &= ((c > 0) & (c < half)) | coin
        else:
            owned &= c < half
    reached, excess = owned, [0]
    for _ in range(hops):
        grown = reached.copy()
        for v in offsets:
            grown |= np.roll(reached, shift=tuple(int(x) for x in v), axis=(0, 1, 2))
        reached = grown  # even-sum offsets keep lattice points on the lattice
        excess.append(int((reached & ~owned).sum()))
    return excess


@dataclass
class HopTerms:
    """Lattice terms of the atoms within h hops (index h): a face's slab thickness (Å) by
    whether its wall is on a plane, an edge's cross-section (Å²) by how many of its two walls
    are, a corner's volume (Å³) by how many of its three walls are."""

    face: List[List[float]]  # [aligned 0/1][h]
    edge: List[List[float]]  # [aligned 0..2][h]
    corner: List[List[float]]  # [aligned 0..3][h]


def hop_terms(setup: Setup, samples: int = 4) -> HopTerms:
    """``HopTerms`` for h = 0..layers from exact hop searches on lattice samples (module docstring).

    The sample's period leaves the reaches from opposite walls apart; samples with walls on
    planes are averaged over ``samples`` random assignments of the planes' atoms."""
    offsets = neighbour_offsets(setup)
    s, site = setup.spacing, 2 * setup.spacing ** 3  # volume per lattice point
    step = int(np.max(offsets[:, 0]))  # planes one hop advances at most
    period = 2 * (2 * (setup.layers * step + 1) + 2)
    hops = setup.layers

    def excess(divided: int, aligned: int) -> np.ndarray:
        runs = samples if aligned else 1
        return np.mean([_hop_excess(offsets, hops, divided, aligned, period, seed) for seed in range(runs)], axis=0)

    full, half = period * s, period * s / 2
    face = [list(excess(1, a) * site / (2 * full * full)) for a in (0, 1)]
    edge = []
    for a in (0, 1, 2):
        # owned: half × half × full; faces normal to the two divided directions, 4 edges of length `full`
        walls = [face[1 if d < a else 0] for d in range(2)]
        faces = sum(2 * half * full * np.array(w) for w in walls)
        edge.append(list((excess(2, a) * site - faces) / (4 * full)))
    corner = []
    for a in (0, 1, 2, 3):
        aligned = [d < a for d in range(3)]
        faces = sum(2 * half * half * np.array(face[int(al)]) for al in aligned)
        edges = sum(4 * half * np.array(edge[int(aligned[i]) + int(aligned[j])])
                    for i, j in ((0, 1), (0, 2), (1, 2)))
        corner.append(list((excess(3, a) * site - faces - edges) / 8))
    return HopTerms(face, edge, corner)


# ---------------------------------------------------------------- geometry

def lammps_grid(ranks: int, box: Sequence[float]) -> Tuple[int, int, int]:
    """LAMMPS's processor grid (ProcMap::factor + best_factors): the least subdomain surface,
    the first such factorisation in LAMMPS's order (p_x ascending, then p_y)."""
    lx, ly, lz = box
    best, chosen = 2 * (lx * ly + lx * lz + ly * lz), (1, 1, ranks)
    for px in range(1, ranks + 1):
        if ranks % px:
            continue
        for py in range(1, ranks // px + 1):
            if (ranks // px) % py:
                continue
            pz = ranks // px // py
            surface = lx * ly / px / py + lx * lz / px / pz + ly * lz / py / pz
            if surface < best:
                best, chosen = surface, (px, py, pz)
    return chosen


@dataclass
class Wall:
    """One face of a subdomain: on an atomic plane or not, and the distance (Å) from it to the
    first plane outside (0 on a plane, where half of that rattled plane is outside)."""

    on_plane: bool
    gap: float


def walls_of(position_lo: float, position_hi: float, spacing: float) -> Tuple[Wall, Wall]:
    """The lower and upper walls of [lo, hi) with atomic planes at multiples of ``spacing``."""
    tolerance = 1e-6 * spacing

    def wall(distance: float) -> Wall:
        distance %= spacing
        if distance < tolerance or spacing - distance < tolerance:
            return Wall(True, 0.0)
        return Wall(False, distance)

    return wall(position_lo), wall(-position_hi)


def slab_thickness(wall: Wall, depth: float, setup: Setup) -> float:
    """Atoms of a slab of ``depth`` beyond a wall, as a thickness (planes × s): planes inside
    count fully, a plane on the wall half, a plane within the rattle amplitude of ``depth`` partly."""
    s, amplitude = setup.spacing, setup.rattle
    planes = 0.5 if wall.on_plane else 0.0
    m = 1 if wall.on_plane else 0
    while True:
        position = wall.gap + m * s
        if position >= depth + amplitude:
            break
        planes += 1.0 if amplitude == 0 else min(1.0, max(0.0, (depth - position + amplitude) / (2 * amplitude)))
        m += 1
    return planes * s


def hop_atoms(widths, lengths, walls, terms: HopTerms, hops: int, density: float) -> float:
    """Atoms within ``hops`` hops of one rank's subdomain, each once (periodic images merged)."""
    if hops == 0:
        return density * math.prod(widths)
    extent, cut = list(widths), []
    for d in range(3):
        if walls[d] is None:
            continue
        grown = widths[d] + sum(terms.face[int(w.on_plane)][hops] for w in walls[d])
        if grown >= lengths[d]:
            extent[d] = lengths[d]  # the shell wraps around the box: every atom of this direction, once
        else:
            cut.append(d)
    volume = math.prod(extent)
    for d in cut:
        others = math.prod(extent[e] for e in range(3) if e != d)
        volume += sum(terms.face[int(w.on_plane)][hops] for w in walls[d]) * others
    for d, e in itertools.combinations(cut, 2):
        third = math.prod(extent[f] for f in range(3) if f not in (d, e))
        volume += sum(terms.edge[int(a.on_plane) + int(b.on_plane)][hops]
                      for a in walls[d] for b in walls[e]) * third
    if len(cut) == 3:
        volume += sum(terms.corner[int(a.on_plane) + int(b.on_plane) + int(c.on_plane)][hops]
                      for a in walls[0] for b in walls[1] for c in walls[2])
    return density * volume


def ghost_atoms(widths, walls, depth: float, setup: Setup) -> float:
    """LAMMPS's ghosts of one rank: the prism grown by ``depth`` in every direction, less the owned atoms."""
    grown = [widths[d] + sum(slab_thickness(w, depth, setup) for w in walls[d]) for d in range(3)]
    return setup.density * (math.prod(grown) - math.prod(widths))


def exchanged_ghosts(widths, walls, grid, depth: float, setup: Setup) -> float:
    """Ghosts whose features the layer scheme exchanges: LAMMPS's ghosts less the periodic images
    of the rank's own atoms (grown in undivided directions only), which share their atom's node."""
    own_images = [widths[d] + (sum(slab_thickness(w, depth, setup) for w in walls[d]) if grid[d] == 1 else 0.0)
                  for d in range(3)]
    return ghost_atoms(widths, walls, depth, setup) - setup.density * (math.prod(own_images) - math.prod(widths))


def messages(widths, grid, depth: float) -> int:
    """Messages of one forward (or reverse) exchange: 2 per divided direction and swap."""
    return sum(2 * math.ceil(depth / widths[d]) for d in range(3) if grid[d] > 1)


def rank_counts(setup: Setup, terms: HopTerms, k: int, box: Sequence[float], grid: Sequence[int],
                cell: Sequence[int]) -> Dict[str, float]:
    """Predicted nodes, edges and ghosts of the rank at grid position ``cell``, for both schemes."""
    widths = [box[d] / grid[d] for d in range(3)]
    all_walls = [walls_of(cell[d] * widths[d], (cell[d] + 1) * widths[d], setup.spacing) for d in range(3)]
    # merged images: an undivided direction does not grow in the shell scheme
    shell_walls = [all_walls[d] if grid[d] > 1 else None for d in range(3)]
    n, rho = setup.layers, setup.density
    owned = rho * math.prod(widths)
    layer_depth, shell_depth = setup.cutoff + setup.skin, n * setup.cutoff + setup.skin
    return {
        "owned": owned,
        "shell_nodes": hop_atoms(widths, box, shell_walls, terms, n, rho),
        "shell_edges": k * hop_atoms(widths, box, shell_walls, terms, n - 1, rho),
        "shell_lammps_ghosts": ghost_atoms(widths, all_walls, shell_depth, setup),
        "layer_nodes": owned,
        "layer_edges": k * owned,
        # rows with a neighbour beyond a divided wall: their shares of the ghosts' gradients are computed
        "layer_boundary_rows": owned - rho * math.prod(max(0.0, widths[d] - (2 * setup.cutoff if grid[d] > 1 else 0.0))
                                                       for d in range(3)),
        "layer_ghosts": exchanged_ghosts(widths, all_walls, grid, layer_depth, setup),
        "layer_lammps_ghosts": ghost_atoms(widths, all_walls, layer_depth, setup),
        "layer_messages": messages(widths, grid, layer_depth),
        "shell_messages": messages(widths, grid, shell_depth),
    }


def total_counts(setup: Setup, terms: HopTerms, k: int, box, grid) -> Dict[str, float]:
    """``rank_counts`` summed over the ranks (messages: the largest of a rank)."""
    totals: Dict[str, float] = {}
    for cell in itertools.product(*(range(p) for p in grid)):
        for key, value in rank_counts(setup, terms, k, box, grid, cell).items():
            totals[key] = max(totals.get(key, 0), value) if key.endswith("messages") else totals.get(key, 0) + value
    return totals


# ---------------------------------------------------------------- cost

def operations(setup: Setup, n_species: int = 1) -> Tuple[float, float]:
    """Multiply-adds per node and per edge of the forward + reverse passes of all ensemble members
    (module docstring)."""
    S, F, L = setup.sensitivities, setup.features, setup.atom_layers
    node = edge = 0.0
    for layer in range(setup.layers):
        f_in = n_species if layer == 0 else F
        width = 1 if (layer == 0 and n_species == 1) else f_in  # one species: the neighbour sum sums sensitivities
        input_gradient = layer > 0
        edge += 2 * 5 * S  # exponents (4 per sensitivity) and exponential, forward and reverse
        edge += S * width * (3 if input_gradient else 2)  # neighbour sum, its sensitivity (and feature) gradient
        node += 2 * S * width * F  # interaction matrix, forward and reverse
        node += f_in * F * (2 if input_gradient else 1)  # self term
        node += 2 * L * F * F  # dense layers
        node += 2 * F + 2 * (L + 1) * F  # read-out, activations
    return setup.ensemble * node, setup.ensemble * edge


def ghost_share_ops(setup: Setup, k: int) -> float:
    """Extra multiply-adds of the layer scheme per owned row with ghost neighbours: in the reverse
    pass of every block after the first, the row's shares for the ghosts, computed for as many
    slots as the most of any row in its block has ghosts (bounded here by all k), S·F each."""
    return setup.ensemble * (setup.layers - 1) * k * setup.sensitivities * setup.features


@dataclass
class Network:
    latency_us: float = 2.0
    bandwidth_gbs: float = 10.0
    copy_gbs: float = 5.0

    def exchange_s(self, n_messages: int, n_bytes: float) -> float:
        return (n_messages * self.latency_us * 1e-6 + n_bytes / (self.bandwidth_gbs * 1e9)
                + 2 * n_bytes / (self.copy_gbs * 1e9))


def efficiency(setup: Setup, counts: Dict[str, float], k: int, seconds_per_op: float, network: Network) -> dict:
    """Predicted time per step of one rank in each scheme and the parallel efficiency."""
    node_ops, edge_ops = operations(setup)
    ideal = seconds_per_op * counts["owned"] * (node_ops + k * edge_ops)
    shell_model = seconds_per_op * (node_ops * counts["shell_nodes"] + edge_ops * counts["shell_edges"])
    # the padded neighbour layout gives every node a row of k slots, the outermost hop's too
    shell_padded = seconds_per_op * (node_ops + k * edge_ops) * counts["shell_nodes"]
    layer_model = seconds_per_op * (node_ops * counts["layer_nodes"] + edge_ops * counts["layer_edges"]
                                    + ghost_share_ops(setup, k) * counts["layer_boundary_rows"])
    feature_bytes = counts["layer_ghosts"] * setup.ensemble * setup.features * 8
    exchanges = 2 * (setup.layers - 1)
    layer_exchange = exchanges * network.exchange_s(counts["layer_messages"], feature_bytes)
    # LAMMPS's own ghost traffic each step: positions forward, forces back, 3 doubles a ghost
    shell_comm = 2 * network.exchange_s(counts["shell_messages"], counts["shell_lammps_ghosts"] * 24)
    layer_comm = 2 * network.exchange_s(counts["layer_messages"], counts["layer_lammps_ghosts"] * 24)
    shell_step = shell_model + shell_comm
    shell_padded_step = shell_padded + shell_comm
    layer_step = layer_model + layer_exchange + layer_comm
    return {"ideal_s": ideal, "shell_model_s": shell_model, "shell_comm_s": shell_comm, "shell_step_s": shell_step,
            "layer_model_s": layer_model, "layer_exchange_s": layer_exchange, "layer_comm_s": layer_comm,
            "layer_step_s": layer_step, "layer_bytes_per_step": exchanges * feature_bytes,
            "shell_padded_model_s": shell_padded, "shell_padded_step_s": shell_padded_step,
            "shell_efficiency": ideal / shell_step, "shell_padded_efficiency": ideal / shell_padded_step,
            "layer_efficiency": ideal / layer_step}


# ---------------------------------------------------------------- LAMMPS

def worker(args) -> None:
    """One validation run on this mpiexec's ranks; rank 0 prints JSON."""
    lmp = start(args.model, args.size, args.scheme, settings=[f"processors {args.grid}", f"neighbor {args.skin} bin"],
                lattice=args.lattice, rattle=args.rattle)
    runs = [time_lammps(lmp, args.steps) for _ in range(args.repeats)]
    ranks = lmp.extract_setting("world_size")
    if lmp.extract_setting("world_rank") == 0:
        print(json.dumps({"atoms": lmp.get_natoms(), "grid": list(lmp.extract_global("procgrid")),
                          "box": [hi - lo for lo, hi in zip(*lmp.extract_box()[:2])],
                          "counters": plugin_counters(lmp).tolist(),
                          "model_s_per_rank": [run[1] / ranks for run in runs],
                          "exchange_s_per_rank": [run[2] / ranks for run in runs],
                          "step_s": [run[0] for run in runs]}))
    lmp.close()


def run_worker(model: str, size: int, ranks: int, grid, scheme: str, args) -> dict:
    command = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable, __file__, "--worker",
               "--model", model, "--size", str(size), "--grid", " ".join(map(str, grid)),
               "--scheme", scheme, "--steps", str(args.steps), "--repeats", str(args.repeats),
               "--lattice", str(args.lattice),
               "--skin", str(args.skin), "--rattle", str(args.rattle)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"{ranks}-rank run failed (exit {result.returncode}):\n{tail}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def validate(setup: Setup, terms: HopTerms, k: int, args) -> List[dict]:
    """Runs LAMMPS for every size, scheme and rank count; returns measured and predicted totals."""
    import torch

    import mlip_md

    torch.manual_seed(0)
    architecture = dict(n_interactions=setup.layers, n_features=setup.features, n_sensitivities=setup.sensitivities,
                        n_atom_layers=setup.atom_layers, cutoff=setup.cutoff)
    members = [mlip_md.HIPNN(["Al"], **architecture) for _ in range(setup.ensemble)]
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        model = mlip_md.export(members if setup.ensemble > 1 else members[0], Path(directory) / "al.pt",
                               dtype="float32")
        for size, scheme, ranks in itertools.product(args.sizes, SCHEMES, args.ranks):
            k_cells = repeats_for(size)
            box = [k_cells * setup.lattice_constant] * 3
            grid = lammps_grid(ranks, box)
            print(f"{4 * k_cells ** 3} atoms, {scheme}, {ranks} rank(s) {'×'.join(map(str, grid))} ...", flush=True)
            try:
                measured = run_worker(model, size, ranks, grid, scheme, args)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                print(f"  failed: {error}")
                rows.append({"atoms": 4 * k_cells ** 3, "scheme": scheme, "ranks": ranks, "error": str(error)})
                continue
            if list(measured["grid"]) != list(grid):
                print(f"  LAMMPS used the grid {measured['grid']}, not {grid}: predicting for its grid")
            grid = measured["grid"]
            rows.append({"atoms": measured["atoms"], "scheme": scheme, "ranks": ranks, "grid": grid,
                         "measured": measured,
                         "predicted": total_counts(setup, terms, k, measured["box"], grid)})
    return rows


def validation_table(rows: List[dict], setup: Setup, k: int, seconds_per_op: float) -> dict:
    """Prints predicted vs measured totals and model seconds; returns their ratios."""
    node_ops, edge_ops = operations(setup)
    print(f"\nvalidation: totals over ranks, predicted / measured (compute pair mlip, last step); model seconds "
          f"per step and rank, predicted by edges and by padded rows / measured (least of the timed runs)\n"
          f"{'atoms':>6} {'scheme':>6} {'ranks':>5} {'grid':>6} {'nodes pred':>11} {'measured':>10} {'ratio':>6} "
          f"{'edges pred':>11} {'measured':>10} {'ratio':>6} {'ghosts pred':>11} {'measured':>10} {'ratio':>6} "
          f"| {'edges':>6} {'padded':>6} {'meas':>6}")
    ratios = {}
    for row in rows:
        if "error" in row:
            print(f"{row['atoms']:6d} {row['scheme']:>6} {row['ranks']:5d}   failed")
            continue
        measured, p = row["measured"], row["predicted"]
        counters = measured["counters"]
        nodes_key, edges_key = f"{row['scheme']}_nodes", f"{row['scheme']}_edges"
        # one rank runs the model once on its atoms; the shell scheme exchanges no features
        predicted_ghosts = p["layer_ghosts"] if row["scheme"] == "layer" and row["ranks"] > 1 else 0.0
        measured_ghosts = counters[4]
        model_s = min(measured["model_s_per_rank"])
        predicted_s = seconds_per_op * (node_ops * p[nodes_key] + edge_ops * p[edges_key]) / row["ranks"]
        padded_s = seconds_per_op * (node_ops + k * edge_ops) * p[nodes_key] / row["ranks"]
        oversubscribed = row["ranks"] > (os.cpu_count() or 1)
        ratio = {"nodes": p[nodes_key] / counters[0], "edges": p[edges_key] / counters[1]}
        if measured_ghosts:
            ratio["ghosts"] = predicted_ghosts / measured_ghosts
        if not oversubscribed:
            ratio["model_seconds_edges"] = predicted_s / model_s
            ratio["model_seconds_padded"] = padded_s / model_s
        ratios[f"{row['atoms']}_{row['scheme']}_{row['ranks']}"] = ratio
        row.update(predicted_ghosts=predicted_ghosts, predicted_model_s_per_rank=predicted_s,
                   predicted_padded_model_s_per_rank=padded_s)
        ghost_ratio = f"{ratio['ghosts']:6.3f}" if "ghosts" in ratio else f"{'-':>6}"
        ghosts = f"{predicted_ghosts:11.0f} {measured_ghosts:10.0f} {ghost_ratio}"
        note = "  (ranks > cores: time shared)" if oversubscribed else ""
        if counters[4] > 0:
            exchange = min(measured["exchange_s_per_rank"])
            per_ghost = exchange / (2 * (setup.layers - 1) * counters[4] / row["ranks"])
            note += f"  exchanges {1e3 * exchange:.2f} ms/step/rank, {1e9 * per_ghost:.0f} ns per ghost and exchange"
        print(f"{row['atoms']:6d} {row['scheme']:>6} {row['ranks']:5d} {'×'.join(map(str, row['grid'])):>6} "
              f"{p[nodes_key]:11.0f} {counters[0]:10.0f} {ratio['nodes']:6.3f} "
              f"{p[edges_key]:11.0f} {counters[1]:10.0f} {ratio['edges']:6.3f} {ghosts} "
              f"| {predicted_s:6.4f} {padded_s:6.4f} {model_s:6.4f}{note}")
    return ratios


def calibrate_from_lammps(rows: List[dict], setup: Setup) -> Optional[Tuple[float, str]]:
    """Seconds per multiply-add from the largest 1-rank runs' least model seconds per step
    (both schemes run the same single model call on one rank)."""
    node_ops, edge_ops = operations(setup)
    runs = [row for row in rows if row["ranks"] == 1 and "error" not in row]
    if not runs:
        return None
    largest = max(row["atoms"] for row in runs)
    runs = [row for row in runs if row["atoms"] == largest]
    seconds = min(min(row["measured"]["model_s_per_rank"]) for row in runs)
    counters = runs[0]["measured"]["counters"]
    ops = node_ops * counters[0] + edge_ops * counters[1]
    return seconds / ops, (f"LAMMPS, 1 rank, {largest} atoms, least of the timed runs: "
                           f"{1e6 * seconds / largest:.2f} µs/atom")


def calibrate_in_process(setup: Setup, k: int, size: int = 4000, calls: int = 5) -> Tuple[float, str]:
    """Seconds per multiply-add from timing the exported module in this process on fcc Al
    (the graph the plugin hands to torch on one rank)."""
    import torch
    from ase.build import bulk

    import mlip_md
    from mlip_md.neighbors import neighbor_list

    torch.manual_seed(0)
    torch.set_num_threads(1)
    architecture = dict(n_interactions=setup.layers, n_features=setup.features, n_sensitivities=setup.sensitivities,
                        n_atom_layers=setup.atom_layers, cutoff=setup.cutoff)
    members = [mlip_md.HIPNN(["Al"], **architecture) for _ in range(setup.ensemble)]
    atoms = bulk("Al", "fcc", a=setup.lattice_constant, cubic=True).repeat(repeats_for(size))
    atoms.positions += np.random.default_rng(12345).uniform(-setup.rattle, setup.rattle, atoms.positions.shape)
    with tempfile.TemporaryDirectory() as directory:
        exported = mlip_md.load_exported(mlip_md.export(members if setup.ensemble > 1 else members[0],
                                                        Path(directory) / "al.pt", dtype="float32"))
    nl = neighbor_list(atoms.positions, atoms.cell[:], [True] * 3, setup.cutoff)
    species = torch.zeros(len(atoms), dtype=torch.long)
    edge_index = torch.as_tensor(nl.edge_index)
    vectors = torch.as_tensor(nl.vectors, dtype=exported.dtype)
    times = [time_model(exported, species, edge_index, vectors) for _ in range(calls + 2)]
    seconds = statistics.median(times[2:])  # the first calls compile
    node_ops, edge_ops = operations(setup)
    ops = len(atoms) * node_ops + edge_index.shape[1] * edge_ops
    return seconds / ops, (f"exported module in this process, {len(atoms)} atoms: "
                           f"{1e6 * seconds / len(atoms):.2f} µs/atom")


# ---------------------------------------------------------------- tables

def reach_table(setup: Setup, terms: HopTerms, k: int) -> None:
    print(f"fcc a = {setup.lattice_constant} Å (planes {setup.spacing:.4g} Å apart), cutoff {setup.cutoff} Å: "
          f"k = {k} neighbours, ρ = {setup.density:.5f} atoms/Å³")
    print(f"{'hops':>4} {'face t (Å)':>11} {'on plane':>9} {'h·rc':>6} {'edge e (Å²)':>12} {'π(h·rc)²/4':>11} "
          f"{'corner c (Å³)':>14} {'π(h·rc)³/6':>11}   (walls between planes; face on a plane)")
    for h in range(1, setup.layers + 1):
        d = h * setup.cutoff
        print(f"{h:4d} {terms.face[0][h]:11.3f} {terms.face[1][h]:9.3f} {d:6.1f} {terms.edge[0][h]:12.2f} "
              f"{math.pi * d * d / 4:11.2f} {terms.corner[0][h]:14.1f} {math.pi * d ** 3 / 6:11.1f}")


def extrapolate(setup: Setup, terms: HopTerms, k: int, seconds_per_op: float, network: Network,
                rank_counts_: Sequence[int], atom_counts: Sequence[int]) -> List[dict]:
    rows = []
    for ranks, atoms in itertools.product(rank_counts_, atom_counts):
        cells = repeats_for(atoms)
        box = [cells * setup.lattice_constant] * 3
        grid = lammps_grid(ranks, box)
        totals = total_counts(setup, terms, k, box, grid)
        per_rank = {key: value / ranks if not key.endswith("messages") else value for key, value in totals.items()}
        cost = efficiency(setup, per_rank, k, seconds_per_op, network)
        rows.append({"ranks": ranks, "atoms": 4 * cells ** 3, "grid": list(grid),
                     "subdomain": [box[d] / grid[d] for d in range(3)], **per_rank,
                     "shell_node_redundancy": per_rank["shell_nodes"] / per_rank["owned"],
                     "shell_edge_redundancy": per_rank["shell_edges"] / (k * per_rank["owned"]),
                     **cost})
    return rows


def extrapolation_table(rows: List[dict], network: Network, setup: Setup) -> None:
    print(f"\nextrapolation, per rank (walls as LAMMPS's grid puts them; "
          f"latency {network.latency_us} µs, bandwidth {network.bandwidth_gbs} GB/s, copies {network.copy_gbs} GB/s, "
          f"ensemble {setup.ensemble} × {setup.features} features); shell = work by nodes and edges, "
          f"padded = every node a row of k slots (the current layout)")
    print(f"{'ranks':>5} {'atoms':>11} {'grid':>8} {'owned':>7} {'subdomain Å':>17} | {'shell nodes':>11} "
          f"{'edges':>8} {'×nodes':>6} {'×edges':>6} | {'layer edges':>11} {'ghosts':>6} {'kB/step':>7} "
          f"{'exch ms':>7} | {'ideal ms':>8} {'shell':>8} {'padded':>8} {'layer':>8} | "
          f"{'eff shell':>9} {'padded':>6} {'layer':>6}")
    for row in rows:
        mark = "  ◀" if is_highlight(row) else ""
        sub = "×".join(f"{w:.1f}" for w in row["subdomain"])
        print(f"{row['ranks']:5d} {row['atoms']:11,d} {'×'.join(map(str, row['grid'])):>8} {row['owned']:7.0f} "
              f"{sub:>17} | {row['shell_nodes']:11.0f} {row['shell_edges']:8.0f} "
              f"{row['shell_node_redundancy']:6.2f} {row['shell_edge_redundancy']:6.2f} | {row['layer_edges']:11.0f} "
              f"{row['layer_ghosts']:6.0f} {row['layer_bytes_per_step'] / 1e3:7.0f} "
              f"{1e3 * row['layer_exchange_s']:7.3f} | "
              f"{1e3 * row['ideal_s']:8.2f} {1e3 * row['shell_step_s']:8.2f} {1e3 * row['shell_padded_step_s']:8.2f} "
              f"{1e3 * row['layer_step_s']:8.2f} | {100 * row['shell_efficiency']:8.1f}% "
              f"{100 * row['shell_padded_efficiency']:5.1f}% {100 * row['layer_efficiency']:5.1f}%{mark}")


def is_highlight(row: dict) -> bool:
    return row["ranks"] == HIGHLIGHT[0] and abs(row["atoms"] - HIGHLIGHT[1]) < 0.01 * HIGHLIGHT[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cutoff", type=float, default=ARCHITECTURE["cutoff"], help="pair cutoff, Å (default 6)")
    parser.add_argument("--layers", type=int, default=ARCHITECTURE["n_interactions"],
                        help="interaction layers (default 2)")
    parser.add_argument("--skin", type=float, default=2.0, help="neighbour skin, Å (default 2, metal units)")
    parser.add_argument("--features", type=int, default=ARCHITECTURE["n_features"])
    parser.add_argument("--sensitivities", type=int, default=ARCHITECTURE["n_sensitivities"])
    parser.add_argument("--atom-layers", type=int, default=ARCHITECTURE["n_atom_layers"])
    parser.add_argument("--ensemble", type=int, default=1, help="ensemble members (default 1)")
    parser.add_argument("--lattice", type=float, default=4.05, help="fcc lattice constant, Å (default 4.05, Al)")
    parser.add_argument("--rattle", type=float, default=0.05, help="random displacement amplitude, Å (default 0.05)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 32000], help="validation atom counts")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4], help="validation rank counts")
    parser.add_argument("--steps", type=int, default=2, help="MD steps per timed run (default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs after 2 warm-up steps; their minimum is reported (default 3)")
    parser.add_argument("--no-lammps", action="store_true", help="skip the validation: the counting model only")
    parser.add_argument("--scale-ranks", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--scale-atoms", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000])
    parser.add_argument("--latency-us", type=float, default=2.0, help="message latency, µs (default 2)")
    parser.add_argument("--bandwidth-gbs", type=float, default=10.0, help="network bandwidth, GB/s (default 10)")
    parser.add_argument("--copy-gbs", type=float, default=5.0, help="pack/unpack bandwidth, GB/s (default 5)")
    parser.add_argument("--us-per-atom", type=float, help="1-rank model µs per atom-step instead of measuring it")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--grid", help=argparse.SUPPRESS)
    parser.add_argument("--scheme", choices=SCHEMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    setup = Setup(lattice_constant=args.lattice, cutoff=args.cutoff, layers=args.layers, skin=args.skin,
                  features=args.features, sensitivities=args.sensitivities, atom_layers=args.atom_layers,
                  ensemble=args.ensemble, rattle=args.rattle)
    network = Network(args.latency_us, args.bandwidth_gbs, args.copy_gbs)
    k = len(neighbour_offsets(setup))
    terms = hop_terms(setup)
    reach_table(setup, terms, k)
    warning = rattle_warning(setup)
    if warning:
        print(f"note: {warning}")
    node_ops, edge_ops = operations(setup)
    print(f"multiply-adds of {setup.ensemble} member(s), forward + reverse: {node_ops:.0f} per node, "
          f"{edge_ops:.0f} per edge (c_edge/c_node = {edge_ops / node_ops:.3f}; "
          f"k edges per atom: {k * edge_ops / (node_ops + k * edge_ops):.0%} "
          "of an atom's work)")

    rows: List[dict] = []
    if not args.no_lammps:
        rows = validate(setup, terms, k, args)
    if args.us_per_atom:
        seconds_per_op = args.us_per_atom * 1e-6 / (node_ops + k * edge_ops)
        source = f"--us-per-atom {args.us_per_atom}"
    else:
        calibration = calibrate_from_lammps(rows, setup) if rows else None
        seconds_per_op, source = calibration or calibrate_in_process(setup, k)
    ratios = validation_table(rows, setup, k, seconds_per_op) if rows else {}
    print(f"\ncalibration: {source} → {1e12 * seconds_per_op:.1f} ps per multiply-add, "
          f"{1e6 * seconds_per_op * (node_ops + k * edge_ops):.2f} µs per atom-step")

    scaling = extrapolate(setup, terms, k, seconds_per_op, network, args.scale_ranks, args.scale_atoms)
    extrapolation_table(scaling, network, setup)
    for row in filter(is_highlight, scaling):
        print(f"\n◀ {row['ranks']} ranks, {row['atoms']:,} atoms: {row['owned']:.0f} owned atoms per rank in "
              f"{'×'.join(f'{w:.1f}' for w in row['subdomain'])} Å; shell: {row['shell_nodes']:.0f} nodes "
              f"({row['shell_node_redundancy']:.2f}× owned), {row['shell_edges']:.0f} edges "
              f"({row['shell_edge_redundancy']:.2f}×), efficiency {100 * row['shell_efficiency']:.1f}% "
              f"({100 * row['shell_padded_efficiency']:.1f}% with padded rows); layer: {row['layer_ghosts']:.0f} "
              f"ghosts, {row['layer_bytes_per_step'] / 1e3:.0f} kB exchanged per step in {2 * (setup.layers - 1)} "
              f"exchanges ({1e3 * row['layer_exchange_s']:.3f} ms against {1e3 * row['ideal_s']:.2f} ms of model "
              f"work), efficiency {100 * row['layer_efficiency']:.1f}%")

    from _report import environment, save_report

    save_report("lammps_scaling", __doc__.split("\n")[0],
                {**asdict(setup), "sizes": args.sizes, "ranks": args.ranks, "steps": args.steps,
                 "repeats": args.repeats,
                 "no_lammps": args.no_lammps, "network": asdict(network), "neighbours": k,
                 "operations_per_node": node_ops, "operations_per_edge": edge_ops},
                environment(),
                hop_terms=asdict(terms), validation=rows, validation_ratios=ratios,
                calibration={"seconds_per_operation": seconds_per_op, "source": source},
                extrapolation=scaling)


if __name__ == "__main__":
    main()
