"""Output sensitivities against cases with a known answer."""
import pytest
import torch
from torch import nn

from recon.pipeline.prediction import output_sensitivities


class Scaled(nn.Module):
    """first -> second, then the second's output times ``gains`` per channel."""

    def __init__(self, gains: torch.Tensor) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(6, 6), nn.Linear(6, 4)
        self.register_buffer("gains", gains)

    def forward(self, x):
        return self.second(self.first(x)) * self.gains


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Linear(6, 6)

    def forward(self, x):
        return x + self.branch(x)


def scaled_copy(layer: nn.Linear, factor: float) -> nn.Linear:
    """``layer`` with its weights scaled: a probe whose output error is known."""
    probe = nn.Linear(layer.in_features, layer.out_features, bias=False)
    with torch.no_grad():
        probe.weight.copy_(factor * layer.weight)
    return probe


def test_an_error_at_the_last_layer_costs_its_own_size():
    model = Scaled(torch.ones(4)).eval()
    with torch.no_grad():
        model.second.bias.zero_()
    sensitivity = output_sensitivities(model, {"second": scaled_copy(model.second, 0.9)}, torch.randn(500, 6))
    assert sensitivity["second"] == pytest.approx(1.0, rel=1e-6)


def test_a_residual_branch_is_diluted_by_its_shortcut():
    model = Residual().eval()
    with torch.no_grad():
        model.branch.weight.copy_(torch.eye(6))  # output 2x: an error of the branch is a quarter of the output's
        model.branch.bias.zero_()
    sensitivity = output_sensitivities(model, {"branch": scaled_copy(model.branch, 0.8)}, torch.randn(500, 6))
    assert sensitivity["branch"] == pytest.approx(0.25, rel=1e-6)


def test_errors_in_directions_the_output_ignores_cost_nothing():
    model = Scaled(torch.tensor([1.0, 1.0, 0.0, 0.0])).eval()
    with torch.no_grad():
        model.second.weight.copy_(torch.eye(4, 6))
        model.second.bias.zero_()
    ignored = scaled_copy(model.second, 1.0)
    with torch.no_grad():
        ignored.weight[:2] = model.second.weight[:2]
        ignored.weight[2:] = 0  # the error lies in the channels the output multiplies by 0
    assert output_sensitivities(model, {"second": ignored}, torch.randn(500, 6))["second"] == 0.0


def test_sensitivities_leave_the_model_unchanged():
    model = Scaled(torch.ones(4)).eval()
    x = torch.randn(64, 6)
    before = model(x)
    output_sensitivities(model, {"first": scaled_copy(model.first, 0.5)}, x)
    torch.testing.assert_close(model(x), before)
