"""The `mlip-md` command line and the example scripts."""

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import pytest

from mlip_md.cli import main
from mlip_md.contract import FORMAT_VERSION

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
INPUTS = Path(__file__).resolve().parent.parent / "inputs"
DEMO = ["demo", "--configs", "12", "--epochs", "2", "--repeat", "2", "--steps", "20", "--log-interval", "10",
        "--campaign-iterations", "1"]


def fails(arguments, capsys) -> str:
    """Runs ``mlip-md ARGUMENTS``, which must fail with a message and no traceback; returns the message."""
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"mlip-md {arguments[0]}: error: ") and "Traceback" not in error
    return error


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One demo run (data, training, ASE and LAMMPS MD) and what it printed."""
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(DEMO + ["--out", str(out)]) == 0
    return out, printed.getvalue()


def test_demo_trains_exports_and_runs_md(demo_run):
    out, output = demo_run
    assert (out / "run" / "model.pt").is_file() and (out / "aluminium.extxyz").is_file()
    assert json.loads((out / "demo.json").read_text())["options"]["epochs"] == 2
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
    # step 6: a short campaign grows the demo's data where the ensemble disagrees
    assert "6. active learning" in output and "iteration 0: training 2 members" in output
    report = json.loads((out / "campaign" / "report.json").read_text())
    assert report["status"]["finished"] and len(report["iterations"]) == 2
    assert report["iterations"][-1]["n_labels"] >= 12


def test_demo_rerun_reuses_its_files_and_refuses_other_options(demo_run, capsys):
    out, _ = demo_run
    data = out / "aluminium.extxyz"
    before = (data.read_bytes(), data.stat().st_mtime_ns, (out / "demo.json").read_text())
    # other MD options are free: the data are reused and training resumes
    assert main(DEMO + ["--out", str(out), "--no-lammps", "--steps", "10", "--temperature", "200"]) == 0
    assert "1. reusing the 12 EMT-labelled aluminium structures" in capsys.readouterr().out
    error = fails(DEMO + ["--out", str(out), "--epochs", "3", "--configs", "20"], capsys)
    assert "--configs 12 there, 20 now; --epochs 2 there, 3 now" in error and "use a new --out or delete it" in error
    assert (data.read_bytes(), data.stat().st_mtime_ns, (out / "demo.json").read_text()) == before


def test_demo_refuses_a_directory_it_did_not_make(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert "is not empty and has no demo.json" in fails(DEMO + ["--out", str(tmp_path)], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_out_must_be_a_directory_that_can_be_written(tmp_path, capsys):
    existing = tmp_path / "existing_file"
    existing.write_text("")
    config = str(INPUTS / "aluminium_emt.yaml")
    for command in (["train", config], ["demo"]):
        assert f"--out {existing} is an existing file" in fails(command + ["--out", str(existing)], capsys)
        assert f"cannot write in --out {existing / 'run'}" in fails(command + ["--out", str(existing / "run")], capsys)
    assert existing.read_text() == ""


def _can_write_in(directory: Path) -> bool:
    try:
        (directory / "probe").touch()
    except PermissionError:
        return False
    (directory / "probe").unlink()
    return True


def test_read_only_out_directory_is_reported(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        if _can_write_in(locked):  # root ignores the mode; sysfs refuses new files even to root
            locked = Path("/sys/kernel")
            if not locked.is_dir() or _can_write_in(locked):
                pytest.skip("no directory this process cannot write in")
        assert "cannot write in --out" in fails(DEMO + ["--out", str(locked / "run")], capsys)
        error = fails(["generate", "aluminium", "--n", "1", "--out", str(locked / "al.extxyz")], capsys)
        assert "cannot write in the directory of --out" in error
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_generate_input_errors_are_messages(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # `generate molecule` sets it for tblite; keep it from other tests
    error = fails(["generate", "aluminium", "--n", "1", "--out", str(tmp_path / "al.foo")], capsys)
    assert "ending '.foo'" in error and "use one of .extxyz, .xyz, .traj, .db" in error
    assert "ending '(none)'" in fails(["generate", "aluminium", "--out", str(tmp_path)], capsys)
    (tmp_path / "taken.extxyz").mkdir()
    assert "is a directory" in fails(["generate", "aluminium", "--out", str(tmp_path / "taken.extxyz")], capsys)
    error = fails(["generate", "molecule", "--molecule", "Unobtainium", "--n", "1",
                   "--out", str(tmp_path / "m.extxyz")], capsys)
    assert "unknown molecule 'Unobtainium'" in error and "ase.collections.g2.names" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.extxyz"]


def test_generate_molecule_without_tblite_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for module in ("tblite", "tblite.ase"):
        monkeypatch.setitem(sys.modules, module, None)  # what an environment without tblite sees
    error = fails(["generate", "molecule", "--n", "1", "--out", str(tmp_path / "m.extxyz")], capsys)
    assert "needs tblite: pip install tblite" in error


def test_programming_errors_are_not_turned_into_messages(tmp_path, monkeypatch):
    from mlip_md.data import generate

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(generate, "generate_aluminium", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["generate", "aluminium", "--n", "1", "--out", str(tmp_path / "al.extxyz")])
    monkeypatch.setitem(sys.modules, "mlip_md.train.config", None)  # a broken module of mlip_md itself
    with pytest.raises(ImportError):
        main(["train", str(INPUTS / "aluminium_emt.yaml"), "--out", str(tmp_path / "run")])


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
