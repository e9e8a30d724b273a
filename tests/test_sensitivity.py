"""Output sensitivities against cases with a known answer."""
import pytest
import torch
from torch import nn

from recon.pipeline.sensitivity import output_sensitivities


class Scaled(nn.Module):
    """first -> second, then the second's output times ``gains`` per channel."""

    def __init__(self, gains: torch.Tensor) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(6, 6), nn.Linear(6, 4)
        self.register_buffer("gains", gains)

    def forward(self, x):
        return self.second(self.first(x)) * self.gains


def test_noise_at_the_last_layer_costs_its_own_relative_variance():
    model = Scaled(torch.ones(4)).eval()
    sensitivity = output_sensitivities(model, ["second"], torch.randn(4000, 6))["second"]
    assert sensitivity == pytest.approx(1.0, rel=0.1)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Linear(6, 6)

    def forward(self, x):
        return x + self.branch(x)


def test_a_residual_branch_is_diluted_by_its_shortcut_and_ignored_channels_do_not_count():
    model = Residual().eval()
    with torch.no_grad():
        model.branch.weight.copy_(torch.eye(6))  # output 2x: noise of variance e on a branch of variance 1
    x = torch.randn(4000, 6)
    assert output_sensitivities(model, ["branch"], x)["branch"] == pytest.approx(0.25, rel=0.1)
    gated = Scaled(torch.tensor([1.0, 1.0, 0.0, 0.0])).eval()
    with torch.no_grad():
        gated.first.weight.copy_(torch.eye(6))
        gated.second.weight.copy_(torch.eye(4, 6))
    # the noise of the two channels the output ignores never arrives, nor does their variance: the cost stays 1
    assert output_sensitivities(gated, ["second"], x)["second"] == pytest.approx(1.0, rel=0.1)


def test_sensitivities_leave_the_model_unchanged_and_are_seeded():
    model = Scaled(torch.ones(4)).eval()
    x = torch.randn(64, 6)
    before = model(x)
    first = output_sensitivities(model, ["first", "second"], x)
    assert first == output_sensitivities(model, ["first", "second"], x)
    torch.testing.assert_close(model(x), before)
