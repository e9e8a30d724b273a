"""Output sensitivities against cases with a known answer."""
import copy

import pytest
import torch
from torch import nn

from recon.pipeline.outputs import relative_change
from recon.pipeline.prediction import output_sensitivities
from recon.surgery import replace_layer
from recon.zoo.models import ResNet


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


class InPlace(nn.Module):
    """A block of two layers that changes its input in place: probing one of them must not
    change what the other's probe starts from."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.conv(x.mul_(0.5)))


def _residual_model() -> nn.Module:
    torch.manual_seed(0)
    model = ResNet(3, 4, 2, shortcut="pad")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _probe(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of ``conv`` with noisy weights: an error of known kind at that layer."""
    probe = copy.deepcopy(conv)
    with torch.no_grad():
        probe.weight.add_(0.3 * probe.weight.std() * torch.randn_like(probe.weight))
    return probe


def _one_at_a_time(model: nn.Module, probes: dict[str, nn.Module], sample: torch.Tensor) -> dict[str, float]:
    """Independent truth: a copy of the model with one layer swapped for its probe, run whole."""
    with torch.no_grad():
        reference = model(sample).double()
        truth = {}
        for name, probe in probes.items():
            changed = copy.deepcopy(model)
            replace_layer(changed, name, probe)
            layer_in = {}

            def keep(module, args, output):
                layer_in.setdefault("args", args)

            hook = changed.get_submodule(name).register_forward_hook(keep)
            out = changed(sample).double()
            hook.remove()
            dense_out = model.get_submodule(name)(*layer_in["args"]).double()
            layer_change = relative_change(probe(*layer_in["args"]).double(), dense_out)
            truth[name] = float(relative_change(out, reference) / layer_change)
        return truth


def test_residual_sensitivities_match_whole_runs_and_share_the_front_of_the_network():
    model = _residual_model()
    names = ["conv1", "layer1.0.conv1", "layer1.1.conv2", "layer2.0.conv1", "layer3.1.conv2", "layer3.0.conv2"]
    probes = {name: _probe(model.get_submodule(name)) for name in names}
    sample = torch.randn(48, 3, 16, 16)
    stem_calls = []
    hook = model.conv1.register_forward_hook(lambda *args: stem_calls.append(1))
    sensitivities = output_sensitivities(model, probes, sample)
    hook.remove()
    assert list(sensitivities) == names
    truth = _one_at_a_time(model, probes, sample)
    for name in names:
        assert sensitivities[name] == pytest.approx(truth[name], rel=1e-5)
    assert len(stem_calls) == 3  # the reference, the stem's own probe, the walk into layer1: not once per probe


def test_a_block_that_changes_its_input_in_place_gets_fresh_inputs_for_each_probe():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), InPlace(), nn.Flatten()).eval()
    probes = {name: _probe(model.get_submodule(name)) for name in ("0", "1.conv", "1.conv2")}
    sample = torch.randn(32, 3, 8, 8)
    sensitivities = output_sensitivities(model, probes, sample)
    for name, value in _one_at_a_time(model, probes, sample).items():
        assert sensitivities[name] == pytest.approx(value, rel=1e-5)


def test_a_layer_also_called_outside_its_block_is_probed_on_whole_runs():
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(6, 6)

        def forward(self, x):
            return torch.relu(self.linear(x))

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.head = Inner(), nn.Linear(6, 3)

        def forward(self, x):
            return self.head(self.inner.linear(x) + self.inner(x))

    torch.manual_seed(0)
    model = Shared().eval()
    probes = {"inner.linear": scaled_copy(model.inner.linear, 0.7), "head": scaled_copy(model.head, 0.9)}
    sample = torch.randn(200, 6)
    sensitivities = output_sensitivities(model, probes, sample)
    for name, value in _one_at_a_time(model, probes, sample).items():
        assert sensitivities[name] == pytest.approx(value, rel=1e-5)
