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
