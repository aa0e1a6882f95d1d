"""The campaign report: ``report.json``, PNG plots and terminal summaries of the iterations.

The driver keeps one plain JSON dict per iteration (see :func:`write_report`)
and hands the whole list here after every iteration, so the report on disk is
always complete up to the last finished iteration. Figures are
:class:`matplotlib.figure.Figure` objects saved directly, never pyplot's, so
that reporting leaves the caller's backend and open figures alone. Units:
energies meV/atom, forces eV/Å, times fs (simulation) or s (wall clock),
temperatures K.
"""

from __future__ import annotations

import json
import math
import os
from typing import List, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from mlip_md.atomic import write_atomically
from mlip_md.train.metrics import json_values

REPORT_FILE = "report.json"
PLOT_DIRECTORY = "report"
NO_DATA = "no data yet"


def spearman(predicted: Sequence[float], true: Sequence[float]) -> Optional[float]:
    """Spearman rank correlation of predicted σ_F against true force errors (eV/Å).

    None with fewer than 3 pairs where both values are finite, or when either
    side is constant there (the correlation is undefined).
    """
    from scipy.stats import spearmanr

    x, y = _floats(predicted), _floats(true)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    # scipy returns NaN with a warning for constant input; say None instead.
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    value = float(spearmanr(x, y)[0])
    return value if math.isfinite(value) else None


def write_report(out: str, entries: Sequence[dict], status: dict) -> List[str]:
    """Writes ``out/report.json`` and the PNGs of ``out/report/``; returns the paths written.

    ``report.json`` is ``{"status": status, "iterations": entries}`` in strict
    JSON, non-finite floats written as null. The PNGs are labels.png,
    trajectories.png, time_to_flag.png, uncertainty_vs_error.png, and
    test_errors.png when some entry has test errors. Every file is written
    atomically, so a reader never sees half a report.
    """
    entries = json_values(list(entries))
    text = json.dumps({"status": json_values(dict(status)), "iterations": entries}, indent=2, allow_nan=False)

    def write(partial: str) -> None:
        with open(partial, "w") as handle:
            handle.write(text + "\n")

    paths = [write_atomically(os.path.join(out, REPORT_FILE), write)]
    directory = os.path.join(out, PLOT_DIRECTORY)
    os.makedirs(directory, exist_ok=True)
    figures = {
        "labels.png": plot_labels(entries),
        "trajectories.png": plot_trajectories(entries, status.get("accurate_fraction_target")),
        "time_to_flag.png": plot_time_to_flag(entries),
        "uncertainty_vs_error.png": plot_uncertainty_vs_error(entries),
    }
    if any(entry.get("test") for entry in entries):
        figures["test_errors.png"] = plot_test_errors(entries)
    return paths + [_save(figure, os.path.join(directory, name)) for name, figure in figures.items()]


def iteration_table(entry: dict) -> str:
    """The fixed-width summary of one iteration printed at its end (no colour codes)."""
    trajectories = entry.get("trajectories")
    rows = [
        ("labels trained on", _number(entry.get("n_train_labels"))),
        ("test MAE", _errors(entry.get("test"))),
        ("valid MAE", _errors(entry.get("valid"))),
        ("trajectories", "-" if not trajectories else
            f"{trajectories['accurate']} accurate, {trajectories['flagged']} flagged, "
            f"{trajectories['discarded']} discarded of {trajectories['n']}"),
        ("new labels", f"{_number(entry.get('n_new'))} done, {_number(entry.get('n_failed'))} failed, "
                       f"{_number(entry.get('n_labels'))} in all, "
                       f"{_number(entry.get('labelled_while_sampling'))} while trajectories ran"),
        ("Spearman (σ_F, error)", _number(entry.get("spearman"), "{:.2f}")),
        ("wall time (s)", _wall_time(entry.get("wall_time"))),
    ]
    if entry.get("stop_reason"):
        rows.append(("stopped", str(entry["stop_reason"])))
    width = max(len(key) for key, _ in rows)
    title = f"iteration {_number(entry.get('iteration'))}"
    lines = [f"  {key:<{width}}  {value}" for key, value in rows]
    rule = "-" * max(len(line) for line in lines + [title])
    return "\n".join([title, rule, *lines, rule])


def progress_line(iteration: int, done: int, total: int, accurate: int, flagged: int, discarded: int,
                  elapsed: float) -> str:
    """One line on the trajectories finished so far in an iteration; ``elapsed`` in s."""
    return (f"iteration {iteration}: {done}/{total} trajectories "
            f"({accurate} accurate, {flagged} flagged, {discarded} discarded) {elapsed:.0f} s")


# Plots: each takes the (JSON-safe) entries and returns a Figure, empty panels saying NO_DATA.

def plot_labels(entries: Sequence[dict]) -> Figure:
    """New done and failed labels per iteration as bars, total done labels on a twin axis."""
    figure = Figure(figsize=(6, 3.8), layout="constrained")
    axis = figure.subplots()
    if not entries:
        return _no_data(figure, axis)
    iterations = np.array([entry["iteration"] for entry in entries], dtype=float)
    axis.bar(iterations - 0.2, [entry.get("n_new") or 0 for entry in entries], 0.4, label="new (done)", color="C0")
    axis.bar(iterations + 0.2, [entry.get("n_failed") or 0 for entry in entries], 0.4, label="failed", color="C3")
    total = axis.twinx()
    total.plot(iterations, [_nan(entry.get("n_labels")) for entry in entries], "o-", color="k", label="total done")
    # Headroom above the largest total, so that its markers are not cut at the frame.
    total.set_ylim(0, 1.1 * max([entry.get("n_labels") or 0 for entry in entries] + [1]))
    axis.set_xlabel("iteration")
    axis.set_ylabel("labels this iteration")
    total.set_ylabel("done labels in all")
    _integer_ticks(axis, iterations)
    # One legend for both axes, above them: inside, it would hide bars or the line.
    handles = axis.get_legend_handles_labels()[0] + total.get_legend_handles_labels()[0]
    figure.legend(handles=handles, loc="outside upper center", ncols=3, fontsize="small")
    return figure


def plot_trajectories(entries: Sequence[dict], target: Optional[float] = None) -> Figure:
    """Stacked fractions of accurate, flagged and discarded trajectories per sampled iteration."""
    figure = Figure(figsize=(6, 3.8), layout="constrained")
    axis = figure.subplots()
    sampled = [entry for entry in entries if entry.get("trajectories") and entry["trajectories"].get("n")]
    if not sampled:
        return _no_data(figure, axis)
    iterations = np.array([entry["iteration"] for entry in sampled], dtype=float)
    bottom = np.zeros(len(sampled))
    for outcome, colour in (("accurate", "C2"), ("flagged", "C1"), ("discarded", "C7")):
        fraction = np.array([entry["trajectories"][outcome] / entry["trajectories"]["n"] for entry in sampled])
        axis.bar(iterations, fraction, 0.6, bottom=bottom, label=outcome, color=colour)
        bottom += fraction
    if target is not None:
        axis.axhline(target, color="k", linestyle="--", linewidth=1, label=f"target {target:g}")
    axis.set_ylim(0, 1.05)
    axis.set_xlabel("iteration")
    axis.set_ylabel("fraction of trajectories")
    _integer_ticks(axis, iterations)
    # Above the axes: the stacked bars fill them up to 1.
    figure.legend(loc="outside upper center", ncols=4, fontsize="small")
    return figure


def plot_time_to_flag(entries: Sequence[dict]) -> Figure:
    """Time to the first flag (fs) against the target temperature there (K); accurate runs hollow at t_max."""
    figure = Figure(figsize=(6, 4.2), layout="constrained")
    axis = figure.subplots()
    plotted = False
    for colour, entry in _coloured(entries):
        points = {outcome: [(flag["temperature"], flag["time_fs"]) for flag in entry.get("flags") or []
                            if flag.get("outcome") == outcome and _finite(flag.get("temperature"), flag.get("time_fs"))]
                  for outcome in ("flagged", "accurate")}
        if points["flagged"]:
            axis.scatter(*zip(*points["flagged"]), color=colour, s=24, label=f"iteration {entry['iteration']}")
        if points["accurate"]:
            # Hollow: the trajectory reached t_max unflagged, so its point is a lower bound.
            axis.scatter(*zip(*points["accurate"]), facecolors="none", edgecolors=colour, s=36,
                         label=None if points["flagged"] else f"iteration {entry['iteration']}")
        plotted = plotted or bool(points["flagged"] or points["accurate"])
    if not plotted:
        return _no_data(figure, axis)
    axis.set_xlabel("target temperature at the flag (K)")
    axis.set_ylabel("time to first flag (fs)")
    handles = axis.get_legend_handles_labels()[0] + [
        Line2D([], [], marker="o", linestyle="", color="grey", label="flagged"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="grey", label="accurate (t_max)")]
    axis.legend(handles=handles, fontsize="small")
    return figure


def plot_uncertainty_vs_error(entries: Sequence[dict]) -> Figure:
    """Predicted σ_F against the true force error (both max over atoms, eV/Å), log-log, with y = x."""
    figure = Figure(figsize=(5.2, 4.6), layout="constrained")
    axis = figure.subplots()
    values = []
    for colour, entry in _coloured(entries):
        pairs = [(label["predicted_forces_uncertainty"], label["true_forces_error"])
                 for label in entry.get("new_labels") or [] if label.get("status") == "done"
                 and _positive(label.get("predicted_forces_uncertainty"), label.get("true_forces_error"))]
        if not pairs:
            continue
        rho = entry.get("spearman")
        rho_text = "n/a" if rho is None else f"{rho:.2f}"
        axis.scatter(*zip(*pairs), color=colour, s=18, alpha=0.8,
                     label=f"iteration {entry['iteration']} (ρ = {rho_text})")
        values.extend(value for pair in pairs for value in pair)
    if not values:
        return _no_data(figure, axis)
    low, high = min(values) / 1.5, max(values) * 1.5
    axis.plot([low, high], [low, high], color="grey", linewidth=0.8, label="y = x")
    axis.set_xscale("log")
    axis.set_yscale("log")
    _plain_log_ticks(axis.xaxis, low, high)
    _plain_log_ticks(axis.yaxis, low, high)
    axis.set_xlim(low, high)
    axis.set_ylim(low, high)
    axis.set_xlabel("predicted σ_F, max over atoms (eV/Å)")
    axis.set_ylabel("true force error, max over atoms (eV/Å)")
    axis.legend(fontsize="small")
    return figure


def plot_test_errors(entries: Sequence[dict]) -> Figure:
    """Energy MAE (meV/atom) and force MAE (eV/Å) against the labels trained on; validation dashed."""
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    for axis, key, unit in zip(figure.subplots(1, 2), ("energy_mae", "forces_mae"), ("meV/atom", "eV/Å")):
        for split, style in (("test", "o-"), ("valid", "s--")):
            points = [(entry["n_train_labels"], entry[split][key]) for entry in entries
                      if entry.get(split) and _finite(entry.get("n_train_labels")) and _positive(entry[split].get(key))]
            if points:
                axis.plot(*zip(*points), style, label=split)
        if not axis.lines:
            _no_data(figure, axis)
            continue
        axis.set_yscale("log")
        errors = np.concatenate([line.get_ydata() for line in axis.lines])
        _plain_log_ticks(axis.yaxis, errors.min(), errors.max())
        axis.set_xlabel("labels trained on")
        axis.set_ylabel(f"{'energy' if key == 'energy_mae' else 'force'} MAE ({unit})")
        axis.legend()
    return figure


# Helpers.

def _save(figure: Figure, path: str) -> str:
    """Saves ``figure`` as a PNG at ``path`` atomically; returns the absolute path."""
    # format= is needed: the partial file's name does not end in .png.
    return write_atomically(path, lambda partial: figure.savefig(partial, format="png", dpi=120))


def _plain_log_ticks(scale, low: float, high: float) -> None:
    """Log ticks labelled 0.1, 0.2, 0.5, …: the default 2×10⁻¹-style minor labels collide on short spans."""
    decades = math.log10(high / low)
    # Fewer labels on longer spans, where the minor ticks crowd.
    labelled = range(2, 10) if decades < 0.6 else (2, 5) if decades < 1.5 else ()

    def minor(value: float, _) -> str:
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return f"{value:g}" if mantissa in labelled else ""

    scale.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    scale.set_minor_formatter(FuncFormatter(minor))


def _no_data(figure: Figure, axis) -> Figure:
    """Marks ``axis`` as empty, so that the file exists and says why it is blank."""
    axis.text(0.5, 0.5, NO_DATA, transform=axis.transAxes, ha="center", va="center", color="grey", fontsize=14)
    axis.set_xticks([])
    axis.set_yticks([])
    return figure


def _coloured(entries: Sequence[dict]):
    """(colour, entry) pairs: one colour per iteration, the same in every plot."""
    return [(f"C{entry['iteration'] % 10}", entry) for entry in entries]


def _integer_ticks(axis, iterations: np.ndarray) -> None:
    """Ticks at the iterations shown; matplotlib's default puts some at halves."""
    if len(iterations) <= 20:
        axis.set_xticks(iterations, [str(int(i)) for i in iterations])


def _floats(values: Sequence) -> np.ndarray:
    """A float array, None as NaN."""
    return np.array([np.nan if value is None else value for value in values], dtype=float)


def _nan(value) -> float:
    return np.nan if value is None else float(value)


def _finite(*values) -> bool:
    return all(value is not None and math.isfinite(value) for value in values)


def _positive(*values) -> bool:
    """Finite and above zero: plottable on a log axis."""
    return _finite(*values) and all(value > 0 for value in values)


def _number(value, form: str = "{}") -> str:
    """``value`` formatted, ``-`` for None or NaN (not applicable)."""
    missing = value is None or (isinstance(value, float) and not math.isfinite(value))
    return "-" if missing else form.format(value)


def _errors(errors: Optional[dict]) -> str:
    """Energy (meV/atom) and force (eV/Å) MAE, or ``-``."""
    if not errors:
        return "-"
    return (f"E {_number(errors.get('energy_mae'), '{:.3g}')} meV/atom, "
            f"F {_number(errors.get('forces_mae'), '{:.3g}')} eV/Å")


def _wall_time(times: Optional[dict]) -> str:
    if not times:
        return "-"
    return "  ".join(f"{key} {_number(times.get(key), '{:.1f}')}"
                     for key in ("training", "sampling", "labelling", "total") if key in times)
