"""The campaign report: strict report.json, a stable set of valid PNGs, Spearman, terminal summaries."""

import json
import re

import matplotlib
import matplotlib.pyplot as plt
import pytest

from mlip_md.active.report import iteration_table, progress_line, spearman, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ["labels.png", "trajectories.png", "time_to_flag.png", "uncertainty_vs_error.png"]


def _errors(energy, forces):
    return {"energy_mae": energy, "energy_rmse": 1.3 * energy, "forces_mae": forces, "forces_rmse": 1.3 * forces,
            "n_configs": 50}


def _label(i, predicted, true, status="done"):
    return {"label_id": f"id{i:04d}", "status": status, "predicted_forces_uncertainty": predicted,
            "true_forces_error": true if status == "done" else None,
            "error": None if status == "done" else "oracle timed out"}


def _entry(iteration, n_train, test, trajectories, flags, labels, rho, n_labels, stop_reason=None):
    done = [label for label in labels if label["status"] == "done"]
    return {"iteration": iteration, "n_train_labels": n_train, "model": f"/abs/iterations/{iteration:03d}/model.pt",
            "model_sha256": "ab" * 32, "test": test, "valid": test and _errors(test["energy_mae"] * 0.8, 0.04),
            "trajectories": trajectories, "flags": flags, "new_labels": labels, "spearman": rho,
            "n_new": len(done), "n_failed": len(labels) - len(done), "n_labels": n_labels,
            "wall_time": {"training": 12.1, "sampling": 30.2, "labelling": 3.3, "total": 46.0},
            "stop_reason": stop_reason}


def _entries():
    flags0 = [{"trajectory": t, "step": 100 + 40 * t, "time_fs": 100.0 + 40 * t, "temperature": 500.0 + 90 * t,
               "outcome": "flagged"} for t in range(5)]
    flags0 += [{"trajectory": 5, "step": 1000, "time_fs": 1000.0, "temperature": 1400.0, "outcome": "accurate"},
               {"trajectory": 6, "step": None, "time_fs": None, "temperature": None, "outcome": "discarded"}]
    labels0 = [_label(i, 0.1 * (i + 1), 0.12 * (i + 1) + 0.01 * (-1) ** i) for i in range(5)]
    flags1 = [{"trajectory": t, "step": 1000, "time_fs": 1000.0, "temperature": 900.0 + 50 * t,
               "outcome": "accurate"} for t in range(5)]
    flags1.append({"trajectory": 5, "step": 300, "time_fs": 300.0, "temperature": 1300.0, "outcome": "flagged"})
    labels1 = [_label(10, 0.2, 0.3), _label(11, 0.25, float("nan")), _label(12, 0.3, None, "failed")]
    return [
        _entry(0, 40, _errors(3.1, 0.05), {"n": 7, "accurate": 1, "flagged": 5, "discarded": 1,
                                           "accurate_fraction": 1 / 7}, flags0, labels0, 0.9, 45),
        _entry(1, 45, None, {"n": 6, "accurate": 5, "flagged": 1, "discarded": 0, "accurate_fraction": 5 / 6},
               flags1, labels1, float("nan"), 47),
        _entry(2, 47, _errors(1.7, 0.03), None, [], [], None, 47, stop_reason="accurate fraction 0.83 >= 0.8"),
    ]


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _check_pngs(directory, names):
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)
    for name in names:
        data = (directory / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), name


def test_write_report(tmp_path):
    backend, n_figures = matplotlib.get_backend(), len(plt.get_fignums())
    entries = _entries()
    status = {"state": "converged", "iteration": 2, "accurate_fraction_target": 0.8}
    paths = write_report(str(tmp_path), entries, status)
    assert matplotlib.get_backend() == backend and len(plt.get_fignums()) == n_figures

    report = _strict_json(tmp_path / "report.json")
    assert report["status"] == status
    assert [e["iteration"] for e in report["iterations"]] == [0, 1, 2]
    assert report["iterations"][0] == entries[0]
    assert report["iterations"][1]["spearman"] is None  # NaN written as null
    assert report["iterations"][1]["new_labels"][1]["true_forces_error"] is None
    assert report["iterations"][2]["trajectories"] is None
    _check_pngs(tmp_path / "report", PLOTS + ["test_errors.png"])
    assert sorted(paths) == sorted([str(tmp_path / "report.json")] + [str(tmp_path / "report" / n)
                                                                      for n in PLOTS + ["test_errors.png"]])
    assert not [p for p in tmp_path.rglob("*.partial")]

    # Rewritten after a later iteration: the same files, replaced.
    write_report(str(tmp_path), entries[:1], {})
    assert len(_strict_json(tmp_path / "report.json")["iterations"]) == 1
    _check_pngs(tmp_path / "report", PLOTS + ["test_errors.png"])


def test_write_report_without_data(tmp_path):
    backend, n_figures = matplotlib.get_backend(), len(plt.get_fignums())
    paths = write_report(str(tmp_path / "campaign"), [], {"state": "starting"})
    assert matplotlib.get_backend() == backend and len(plt.get_fignums()) == n_figures
    assert _strict_json(tmp_path / "campaign" / "report.json") == {"status": {"state": "starting"}, "iterations": []}
    _check_pngs(tmp_path / "campaign" / "report", PLOTS)  # no test set: no test_errors.png
    assert len(paths) == 1 + len(PLOTS)

    # An iteration with neither labels nor sampling still gives every plot.
    entry = _entry(0, 40, None, None, [], [], None, 40)
    write_report(str(tmp_path / "campaign"), [entry], {})
    _check_pngs(tmp_path / "campaign" / "report", PLOTS)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 25, 400]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 2, 3], [5, 5, 5]) is None
    assert spearman([2, 2, 2], [1, 2, 3]) is None
    # Pairs with a missing or non-finite value are left out.
    assert spearman([1, 2, None, 3], [1, 2, 3, float("nan")]) is None
    assert spearman([1, 2, None, 3, 4], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert isinstance(spearman([0.1, 0.3, 0.2], [1.0, 3.0, 2.5]), float)


def test_iteration_table_and_progress_line():
    first, second, last = _entries()
    table = iteration_table(first)
    for text in ("iteration 0", "40", "3.1", "0.05", "1 accurate", "5 flagged", "1 discarded", "5 done", "0 failed",
                 "45", "0.90", "12.1", "30.2", "3.3", "46.0"):
        assert text in table, text
    assert "\x1b" not in table
    # Fixed width: every value starts in the same column.
    rows = table.splitlines()[2:-1]
    assert len({re.match(r"  \S.*?\S  +", row).end() for row in rows}) == 1
    assert "1 failed" in iteration_table(second)
    table = iteration_table(last)
    assert "iteration 2" in table and "1.7" in table and "accurate fraction 0.83" in table
    assert "trajectories" in table

    line = progress_line(2, 6, 8, 3, 2, 1, 41.2)
    assert line == "iteration 2: 6/8 trajectories (3 accurate, 2 flagged, 1 discarded) 41 s"
    assert "\n" not in line
