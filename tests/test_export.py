"""The exported file: metadata, independence from mlip_md, and refusal of bad files."""

import json
import subprocess
import sys
import zipfile

import pytest
import torch

import mlip_md
from conftest import make_model
from mlip_md.contract import FORMAT_VERSION, METADATA_FILE, ModelFileError, load_exported


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


def _rewrite_metadata(source, destination, change):
    extra = {METADATA_FILE: ""}
    module = torch.jit.load(source, _extra_files=extra)
    metadata = json.loads(extra[METADATA_FILE])
    change(metadata)
    torch.jit.save(module, str(destination), _extra_files={METADATA_FILE: json.dumps(metadata)})


def test_unknown_version(tmp_path, model_file):
    path = tmp_path / "future.pt"
    _rewrite_metadata(model_file, path, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match=f"format version {FORMAT_VERSION + 1}"):
        load_exported(path)


def test_missing_metadata_key(tmp_path, model_file):
    path = tmp_path / "nocutoff.pt"
    _rewrite_metadata(model_file, path, lambda m: m.pop("cutoff"))
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
