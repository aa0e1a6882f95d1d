"""The exported file: metadata, independence from mlip_md, and refusal of bad files."""

import json
import os
import re
import signal
import subprocess
import sys
import zipfile

import pytest
import torch

import mlip_md
from conftest import make_model
from mlip_md.contract import (FORMAT_VERSION, METADATA_FILE, NOT_A_JSON_OBJECT, REQUIRED_METHODS, ModelFileError,
                              load_exported)
from mlip_md.atomic import host_name as _host
from model_files import read_metadata, with_metadata, with_metadata_text, without_method


def test_metadata_travels_inside(model_file):
    metadata = load_exported(model_file).metadata
    assert metadata["format_version"] == FORMAT_VERSION
    assert metadata["species"] == ["Al", "Cu"]
    assert metadata["cutoff"] == 6.0 and metadata["n_interactions"] == 2
    assert metadata["dtype"] == "float64" and metadata["ensemble_size"] == 1
    assert metadata["units"]["energy"] == "eV" and metadata["units"]["length"] == "Angstrom"
    assert metadata["model_config"][0]["n_features"] == 20


def test_opens_without_mlip_md(model_file):
    """torch.jit.load alone (mlip_md made unimportable) evaluates the file."""
    script = f"""
import sys
sys.modules["mlip_md"] = None  # any import of mlip_md now fails
import torch
extra = {{"{METADATA_FILE}": ""}}
module = torch.jit.load({str(model_file)!r}, _extra_files=extra)
species = torch.tensor([0, 1])
edges = torch.tensor([[0, 1], [1, 0]])
vectors = torch.tensor([[2.5, 0.0, 0.0], [-2.5, 0.0, 0.0]], dtype=torch.float64)
print(module(species, edges, vectors).shape, extra["{METADATA_FILE}"][:60])
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "torch.Size([1, 2])" in output and "mlip_md.exported_model" in output


def test_ensemble_file(ensemble_file):
    model = load_exported(ensemble_file)
    assert model.ensemble_size == 3
    out = model.module(torch.tensor([0]), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64))
    assert out.shape == (3, 1)


def test_float32_export(tmp_path):
    path = mlip_md.export(make_model(), tmp_path / "m32.pt", dtype="float32")
    model = load_exported(path)
    assert model.dtype == torch.float32 and model.metadata["dtype"] == "float32"


def test_export_rejects_mismatched_members(tmp_path):
    with pytest.raises(ValueError, match="members must agree"):
        mlip_md.export([make_model(), make_model(species=("Al",))], tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="dtype"):
        mlip_md.export(make_model(), tmp_path / "bad.pt", dtype="float16")
    assert not (tmp_path / "bad.pt").exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_exported(tmp_path / "nope.pt")


def test_not_a_model(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a TorchScript archive" * 10)
    with pytest.raises(ModelFileError, match="not a readable TorchScript model"):
        load_exported(path)


def test_truncated_file(tmp_path, model_file):
    path = tmp_path / "truncated.pt"
    data = open(model_file, "rb").read()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a readable TorchScript model"):
        load_exported(path)


def test_torchscript_without_metadata(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ModelFileError, match="without mlip_md metadata"):
        load_exported(path)


def test_unknown_version(tmp_path, model_file):
    path = tmp_path / "future.pt"
    with_metadata(model_file, path, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match=f"format version {FORMAT_VERSION + 1}"):
        load_exported(path)


def test_missing_metadata_key(tmp_path, model_file):
    path = tmp_path / "nocutoff.pt"
    with_metadata(model_file, path, lambda m: m.pop("cutoff"))
    with pytest.raises(ModelFileError, match="cutoff"):
        load_exported(path)


def test_file_is_a_single_archive(model_file):
    assert zipfile.is_zipfile(model_file)


def _edges(atoms, cutoff):
    from mlip_md.neighbors import neighbor_list

    neighbors = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
    return torch.from_numpy(neighbors.edge_index), torch.from_numpy(neighbors.vectors)


def test_exported_file_matches_eager_model(tmp_path):
    from conftest import random_cell

    model = make_model().double()
    atoms = random_cell()
    species = torch.tensor([0 if s == "Al" else 1 for s in atoms.get_chemical_symbols()])
    edge_index, vectors = _edges(atoms, 6.0)
    exported = load_exported(mlip_md.export(model, tmp_path / "m.pt")).module
    torch.testing.assert_close(exported(species, edge_index, vectors)[0], model(species, edge_index, vectors),
                               rtol=0, atol=1e-10)


def test_edges_beyond_cutoff_are_ignored(model_file):
    """Callers with a skin (LAMMPS, Verlet lists) may pass longer edges."""
    from conftest import random_cell

    atoms = random_cell(seed=2)
    species = torch.tensor([0 if s == "Al" else 1 for s in atoms.get_chemical_symbols()])
    module = load_exported(model_file).module
    exact = module(species, *_edges(atoms, 6.0))
    with_skin = module(species, *_edges(atoms, 7.5))
    torch.testing.assert_close(with_skin, exact, rtol=0, atol=1e-12)


# -- one JSON dialect, every contract method ------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_metadata_is_refused_naming_the_key(tmp_path, value):
    with pytest.raises(ValueError, match=r"\['training.losses\[1\]'\].*strict JSON"):
        mlip_md.export(make_model(), tmp_path / "m.pt", extra_metadata={"training": {"losses": [0.1, value]}})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_loader_refuses_non_strict_json_as_the_plugin_does(tmp_path, model_file, constant):
    # Hand-made: export cannot write it. The same file and wording in test_lammps.py.
    path = with_metadata_text(model_file, tmp_path / "nan.pt", lambda text: text.replace("6.0", constant, 1))
    with pytest.raises(ModelFileError, match=re.escape(f"nan.pt: {NOT_A_JSON_OBJECT}")):
        load_exported(path)


def test_metadata_is_strict_json(model_file):
    _, raw = read_metadata(model_file)
    json.loads(raw, parse_constant=lambda name: pytest.fail(f"{name} in the metadata"))


@pytest.mark.parametrize("method", REQUIRED_METHODS)
def test_file_lacking_a_contract_method_is_refused(tmp_path, model_file, method):
    path = without_method(model_file, tmp_path / f"no_{method}.pt", method)
    with pytest.raises(ModelFileError, match=f"lacks the method {method}; re-export"):
        load_exported(path)


# -- the file on disk ------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_file_mode_is_that_of_a_new_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = mlip_md.export(make_model(), tmp_path / "model.pt")
    finally:
        os.umask(previous)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_interrupted_export_leaves_no_partial_file(tmp_path, monkeypatch):
    def interrupted_save(module, path, _extra_files=None):
        with open(path, "wb") as handle:
            handle.write(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.jit, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        mlip_md.export(make_model(), tmp_path / "model.pt")
    assert os.listdir(tmp_path) == []


def test_partial_of_a_killed_export_is_removed_by_the_next(tmp_path):
    # The child stops inside torch.jit.save, its partial file written, until SIGKILL.
    script = f"""
import sys, time, torch
sys.path.insert(0, {os.path.dirname(__file__)!r})
from conftest import make_model
import mlip_md

def stuck_save(module, path, _extra_files=None):
    open(path, "wb").write(b"half a model")
    print("saving", flush=True)
    time.sleep(600)

torch.jit.save = stuck_save
mlip_md.export(make_model(), {str(tmp_path / "model.pt")!r})
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "saving"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    stale = [name for name in os.listdir(tmp_path) if name.endswith(".partial")]
    assert len(stale) == 1 and f".{child.pid}." in stale[0]
    host = _host()
    live = [f".model.pt.{host}.{os.getpid()}.0a1b.partial", f".model.pt.otherhost.{child.pid}.0a1c.partial"]
    for name in live:  # a live export of this host, and one of another host (shared file systems)
        (tmp_path / name).write_bytes(b"in progress")
    mlip_md.export(make_model(), tmp_path / "model.pt")
    assert sorted(os.listdir(tmp_path)) == sorted(live + ["model.pt"])
    load_exported(tmp_path / "model.pt")
