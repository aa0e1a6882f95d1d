"""The ``mlip-md`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from typing import List, Optional

import mlip_md.tuning as tuning
from mlip_md.version import __version__
from mlip_md.contract import load_exported
from mlip_md.data.labels import LabellingError
from mlip_md.demo import DemoOptions
from mlip_md.lammps import PluginBuildError

EXIT_DRAINED = 75  # os.EX_TEMPFAIL: a drained campaign, to be resumed by running the command again

# What main() reports as "mlip-md COMMAND: error: ..." (exit code 2); other exceptions are bugs and propagate.
_USER_ERRORS = (ValueError, OSError, ImportError, PluginBuildError, LabellingError)


def _writable_directory(path: str, what: str = "--out") -> str:
    """``path`` as a directory this process can write in, created if missing; ValueError or OSError if not."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what} {path} is an existing file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # permissions alone do not tell (root, read-only mounts)
            pass
    except OSError as error:
        raise OSError(f"cannot write in {what} {path}: {error.strerror or error}") from None
    return path


def _demo(args: argparse.Namespace) -> int:
    """The main job on built-in defaults: EMT Al data -> trained HIP-NN -> exported file -> ASE and LAMMPS MD."""
    from mlip_md.demo import run_demo

    names = [field.name for field in dataclasses.fields(DemoOptions) if field.name != "lammps"]
    options = DemoOptions(**{name: getattr(args, name) for name in names}, lammps=not args.no_lammps)
    run_demo(_writable_directory(args.out), options)
    return 0


def _generate(args: argparse.Namespace) -> int:
    """Writes a labelled data set: EMT aluminium, small EMT metal cells or a GFN2-xTB molecule."""
    from mlip_md.data.generate import (
        check_data_path, generate_aluminium, generate_molecule, generate_small_cells, write_images,
    )

    check_data_path(args.out)
    _writable_directory(os.path.dirname(os.path.abspath(args.out)), "the directory of --out")
    if args.system == "aluminium":
        images = generate_aluminium(args.n, seed=args.seed, temperatures=args.temperatures)
    elif args.system == "small-cells":
        images = generate_small_cells(args.n, seed=args.seed, symbols=args.elements)
    else:
        # The entry point owns its process: tblite's OpenMP threads stall on small machines.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        images = generate_molecule(args.n, args.molecule, seed=args.seed, temperature=args.temperatures[0],
                                   hessians=not args.no_hessians)
    path = write_images(images, args.out)
    sizes = [len(atoms) for atoms in images]
    print(f"wrote {len(images)} configurations ({min(sizes)}-{max(sizes)} atoms) to {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    """Trains the models of a YAML configuration and exports them to OUT/model.pt; under ``torchrun``
    the processes train together (rank 0 writes the files and prints)."""
    import torch

    from mlip_md.train import distributed
    from mlip_md.train.config import load_config
    from mlip_md.train.trainer import train

    config = load_config(args.config)
    group = distributed.from_environment()
    # The entry point owns its process: its share of the node's cores, as many threads.
    torch.set_num_threads(distributed.threads_per_process(config.training.threads, group.local_size))
    out = _writable_directory(args.out) if group.is_main else args.out
    summary = train(config, out, group=group)
    distributed.close(group)  # on an error torchrun ends the other processes
    if group.is_main:
        print(json.dumps({"model": summary["model"], "test": summary["members"][0]["test"]}, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Prints the errors of an exported model on a data file as JSON."""
    from mlip_md.evaluate import evaluate_exported

    print(json.dumps(evaluate_exported(args.model, args.data), indent=2))
    return 0


def _campaign(args: argparse.Namespace) -> int:
    """Runs or resumes an active-learning campaign; prints its final status as JSON.

    Exit code 3: the campaign stopped before its end (failure budget, another
    driver in the directory, other settings there); the message says why.
    Exit code 75 (EX_TEMPFAIL): drained on SIGTERM, SIGINT or
    ``executor.walltime`` with everything finished recorded; run the same
    command again (a job chain tests for 75 and resubmits) to resume.
    """
    from mlip_md.active import CampaignError, load_campaign_config, run_campaign
    from mlip_md.active.engines import EngineError

    # The entry point owns its process: tblite's OpenMP threads stall on small machines, and the
    # engines start programs of this environment (mpiexec, parsl's interchange.py) even when it is not activated.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    environment_bin = os.path.dirname(sys.executable)
    if environment_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([environment_bin, os.environ.get("PATH", "")])
    config = load_campaign_config(args.config)
    try:
        status = run_campaign(config, _writable_directory(args.out), catch_signals=True)
    except EngineError as error:
        print(f"mlip-md campaign: error: {error}", file=sys.stderr)
        return 2
    except CampaignError as error:
        print(f"mlip-md campaign: {error}", file=sys.stderr)
        return 3
    print(json.dumps(status, indent=2))
    return EXIT_DRAINED if status["drained"] else 0


def _campaign_status(args: argparse.Namespace) -> int:
    """Prints the summary of the campaign in a directory as JSON."""
    from mlip_md.active import campaign_status

    print(json.dumps(campaign_status(args.out), indent=2))
    return 0


def _info(args: argparse.Namespace) -> int:
    """Prints the metadata of an exported model as JSON."""
    print(json.dumps(load_exported(args.model).metadata, indent=2))
    return 0


def _lammps_plugin(args: argparse.Namespace) -> int:
    """Builds the LAMMPS plugin if needed and prints its absolute path."""
    from mlip_md.lammps import build_plugin

    print(build_plugin(rebuild=args.rebuild, verbose=True))
    return 0


def _add_demo_parser(commands) -> None:
    """``mlip-md demo``: its options' defaults are those of :class:`mlip_md.demo.DemoOptions`."""
    demo = commands.add_parser(
        "demo", help="EMT Al data -> train HIP-NN -> export -> ASE NVE MD -> LAMMPS NVE (the main job)")
    defaults = DemoOptions()
    demo.add_argument("--configs", type=int, default=defaults.configs, help="EMT structures to label (default %(default)s)")
    demo.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs (default %(default)s)")
    demo.add_argument("--out", default="mlip_md_demo",
                      help="output directory (default: %(default)s); a re-run with the same data and training "
                           "options resumes there, other options are refused")
    demo.add_argument("--repeat", type=int, default=defaults.repeat,
                      help="fcc cubic cells per direction (default %(default)s: 108 atoms)")
    demo.add_argument("--steps", type=int, default=defaults.steps, help="MD steps (default %(default)s)")
    demo.add_argument("--timestep", type=float, default=defaults.timestep, help="time step in fs (default %(default)s)")
    demo.add_argument("--temperature", type=float, default=defaults.temperature,
                      help="initial temperature in K (default %(default)s)")
    demo.add_argument("--log-interval", type=int, default=defaults.log_interval,
                      help="steps between printed lines (default %(default)s)")
    demo.add_argument("--cutoff", type=float, default=defaults.cutoff, help="model cutoff in Å (default %(default)s)")
    demo.add_argument("--dtype", choices=["float64", "float32"], default=defaults.dtype)
    demo.add_argument("--threads", type=int, default=defaults.threads, help="torch threads (default: torch's choice)")
    demo.add_argument("--seed", type=int, default=defaults.seed)
    demo.add_argument("--no-lammps", action="store_true", help="skip step 5, the LAMMPS run")
    demo.add_argument("--campaign-iterations", type=int, default=defaults.campaign_iterations,
                      help="step 6: sampling rounds of the active-learning campaign (default %(default)s; 0 skips it)")
    demo.set_defaults(handler=_demo)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``mlip-md`` command; each sets ``handler``, the function that runs it."""
    parser = argparse.ArgumentParser(prog="mlip-md", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mlip_md {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_demo_parser(commands)
    generate = commands.add_parser("generate", help="make an example labelled data set with a reference calculator")
    generate.add_argument("system", choices=["aluminium", "small-cells", "molecule"],
                          help="aluminium: fcc Al labelled with ASE's EMT; small-cells: compressed, strained, "
                               "rattled fcc/bcc/sc/hcp cells of 1-16 atoms (edges down to ~2 Å, far below a "
                               "6 Å cutoff), labelled with EMT; molecule: GFN2-xTB MD frames (tblite)")
    generate.add_argument("--molecule", default="CH3CH2OH", help="ASE G2 molecule name (default CH3CH2OH)")
    generate.add_argument("--no-hessians", action="store_true", help="molecule: skip finite-difference Hessians")
    generate.add_argument("--elements", nargs="+", default=["Al"], metavar="SYMBOL",
                          help="small-cells: the metals, one per cell in turn (default Al; EMT knows Al Cu Ag "
                               "Au Ni Pd Pt)")
    generate.add_argument("--n", type=int, default=500, help="number of configurations (default 500)")
    generate.add_argument("--out", default="data/aluminium.extxyz",
                          help="output file: .extxyz, .xyz, .traj or .db (format from the ending)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 600.0, 900.0],
                          help="MD temperatures in K (default 300 600 900; molecule: the first)")
    generate.set_defaults(handler=_generate)

    train = commands.add_parser("train", help="train HIP-NN models from a YAML configuration")
    train.add_argument("config", help="YAML configuration (see mlip_md/train/config.py for every key)")
    train.add_argument("--out", required=True, help="output directory: model.pt, metrics.json, checkpoints")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="errors of an exported model on a labelled data file")
    evaluate.add_argument("model", help="exported model file")
    evaluate.add_argument("data", help="ASE-readable file with energies (and forces)")
    evaluate.set_defaults(handler=_eval)

    campaign = commands.add_parser(
        "campaign", help="active learning: train an ensemble, sample where it disagrees, label, retrain")
    campaign.add_argument("config", help="campaign YAML (see mlip_md/active/config.py for every key)")
    campaign.add_argument("--out", required=True,
                          help="campaign directory: labels.db, model.pt, report.json; resumed if it holds one")
    campaign.set_defaults(handler=_campaign)
    status = commands.add_parser("campaign-status", help="print a campaign's state as JSON")
    status.add_argument("out", help="campaign directory")
    status.set_defaults(handler=_campaign_status)

    info = commands.add_parser("info", help="print the metadata of an exported model")
    info.add_argument("model", help="exported model file")
    info.set_defaults(handler=_info)

    plugin = commands.add_parser("lammps-plugin", help="build pair_style mlip for LAMMPS (cached) and print its path")
    plugin.add_argument("--rebuild", action="store_true", help="build even if a cached plugin exists")
    plugin.set_defaults(handler=_lammps_plugin)
    return parser


def _reportable(error: Exception) -> bool:
    """Whether main() turns ``error`` into a message: an ImportError only for a package outside mlip_md."""
    if isinstance(error, ImportError):
        return bool(error.name) and error.name.split(".")[0] != "mlip_md"
    return True


def main(argv: Optional[List[str]] = None) -> int:
    """Runs one ``mlip-md`` command; returns its exit code (2, with a message on stderr, for bad input)."""
    args = build_parser().parse_args(argv)
    tuning.keep_freed_memory()  # the entry point owns its process: model evaluations reuse freed memory
    try:
        return args.handler(args)
    except _USER_ERRORS as error:
        if not _reportable(error):
            raise
        print(f"mlip-md {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
