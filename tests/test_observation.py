"""Observations: statistics gathered once (recon.observe, or recon.observing around the user's
own loop) and given to compress in place of the data."""
import dataclasses

import pytest
import torch

import recon
from recon.errors import ConfigError
from tests.fixture_models import tiny, tiny_batches

LAYERS = ["features.0", "features.2", "features.4"]


def _factors(result):
    return {name: record.module.state_dict() for name, record in result.layers.items()}


def test_an_observation_fits_what_the_data_fits():
    model = tiny()
    observation = recon.observe(model, tiny_batches, LAYERS, patches_per_image=None, progress=False)
    from_data = recon.compress(model, tiny_batches, ranks=2, patches_per_image=None, progress=False)
    observed = recon.compress(model, observation, ranks=2, progress=False)
    assert observed.config.mode == "data"
    for name, state in _factors(from_data).items():
        for key, value in state.items():
            torch.testing.assert_close(_factors(observed)[name][key], value)


def test_observing_the_users_own_loop_gives_the_moments_of_observe():
    model = tiny()
    with recon.observing(model, LAYERS) as observation:
        with torch.no_grad():
            for batch in tiny_batches():
                model(batch)
    reference = recon.observe(model, tiny_batches, LAYERS, progress=False)
    for name in LAYERS:
        torch.testing.assert_close(torch.as_tensor(observation[name].covariance()),
                                   torch.as_tensor(reference[name].covariance()))
    assert torch.equal(observation.example, tiny_batches()[0])
    result = recon.compress(model, observation, ranks=recon.TargetSpeedup(1.05, cache=False),
                            timing=recon.Timing(4, repeats=2), progress=False)
    assert result.outcome is not None  # the observation's sample measured the sensitivities


def test_observing_keyword_calls_keeps_them_as_the_example():
    class Keyword(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, pixel_values):
            return self.conv(pixel_values)

    model = Keyword()
    with recon.observing(model) as observation:
        for batch in tiny_batches():
            model(pixel_values=batch)
    assert isinstance(observation.example, recon.Inputs) and set(observation.example.kwargs) == {"pixel_values"}
    result = recon.compress(model, observation, ranks=9, guard=True, min_speedup=1e-3, progress=False)
    x = tiny_batches()[0]
    torch.testing.assert_close(result.model(pixel_values=x), model(pixel_values=x), atol=1e-4, rtol=1e-4)


def test_an_observation_of_another_model_other_layers_or_device_is_refused():
    model = tiny()
    observation = recon.observe(model, tiny_batches, ["features.0"], progress=False)
    with pytest.raises(ConfigError, match="made on another model"):
        recon.compress(_changed(), observation, layers=["features.0"], ranks=2, progress=False)
    with pytest.raises(ConfigError, match="no statistics of layer\\(s\\) features.2"):
        recon.compress(model, observation, layers=["features.0", "features.2"], ranks=2, progress=False)
    elsewhere = dataclasses.replace(observation, device=torch.device("meta"))
    with pytest.raises(ConfigError, match="made on meta and compress works on cpu"):
        recon.compress(model, elsewhere, layers=["features.0"], ranks=2, progress=False)
    with pytest.raises(ConfigError, match="asymmetric mode runs the data .* an observation cannot"):
        recon.compress(model, observation, layers=["features.0"], ranks=2, mode="asymmetric", progress=False)


def _changed():
    other = tiny()
    with torch.no_grad():
        other.features[0].weight.add_(1.0)
    return other


def test_a_forward_loop_stands_in_for_the_data_in_asymmetric_mode():
    """The user's loop (their batch format: dicts moved by their own code) feeds asymmetric
    fitting; the result equals asymmetric fitting on the same batches given as data."""
    model = tiny()

    def loop(net):
        for batch in tiny_batches():
            net(batch.clone())

    from_loop = recon.compress(model, forward_loop=loop, ranks=2, mode="asymmetric", patches_per_image=None,
                               progress=False)
    from_data = recon.compress(model, tiny_batches, ranks=2, mode="asymmetric", patches_per_image=None,
                               progress=False)
    for name, state in _factors(from_data).items():
        for key, value in state.items():
            torch.testing.assert_close(_factors(from_loop)[name][key], value)
    with pytest.raises(ConfigError, match="give data \\(or an observation\\) or forward_loop, not both"):
        recon.compress(model, tiny_batches, forward_loop=loop, ranks=2, progress=False)
    with pytest.raises(recon.DataError, match="forward_loop never called the model"):
        recon.compress(model, forward_loop=lambda net: None, ranks=2, mode="asymmetric", progress=False)
