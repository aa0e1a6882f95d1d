"""Helpers of the benchmarks: their JSON reports in benchmarks/results/, the environment they
ran in, and trainings run as users run them, each in a fresh process."""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import yaml

RESULTS_DIRECTORY = Path(__file__).resolve().parent / "results"


def save_report(name: str, description: str, settings: dict, environment: dict, **results) -> Path:
    """Writes ``results/<name>.json`` with a description, settings, environment and results."""
    report = {"description": description, "settings": settings, "environment": environment, **results}
    path = RESULTS_DIRECTORY / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")
    return path


def environment(hippynn_version=None) -> dict:
    """Versions, threads, CPU and load average, plus hippynn's kernel choice when it is used."""
    import platform

    import ase
    import torch

    import mlip_md

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ase": ase.__version__,
        "mlip_md": mlip_md.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_at_start": os.getloadavg(),
    }
    if hippynn_version is not None:
        from hippynn import custom_kernels

        info["hippynn"] = hippynn_version
        info["hippynn_custom_kernels"] = custom_kernels.CUSTOM_KERNELS_ACTIVE
    return info


def import_hippynn():
    """hippynn's version string, or None (with a message) when it cannot be imported."""
    import warnings

    try:
        with warnings.catch_warnings():
            # On CPU-only installs hippynn warns that no custom kernels (numba, ...) exist.
            warnings.simplefilter("ignore")
            import hippynn
            import hippynn.interfaces.ase_interface  # noqa: F401
    except ImportError as error:
        print(f"hippynn is not importable ({error}); measuring mlip_md only.\n")
        return None
    return hippynn.__version__


def process_environment(threads: Optional[int] = None) -> dict:
    """The environment of a measured process: ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` set to
    ``threads``, or removed (None) so that the process picks its own thread count."""
    env = dict(os.environ)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(variable, None)
        if threads is not None:
            env[variable] = str(threads)
    return env


def run_process(command: List[str], log: Path, threads: Optional[int] = None) -> float:
    """Runs ``command`` to the end with its output in ``log``; returns its wall time (s).
    On failure prints the log's last lines and raises CalledProcessError."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        finished = subprocess.run(command, env=process_environment(threads), stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if finished.returncode != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-30:]))
        raise subprocess.CalledProcessError(finished.returncode, command)
    return seconds


def train_with_cli(config: dict, directory: Path, threads: Optional[int] = None, processes: int = 1) -> dict:
    """Trains with ``mlip-md train`` (as ``python -m mlip_md train``) in a fresh process, or in
    ``processes`` > 1 with ``torchrun --standalone --nproc-per-node processes -m mlip_md train``.

    Writes ``directory/config.yaml`` and trains into ``directory/run``; returns
    the epochs' wall times (``seconds`` of ``member_0/metrics.jsonl``), their
    median and mean, the validation energy RMSE of every epoch (meV/atom), the
    non-finite steps recovered, the process's wall time (start-up, data, training, final
    errors, export, plots) and member 0's test errors from ``metrics.json``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config_path, out = directory / "config.yaml", directory / "run"
    config_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "mlip_md", "train", str(config_path), "--out", str(out)]
    if processes > 1:
        torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
        command = [torchrun, "--standalone", f"--nproc-per-node={processes}", *command[1:]]
    process_seconds = run_process(command, directory / "log.txt", threads)
    records = [json.loads(line) for line in (out / "member_0" / "metrics.jsonl").read_text().splitlines()]
    seconds = [record["seconds"] for record in records]
    return {**epoch_statistics(seconds), "process_seconds": process_seconds,
            "valid_energy_rmse": [record["valid"]["energy_rmse"] for record in records],
            "recoveries": sum(record["recoveries"] for record in records),
            "test": json.loads((out / "metrics.json").read_text())["members"][0]["test"]}


def epoch_statistics(seconds: List[float]) -> dict:
    """The epochs' wall times (s) with their median and mean."""
    return {"epoch_seconds": seconds, "median_epoch_seconds": statistics.median(seconds),
            "mean_epoch_seconds": statistics.fmean(seconds)}
