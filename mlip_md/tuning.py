"""Process-level performance settings, applied only when asked for."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
_TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Asks glibc's malloc to reuse freed memory instead of returning it to the OS.

    Process-wide, so nothing in mlip_md calls it unless asked: the
    ``mlip-md`` entry point does, and :class:`mlip_md.MLIPCalculator` does when
    constructed with ``keep_freed_memory=True`` (its docstring says what that
    gains). Each model evaluation allocates and frees large temporaries; with
    glibc's defaults every such block is a fresh ``mmap`` whose pages fault in
    on first touch. After this call every block comes from the heap and up to
    1 GB of freed memory is kept for reuse, so resident memory stays at its
    peak. The LAMMPS plugin does the same (``keep_freed_memory yes``, its
    default: it owns its process).

    Returns True if the settings were applied (Linux with glibc), else False.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return False
    return (bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_MMAP_MAX, 0))
            and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
