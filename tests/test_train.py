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
from mlip_md.data import GraphCache
from mlip_md.train.config import ConfigError, config_from_dict, load_config
from mlip_md.train.errors import TrainingError
from mlip_md.train.trainer import build_model, load_data, train, train_member

from emt_cells import tiny_config, write_cells

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
    original, original_fit = trainer.build_model, trainer.fit_offsets
    monkeypatch.setattr(trainer, "build_model", lambda c, s, train, seed: original(c, s, clean, seed))
    monkeypatch.setattr(trainer, "fit_offsets", lambda model, cache, species_map, batch_size: original_fit(
        model, GraphCache(clean, cache.cutoff), species_map, batch_size))
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

    paths = [p for p in (Path(__file__).resolve().parent.parent / "inputs").glob("*.yaml")
             if not p.name.startswith("campaign_")]  # campaign configs: tests/test_active_campaign.py
    assert paths
    for path in paths:
        config = load_config(path)
        assert config.data.train.endswith(".extxyz")


def _emt_clusters_with_hessians(n=8, h=1e-4):
    """Small Al clusters with EMT energies, forces and finite-difference Hessians."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from mlip_md.data.labels import label

    images = []
    for k in range(n):
        atoms = (bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 1))[: 4 + k % 3]
        atoms.pbc = False
        atoms.rattle(0.15, seed=k)
        images.append(label(atoms, EMT(), hessian=True, hessian_step=h))
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
        from mlip_md.evaluate import evaluate_exported

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


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("training: {learning_rate: .inf}", "training.learning_rate must be a finite number"),
        ("training: {learning_rate: .nan}", "training.learning_rate must be a finite number"),
        ("training: {lr_factor: -.inf}", "training.lr_factor must be a finite number"),
        ("model: {dist_soft_max: .nan}", "model.dist_soft_max must be a finite number"),
        ("loss: {forces_rmse: .inf}", "loss.forces_rmse must be a finite number"),
        ("training: {learning_rate: 'inf'}", "training.learning_rate must be a finite number"),
        ("training: {learning_rate: fast}", "training.learning_rate must be float"),
        ("training: {lr_patience: -1}", "training.lr_patience must be >= 0"),
        ("training: {early_stopping_patience: -2}", "training.early_stopping_patience must be >= 0"),
        ("training: {min_learning_rate: -1.0e-6}", r"training.min_learning_rate must be in \[0, training.learning_rate\]"),
        ("training: {min_learning_rate: 0.1}", r"training.min_learning_rate must be in \[0, training.learning_rate\]"),
        ("training: {n_probes: 0}", "training.n_probes must be at least 1"),
        ("model: {n_sensitivities: 1}", "model.n_sensitivities must be at least 2"),
        ("model: {cutoff: 4.0, dist_soft_max: 4.5}", "need 0 < model.dist_soft_min < model.dist_soft_max <= model.cutoff"),
    ],
)
def test_config_refuses_non_finite_and_negative_values(tmp_path, yaml_text, message):
    path = tmp_path / "run.yaml"
    path.write_text("data: {train: al.extxyz}\n" + yaml_text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_yaml_numbers_without_a_dot_are_floats(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-3 and 1.0e6 as strings; float keys convert them."""
    path = tmp_path / "run.yaml"
    path.write_text("data: {train: al.extxyz}\ntraining: {learning_rate: 1e-3, min_learning_rate: 1e-7}\n"
                    "loss: {hessian: 1.0e6, l2: 0}\n")
    assert isinstance(yaml.safe_load(path.read_text())["loss"]["hessian"], str)
    config = load_config(path)
    assert config.training.learning_rate == 1e-3 and config.training.min_learning_rate == 1e-7
    assert config.loss.hessian == 1e6 and isinstance(config.loss.l2, float)


def test_cli_refuses_an_infinite_learning_rate(aluminium, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(f"data: {{train: {aluminium}}}\ntraining: {{learning_rate: .inf}}\n")
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "training.learning_rate must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.pt").exists()


def _strict_json(text):
    """Parses JSON, refusing NaN and Infinity as the JSON standard does."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    return write_cells(tmp_path_factory.mktemp("cells") / "cells.extxyz", n=24, seed=1)


def _poisoned(config, where):
    """The data of ``config`` with NaN energies in every configuration of the set ``where``;
    reference energies are fit on the clean training set."""
    data = load_data(config)
    cache = getattr(data, where)
    cache.configurations[:] = [dataclasses.replace(c, energy=float("nan")) for c in cache.configurations]
    return data


def test_a_diverging_run_fails_and_exports_nothing(cells, tmp_path, monkeypatch):
    """Non-finite steps lower the learning rate; below training.min_learning_rate the run fails."""
    from mlip_md.train import trainer

    config = config_from_dict(tiny_config(cells, training={"min_learning_rate": 1e-3, "max_epochs": 4}))
    clean = load_data(config).train.configurations
    original = trainer.build_model
    monkeypatch.setattr(trainer, "build_model", lambda c, s, train, seed: original(c, s, clean, seed))
    monkeypatch.setattr(trainer, "load_data", lambda c: _poisoned(c, "train"))
    with pytest.raises(TrainingError, match=r"training diverged.*epoch 1, batch 3.*below training.min_learning_rate"):
        train(config, str(tmp_path / "run"), show_progress=False)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_run_without_a_finite_validation_loss_fails(cells, tmp_path, monkeypatch):
    from mlip_md.train import trainer

    config = config_from_dict(tiny_config(cells))
    monkeypatch.setattr(trainer, "load_data", lambda c: _poisoned(c, "valid"))
    with pytest.raises(TrainingError, match="no epoch gave a finite validation loss in 2 epoch"):
        train(config, str(tmp_path / "run"), show_progress=False)
    assert not (tmp_path / "run" / "model.pt").exists()
    records = [_strict_json(line) for line in open(tmp_path / "run" / "member_0" / "metrics.jsonl")]
    assert [r["valid"]["energy_rmse"] for r in records] == [None, None]
    assert all(r["train"]["energy_rmse"] > 0 for r in records)


def test_metrics_files_are_strict_json_with_null_for_missing_values(tmp_path, capsys):
    """No validation set and no forces: the errors that do not exist are null, in every file and in `eval`."""
    energy_only = write_cells(tmp_path / "energies.extxyz", n=12, forces=False)
    config = config_from_dict(tiny_config(energy_only, data={"valid_fraction": 0.0}))
    summary = train(config, str(tmp_path / "run"), show_progress=False)
    written = _strict_json((tmp_path / "run" / "metrics.json").read_text())
    assert written["members"] == summary["members"]
    assert written["members"][0]["valid"] == dict.fromkeys(["energy_rmse", "energy_mae", "forces_rmse", "forces_mae"])
    assert written["members"][0]["train"]["forces_mae"] is None and written["members"][0]["train"]["energy_mae"] > 0
    for line in open(tmp_path / "run" / "member_0" / "metrics.jsonl"):
        assert _strict_json(line)["valid"]["energy_rmse"] is None
    assert main(["eval", summary["model"], energy_only]) == 0
    result = _strict_json(capsys.readouterr().out)
    assert result["forces_mae"] is None and result["forces_rmse"] is None and result["energy_mae"] > 0


def test_distilled_errors_are_against_the_true_labels(tmp_path):
    """An energy-only training file, a test file with EMT forces: the student's test force
    errors in metrics.json are those of `mlip-md eval` against the EMT forces."""
    from mlip_md.evaluate import evaluate_exported

    train_file = write_cells(tmp_path / "energies.extxyz", n=16, seed=2, forces=False)
    test_file = write_cells(tmp_path / "test.extxyz", n=6, seed=3)
    config = config_from_dict(tiny_config(train_file, data={"test": test_file}, ensemble={"size": 2, "distill": True}))
    summary = train(config, str(tmp_path / "run"), show_progress=False)
    test = summary["members"][0]["test"]
    truth = evaluate_exported(summary["model"], test_file)
    assert test["forces_mae"] == pytest.approx(truth["forces_mae"], rel=1e-9)
    assert test["energy_mae"] == pytest.approx(truth["energy_mae"], rel=1e-9)
    assert test["forces_vs_teachers"]["mae"] != pytest.approx(test["forces_mae"], rel=1e-3)
    assert summary["members"][0]["train"]["forces_mae"] is None  # the training file has no forces
    assert summary["members"][0]["train"]["forces_vs_teachers"]["mae"] > 0
    assert "forces_vs_teachers" in summary["labels"] and "data files" in summary["labels"]["errors"]


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"model": {"species": ["Al"]}}, r"the training set contains element\(s\) \['Cu'\] that model.species"),
        ({"data": {"test": "{copper}"}}, r"test set \(.*copper.extxyz\) contains element\(s\) \['Cu'\] that no training"),
        ({"data": {"test": "{copper}"}, "model": {"species": ["Al", "Cu"]}}, "that no training configuration has"),
    ],
)
def test_elements_are_checked_before_the_first_epoch(tmp_path, sections, message):
    copper = write_cells(tmp_path / "copper.extxyz", n=4, copper=1)
    aluminium_only = "data" in sections
    train_file = write_cells(tmp_path / "train.extxyz", n=12, copper=0 if aluminium_only else 1)
    sections = {name: {key: value.format(copper=copper) if isinstance(value, str) else value
                       for key, value in values.items()} for name, values in sections.items()}
    config = config_from_dict(tiny_config(train_file, **sections))
    with pytest.raises(TrainingError, match=message):
        train(config, str(tmp_path / "run"), show_progress=False)
    assert not (tmp_path / "run" / "member_0").exists()


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    """Plotting must not switch the caller's backend (or start pyplot)."""
    import subprocess
    import sys

    script = f"""
import json, sys, matplotlib, numpy as np
matplotlib.use("svg")
from mlip_md.train import plots
log = {str(tmp_path / "metrics.jsonl")!r}
with open(log, "w") as handle:
    for epoch in (1, 2):
        metrics = {{"energy_rmse": 3.0 / epoch, "forces_rmse": 0.2 / epoch}}
        handle.write(json.dumps({{"epoch": epoch, "train": metrics, "valid": dict(metrics, forces_rmse=None)}}) + "\\n")
plots.plot_learning_curves(log, {str(tmp_path / "curves.png")!r})
x = np.linspace(-1, 1, 9)
plots.plot_parity(x, x + 0.01, x, x - 0.02, {str(tmp_path / "parity.png")!r})
plots.plot_hessian_parity(x, 1.1 * x, {str(tmp_path / "hessian.png")!r})
print(matplotlib.get_backend(), matplotlib.rcParams["backend"], "matplotlib.pyplot" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["svg", "svg", "False"]
    for name in ("curves.png", "parity.png", "hessian.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_does_not_import_the_calculator():
    import ast
    from pathlib import Path

    for path in (Path(mlip_md.__file__).parent / "train").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        assert not [n for n in names if n.startswith(("mlip_md.calculator", "ase.calculators"))], path.name


def test_training_and_deployed_errors_agree(cells, tmp_path):
    """The trainer's loop over a set and `mlip-md eval` (through the ASE calculator) give the same errors."""
    from mlip_md.evaluate import evaluate_exported
    from mlip_md.species import SpeciesMap
    from mlip_md.train.metrics import evaluate

    config = config_from_dict(tiny_config(cells))
    data = load_data(config)
    model = build_model(config, data.species, data.train.configurations, seed=3)
    everything = GraphCache(data.train.configurations + data.valid.configurations, config.model.cutoff)
    trained = evaluate(model, everything, SpeciesMap(data.species), batch_size=5)
    deployed = evaluate_exported(mlip_md.export(model, tmp_path / "m.pt"), cells)
    assert deployed["n_configs"] == len(everything) == 24
    for key, value in trained.items():
        assert value == pytest.approx(deployed[key], rel=1e-9), key


def test_train_epoch_alone_is_reproducible_and_rolls_back(cells):
    from mlip_md.species import SpeciesMap
    from mlip_md.train.trainer import train_epoch

    config = config_from_dict(tiny_config(cells, training={"batch_size": 6}))
    data = load_data(config)
    species_map = SpeciesMap(data.species)
    weights = []
    for poisoned in (False, False, True):
        model = build_model(config, data.species, data.train.configurations, seed=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
        cache = data.train
        if poisoned:
            configurations = list(cache.configurations)
            configurations[0] = dataclasses.replace(configurations[0], energy=float("nan"))
            cache = GraphCache(configurations, cache.cutoff)
        rollbacks, errors = train_epoch(config, model, optimizer, cache, species_map, member=0, epoch=0)
        assert rollbacks == int(poisoned)
        assert all(np.isfinite(value) for value in errors.values())
        assert optimizer.param_groups[0]["lr"] == 0.005 * (0.5 if poisoned else 1.0)
        weights.append(torch.cat([p.detach().ravel() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1]) and torch.isfinite(weights[2]).all()
    assert not torch.equal(weights[0], weights[2])


def test_default_training_leaves_no_energy_offset(tmp_path):
    """The default loss and weight average leave no constant per-atom energy error (energy and force
    RMSE terms left one of tens of meV/atom that changed sign from epoch to epoch)."""
    from mlip_md.species import SpeciesMap
    from mlip_md.train.metrics import predict_set

    path = write_images(generate_aluminium(60, seed=11), tmp_path / "al.extxyz")
    config = config_from_dict({
        "data": {"train": str(path), "valid_fraction": 0.2, "test_fraction": 0.2},
        "model": SMALL_MODEL,
        "training": {"max_epochs": 40, "batch_size": 6},
    })
    data = load_data(config)
    model = train_member(config, data, 0, str(tmp_path / "run"))
    for name, limit in (("train", 1e-3), ("valid", 2e-3)):
        p = predict_set(model, getattr(data, name), SpeciesMap(data.species), batch_size=8)
        errors = p.energy_per_atom - p.reference_energy_per_atom
        print(f"\n{name}: mean energy error {1000 * errors.mean():+.2f} meV/atom, MAE {1000 * abs(errors).mean():.2f}")
        assert abs(errors.mean()) <= limit, name


def test_reference_energies_start_from_what_the_network_leaves(cells):
    """Before training, the reference energies absorb the untrained network's mean energy: the fit's
    atom-count-weighted residual vanishes (least squares with one element)."""
    from mlip_md.species import SpeciesMap
    from mlip_md.train.metrics import predict_set
    from mlip_md.train.trainer import fit_offsets

    config = config_from_dict(tiny_config(cells))
    data = load_data(config)
    species_map = SpeciesMap(data.species)
    model = build_model(config, data.species, data.train.configurations, seed=0)
    before = predict_set(model, data.train, species_map, 8)
    fit_offsets(model, data.train, species_map, 8)
    after = predict_set(model, data.train, species_map, 8)
    residual = after.energy - after.reference_energy
    assert abs(np.sum(after.n_atoms * residual)) <= 1e-9 * np.sum(after.n_atoms * abs(after.reference_energy))
    assert abs(residual.mean()) < abs((before.energy - before.reference_energy).mean())


def test_energy_only_loss_skips_forces(cells, tmp_path):
    """With every force weight 0 the trainer computes no forces; validation still reports them."""
    config = config_from_dict(tiny_config(cells, loss={"forces_mse": 0.0}))
    train_member(config, load_data(config), 0, str(tmp_path / "run"))
    record = json.loads(open(tmp_path / "run" / "metrics.jsonl").readlines()[-1])
    assert record["train"]["forces_rmse"] is None and record["train"]["energy_rmse"] > 0
    assert record["valid"]["forces_rmse"] > 0 and record["seconds"] > 0
