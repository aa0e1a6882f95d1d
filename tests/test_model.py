"""HIP-NN module: shapes, dtypes, hierarchy, cutoff smoothness, scripting."""

import io
import math

import numpy as np
import pytest
import torch

import mlip_md
from conftest import graph_inputs, make_model, random_cell
from mlip_md.model.graph import EXPONENT_FLOOR, LOG2_E, log_cutoff_envelope
from mlip_md.model.layers import ACTIVATIONS, InverseSensitivity, Softplus, make_activation


def test_public_constructor_names():
    model = mlip_md.HIPNN(
        species=["Al", "Cu"], n_interactions=3, n_features=16, n_sensitivities=12, n_atom_layers=2, cutoff=5.5
    )
    assert len(model.interactions) == 3 and len(model.readouts) == 3
    assert model.config["n_features"] == 16 and model.cutoff == 5.5
    assert "n_sensitivities=12" in repr(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_shapes_and_dtypes(dtype):
    model = make_model().to(dtype)
    species, edge_index, vectors = graph_inputs(random_cell(), dtype=dtype)
    energies = model(species, edge_index, vectors)
    assert energies.shape == (12,) and energies.dtype == dtype
    layout = model.neighbor_layout(species, edge_index, vectors)
    levels = model.level_energies(layout)
    assert levels.shape == (3, 12)
    torch.testing.assert_close(levels.sum(0), energies)
    # Level 0 is exactly the per-species reference energy.
    torch.testing.assert_close(levels[0], model.reference_energies[species])


def test_edge_order_does_not_matter():
    model = make_model().double()
    species, edge_index, vectors = graph_inputs(random_cell())
    permutation = torch.randperm(edge_index.shape[1], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        model(species, edge_index, vectors),
        model(species, edge_index[:, permutation], vectors[permutation]),
        rtol=0,
        atol=1e-12,
    )


def test_isolated_atoms_get_reference_energies():
    model = make_model().double()
    species = torch.tensor([0, 1])
    energies = model(species, torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64))
    # With no neighbours the features are a function of the species only.
    assert energies.shape == (2,) and torch.isfinite(energies).all()


def test_envelope_vanishes_smoothly_at_cutoff():
    r = torch.tensor([6.0 - 1e-6, 6.0, 6.0 + 1e-6, 9.0, 12.0], dtype=torch.float64, requires_grad=True)
    values = torch.exp2(torch.clamp_min(LOG2_E * log_cutoff_envelope(r, 6.0), EXPONENT_FLOOR))
    (gradient,) = torch.autograd.grad(values.sum(), r)
    assert values[0] < 1e-12 and values[1:].max() < 1e-34
    assert gradient.abs().max() < 1e-5
    inside = torch.tensor([0.5, 3.0, 5.5], dtype=torch.float64)
    expected = torch.cos(torch.pi * inside / 12.0) ** 2
    torch.testing.assert_close(torch.exp(log_cutoff_envelope(inside, 6.0)), expected, rtol=1e-13, atol=0)


def test_sensitivities_follow_the_paper_formula():
    sensitivity = InverseSensitivity(5, 1.0, 4.0, 6.0).double()
    r = torch.linspace(0.8, 5.9, 50, dtype=torch.float64)
    inverse = 1 / r
    terms = torch.stack([inverse**2, inverse, torch.ones_like(r), log_cutoff_envelope(r, 6.0)])  # [4, n]
    centers, widths = sensitivity.inverse_centers.detach(), sensitivity.widths.detach()
    gauss = torch.exp(-((inverse[:, None] - centers) ** 2) / (2 * widths**2))
    expected = gauss * (torch.cos(torch.pi * r / 12.0) ** 2)[:, None]
    torch.testing.assert_close(sensitivity(terms), expected, rtol=1e-10, atol=1e-30)
    torch.testing.assert_close(centers, torch.linspace(0.25, 1.0, 5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softplus_is_exact_to_rounding(dtype):
    # torch's fused op with threshold 40: beyond it x itself is returned.
    x = torch.linspace(-120.0, 120.0, 24001, dtype=dtype)
    exact = torch.logaddexp(x.double(), torch.zeros((), dtype=torch.float64))
    info = torch.finfo(dtype)
    # relative to rounding, absolute below the smallest normal number
    assert ((Softplus()(x).double() - exact).abs() <= 2 * info.eps * exact + info.tiny).all()


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_match_autograd(name):
    # The hand-written reverse pass uses f', the Hessian's tangents f''.
    activation = make_activation(name)
    x = torch.linspace(-6.0, 6.0, 1201, dtype=torch.float64).requires_grad_(True)
    x = x[x.abs() > 1e-3]  # celu's f'' jumps at 0
    y = activation(x)
    (first,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), x)
    torch.testing.assert_close(activation.derivative(x, y).detach(), first.detach(), rtol=0, atol=1e-14)
    torch.testing.assert_close(activation.second_derivative(x, y).detach(), second, rtol=0, atol=1e-14)


def test_hierarchicality_regulariser():
    # Two structures, three levels: E_n^2 / (E_n^2 + E_{n-1}^2) summed over n >= 1.
    levels = torch.tensor([[10.0, -4.0], [1.0, 2.0], [0.1, 0.0]])
    expected = np.mean([1 / 101 + 0.01 / 1.01, 4 / 20 + 0.0])
    assert mlip_md.hierarchicality(levels).item() == pytest.approx(expected, rel=1e-6)


def test_eager_scripted_and_reloaded_agree():
    model = make_model().double()
    species, edge_index, vectors = graph_inputs(random_cell())
    eager = model(species, edge_index, vectors)
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    reloaded = torch.jit.load(buffer)
    for other in (scripted(species, edge_index, vectors), reloaded(species, edge_index, vectors)):
        torch.testing.assert_close(other, eager, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"species": ["Al", "Xx"]}, "unknown element"),
        ({"species": []}, "at least one element"),
        ({"species": ["Al", "Al"]}, "more than once"),
        ({"species": ["Al"], "n_interactions": 0}, "n_interactions"),
        ({"species": ["Al"], "cutoff": 3.0, "dist_soft_max": 4.0}, "dist_soft_max"),
        ({"species": ["Al"], "activation": "relu6"}, "unknown activation"),
    ],
)
def test_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mlip_md.HIPNN(**kwargs)


def test_float32_force_training_makes_no_subnormal_numbers():
    # Subnormal floats make CPU matrix products ~50x slower (Intel). The float32
    # sensitivity floor, 2^-60, keeps every gradient of a force-training step
    # (forces by autograd with create_graph, then the parameters' gradient) normal.
    model = make_model().float()
    atoms = random_cell() * (2, 2, 2)
    species, edge_index, vectors = graph_inputs(atoms, dtype=torch.float32)
    positions = torch.from_numpy(atoms.positions).float().requires_grad_(True)
    shifts = vectors - (positions.detach()[edge_index[1]] - positions.detach()[edge_index[0]])
    energy = model(species, edge_index, positions[edge_index[1]] - positions[edge_index[0]] + shifts).sum()
    (gradient,) = torch.autograd.grad(energy, positions, create_graph=True)
    loss = (gradient**2).sum()
    tiny = torch.finfo(torch.float32).tiny
    subnormal = []

    def count(grad_inputs, grad_outputs):
        for tensor in grad_inputs:
            if tensor is not None and tensor.is_floating_point():
                subnormal.append(int(((tensor != 0) & (tensor.abs() < tiny)).sum()))

    seen, nodes = set(), [loss.grad_fn]
    while nodes:
        node = nodes.pop()
        if node is not None and node not in seen:
            seen.add(node)
            node.register_hook(count)
            nodes += [next_node for next_node, _ in node.next_functions]
    loss.backward()
    assert len(subnormal) > 100 and sum(subnormal) == 0


def test_sensitivity_widths_take_relative_steps():
    """Widths are trained as logarithms: an Adam step (about the learning rate per parameter) changes
    each by a factor near e^±lr, so it cannot reach zero, where 1/σ² would overflow the exponent
    (trained directly, a width fell from 0.05 to 5e-7 Å⁻¹ and float32 energies became NaN)."""
    sensitivity = InverseSensitivity(8, 0.85, 4.8, 6.0)
    before = sensitivity.widths.detach().clone()
    optimizer = torch.optim.Adam(sensitivity.parameters(), lr=1e-3)
    r = torch.linspace(1.5, 5.5, 40)
    terms = torch.stack([r**-2, 1 / r, torch.ones_like(r), log_cutoff_envelope(r, 6.0)])
    for _ in range(100):  # always pushed towards narrower sensitivities
        optimizer.zero_grad()
        sensitivity(terms).sum().backward()
        optimizer.step()
    ratio = sensitivity.widths.detach() / before
    assert (ratio > math.exp(-0.15)).all() and (ratio < 1).all()
    assert torch.isfinite(sensitivity(terms)).all()
