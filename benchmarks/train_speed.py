"""Training cost per epoch: mlip_md vs hippynn, same data, architecture and loss.

What is measured
----------------
Wall time of one training epoch (every minibatch of the training set once:
batching, forward, energy + force loss, backward, Adam step; no validation
in the timed part), one CPU thread, float32, for:

* ``ours E+F``: mlip_md's HIPNN trained with the per-atom energy RMSE plus the
  force-component RMSE (forces by autograd with ``create_graph=True``), the
  loss of :mod:`mlip_md.train.trainer`. Minibatches come from
  :func:`mlip_md.data.collate` on a :class:`~mlip_md.data.GraphCache` whose
  neighbour lists are built once, before the timed epochs (that one-off cost
  is reported separately).
* ``hippynn E+F``: hippynn's ``Hipnn`` (periodic, ``resnet=False``) →
  ``HEnergyNode`` → ``physics.GradientNode`` (forces, sign −1) wrapped in a
  ``GraphModule``, fed by ``hippynn.databases.Database.make_generator`` (its
  DataLoader over zero-padded arrays, shuffled), the same loss (per-atom
  energy RMSE + force RMSE over the real atoms), ``torch.optim.Adam``.
  hippynn's periodic pair indexer finds the pairs on every forward pass (its
  standard training path). E0 values are set with hippynn's
  ``hierarchical_energy_initialization`` (its usual recipe); ours get
  least-squares reference energies (``build_model``).
* ``ours E only``: mlip_md's HIPNN trained on the per-atom energy RMSE alone
  (forward of ``model(species, edge_index, edge_vectors)`` summed per
  structure, one backward, no forces), to compare with ``ours E+F``.

Same architecture for both codes: 2 interaction layers, 20 features,
20 sensitivities, 3 atom layers, cutoff 6 Å, soft distance range 1.7–5.0 Å;
batch size 16, learning rate 1e-3, no learning-rate decay. Data: 500 EMT
aluminium configurations (30–108 atoms, ``generate_aluminium(500, seed=0)``,
cached in ``benchmarks/results/data/``), split 80/10/10 with
``mlip_md.data.split_indices(500, 0.1, 0.1, seed=0)`` — the same split for
both codes. Every epoch runs the three trainings in an order rotated from
epoch to epoch so machine noise hits them alike; the reported epoch time is
the median over epochs. After the last epoch the test-set energy MAE
(meV/atom) and force MAE (eV/Å) of each model are computed.

Run from the repository root::

    .venv/bin/python benchmarks/train_speed.py [--epochs 10] [--batch-size 16] [--n-configurations 500]

Prints a table and writes ``benchmarks/results/train_speed.json``.
"""

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before torch is imported

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mlip_md.data import collate, split_indices  # noqa: E402
from mlip_md.species import SpeciesMap  # noqa: E402
from mlip_md.train.config import config_from_dict  # noqa: E402
from mlip_md.train.losses import energy_force_errors, predict  # noqa: E402
from mlip_md.train.trainer import build_model, evaluate, load_data  # noqa: E402
from _report import environment, import_hippynn, save_report  # noqa: E402

torch.set_num_threads(1)

DATA_DIRECTORY = Path(__file__).resolve().parent / "results" / "data"
CUTOFF = 6.0
SOFT_MIN, SOFT_MAX = 1.7, 5.0
ARCHITECTURE = dict(n_interactions=2, n_features=20, n_sensitivities=20, n_atom_layers=3,
                    cutoff=CUTOFF, dist_soft_min=SOFT_MIN, dist_soft_max=SOFT_MAX)
HIPPYNN_ARCHITECTURE = dict(
    possible_species=[0, 13], n_interaction_layers=2, n_features=20, n_sensitivities=20, n_atom_layers=3,
    dist_soft_min=SOFT_MIN, dist_soft_max=SOFT_MAX, dist_hard_max=CUTOFF, resnet=False,
)
LEARNING_RATE = 1e-3
SEED = 0
VALID_FRACTION = TEST_FRACTION = 0.1


def data_file(n: int) -> Path:
    """The cached EMT aluminium data set of ``n`` configurations (generated on first use)."""
    from mlip_md.data.generate import generate_aluminium, write_images

    path = DATA_DIRECTORY / f"aluminium_{n}_seed{SEED}.extxyz"
    if not path.exists():
        print(f"generating {n} EMT aluminium configurations -> {path}", flush=True)
        write_images(generate_aluminium(n, seed=SEED), path)
    return path


# -- mlip_md -----------------------------------------------------------------------


class Ours:
    """One mlip_md model and its optimiser; ``epoch()`` trains one epoch and returns its wall time."""

    def __init__(self, config, data, forces: bool):
        self.config, self.data, self.forces = config, data, forces
        self.species_map = SpeciesMap(data.species)
        self.model = build_model(config, data.species, data.train.configurations, SEED)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
        self.batch_size = config.training.batch_size
        self.epochs = 0

    def _loss(self, batch):
        if self.forces:
            errors = energy_force_errors(predict(self.model, batch, create_graph=True), batch)
            return errors["energy_rmse"] + errors["forces_rmse"]
        atom_energies = self.model(batch.species, batch.edge_index, batch.edge_vectors())
        energy = atom_energies.new_zeros(batch.n_structures).index_add_(0, batch.structure, atom_energies)
        return ((energy - batch.energy) / batch.n_atoms).square().mean().sqrt()

    def epoch(self) -> float:
        order = np.random.default_rng([SEED, self.epochs]).permutation(len(self.data.train))
        self.epochs += 1
        start_time = time.perf_counter()
        for start in range(0, len(order), self.batch_size):
            batch = collate(self.data.train, order[start : start + self.batch_size], self.species_map, torch.float32)
            self.optimizer.zero_grad()
            self._loss(batch).backward()
            self.optimizer.step()
        return time.perf_counter() - start_time

    def test_errors(self) -> dict:
        metrics = evaluate(self.model, self.data.test, self.species_map, self.batch_size)
        return {"energy_mae_meV_per_atom": metrics["energy_mae"], "forces_mae_eV_per_A": metrics["forces_mae"]}


# -- hippynn -----------------------------------------------------------------------


def padded_arrays(configurations) -> dict:
    """hippynn's database layout: Z [n, max_atoms] (0 = padding), R, F [n, max_atoms, 3], C [n, 3, 3], T [n]."""
    n, width = len(configurations), max(c.n_atoms for c in configurations)
    arrays = {
        "Z": np.zeros((n, width), dtype=np.int64),
        "R": np.zeros((n, width, 3), dtype=np.float32),
        "F": np.zeros((n, width, 3), dtype=np.float32),
        "C": np.zeros((n, 3, 3), dtype=np.float32),
        "T": np.zeros((n, 1), dtype=np.float32),
    }
    for k, c in enumerate(configurations):
        arrays["Z"][k, : c.n_atoms] = c.numbers
        arrays["R"][k, : c.n_atoms] = c.positions
        arrays["F"][k, : c.n_atoms] = c.forces
        arrays["C"][k] = c.cell
        arrays["T"][k, 0] = c.energy
    return arrays


def hippynn_loss(energy, forces, species, true_energy, true_forces):
    """Per-atom energy RMSE + force-component RMSE over the real (non-padding) atoms, as ours."""
    n_atoms = (species > 0).sum(1).to(energy.dtype)
    energy_rmse = ((energy.reshape(-1) - true_energy.reshape(-1)) / n_atoms).square().mean().sqrt()
    # Padding atoms have zero reference force and get zero predicted force (they have no pairs).
    forces_rmse = ((forces - true_forces).square().sum() / (3 * n_atoms.sum())).sqrt()
    return energy_rmse + forces_rmse


class Hippynn:
    """hippynn's Hipnn → HEnergy → Gradient graph, its Database, a plain Adam loop."""

    def __init__(self, configurations, train_index, valid_index, test_index, batch_size: int):
        from hippynn.databases import Database
        from hippynn.graphs import GraphModule, inputs, networks, physics, targets
        from hippynn.pretraining import hierarchical_energy_initialization

        torch.manual_seed(SEED)
        species = inputs.SpeciesNode(db_name="Z")
        positions = inputs.PositionsNode(db_name="R")
        cell = inputs.CellNode(db_name="C")
        network = networks.Hipnn("HIPNN", (species, positions, cell), periodic=True,
                                 module_kwargs=dict(HIPPYNN_ARCHITECTURE))
        henergy = targets.HEnergyNode("HEnergy", network)
        henergy.mol_energy.db_name = "T"
        forces = physics.GradientNode("forces", (henergy, positions), sign=-1)
        forces.db_name = "F"
        self.module = GraphModule([species, positions, cell], [henergy.mol_energy, forces]).to(torch.float32)

        arrays = padded_arrays(configurations)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.database = Database(arrays, inputs=["Z", "R", "C"], targets=["T", "F"], seed=SEED,
                                     pin_memory=False, quiet=True)
        self.database.make_explicit_split("test", torch.as_tensor(np.sort(test_index)))
        self.database.make_explicit_split("valid", torch.as_tensor(np.sort(valid_index)))
        self.database.split_the_rest("train")
        assert len(self.database.splits["train"]["Z"]) == len(train_index)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # it prints the E0 values
            hierarchical_energy_initialization(henergy, self.database, trainable_after=False)
        self.optimizer = torch.optim.Adam([p for p in self.module.parameters() if p.requires_grad], lr=LEARNING_RATE)
        self.batch_size = batch_size
        self.epochs = 0

    def epoch(self) -> float:
        torch.manual_seed(SEED + self.epochs)  # the DataLoader's shuffle
        self.epochs += 1
        start_time = time.perf_counter()
        for Z, R, C, T, F in self.database.make_generator("train", "train", self.batch_size):
            self.optimizer.zero_grad()
            energy, forces = self.module(Z, R, C)
            hippynn_loss(energy, forces, Z, T, F).backward()
            self.optimizer.step()
        return time.perf_counter() - start_time

    def test_errors(self) -> dict:
        energy_errors, force_errors = [], []
        for Z, R, C, T, F in self.database.make_generator("test", "eval", self.batch_size):
            energy, forces = self.module(Z, R, C)
            real = Z > 0
            energy_errors.append(((energy.reshape(-1) - T.reshape(-1)) / real.sum(1)).detach())
            force_errors.append((forces - F)[real].detach().reshape(-1))
        return {"energy_mae_meV_per_atom": 1000 * torch.cat(energy_errors).abs().mean().item(),
                "forces_mae_eV_per_A": torch.cat(force_errors).abs().mean().item()}


# -- main --------------------------------------------------------------------------


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per model (timed each)")
    parser.add_argument("--batch-size", type=int, default=16, help="configurations per minibatch")
    parser.add_argument("--n-configurations", type=int, default=500, help="EMT Al configurations (cached)")
    parser.add_argument("--no-hippynn", action="store_true", help="measure mlip_md only")
    parser.add_argument("--no-energy-only", action="store_true", help="skip the energy-only training")
    return parser.parse_args()


def main():
    args = parse_arguments()
    hippynn_version = None if args.no_hippynn else import_hippynn()
    info = environment(hippynn_version)
    path = data_file(args.n_configurations)
    config = config_from_dict({
        "data": {"train": str(path), "valid_fraction": VALID_FRACTION, "test_fraction": TEST_FRACTION},
        "model": {**ARCHITECTURE, "species": ["Al"]},
        "training": {"max_epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": LEARNING_RATE,
                     "dtype": "float32", "seed": SEED},
        "loss": {"energy_rmse": 1, "forces_rmse": 1, "hessian": 0},
    })
    data = load_data(config)
    configurations = data.train.configurations + data.valid.configurations + data.test.configurations
    n_total = len(configurations)
    train_index, valid_index, test_index = split_indices(n_total, VALID_FRACTION, TEST_FRACTION, SEED)
    # load_data used the same split of the file's order; rebuild that order for hippynn.
    from mlip_md.data import read_configurations

    in_file_order = read_configurations(str(path))
    start = time.perf_counter()
    for cache in (data.train, data.test):
        for index in range(len(cache)):
            cache.graph(index)
    neighbor_seconds = time.perf_counter() - start
    sizes = [c.n_atoms for c in in_file_order]
    print(f"torch {info['torch']}, {info['torch_threads']} thread(s); hippynn {hippynn_version}; "
          f"load average {info['load_average_at_start'][0]:.2f}")
    print(f"{n_total} EMT Al configurations ({min(sizes)}-{max(sizes)} atoms), train/valid/test "
          f"{len(train_index)}/{len(valid_index)}/{len(test_index)}, batch {args.batch_size}, float32, "
          f"{args.epochs} epochs; our neighbour lists built once in {neighbor_seconds:.2f} s\n")

    runs = {"ours E+F": Ours(config, data, forces=True)}
    if hippynn_version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs["hippynn E+F"] = Hippynn(in_file_order, train_index, valid_index, test_index, args.batch_size)
    if not args.no_energy_only:
        runs["ours E only"] = Ours(config, data, forces=False)
    names = list(runs)
    times = {name: [] for name in names}
    for epoch in range(args.epochs):
        rotation = names[epoch % len(names):] + names[: epoch % len(names)]
        for name in rotation:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                times[name].append(runs[name].epoch())
        print(f"epoch {epoch + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names), flush=True)

    results = {}
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            errors = runs[name].test_errors()
        results[name] = {"epoch_seconds": times[name], "median_epoch_seconds": statistics.median(times[name]),
                         "min_epoch_seconds": min(times[name]), **errors}
    ratios = {}
    if "hippynn E+F" in results:
        ratios["hippynn_over_ours"] = results["hippynn E+F"]["median_epoch_seconds"] / results["ours E+F"]["median_epoch_seconds"]
        ratios["ours_over_hippynn"] = 1 / ratios["hippynn_over_ours"]
    if "ours E only" in results:
        ratios["ours_EF_over_E_only"] = results["ours E+F"]["median_epoch_seconds"] / results["ours E only"]["median_epoch_seconds"]

    print(f"\n{'training':<14}{'median epoch s':>16}{'min epoch s':>14}{'test E MAE meV/atom':>22}{'test F MAE eV/Å':>18}")
    for name in names:
        r = results[name]
        force = r["forces_mae_eV_per_A"]
        force_text = f"{force:18.4f}" if name != "ours E only" else f"{force:18.4f}"
        print(f"{name:<14}{r['median_epoch_seconds']:16.2f}{r['min_epoch_seconds']:14.2f}"
              f"{r['energy_mae_meV_per_atom']:22.2f}{force_text}")
    print()
    if "hippynn_over_ours" in ratios:
        print(f"epoch time hippynn / ours (E+F):    {ratios['hippynn_over_ours']:.2f}  "
              f"(ours = {ratios['ours_over_hippynn']:.2f} x hippynn; target <= 0.5)")
    if "ours_EF_over_E_only" in ratios:
        print(f"epoch time ours E+F / ours E only:  {ratios['ours_EF_over_E_only']:.2f}  (target <= 3)")

    save_report(
        "train_speed",
        __doc__.split("\n\n")[0],
        settings={"epochs": args.epochs, "batch_size": args.batch_size, "n_configurations": n_total,
                  "n_train": len(train_index), "n_test": len(test_index), "dtype": "float32",
                  "learning_rate": LEARNING_RATE, "architecture": ARCHITECTURE,
                  "hippynn_architecture": HIPPYNN_ARCHITECTURE, "data_file": str(path), "seed": SEED,
                  "our_neighbor_list_seconds_once": neighbor_seconds},
        environment=info,
        results=results,
        ratios=ratios,
    )


if __name__ == "__main__":
    main()
