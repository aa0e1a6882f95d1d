"""Campaigns on cluster engines, drained and resumed: the tiny campaign of campaign_runs on real Parsl,
Dask and MPI pools started here, SIGTERM and walltime drains, streaming labels, the LAMMPS sampler.

Every run must end with the labels of the uninterrupted local reference run
(the ``reference`` fixture), none computed twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from campaign_runs import ROOT, environment, labels, start_campaign, state, tiny, write_config

EXIT_DRAINED = 75
BIN = Path(sys.executable).parent


def reference_settings(reference) -> dict:
    return yaml.safe_load((reference[0].parent / "campaign.yaml").read_text())


def run_cli(command: list, log: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=environment(log), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def campaign_command(config: Path, out: Path) -> list:
    return [sys.executable, "-m", "mlip_md", "campaign", str(config), "--out", str(out)]


ENGINES = {
    "parsl": ({"kind": "parsl", "workers": 2}, None),
    # a bounded label queue of one: labels are submitted one at a time
    "dask": ({"kind": "dask", "workers": 2, "max_queued_labels": 1}, None),
    # the static pool: rank 0 drives, ranks 1-2 work
    "mpi": ({"kind": "mpi"}, [str(BIN / "mpiexec"), "-n", "3", sys.executable, "-m", "mpi4py.futures"]),
}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_gives_the_reference_labels(engine, reference, tmp_path):
    executor, launcher = ENGINES[engine]
    values = reference_settings(reference)
    values["executor"] = executor
    config, out, log = write_config(tmp_path, values), tmp_path / "out", tmp_path / "oracle.log"
    command = campaign_command(config, out)
    if launcher:
        command = launcher + command[1:]
    result = run_cli(command, log)
    assert result.returncode == 0, result.stdout[-3000:]
    assert labels(out) == labels(reference[0])
    assert max(Counter(log.read_text().split()).values()) == 1


def test_labels_start_while_trajectories_still_run(tmp_path):
    """With a pool of its own, the oracle labels the first flagged frames before the last trajectory ends."""
    from mlip_md.active import campaign_config_from_dict, run_campaign

    values = tiny(sampler={"n_trajectories": 6, "max_steps": 400},
                  selection={"forces_uncertainty": 0.16, "max_labels_per_iteration": 6}, stop={"max_iterations": 1},
                  executor={"workers": 1, "oracle": {"threads_per_worker": 2}})
    run_campaign(campaign_config_from_dict(values), tmp_path / "out", log=lambda line: None)
    entry = json.loads((tmp_path / "out" / "report.json").read_text())["iterations"][0]
    assert entry["trajectories"]["flagged"] >= 2 and entry["labelled_while_sampling"] >= 1, entry


def _wait_for(condition, timeout: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_sigterm_drains_and_the_next_run_resumes_with_nothing_lost(reference, tmp_path):
    """SIGTERM while iteration 1 labels: exit status 75 once the labels in flight are done, everything
    finished recorded; the resumed run ends with the reference's labels, none computed twice."""
    config = write_config(tmp_path, reference_settings(reference))
    out, log = tmp_path / "out", tmp_path / "oracle.log"
    process = start_campaign(config, out, log)
    counts = []

    def labelling_iteration_1() -> bool:
        if state(out, "iteration") != 1:
            return False
        counts.append(len(log.read_text().split()))
        return state(out, "phase") in ("sample", "label") and counts[-1] > counts[0]

    assert _wait_for(labelling_iteration_1), "iteration 1 never labelled"
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_DRAINED, output[-3000:]
    assert "drained" in output and "received SIGTERM" in output
    assert json.loads((out / "report.json").read_text())["status"]["drained"].startswith("received SIGTERM")
    result = run_cli(campaign_command(config, out), log)
    assert result.returncode == 0, result.stdout[-3000:]
    assert labels(out) == labels(reference[0])
    assert max(Counter(log.read_text().split()).values()) == 1
    assert not list((out / "results").glob("*.json"))


def test_walltime_drains_and_a_job_chain_finishes_the_campaign(reference, tmp_path):
    """executor.walltime of a few seconds: every run drains by itself with status 75 and the next one
    resumes, as a chain of batch jobs would, until the campaign finishes with the reference's labels."""
    values = reference_settings(reference)
    values["executor"].update(walltime=5, drain_margin=0.0, grace=30.0)
    config, out, log = write_config(tmp_path, values), tmp_path / "out", tmp_path / "oracle.log"
    statuses = []
    while not statuses or statuses[-1] == EXIT_DRAINED:
        assert len(statuses) < 20, statuses
        result = run_cli(campaign_command(config, out), log)
        statuses.append(result.returncode)
    assert statuses[-1] == 0, result.stdout[-3000:]
    assert EXIT_DRAINED in statuses
    assert labels(out) == labels(reference[0])


def test_missing_engine_package_is_named_by_the_cli(tmp_path):
    """executor.kind parsl without parsl installed: exit status 2 and the extra to install."""
    config = write_config(tmp_path, tiny(executor={"kind": "parsl"}))
    blocker = tmp_path / "block" / "sitecustomize.py"
    blocker.parent.mkdir()
    blocker.write_text("import sys\nsys.modules['parsl'] = None\n")
    env = environment(tmp_path / "oracle.log")
    env["PYTHONPATH"] = f"{blocker.parent}{os.pathsep}{env['PYTHONPATH']}"
    result = subprocess.run(campaign_command(config, tmp_path / "out"), cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert result.returncode == 2, result.stdout[-3000:]
    assert "mlip_md[parsl]" in result.stdout


def test_campaign_with_the_lammps_sampler(tmp_path):
    """sampler.engine lammps: trajectories under pair_style mlip flag, their frames are labelled and stored."""
    from mlip_md.active import campaign_config_from_dict, run_campaign

    values = tiny(sampler={"engine": "lammps"}, stop={"max_iterations": 1}, oracle={"parameters": {"delay": 0.0}})
    status = run_campaign(campaign_config_from_dict(values), tmp_path / "out", log=lambda line: None)
    assert status["finished"], status
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    sampled = report["iterations"][0]
    assert sampled["trajectories"]["n"] == 4 and sampled["trajectories"]["flagged"] > 0, sampled["trajectories"]
    assert sampled["n_new"] > 0 and all(label["predicted_forces_uncertainty"] > 0.05
                                        for label in sampled["new_labels"])
