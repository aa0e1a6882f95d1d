"""Active-learning campaigns end to end: real EMT labels, real training, real ASE dynamics, real process pools.

A tiny campaign (8–12 Al atoms, a small ensemble, a few epochs) runs in the
test budget. The reference run is shared by the tests that compare with it:
crash-and-resume runs must end with the same labels, none lost and none
that reached disk computed again.
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

import ase.db
import numpy as np
import pytest
import yaml
from ase.calculators.emt import EMT

from campaign_oracles import configuration_key
from campaign_runs import ROOT, labels, start_campaign, state, tiny, write_config
from mlip_md.active import CampaignError, campaign_config_from_dict, campaign_status, run_campaign
from mlip_md.active.config import ConfigError
from mlip_md.active.oracle import read_result
from mlip_md.active.store import PROVENANCE


def test_campaign_labels_with_provenance_and_reports(reference):
    out, log, report, output = reference
    rows = list(ase.db.connect(out / "labels.db").select())
    assert rows and all(row.status == "done" for row in rows)
    sampled = [row for row in rows if row.source == "sampler"]
    assert sampled, "the sampler flagged nothing"
    expected = {"iteration", "trajectory", "model_sha256", "t0", "t1", "amplitude", "period_fs", "strain",
                "flag_step", "flag_temperature", "predicted_forces_uncertainty", "predicted_energy_uncertainty",
                "oracle", "oracle_hash", "wall_time", "attempts", "split", "true_forces_error", "label_id"}
    assert expected - set(PROVENANCE) == {"label_id"}
    for row in sampled:
        assert expected <= set(row.key_value_pairs), expected - set(row.key_value_pairs)
        assert row.flag_step % 10 == 0 and row.predicted_forces_uncertainty > 0.05
        assert row.get("energy") is not None and row.forces.shape == (row.natoms, 3)
    assert {row.model_sha256 for row in sampled} <= {e["model_sha256"] for e in report["iterations"]}
    iterations = report["iterations"]
    assert [e["iteration"] for e in iterations] == [0, 1, 2]
    for entry in iterations:
        assert {"n_labels", "n_new", "n_failed", "test"} <= set(entry)
        assert entry["test"]["n_configs"] == 12
    assert iterations[-1]["n_labels"] == len(rows)
    assert sum(e["n_new"] for e in iterations) == len(sampled)
    assert report["status"]["finished"] and "max_iterations" in report["status"]["stop_reason"]
    assert (out / "model.pt").read_bytes() == (out / "iterations" / "002" / "model.pt").read_bytes()
    for name in ("labels", "trajectories", "time_to_flag", "uncertainty_vs_error", "test_errors"):
        assert (out / "report" / f"{name}.png").stat().st_size > 1000
    assert "iteration 1:" in output and "trajectories" in output


def test_held_out_force_error_falls(reference):
    errors = [entry["test"]["forces_mae"] for entry in reference[2]["iterations"]]
    assert errors[-1] < errors[0], errors


def test_no_configuration_is_labelled_twice(reference):
    out, log, _, _ = reference
    computed = Counter(log.read_text().split())
    assert computed and max(computed.values()) == 1
    assert len(computed) == len(labels(out))


def test_campaign_status_and_finished_rerun(reference, capsys):
    out = reference[0]
    status = campaign_status(out)
    assert status["finished"] and status["labels"]["done"] == len(labels(out)) and status["labels"]["failed"] == 0
    assert status["thresholds"]["forces_uncertainty"] == 0.05 and status["iterations_trained"] == 3
    from mlip_md.cli import main

    assert main(["campaign-status", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["phase"] == "finished"


def _kill_when(process: subprocess.Popen, condition, timeout: float = 300.0) -> bool:
    """SIGKILLs ``process`` once ``condition()`` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    process.kill()
    raise AssertionError("the kill condition never held")


def _epochs_done(member: Path) -> int:
    log = member / "metrics.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _orphans() -> list:
    """Campaign pool workers whose driver is gone (adopted by init)."""
    orphans = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"spawn_main" in command and "\nPPid:\t1\n" in status:
            orphans.append(int(entry.name))
    return orphans


def _persisted(out: Path, log: Path) -> tuple:
    """After a kill: the oracle log's length and the configuration keys of the labels that reached disk
    (rows labelled in the store, result files not yet recorded)."""
    keys = set()
    if (out / "labels.db").exists():
        with ase.db.connect(out / "labels.db") as database:
            keys = {configuration_key(row.toatoms()) for row in database.select() if row.status != "pending"}
    keys |= {configuration_key(read_result(str(path)).atoms) for path in (out / "results").glob("*.json")}
    return len(log.read_text().split()) if log.exists() else 0, keys


def test_kill_9_anywhere_then_resume_loses_and_repeats_nothing(reference, tmp_path):
    """Kill the driver during labelling, sampling, training and (by timing) anywhere; resume each time.
    The finished campaign has the reference's labels; no label that reached disk was computed again (a kill
    between the oracle's end and its result's write loses that one calculation: its worker dies with the
    driver)."""
    ref_out = reference[0]
    config = write_config(tmp_path, yaml.safe_load((ref_out.parent / "campaign.yaml").read_text()))
    out, log = tmp_path / "out", tmp_path / "oracle.log"
    member = out / "iterations" / "001" / "member_0" / "checkpoint.pt"
    conditions = [
        ("initial labelling", lambda: log.exists() and len(log.read_text().split()) >= 5),
        ("sampling", lambda: state(out, "phase") == "sample" and state(out, "iteration") == 0),
        ("labelling", lambda: state(out, "phase") == "label"),
        ("training", member.exists),
        ("export", lambda: all(_epochs_done(out / "iterations" / "001" / f"member_{m}") == 12 for m in (0, 1))
         and state(out, "phase") == "train"),
    ]
    killed, snapshots = [], []
    for name, condition in conditions:
        if _kill_when(start_campaign(config, out, log), condition):
            killed.append(name)
            snapshots.append(_persisted(out, log))
    rng = np.random.default_rng(0)
    for _ in range(3):  # then at random moments
        process = start_campaign(config, out, log)
        try:
            process.wait(timeout=rng.uniform(3.0, 8.0))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed.append("random")
            snapshots.append(_persisted(out, log))
    process = start_campaign(config, out, log)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert not _orphans(), "pool workers outlived their killed driver"
    assert {"initial labelling", "sampling", "labelling", "training", "export"} <= set(killed), killed
    assert labels(out) == labels(ref_out)
    calculations = log.read_text().split()
    again = [key for key, count in Counter(calculations).items() if count > 1]
    for key in again:  # computed again: only if its first calculation had not reached disk at the next kill
        first = calculations.index(key)
        length, persisted = next(snapshot for snapshot in snapshots if snapshot[0] > first)
        assert key not in persisted, "a label that reached disk was computed again"
    assert len(again) <= len(killed), again
    assert not list((out / "results").glob("*.json"))


def test_oracle_failures_are_recorded_and_the_campaign_goes_on(tmp_path):
    """Raising, hanging (timeout) and NaN oracles: failed rows with their error, the campaign finishes."""
    for fault in ("raise", "hang", "nan"):
        values = tiny(oracle={"parameters": {"delay": 0.0, "fault": fault, "fault_share": 0.2}, "timeout": 2.0,
                              "retries": 0},
                      stop={"max_iterations": 1, "max_failure_fraction": 0.6})
        out = tmp_path / fault
        status = run_campaign(campaign_config_from_dict(values), out, log=lambda line: None)
        assert status["finished"], status
        failed = [row for row in ase.db.connect(out / "labels.db").select(status="failed")]
        assert failed, f"no {fault} fault hit"
        expected = {"raise": "SCF did not converge", "hang": "oracle.timeout", "nan": "non-finite"}[fault]
        assert all(expected in row.error and row.attempts == 1 for row in failed), [r.error for r in failed]
        assert status["labels"]["done"] > 0


def test_failure_budget_stops_the_campaign_with_a_clear_message(tmp_path, capsys):
    values = tiny(oracle={"parameters": {"fault": "raise", "fault_share": 1.0}, "retries": 1})
    config = write_config(tmp_path, values)
    from mlip_md.cli import main

    assert main(["campaign", str(config), "--out", str(tmp_path / "out")]) == 3
    message = capsys.readouterr().err
    assert "16 of 16 oracle labels failed" in message and "max_failure_fraction" in message
    assert "SCF did not converge" in message
    rows = list(ase.db.connect(tmp_path / "out" / "labels.db").select())
    assert len(rows) == 16 and all(row.status == "failed" and row.attempts == 2 for row in rows)


@pytest.mark.parametrize("change, message", [
    ({"sampler": {"n_trajectorys": 3}}, "unknown key(s) sampler.n_trajectorys"),
    ({"ensemble": {"size": 1}}, "ensemble.size must be at least 2"),
    ({"oracle": {"name": "vasp"}}, "oracle.name 'vasp' is not an oracle"),
    ({"sampler": {"density": 8.0}}, "lower the density or the minimum distance"),
    ({"initial": {"n_configurations": 0}}, "initial.data or initial.n_configurations is needed"),
    ({"data": {"train": "x.extxyz"}}, "there is no data section"),
    ({"selection": {"forces_uncertainty": -1}}, "selection.forces_uncertainty must be positive"),
    ({"loss": {"hessian": 1.0}}, "set oracle.hvp_probes"),
    ({"training": {"workers": 2}}, "members train as executor tasks"),
])
def test_bad_configurations_name_the_problem(change, message):
    with pytest.raises(ConfigError) as error:
        campaign_config_from_dict(tiny(**change))
    assert message in str(error.value)


def test_missing_files_and_unknown_oracle_modules(tmp_path):
    with pytest.raises(FileNotFoundError, match="initial.data"):
        campaign_config_from_dict(tiny(initial={"data": "missing.extxyz"}), str(tmp_path))
    config = campaign_config_from_dict(tiny(oracle={"name": "no_such_module:Calc"}))
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        run_campaign(config, tmp_path / "out", log=lambda line: None)


def test_resume_with_other_settings_is_refused(reference, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    values = yaml.safe_load((reference[0].parent / "campaign.yaml").read_text())
    values["selection"]["forces_uncertainty"] = 0.2
    with pytest.raises(CampaignError, match=r"selection.forces_uncertainty: 0.05 -> 0.2"):
        run_campaign(campaign_config_from_dict(values), out, log=lambda line: None)
    values["selection"]["forces_uncertainty"] = 0.05
    values["stop"]["max_iterations"] = 2  # may change; the campaign is finished already
    assert run_campaign(campaign_config_from_dict(values), out, log=lambda line: None)["finished"]


def _pool_workers(pid: int) -> list:
    """Process ids of the driver's pool workers (spawned children, not the resource tracker)."""
    workers = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in command:
            workers.append(int(child))
    return workers


def test_a_killed_worker_is_replaced_and_its_task_run_again(reference, tmp_path):
    ref_out = reference[0]
    config = write_config(tmp_path, yaml.safe_load((ref_out.parent / "campaign.yaml").read_text()))
    out, log = tmp_path / "out", tmp_path / "oracle.log"
    process = start_campaign(config, out, log)
    deadline = time.monotonic() + 300
    while not (log.exists() and log.read_text().split()) and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _pool_workers(process.pid)
    assert workers, "no pool worker found"
    os.kill(workers[0], signal.SIGKILL)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert labels(out) == labels(ref_out)


def test_converged_campaign_stops_when_trajectories_stay_accurate(tmp_path):
    values = tiny(selection={"forces_uncertainty": 100.0}, stop={"max_iterations": 5, "accurate_fraction": 0.9},
                  oracle={"parameters": {"delay": 0.0}})
    status = run_campaign(campaign_config_from_dict(values), tmp_path / "out", log=lambda line: None)
    assert status["finished"] and status["stop_reason"].startswith("converged"), status
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [e["trajectories"]["accurate_fraction"] for e in report["iterations"][:2]] == [1.0, 1.0]
    assert len(report["iterations"]) == 3 and report["iterations"][-1]["trajectories"] is None


def test_hessian_vector_labels_are_stored_and_trained_on(tmp_path):
    """oracle.hvp_probes: k (v, H·v) pairs per label in the row's data, H·v equal to the oracle's
    finite-difference Hessian times v, and a Hessian-loss training that reads them."""
    from mlip_md.data.labels import finite_difference_hessian

    values = tiny(oracle={"name": "emt", "parameters": {}, "hvp_probes": 2}, stop={"max_iterations": 0},
                  initial={"n_configurations": 6}, loss={"hessian": 0.01}, training={"max_epochs": 2})
    status = run_campaign(campaign_config_from_dict(values), tmp_path / "out", log=lambda line: None)
    assert status["finished"] and status["labels"]["done"] == 6
    row = next(ase.db.connect(tmp_path / "out" / "labels.db").select())
    probes, products = row.data["hvp_probes"], row.data["hvp_products"]
    assert probes.shape == products.shape == (2, 3 * row.natoms) and set(np.unique(probes)) == {-1.0, 1.0}
    hessian = finite_difference_hessian(row.toatoms(), EMT(), step=1e-3)
    np.testing.assert_allclose(products, probes @ hessian, atol=2e-3 * np.abs(products).max())
    metrics = (tmp_path / "out" / "iterations" / "000" / "member_0" / "metrics.jsonl").read_text()
    assert json.loads(metrics.splitlines()[-1])["train"]["energy_rmse"] is not None


def test_campaign_inputs_are_valid():
    from mlip_md.active import load_campaign_config

    aluminium = load_campaign_config(ROOT / "inputs" / "campaign_aluminium_emt.yaml")
    assert aluminium.sampler.n_atoms == (32, 108) and aluminium.sampler.temperature_end[1] == 2000
    molecule = load_campaign_config(ROOT / "inputs" / "campaign_molecule_gfn2.yaml")
    assert molecule.oracle.name == "tblite" and molecule.oracle.hvp_probes > 0 and molecule.loss.hessian > 0
    assert Path(molecule.sampler.start).name == "ethanol.xyz"


def test_slurm_inputs_are_valid(tmp_path, monkeypatch):
    """The Parsl-on-Slurm campaign builds its providers (nothing is submitted) and the job script parses."""
    from mlip_md.active import load_campaign_config
    from mlip_md.active.engines import open_engine

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # interchange.py
    slurm = load_campaign_config(ROOT / "inputs" / "campaign_aluminium_parsl_slurm.yaml")
    assert slurm.sampler.engine == "lammps" and slurm.executor.kind == "parsl"
    engine = open_engine(slurm.executor, str(tmp_path / "engine"))
    assert engine.labels == {"oracle": "oracle", "sampler": "sampler+training", "training": "sampler+training"}
    assert slurm.executor.pool("oracle")["options"]["provider_options"]["account"] == "my_account"  # merged
    engine.close()
    script = ROOT / "inputs" / "campaign_slurm.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "--signal=B:TERM" in script.read_text() and "-eq 75" in script.read_text()


def test_any_executor_gives_the_same_campaign(reference, tmp_path):
    """The driver only needs concurrent.futures: a thread pool gives the reference's labels."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    values = yaml.safe_load((reference[0].parent / "campaign.yaml").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference's pool workers
    try:
        with ThreadPoolExecutor(2) as executor:
            status = run_campaign(campaign_config_from_dict(values), tmp_path / "out", executor=executor,
                                  log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    assert status["finished"]
    assert labels(tmp_path / "out") == labels(reference[0])


def test_molecule_campaign_with_gfn2_and_hvp_labels(tmp_path):
    """The shipped GFN2-xTB input, shrunk: ethanol starts from the file, tblite labels with HVP pairs."""
    values = yaml.safe_load((ROOT / "inputs" / "campaign_molecule_gfn2.yaml").read_text())
    values["sampler"].update(start=str(ROOT / "inputs" / "ethanol.xyz"), n_trajectories=2, max_steps=100)
    values["initial"]["n_configurations"] = 8
    values["stop"]["max_iterations"] = 1
    values["training"].update(max_epochs=3)
    values["model"].update(n_features=8, n_sensitivities=8, n_atom_layers=1)
    values["ensemble"]["size"] = 2
    status = run_campaign(campaign_config_from_dict(values), tmp_path / "out", log=lambda line: None)
    assert status["finished"] and status["labels"]["failed"] == 0 and status["labels"]["done"] >= 8
    rows = list(ase.db.connect(tmp_path / "out" / "labels.db").select(status="done"))
    assert all(row.formula == "C2H6O" and row.data["hvp_products"].shape == (2, 27) for row in rows)
    assert all("stress" not in row for row in rows)  # a molecule in vacuum has none


def test_a_second_driver_in_the_same_directory_is_refused(tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".campaign.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running driver holds it
        with pytest.raises(CampaignError, match="another campaign driver is running"):
            run_campaign(campaign_config_from_dict(tiny()), out, log=lambda line: None)
    assert not (out / "labels.db").exists()
