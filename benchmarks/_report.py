"""Writing a benchmark's JSON report next to the scripts, in benchmarks/results/."""

import json
from pathlib import Path

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
    import os
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
