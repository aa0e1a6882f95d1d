"""Training from a YAML configuration on EMT aluminium: config checks, learning, resume, recovery, CLI."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

import mlip_md
from mlip_md.cli import main
from mlip_md.contract import load_exported
from mlip_md.data.generate import generate_aluminium, write_images
from mlip_md.train.config import ConfigError, config_from_dict, load_config
from mlip_md.train.trainer import load_data, train, train_member

SMALL_MODEL = dict(n_interactions=2, n_features=12, n_sensitivities=10, n_atom_layers=1, cutoff=5.0,
                   dist_soft_min=1.5, dist_soft_max=4.5)


@pytest.fixture(scope="module")
def aluminium(tmp_path_factory):
    return write_images(generate_aluminium(36, seed=5), tmp_path_factory.mktemp("data") / "al.extxyz")


def _config(path, **training):
    values = {
        "data": {"train": str(path), "valid_fraction": 0.15, "test_fraction": 0.15},
        "model": SMALL_MODEL,
        "training": {"max_epochs": 4, "batch_size": 6, "learning_rate": 0.005, "seed": 0, **training},
    }
    return config_from_dict(values)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"data": {"train": "x.xyz", "valid_fractoin": 0.1}}, "unknown key.*data.valid_fractoin"),
        ({"data": {"train": "x.xyz"}, "optimizer": {}}, "unknown section.*optimizer"),
        ({"data": {}}, "data.train is required"),
        ({"data": {"train": "x.xyz"}, "training": {"batch_size": "8"}}, "training.batch_size must be int"),
        ({"data": {"train": "x.xyz"}, "training": {"dtype": "float16"}}, "training.dtype"),
        ({"data": {"train": "x.xyz"}, "loss": {"forces_rmse": -1}}, "loss.forces_rmse must be >= 0"),
        ({"data": {"train": "x.xyz"}, "model": {"cutoff": None}}, "model.cutoff must not be null"),
    ],
)
def test_bad_configs_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


def test_yaml_defaults_and_relative_paths(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "data/al.extxyz"}, "ensemble": {"size": 3}}))
    config = load_config(path)
    assert config.data.train == str(tmp_path / "data" / "al.extxyz")
    assert config.ensemble.size == 3 and config.model.n_features == 20 and config.training.learning_rate == 1e-3
    with pytest.raises(FileNotFoundError, match="configuration file not found"):
        load_config(tmp_path / "missing.yaml")


def test_training_learns_emt_forces(aluminium, tmp_path):
    config = _config(aluminium, max_epochs=12)
    summary = train(config, str(tmp_path / "run"), show_progress=False)
    records = [json.loads(line) for line in open(tmp_path / "run" / "member_0" / "metrics.jsonl")]
    assert records[-1]["train"]["forces_rmse"] < 0.7 * records[0]["train"]["forces_rmse"]
    data = load_data(config)
    baseline = np.mean([np.abs(c.forces).mean() for c in data.test.configurations])
    test = summary["members"][0]["test"]
    print(f"\ntest force MAE {test['forces_mae']:.3f} eV/Å vs zero-force baseline {baseline:.3f} eV/Å")
    assert test["forces_mae"] < 0.6 * baseline
    assert load_exported(summary["model"]).metadata["training_config"]["model"]["n_features"] == 12
    for name in ("learning_curves.png", "parity.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_gives_the_same_weights(aluminium, tmp_path):
    config = _config(aluminium, max_epochs=3)
    data = load_data(config)
    train_member(config, data, 0, str(tmp_path / "straight"))
    interrupted = _config(aluminium, max_epochs=1)
    train_member(interrupted, data, 0, str(tmp_path / "resumed"))
    train_member(config, data, 0, str(tmp_path / "resumed"))
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["model"]
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_non_finite_loss_is_recovered(aluminium, tmp_path, monkeypatch):
    """A NaN appearing mid-training (here: one poisoned label) rolls back and lowers the learning rate."""
    from mlip_md.train import trainer

    config = _config(aluminium, max_epochs=2)
    data = load_data(config)
    clean = list(data.train.configurations)
    original = trainer.build_model
    monkeypatch.setattr(trainer, "build_model", lambda c, s, train, seed: original(c, s, clean, seed))
    data.train.configurations[3] = dataclasses.replace(clean[3], energy=float("nan"))
    model = train_member(config, data, 0, str(tmp_path / "nan"))
    records = [json.loads(line) for line in open(tmp_path / "nan" / "metrics.jsonl")]
    assert all(record["recoveries"] >= 1 for record in records)
    assert records[-1]["learning_rate"] < config.training.learning_rate
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cli_train_ensemble_and_eval(aluminium, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"train": str(aluminium), "valid_fraction": 0.2},
        "model": SMALL_MODEL,
        "training": {"max_epochs": 2, "batch_size": 8},
        "ensemble": {"size": 2},
    }))
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    model_path = tmp_path / "out" / "model.pt"
    assert load_exported(model_path).ensemble_size == 2
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert main(["eval", str(model_path), str(aluminium)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"energy_mae", "energy_rmse", "forces_mae", "forces_rmse", "n_configs"}
    assert result["n_configs"] == 36 and result["forces_mae"] > 0
    calc = mlip_md.MLIPCalculator(model_path)
    atoms = mlip_md.data.read_configurations(aluminium)[0].to_atoms()
    atoms.calc = calc
    atoms.get_forces()
    assert calc.results["forces_uncertainty"].max() > 0


def test_shipped_input_configs_are_valid():
    from pathlib import Path

    for path in (Path(__file__).resolve().parent.parent / "inputs").glob("*.yaml"):
        config = load_config(path)
        assert config.data.train.endswith(".extxyz")


def _emt_clusters_with_hessians(n=8, h=1e-4):
    """Small Al clusters with EMT energies, forces and finite-difference Hessians."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from mlip_md.data.generate import finite_difference_hessian

    images = []
    for k in range(n):
        atoms = (bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 1))[: 4 + k % 3]
        atoms.pbc = False
        atoms.rattle(0.15, seed=k)
        atoms.calc = EMT()
        hessian = finite_difference_hessian(atoms, EMT(), step=h)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info["hessian"] = hessian.ravel()
        images.append(atoms)
    return images


@pytest.mark.parametrize("mode", ["probes", "full"])
def test_hessian_training_reduces_hessian_error(tmp_path, mode):
    path = write_images(_emt_clusters_with_hessians(), tmp_path / "clusters.extxyz")
    config = config_from_dict({
        "data": {"train": str(path), "valid_fraction": 0.25},
        "model": {**SMALL_MODEL, "dist_soft_min": 1.2},
        "training": {"max_epochs": 8, "batch_size": 3, "learning_rate": 0.01, "hessian_mode": mode, "n_probes": 2},
        "loss": {"hessian": 10.0},
    })
    train_member(config, load_data(config), 0, str(tmp_path / mode))
    records = [json.loads(line) for line in open(tmp_path / mode / "metrics.jsonl")]
    if mode == "full":  # `mlip-md eval` reports Hessian errors of the deployed model; train() plots them
        from mlip_md.train.evaluate import evaluate_exported

        summary = train(config, str(tmp_path / "plots"), show_progress=False)
        assert str(tmp_path / "plots" / "parity_hessian.png") in summary["plots"]
        model = train_member(config, load_data(config), 0, str(tmp_path / mode))  # resumes: no more epochs
        result = evaluate_exported(mlip_md.export(model, tmp_path / "h.pt"), path)
        assert 0 < result["hessian_rmse"] < records[0]["valid"]["hessian_rmse"]
    print(f"\n{mode}: validation Hessian RMSE {records[0]['valid']['hessian_rmse']:.3f} -> "
          f"{records[-1]['valid']['hessian_rmse']:.3f} eV/Å²")
    assert "hessian_rmse" not in records[0]["train"]  # too costly per epoch on the training set
    assert records[-1]["valid"]["hessian_rmse"] < 0.7 * records[0]["valid"]["hessian_rmse"]


def test_hessian_loss_without_labels_is_an_error(aluminium, tmp_path):
    config = _config(aluminium, max_epochs=1)
    config.loss.hessian = 1.0
    with pytest.raises(ValueError, match="no Hessian labels"):
        train_member(config, load_data(config), 0, str(tmp_path / "x"))


def test_distillation_gives_forces_for_an_energy_only_set(aluminium, tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read

    from mlip_md.train.trainer import teacher_forces

    images = read(aluminium, ":")
    for atoms in images:  # keep energies only
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy())
    energy_only = write_images(images, tmp_path / "energies.extxyz")
    config = config_from_dict({
        "data": {"train": str(energy_only), "valid_fraction": 0.2},
        "model": SMALL_MODEL,
        "training": {"max_epochs": 3, "batch_size": 8},
        "ensemble": {"size": 2, "distill": True},
    })
    data = load_data(config)
    assert all(c.forces is None for c in data.train.configurations)
    summary = train(config, str(tmp_path / "distill"), show_progress=False)
    assert load_exported(summary["teachers"]).ensemble_size == 2
    assert load_exported(summary["model"]).ensemble_size == 1
    student_records = [json.loads(line) for line in open(tmp_path / "distill" / "student" / "metrics.jsonl")]
    assert np.isfinite(student_records[-1]["train"]["forces_rmse"])  # the student did see forces
    teachers = [train_member(config, data, m, str(tmp_path / "distill" / f"member_{m}")) for m in range(2)]
    labelled = teacher_forces(teachers, data.train, data.species)
    calc = mlip_md.MLIPCalculator(summary["teachers"])
    atoms = labelled.configurations[0].to_atoms()
    atoms.calc = calc
    np.testing.assert_allclose(labelled.configurations[0].forces, atoms.get_forces(), atol=1e-8)


def test_resume_with_a_different_model_is_refused(aluminium, tmp_path):
    config = _config(aluminium, max_epochs=1)
    data = load_data(config)
    train_member(config, data, 0, str(tmp_path / "run"))
    config.model.n_features = 8
    with pytest.raises(ValueError, match="different model settings"):
        train_member(config, data, 0, str(tmp_path / "run"))
