"""Runs a Python snippet in a child process with a time and memory limit.

For inputs that once crashed or exhausted the process (SIGFPE inside a
native library, unbounded allocation): a regression then fails one test
instead of taking pytest down.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent

_PREAMBLE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
sys.path.insert(0, {tests!r})
"""


def run_isolated(code: str, timeout: float = 120.0, memory_gb: float = 3.0) -> dict:
    """Runs ``code``, which must end by printing one JSON object; returns it.

    The child's address space is limited to ``memory_gb`` and its run time to
    ``timeout`` seconds. Fails (AssertionError with the child's output) if it
    dies from a signal, exits non-zero or prints no JSON.
    """
    preamble = _PREAMBLE.format(limit=int(memory_gb * 2**30), tests=str(TESTS))
    result = subprocess.run(
        [sys.executable, "-c", preamble + textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"exit status {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])
