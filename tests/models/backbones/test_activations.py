"""Activations by name, and a step function that gradient descent can train through."""

from typing import get_args

import pytest
import torch
import torch.nn.functional as F

from models.backbones import ACTIVATIONS, MLP
from models.backbones.activations import Activation, make_activation

X = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])


def test_literal_and_registry_name_the_same_activations() -> None:
    assert set(get_args(Activation)) == set(ACTIVATIONS)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("step", torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])),
        ("sigmoid", torch.sigmoid(X)),
        ("tanh", torch.tanh(X)),
        ("relu", F.relu(X)),
        ("gelu", F.gelu(X)),
    ],
)
def test_activation_values(name: str, expected: torch.Tensor) -> None:
    assert torch.equal(make_activation(name)(X), expected)


def test_step_has_a_straight_through_gradient_inside_the_unit_interval() -> None:
    x = torch.tensor([-3.0, -1.5, -0.9, -0.2, 0.0, 0.4, 0.99, 1.2, 5.0], requires_grad=True)
    make_activation("step")(x).sum().backward()
    assert torch.equal(x.grad, (x.abs() < 1).float())


def test_unknown_activation_names_the_choices() -> None:
    with pytest.raises(ValueError, match="'swish'; choose one of step, sigmoid, tanh, relu, gelu"):
        make_activation("swish")


def test_step_unit_learns_a_linearly_separable_problem() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 2)
    y = (x @ torch.tensor([1.0, -2.0]) + 0.3 > 0).float()
    unit = MLP(depth=1, width=1, activation="step")  # a perceptron: its 0/1 output is the prediction
    unit(x)  # materialise the lazy layer
    linear = unit.layers[1]
    # Start from the mirror image of a solution: every point is wrong, and only a gradient
    # flowing through the step can turn the unit around.
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[-1.0, 2.0]]))
        linear.bias.fill_(-0.3)
    assert (unit(x).squeeze(1) == y).float().mean() < 0.05
    opt = torch.optim.SGD(unit.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        F.mse_loss(unit(x).squeeze(1), y).backward()
        opt.step()
    assert (unit(x).squeeze(1) == y).float().mean() > 0.9
