"""Training across processes: ensemble members in worker processes, and one model trained by
several torchrun processes, each compared with the same training in one process."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from mlip_md.train.config import config_from_dict
from mlip_md.train.trainer import train

from emt_cells import tiny_config, write_cells

ERRORS = ("energy_rmse", "energy_mae", "forces_rmse", "forces_mae")


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    return write_cells(tmp_path_factory.mktemp("data") / "cells.extxyz", n=24, seed=3)


def _records(directory):
    return [json.loads(line) for line in open(os.path.join(directory, "metrics.jsonl"))]


def _curve(directory):
    """Training (minibatch) and validation errors of every epoch, and the learning rates."""
    return [value for r in _records(directory)
            for value in [r["learning_rate"]] + [r[split][key] for split in ("train", "valid") for key in ERRORS]]


@pytest.fixture
def one_thread():
    """Sequential members with the workers' thread count, so the two runs do the same arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_members_in_worker_processes_equal_members_trained_in_turn(cells, tmp_path, one_thread):
    runs = {}
    for workers in (1, 2):
        values = tiny_config(cells, training={"workers": workers, "threads": 1}, ensemble={"size": 2})
        summary = train(config_from_dict(values), str(tmp_path / str(workers)), show_progress=False)
        runs[workers] = summary
    assert runs[1]["members"] == runs[2]["members"]
    for member in ("member_0", "member_1"):
        sequential, parallel = (torch.load(tmp_path / str(w) / member / "best.pt", weights_only=True)["model"]
                                for w in (1, 2))
        assert all(torch.equal(sequential[key], parallel[key]) for key in sequential)
        assert _curve(tmp_path / "1" / member) == _curve(tmp_path / "2" / member)
    assert _curve(tmp_path / "1" / "member_0") != _curve(tmp_path / "1" / "member_1")  # different seeds


def test_workers_cannot_be_combined_with_torchrun(cells, tmp_path):
    from mlip_md.train.distributed import Group
    from mlip_md.train.errors import TrainingError

    config = config_from_dict(tiny_config(cells, training={"workers": 2}, ensemble={"size": 2}))
    with pytest.raises(TrainingError, match="training.workers > 1.*torchrun"):
        train(config, str(tmp_path / "run"), show_progress=False, group=Group(rank=0, size=2))


def _mlip_md_train(config_path, out, processes):
    """``mlip-md train`` in one process, or ``torchrun --nproc-per-node N -m mlip_md train``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    if processes == 1:
        command = [sys.executable, "-m", "mlip_md", "train", str(config_path), "--out", str(out)]
    else:
        torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
        command = [torchrun, "--standalone", f"--nproc-per-node={processes}", "-m", "mlip_md", "train",
                   str(config_path), "--out", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_two_torchrun_processes_follow_the_one_process_loss_curve(cells, tmp_path):
    # An odd global batch (7) leaves the two processes parts of different sizes.
    values = tiny_config(cells, training={"max_epochs": 3, "batch_size": 7}, data={"test_fraction": 0.2})
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(values))
    outputs = {n: _mlip_md_train(config_path, tmp_path / f"n{n}", n) for n in (1, 2)}
    one, two = (_curve(tmp_path / f"n{n}" / "member_0") for n in (1, 2))
    assert len(one) == len(two) == 3 * 9
    assert one == pytest.approx(two, rel=1e-9)
    # Rank 0 alone writes and prints: one summary, one exported model.
    assert json.loads(outputs[2])["model"] == str(tmp_path / "n2" / "model.pt")
    assert sorted(os.listdir(tmp_path / "n2")) == sorted(os.listdir(tmp_path / "n1"))
    test_errors = [json.load(open(tmp_path / f"n{n}" / "metrics.json"))["members"][0]["test"] for n in (1, 2)]
    assert test_errors[0] == pytest.approx(test_errors[1], rel=1e-9)

    # Both resume from their checkpoints to a longer run, and still agree.
    values["training"]["max_epochs"] = 4
    config_path.write_text(yaml.safe_dump(values))
    for n in (1, 2):
        _mlip_md_train(config_path, tmp_path / f"n{n}", n)
    one, two = (_curve(tmp_path / f"n{n}" / "member_0") for n in (1, 2))
    assert len(one) == len(two) == 4 * 9 and one == pytest.approx(two, rel=1e-9)
