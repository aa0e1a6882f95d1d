"""Resuming a run directory: only the same run continues; anything else is refused, saying what differs."""

import json

import pytest
import torch

from emt_cells import tiny_config, write_cells
from mlip_md.cli import main
from mlip_md.train.config import config_from_dict
from mlip_md.train.errors import ResumeError
from mlip_md.train.trainer import train


def _epochs(directory):
    return [json.loads(line)["epoch"] for line in open(directory / "metrics.jsonl")]


def _run(path, out, **sections):
    return train(config_from_dict(tiny_config(str(path), **sections)), str(out), show_progress=False)


@pytest.fixture
def started(tmp_path):
    """A finished 2-epoch run of 24 cells in tmp_path/run."""
    data = write_cells(tmp_path / "cells.extxyz", n=24, seed=4)
    _run(data, tmp_path / "run")
    return tmp_path / "cells.extxyz", tmp_path / "run"


def test_a_changed_seed_is_refused(started, tmp_path, capsys):
    data, out = started
    with pytest.raises(ResumeError) as raised:
        _run(data, out, training={"seed": 1})
    message = str(raised.value)
    assert "training.seed: 0 -> 1" in message and "data split changed" in message
    assert "data.train content" not in message and "--out" in message and str(out) in message
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(tiny_config(str(data), training={"seed": 1})))  # JSON is YAML
    assert main(["train", str(config), "--out", str(out)]) == 2
    assert "training.seed: 0 -> 1" in capsys.readouterr().err
    assert _epochs(out / "member_0") == [1, 2]


def test_regenerated_data_under_the_same_path_is_refused(started):
    data, out = started
    write_cells(data, n=24, seed=5)
    with pytest.raises(ResumeError, match=r"different data settings: data.train content changed\. .*new output"):
        _run(data, out)


def test_other_settings_are_named_and_some_may_change(started):
    data, out = started
    with pytest.raises(ResumeError, match=r"training.learning_rate: 0.005 -> 0.002; training.lr_factor: 0.5 -> 0.3"):
        _run(data, out, training={"learning_rate": 0.002, "lr_factor": 0.3})
    with pytest.raises(ResumeError, match=r"different data settings: data.valid_fraction: 0.25 -> 0.5; data split changed"):
        _run(data, out, data={"valid_fraction": 0.5})
    summary = _run(data, out, training={"max_epochs": 3, "export_dtype": "float32", "early_stopping_patience": 50})
    assert _epochs(out / "member_0") == [1, 2, 3] and summary["model"].endswith("model.pt")


def test_a_finished_run_resumes_without_training(started):
    data, out = started
    first = json.loads((out / "metrics.json").read_text())
    weights = torch.load(out / "member_0" / "checkpoint.pt", weights_only=True)["model"]
    (out / "model.pt").unlink()
    again = _run(data, out)
    assert _epochs(out / "member_0") == [1, 2] and (out / "model.pt").is_file()
    assert again["members"] == first["members"]
    resumed = torch.load(out / "member_0" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[key], resumed[key]) for key in weights)


def test_an_early_stopped_run_stays_stopped_until_patience_grows(tmp_path):
    data = write_cells(tmp_path / "cells.extxyz", n=24, seed=0)
    # Raw weights and a high learning rate: a curve that does not improve at every epoch.
    training = {"max_epochs": 9, "early_stopping_patience": 1, "ema_decay": 0.0, "learning_rate": 0.02}
    _run(data, tmp_path / "run", training=training)
    stopped = _epochs(tmp_path / "run" / "member_0")
    assert len(stopped) < 9  # this data and seed stop early: one epoch without improvement
    _run(data, tmp_path / "run", training=training)
    assert _epochs(tmp_path / "run" / "member_0") == stopped
    _run(data, tmp_path / "run", training={**training, "early_stopping_patience": 3, "max_epochs": len(stopped) + 1})
    assert _epochs(tmp_path / "run" / "member_0") == list(range(1, len(stopped) + 2))


def test_log_lines_of_an_interrupted_epoch_are_dropped(started):
    """A line written after the last checkpoint (the run died before saving it) is not kept twice."""
    data, out = started
    log = out / "member_0" / "metrics.jsonl"
    with open(log, "a") as handle:
        handle.write(log.read_text().splitlines()[-1].replace('"epoch": 2', '"epoch": 3') + "\n")
    _run(data, out, training={"max_epochs": 3})
    assert _epochs(out / "member_0") == [1, 2, 3]
