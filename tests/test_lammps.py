"""pair_style mlip in LAMMPS against MLIPCalculator on the same structures (float64).

Each case runs tests/lammps_driver.py under mpiexec on 1, 2 or 4 ranks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError

import mlip_md
from mlip_md.contract import NOT_A_JSON_OBJECT, REQUIRED_METHODS, ModelFileError, load_exported
from mlip_md.lammps import PluginBuildError, build_plugin
from mlip_md.neighbors import neighbor_list

from conftest import make_model, random_cell
from model_files import with_metadata, with_metadata_text, without_method

DRIVER = Path(__file__).with_name("lammps_driver.py")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def plugin() -> Path:
    return build_plugin()


def to_lammps_frame(atoms: Atoms) -> Atoms:
    """The same structure rotated so that its cell is lower-triangular (LAMMPS's convention), wrapped."""
    q, r = np.linalg.qr(atoms.cell[:].T)
    signs = np.sign(np.diag(r))
    rotated = atoms.copy()
    rotated.set_cell((signs[:, None] * r).T, scale_atoms=False)
    rotated.positions = atoms.positions @ (q * signs)
    if atoms.pbc.all():
        rotated.wrap()
    return rotated


def run_lammps(tmp_path: Path, atoms: Atoms, model: str, elements, ranks: int = 1, **options) -> dict:
    """Runs the driver on ``ranks`` MPI ranks; returns its arrays. Types follow ``elements`` order."""
    types = options.pop("types", None) or [elements.index(s) + 1 for s in atoms.get_chemical_symbols()]
    spec = {
        "model": str(model),
        "elements": list(elements),
        "cell": atoms.cell[:].tolist(),
        "boundary": " ".join("p" if p else "f" for p in atoms.pbc),
        "positions": atoms.positions.tolist(),
        "types": types,
        "ids": options.pop("ids", list(range(1, len(atoms) + 1))),
        "out": str(tmp_path / f"out{ranks}.npz"),
        **options,
    }
    spec_path = tmp_path / f"spec{ranks}.json"
    spec_path.write_text(json.dumps(spec))
    result = subprocess.run(
        [str(BIN / "mpiexec"), "-n", str(ranks), sys.executable, str(DRIVER), str(spec_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return dict(np.load(spec["out"]))


def reference(atoms: Atoms, model: str) -> dict:
    """MLIPCalculator's results, with LAMMPS's virial order (xx yy zz xy xz yz) and per-atom virials."""
    atoms = atoms.copy()
    atoms.calc = mlip_md.MLIPCalculator(model)
    results = {
        "energy": atoms.get_potential_energy(),
        "forces": atoms.get_forces(),
        "atom_energies": atoms.get_potential_energies(),
        "atom_virials": per_atom_virials(atoms, model),
    }
    if atoms.pbc.all():
        results["virial"] = -atoms.get_stress()[[0, 1, 2, 5, 4, 3]] * atoms.get_volume()
    if atoms.calc.metadata["ensemble_size"] > 1:
        results["forces_uncertainty"] = atoms.calc.get_property("forces_uncertainty", atoms)
    return results


def per_atom_virials(atoms: Atoms, model: str) -> np.ndarray:
    """w_i = ½ Σ over edges touching i of −sym(r_e ⊗ ∂E/∂r_e), eV, columns xx yy zz xy xz yz."""
    exported = load_exported(model)
    nl = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, exported.cutoff)
    species = torch.tensor([exported.species.index(s) for s in atoms.get_chemical_symbols()])
    edge_index = torch.as_tensor(nl.edge_index)
    vectors = torch.as_tensor(nl.vectors, dtype=exported.dtype).requires_grad_(True)
    energy = exported.module(species, edge_index, vectors).mean(0).sum()
    (gradients,) = torch.autograd.grad(energy, vectors)
    w = -torch.einsum("ea,eb->eab", vectors.detach(), gradients)
    w = 0.5 * (w + w.transpose(1, 2))
    columns = torch.stack([w[:, 0, 0], w[:, 1, 1], w[:, 2, 2], w[:, 0, 1], w[:, 0, 2], w[:, 1, 2]], 1)
    columns = columns.double()
    result = torch.zeros(len(atoms), 6, dtype=torch.float64)
    result.index_add_(0, edge_index[0], 0.5 * columns).index_add_(0, edge_index[1], 0.5 * columns)
    return result.numpy()


def assert_close(name: str, value, expected, relative: float = 1e-10) -> None:
    """|value − expected| ≤ relative × max|expected|, elementwise (float64 results)."""
    value, expected = np.asarray(value, dtype=float), np.asarray(expected, dtype=float)
    scale = np.abs(expected).max()
    error = np.abs(value - expected).max()
    assert scale > 0 and error <= relative * scale, f"{name}: max |difference| {error:.3g} > {relative:g} × {scale:.3g}"


def assert_matches(lmp: dict, ref: dict) -> None:
    """Every quantity within 1e-10 of the ASE calculator's, relative to its largest magnitude."""
    assert_close("energy", lmp["energy"], ref["energy"])
    for name in ("forces", "atom_energies", "atom_virials", "virial", "forces_uncertainty"):
        if name in ref:
            assert_close(name, lmp[name], ref[name])
    assert_close("per-atom virials summed", lmp["atom_virials"].sum(0), lmp["virial"])


# (MPI ranks, pair_style mlip comm scheme): on one rank both schemes run the same path.
LAYOUTS = [(1, "layer"), (2, "layer"), (4, "layer"), (2, "shell")]
LAYOUT_IDS = ["1-rank", "2-ranks-layer", "4-ranks-layer", "2-ranks-shell"]
layouts = pytest.mark.parametrize("ranks, scheme", LAYOUTS, ids=LAYOUT_IDS)


def two_element_cell(seed=3) -> Atoms:
    """48 atoms: a random 12-atom triclinic cell repeated 2×2×1 and rattled, in LAMMPS's frame."""
    atoms = random_cell(n_atoms=12, seed=seed) * (2, 2, 1)
    atoms.rattle(0.05, seed=seed)
    return to_lammps_frame(atoms)


def molecule_cluster(n_atoms=20, seed=5) -> Atoms:
    """A random Al/Cu cluster in an open (f f f) box 40 Å long in x, occupying only 3 < x < 17 Å."""
    rng = np.random.default_rng(seed)
    positions = []
    while len(positions) < n_atoms:
        trial = rng.uniform([3.0, 2.0, 2.0], [17.0, 9.0, 9.0])
        if all(np.linalg.norm(trial - p) > 2.2 for p in positions):
            positions.append(trial)
    symbols = ["Al" if k % 3 else "Cu" for k in range(n_atoms)]
    return Atoms(symbols, positions=positions, cell=[40.0, 12.0, 12.0], pbc=False)


@layouts
def test_triclinic_periodic_cell_matches_ase(tmp_path, plugin, model_file, ranks, scheme):
    atoms = two_element_cell()
    options = f"comm {scheme}" + (" threads 1 keep_freed_memory no" if ranks == 4 else "")
    lmp = run_lammps(tmp_path, atoms, model_file, ["Al", "Cu"], ranks, pair_options=options)
    ref = reference(atoms, model_file)
    assert_close("stress", -lmp["virial"] / atoms.get_volume(), -ref["virial"] / atoms.get_volume())
    assert_matches(lmp, ref)
    # One rank and comm layer evaluate each atom once; comm shell also the other ranks' atoms near its own.
    nodes, edges, _, _, ghosts, _ = lmp["graph"]
    n_edges = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, 6.0).n_edges
    if ranks == 1 or scheme == "layer":
        assert (nodes, edges) == (len(atoms), n_edges)
        assert (ghosts > 0) == (ranks > 1)  # features exchanged on several ranks only
    else:
        assert nodes > len(atoms) and edges > n_edges and ghosts == 0


@layouts
def test_open_boundaries_and_empty_ranks_match_ase(tmp_path, plugin, model_file, ranks, scheme):
    # Slabs along x: on 2 ranks the cluster lies in the first, on 4 in the first two.
    atoms = molecule_cluster()
    lmp = run_lammps(tmp_path, atoms, model_file, ["Al", "Cu"], ranks, processors=f"{ranks} 1 1",
                     pair_options=f"comm {scheme}")
    expected_empty = {1: 0, 2: 1, 4: 2}[ranks]
    assert (lmp["atoms_per_rank"] == 0).sum() == expected_empty
    assert_matches(lmp, reference(atoms, model_file))


@layouts
def test_shrink_wrapped_boundaries_match_ase(tmp_path, plugin, model_file, ranks, scheme):
    atoms = molecule_cluster(seed=6)
    lmp = run_lammps(tmp_path, atoms, model_file, ["Al", "Cu"], ranks, boundary="s s s",
                     pair_options=f"comm {scheme}")
    assert_matches(lmp, reference(atoms, model_file))


@layouts
def test_deleted_atoms_leave_non_consecutive_ids(tmp_path, plugin, model_file, ranks, scheme):
    atoms = two_element_cell(seed=5)
    deleted = [2, 7, 8, 15]
    lmp = run_lammps(tmp_path, atoms, model_file, ["Al", "Cu"], ranks, delete_ids=deleted,
                     pair_options=f"comm {scheme}")
    kept = [k for k in range(len(atoms)) if k + 1 not in deleted]
    np.testing.assert_array_equal(lmp["ids"], [k + 1 for k in kept])
    assert_matches(lmp, reference(atoms[kept], model_file))


@layouts
def test_ensemble_uncertainty_matches_ase(tmp_path, plugin, ensemble_file, ranks, scheme):
    atoms = two_element_cell(seed=6)
    lmp = run_lammps(tmp_path, atoms, ensemble_file, ["Al", "Cu"], ranks, ensemble=True,
                     pair_options=f"comm {scheme}")
    ref = reference(atoms, ensemble_file)
    assert ref["forces_uncertainty"].min() > 1e-3  # the members really disagree
    assert_matches(lmp, ref)


@pytest.mark.parametrize("scheme", ["layer", "shell"])
def test_ensemble_uncertainty_with_empty_ranks(tmp_path, plugin, ensemble_file, scheme):
    # 4 slabs along x, the cluster in the first two: empty ranks join every exchange too
    atoms = molecule_cluster(seed=7)
    lmp = run_lammps(tmp_path, atoms, ensemble_file, ["Al", "Cu"], 4, processors="4 1 1", ensemble=True,
                     pair_options=f"comm {scheme}")
    assert (lmp["atoms_per_rank"] == 0).sum() == 2
    assert_matches(lmp, reference(atoms, ensemble_file))


@layouts
@pytest.mark.parametrize("which", ["model_file", "ensemble_file"])
def test_hybrid_overlay_with_a_null_type(request, tmp_path, plugin, ranks, scheme, which):
    # Type 3 is NULL for mlip (left to pair_style zero): the model sees the Al/Cu atoms only.
    # hybrid sizes the exchange buffers before pair_coeff loads the model (the ensemble's are wider).
    model = request.getfixturevalue(which)
    ensemble = which == "ensemble_file"
    atoms = two_element_cell(seed=7)
    types = [1 + k % 3 for k in range(len(atoms))]
    lmp = run_lammps(tmp_path, atoms, model, ["Al", "Cu", "NULL"], ranks, types=types, hybrid=True,
                     pair_options=f"comm {scheme}", ensemble=ensemble)
    mapped = [k for k, t in enumerate(types) if t != 3]
    subset = atoms[mapped]
    subset.set_chemical_symbols(["Al" if types[k] == 1 else "Cu" for k in mapped])
    ref = reference(subset, model)
    unmapped = [k for k, t in enumerate(types) if t == 3]
    assert np.abs(lmp["forces"][unmapped]).max() == 0.0
    assert np.abs(lmp["atom_energies"][unmapped]).max() == 0.0
    per_atom = ("forces", "atom_energies", "atom_virials") + (("forces_uncertainty",) if ensemble else ())
    trimmed = {key: lmp[key][mapped] for key in per_atom}
    trimmed.update(energy=lmp["energy"], virial=lmp["virial"])
    assert_matches(trimmed, ref)


def test_two_atom_types_may_share_an_element(tmp_path, plugin, model_file):
    atoms = two_element_cell(seed=3)
    types = [2 if s == "Cu" else 1 + 2 * (k % 2) for k, s in enumerate(atoms.get_chemical_symbols())]
    lmp = run_lammps(tmp_path, atoms, model_file, ["Al", "Cu", "Al"], 2, types=types)
    assert_matches(lmp, reference(atoms, model_file))


@pytest.mark.parametrize("scheme", ["layer", "shell"])
def test_float32_model_matches_ase(tmp_path, plugin, scheme):
    model = mlip_md.export(make_model(), tmp_path / "model32.pt", dtype="float32")
    atoms = two_element_cell(seed=9)
    lmp = run_lammps(tmp_path, atoms, model, ["Al", "Cu"], 2, pair_options=f"comm {scheme}")
    ref = reference(atoms, model)
    assert_close("energy", lmp["energy"], ref["energy"], 1e-6)
    assert_close("forces", lmp["forces"], ref["forces"], 1e-4)


def test_newton_off_works_on_one_rank(tmp_path, plugin, model_file):
    atoms = two_element_cell(seed=10)
    lmp = run_lammps(tmp_path, atoms, model_file, ["Al", "Cu"], 1, newton="off")
    assert_matches(lmp, reference(atoms, model_file))


def test_nve_conserves_energy_over_10_ps(tmp_path, plugin):
    # The stable random potential of test_dynamics.py (float64), 32 Al atoms from 600 K.
    model = mlip_md.export(make_model(readout_scale=0.05, repulsive=True), tmp_path / "md.pt")
    atoms = to_lammps_frame(bulk("Al", "fcc", a=4.05, cubic=True) * (2, 2, 2))
    nve = {"steps": 10000, "timestep_fs": 1.0, "temperature": 600.0, "every": 500}
    lmp = run_lammps(tmp_path, atoms, model, ["Al", "Cu"], 1, nve=nve)
    energies = lmp["nve_energies"] / len(atoms)
    drift = energies[-1] - energies[0]
    spread = energies.max() - energies.min()
    print(f"NVE 10 ps, {len(atoms)} Al atoms, dt 1 fs: drift {drift:+.2e} eV/atom, max-min {spread:.2e} eV/atom, "
          f"T {lmp['nve_temperatures'].min():.0f}-{lmp['nve_temperatures'].max():.0f} K")
    assert lmp["nve_temperatures"].min() > 100, "atoms must actually move"
    assert spread < 1e-4


@pytest.mark.parametrize("scheme", ["layer", "shell"])
def test_md_trajectory_is_the_same_on_one_and_two_ranks(tmp_path, plugin, model_file, scheme):
    # A thin skin (0.3 Å) makes LAMMPS rebuild its lists and re-exchange ghosts
    # often: atoms cross the cutoff and move between ranks during the run.
    atoms = two_element_cell(seed=3)
    nve = {"steps": 200, "timestep_fs": 1.0, "temperature": 1200.0, "every": 50, "skin": 0.3}
    one, two = (run_lammps(tmp_path, atoms, model_file, ["Al", "Cu"], ranks, nve=nve, pair_options=f"comm {scheme}")
                for ranks in (1, 2))
    assert one["neighbor_builds"] >= 5
    np.testing.assert_allclose(two["nve_energies"], one["nve_energies"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(two["positions"], one["positions"], rtol=0, atol=1e-8)


# ---------------------------------------------------------------- bad input


def lmp_deck(tmp_path: Path, pair_lines: str, units: str = "metal", newton: str = "on") -> str:
    deck = tmp_path / "in.bad"
    deck.write_text(
        f"units {units}\nnewton {newton}\nlattice fcc 4.05\nregion box block 0 2 0 2 0 2\n"
        f"create_box 2 box\ncreate_atoms 1 box\nmass * 27.0\n{pair_lines}\nrun 0\n"
    )
    return str(deck)


def run_lmp(tmp_path: Path, deck: str, ranks: int = 1) -> subprocess.CompletedProcess:
    """Runs the wheel's `lmp` launcher, which loads pair_style mlip through the entry point."""
    command = [str(BIN / "lmp"), "-in", deck, "-log", "none"]
    if ranks > 1:
        command = [str(BIN / "mpiexec"), "-n", str(ranks)] + command
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_lmp_launcher_autoloads_the_plugin(tmp_path, plugin, model_file):
    result = run_lmp(tmp_path, lmp_deck(tmp_path, f"pair_style mlip\npair_coeff * * {model_file} Al Cu"))
    assert result.returncode == 0, result.stdout[-2000:]
    assert f"Loaded 1 plugins from {plugin.parent}" in result.stdout


def wrong_version_file(tmp_path: Path, model_file: str) -> str:
    return with_metadata(model_file, tmp_path / "future.pt", lambda metadata: metadata.update(format_version=99))


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown element", "element Fe (atom type 2) is not in model"),
        ("element count", "needs one element or NULL per atom type"),
        ("missing file", "model file not found"),
        ("wrong version", "model format version 99 is not supported"),
        ("not a model", "is not a readable TorchScript model file"),
        ("units real", "requires 'units metal'"),
        ("unknown option", "unknown option 'fast'"),
        ("option without value", "option 'threads' needs a value"),
        ("bad thread count", "threads must be >= 1"),
        ("unknown scheme", "comm must be layer or shell, got 'halo'"),
    ],
)
def test_bad_input_ends_in_a_lammps_error(tmp_path, plugin, model_file, case, message):
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("not a model")
    pair = {
        "unknown element": f"pair_style mlip\npair_coeff * * {model_file} Al Fe",
        "element count": f"pair_style mlip\npair_coeff * * {model_file} Al",
        "missing file": f"pair_style mlip\npair_coeff * * {tmp_path / 'absent.pt'} Al Cu",
        "wrong version": f"pair_style mlip\npair_coeff * * {wrong_version_file(tmp_path, model_file)} Al Cu",
        "not a model": f"pair_style mlip\npair_coeff * * {not_a_model} Al Cu",
        "units real": f"pair_style mlip\npair_coeff * * {model_file} Al Cu",
        "unknown option": "pair_style mlip fast",
        "option without value": "pair_style mlip threads",
        "bad thread count": "pair_style mlip threads 0",
        "unknown scheme": "pair_style mlip comm halo",
    }[case]
    result = run_lmp(tmp_path, lmp_deck(tmp_path, pair, units="real" if case == "units real" else "metal"))
    output = result.stdout + result.stderr
    assert result.returncode > 0, output[-2000:]  # an error exit, not a signal
    assert "ERROR" in output and message in output, output[-2000:]


def test_coincident_atoms_end_in_a_lammps_error(tmp_path, plugin, model_file):
    deck = lmp_deck(tmp_path, f"pair_style mlip\npair_coeff * * {model_file} Al Cu\n"
                    "create_atoms 2 single 0.0 0.0 0.0 units box")
    result = run_lmp(tmp_path, deck)
    assert result.returncode > 0
    assert "sit on top of each other" in result.stdout + result.stderr


def test_non_finite_model_output_ends_in_a_lammps_error(tmp_path, plugin):
    model = make_model()
    with torch.no_grad():
        model.readouts[1].weight[0, 0] = float("nan")
    path = mlip_md.export(model, tmp_path / "nan.pt")
    result = run_lmp(tmp_path, lmp_deck(tmp_path, f"pair_style mlip\npair_coeff * * {path} Al Cu"))
    assert result.returncode > 0
    assert "returned non-finite energies or forces" in result.stdout + result.stderr


def refusals(tmp_path: Path, path: str) -> tuple:
    """(the plugin's output, the Python loader's error) for one model file."""
    result = run_lmp(tmp_path, lmp_deck(tmp_path, f"pair_style mlip\npair_coeff * * {path} Al Cu"))
    assert result.returncode > 0, result.stdout[-2000:]
    with pytest.raises(ModelFileError) as python_error:
        load_exported(path)
    return result.stdout + result.stderr, str(python_error.value)


def test_both_loaders_refuse_non_strict_json_alike(tmp_path, plugin, model_file):
    # One JSON dialect: the Python loader once accepted the NaN that the plugin refused.
    path = with_metadata_text(model_file, tmp_path / "nan.pt", lambda text: text.replace("6.0", "NaN", 1))
    output, python_message = refusals(tmp_path, path)
    assert python_message == f"{path}: {NOT_A_JSON_OBJECT}"
    assert f"ERROR: pair_style mlip: {python_message}" in output, output[-2000:]


@pytest.mark.parametrize("method", REQUIRED_METHODS)
def test_both_loaders_refuse_a_file_lacking_a_contract_method(tmp_path, plugin, model_file, method):
    output, python_message = refusals(tmp_path, without_method(model_file, tmp_path / f"no_{method}.pt", method))
    assert f"lacks the method {method}; re-export it" in python_message
    assert f"ERROR: pair_style mlip: {python_message}" in output, output[-2000:]


def test_single_model_uncertainty_is_refused_by_both_serving_paths(tmp_path, plugin, model_file):
    deck = lmp_deck(tmp_path, f"pair_style mlip\npair_coeff * * {model_file} Al Cu\n"
                    "fix sigma all pair 1 mlip forces_uncertainty 0")
    result = run_lmp(tmp_path, deck)
    assert result.returncode > 0
    assert "forces_uncertainty needs an ensemble model file (exported from several members)" in result.stdout
    atoms = two_element_cell()
    atoms.calc = mlip_md.MLIPCalculator(model_file)
    with pytest.raises(PropertyNotImplementedError, match=r"needs an ensemble model file \(exported from several"):
        atoms.calc.get_property("forces_uncertainty", atoms)


@pytest.mark.parametrize("scheme", ["layer", "shell"])
def test_newton_off_on_two_ranks_is_refused(tmp_path, plugin, model_file, scheme):
    deck = lmp_deck(tmp_path, f"pair_style mlip comm {scheme}\npair_coeff * * {model_file} Al Cu", newton="off")
    result = run_lmp(tmp_path, deck, ranks=2)
    assert result.returncode > 0
    assert "requires newton_pair on" in result.stdout + result.stderr


def test_missing_plugin_sources_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIP_MD_PLUGIN_SOURCE", str(tmp_path))
    with pytest.raises(PluginBuildError, match="plugin sources not found in"):
        build_plugin()


def test_a_failed_build_reports_the_compiler_error(tmp_path, monkeypatch):
    source = tmp_path / "lammps_plugin"
    source.mkdir()
    for path in Path(__file__).resolve().parent.parent.joinpath("lammps_plugin").iterdir():
        source.joinpath(path.name).write_text(path.read_text())
    registration = source / "mlip_plugin.cpp"
    registration.write_text("#error this plugin source is broken on purpose\n" + registration.read_text())
    monkeypatch.setenv("MLIP_MD_PLUGIN_SOURCE", str(source))
    monkeypatch.setenv("MLIP_MD_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(PluginBuildError, match="broken on purpose"):
        build_plugin(jobs=1)
    assert not list((tmp_path / "cache").rglob("mlippairplugin.so"))


def test_cli_prints_the_cached_plugin_path(plugin):
    result = subprocess.run([str(BIN / "mlip-md"), "lammps-plugin"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == plugin and plugin.is_file()


# ---------------------------------------------------------------- input decks

INPUTS = Path(__file__).resolve().parent.parent / "inputs"


@pytest.fixture(scope="module")
def aluminium_models(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("decks")
    stable = dict(species=("Al",), readout_scale=0.05, repulsive=True)
    return {
        "single": mlip_md.export(make_model(**stable), directory / "al.pt"),
        "ensemble": mlip_md.export([make_model(seed=s, **stable) for s in (1, 2)], directory / "al_ensemble.pt"),
    }


@pytest.mark.parametrize("deck", ["lammps_al_nvt_ramp.in", "lammps_al_nve.in", "lammps_al_npt.in",
                                  "lammps_al_minimize.in"])
def test_input_decks_run(tmp_path, plugin, aluminium_models, deck):
    command = [str(BIN / "lmp"), "-in", str(INPUTS / deck), "-log", "none", "-var", "model",
               aluminium_models["single"], "-var", "steps", "20", "-var", "cells", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Total wall time" in result.stdout
    if deck == "lammps_al_minimize.in":
        fmax = float(result.stdout.split("fmax = ")[1].split()[0])
        assert fmax < 1e-2


def test_uncertainty_deck_halts_and_dumps_the_frame(tmp_path, plugin, aluminium_models):
    command = [str(BIN / "lmp"), "-in", str(INPUTS / "lammps_al_uncertainty_halt.in"), "-log", "none",
               "-var", "model", aluminium_models["ensemble"], "-var", "cells", "2", "-var", "threshold", "1e-9"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "stopped at step 10 with max force uncertainty" in result.stdout
    dump = (tmp_path / "uncertain_frame.dump").read_text().splitlines()
    sigma = np.array([float(line.split()[-1]) for line in dump[9:]])
    assert len(sigma) == 32 and sigma.max() > 1e-9


def test_example_prints_matching_ase_and_lammps_numbers(tmp_path, plugin):
    script = Path(__file__).resolve().parent.parent / "examples" / "lammps_vs_ase.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line[:24].strip(): line.split() for line in result.stdout.splitlines()}
    assert float(rows["max |ΔF| (eV/Å)"][-1]) < 1e-6
    assert float(rows["max |Δσ| (eV/Å³)"][-1]) < 1e-6
    assert float(rows["energy (eV)"][-1]) < 1e-6
