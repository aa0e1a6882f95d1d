"""The `mlip-md` command line and the example scripts."""

import json
import runpy
import sys
from pathlib import Path

import pytest

from mlip_md.cli import main
from mlip_md.contract import FORMAT_VERSION

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_demo_trains_exports_and_runs_md(tmp_path, capsys):
    arguments = ["demo", "--out", str(tmp_path), "--configs", "12", "--epochs", "2", "--repeat", "2",
                 "--steps", "20", "--log-interval", "10"]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "aluminium.extxyz").is_file()
    assert "NVE: 32 Al atoms, 20 steps" in output and "final frame: model" in output
    rows = [line.split() for line in output.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert [row[0] for row in rows] == ["0", "10", "20"]
    assert "total-energy drift" in output
    # step 5: the same file in LAMMPS agrees with ASE on the final frame, then runs NVE
    difference = float(output.split("5. LAMMPS")[1].split("difference ")[1].split()[0])
    assert difference < 1e-6
    lammps_rows = [line.split() for line in output.splitlines() if line.strip().startswith("LAMMPS ")]
    assert [row[1] for row in lammps_rows if row[1].isdigit()] == ["0", "10", "20"]
    assert "LAMMPS total-energy drift" in output


def test_info_prints_metadata(tmp_path, capsys, model_file):
    assert main(["info", str(model_file)]) == 0
    metadata = json.loads(capsys.readouterr().out)
    assert metadata["species"] == ["Al", "Cu"] and metadata["format_version"] == FORMAT_VERSION


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.pt")]) == 2
    assert "model file not found" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("script", ["vibrations.py", "ensemble_uncertainty.py"])
def test_examples_run(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
