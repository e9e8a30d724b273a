"""Rank policies: the greedy allocation, the measured target-speedup loop, the accuracy budget."""
import copy

import numpy as np
import pytest
import torch

import recon
from recon import data, methods
from recon.errors import ConfigError
from recon.metrics import accuracy
from recon.bench.placeholders import timing_model
from recon.pipeline.policies import RankProblem, TargetSpeedup, _greedy, _LayerOptions, _uniform
from tests.fixture_models import tiny, tiny_batches


def option(name, dense, errors, macs_per_rank):
    errors = None if errors is None else np.asarray(errors, float)
    size = 4 if errors is None else len(errors)
    return _LayerOptions(name, dense, errors, macs_per_rank * np.arange(1, size + 1))


def test_greedy_prefers_least_error_per_mac_and_reaches_goal():
    cheap = option("cheap", 100, [0.5, 0.1, 0.01, 0.0], 10)      # low error even at small rank
    costly = option("costly", 100, [0.9, 0.6, 0.3, 0.0], 10)
    ranks, predicted = _greedy([cheap, costly], 0, 1.5, {"cheap": None, "costly": None})
    assert predicted >= 1.5
    assert ranks["cheap"] is not None
    assert ranks["costly"] is None or ranks["costly"] >= ranks["cheap"]
    total = sum(o.dense_macs if ranks[o.name] is None else o.macs[ranks[o.name] - 1] for o in (cheap, costly))
    assert predicted == pytest.approx(200 / total)


def test_unreachable_goal_stops_at_smallest_ranks():
    only = option("a", 100, [0.5, 0.2], 40)
    ranks, predicted = _greedy([only], 100, 10, {"a": None})
    assert ranks == {"a": 1}
    assert predicted == pytest.approx(200 / 140)


def test_without_error_estimates_every_layer_gets_the_same_reduction():
    a, b = option("a", 100, None, 10), option("b", 200, None, 40)  # a: 10..40 MACs, b: 40..160
    ranks, predicted = _uniform([a, b], 0, 2.0, {})
    assert predicted >= 2.0
    factor_a = 100 / a.macs[ranks["a"] - 1]
    factor_b = 200 / b.macs[ranks["b"] - 1]
    assert min(factor_a, factor_b) >= 2.0 - 1e-9


def problem_for(model, layers, moments=None):
    method = methods.get("scheme2")
    shapes = {name: (3, 10, 10) if name == "features.0" else (8, 10, 10) for name in layers}
    return RankProblem(model, method, layers, {n: method.geometry(model.get_submodule(n)) for n in layers},
                       {n: model.get_submodule(n).weight.detach().double().numpy() for n in layers}, shapes, moments,
                       fit=None, report=lambda line: None)


def test_target_search_raises_the_goal_until_the_measured_speedup_clears_the_margin(monkeypatch):
    """Timing stubbed as 'time = the layer's MACs + a fixed cost that low-rank layers cannot remove'."""
    model = tiny()
    problem = problem_for(model, ["features.4"])
    geometry = problem.geometries["features.4"]
    dense_macs = geometry.dense_macs((10, 10))
    fixed = dense_macs // 2
    monkeypatch.setattr("recon.pipeline.policies.timing_model", lambda model, modules: dict(modules))

    def fake_latencies(models, inputs, repeats, channels_last):
        rank = models[1]["features.4"].rank if "features.4" in models[1] else None
        low = dense_macs if rank is None else methods.get("scheme2").macs(geometry, rank, (10, 10))
        return [dense_macs + fixed, low + fixed]

    monkeypatch.setattr("recon.pipeline.policies.median_latencies", fake_latencies)
    lines = []
    problem.report = lines.append
    policy = TargetSpeedup(1.4, torch.zeros(1, 3, 10, 10), margin=0.05)
    ranks = policy.choose(problem)
    measured = (dense_macs + fixed) / (methods.get("scheme2").macs(geometry, ranks["features.4"], (10, 10)) + fixed)
    assert measured >= 1.4 * 1.05
    assert len(lines) >= 2 and "predicted" in lines[0]  # the first MAC goal missed the measured target


@pytest.mark.parametrize("name, rank", [("scheme2", 3), ("scheme1", 2), ("cp", 4), ("tucker2", 3)])
def test_quick_fits_are_modules_of_the_rank_close_to_the_layer(name, rank):
    model = tiny()
    method = methods.get(name)
    layer = model.features[4]
    weights = layer.weight.detach().double().numpy()
    module = method.build(method.geometry(layer), method.quick_fit(weights, rank), None)
    timed = timing_model(model, {"features.4": module})
    assert timed.features[4] is module and isinstance(model.features[4], torch.nn.Conv2d)
    assert timed(torch.zeros(2, 3, 10, 10)).shape == (2, 2)
    lost = float(((module.dense_weight().double() - layer.weight.double()) ** 2).sum() / (layer.weight ** 2).sum())
    assert lost < 1.0  # better than nothing: activations like the dense layer's


def test_policy_arguments_are_checked_at_once():
    with pytest.raises(ConfigError, match="target speedup must be a number > 1, got -2"):
        TargetSpeedup(-2, torch.zeros(1, 3, 10, 10))
    with pytest.raises(ConfigError, match="needs an example input tensor"):
        TargetSpeedup(2, None)
    with pytest.raises(ConfigError, match="between 0 and 100 points"):
        recon.AccuracyBudget(0, lambda model: 1.0)


def test_target_speedup_end_to_end_fits_chosen_ranks():
    example = torch.randn(4, 3, 10, 10)
    result = recon.compress(tiny(), tiny_batches, ranks=TargetSpeedup(1.3, example), progress=False)
    assert set(result.layers) <= {"features.0", "features.2", "features.4"}
    assert result.outcome is not None and result.outcome.target == 1.3
    assert result.outcome.met == (result.outcome.measured >= 1.3)


def test_accuracy_budget_returns_ranks_within_budget_and_smaller_ranks_exceed_it(model):
    validation = data.loader("validation", batch_size=500, limit=1000)
    dense = accuracy(model, validation)
    budget = recon.AccuracyBudget(1.0, lambda candidate: accuracy(candidate, validation))
    result = recon.compress(model, layers="conv3", ranks=budget, mode="filter", input_size=(1, 28, 28),
                            progress=False)
    found = result.layers["conv3"].rank

    def drop(rank):
        approx = copy.deepcopy(model)
        recon.surgery.replace_layer(approx, "conv3", recon.decompose(model.conv3, rank))
        return dense - accuracy(approx, validation)

    assert drop(found) <= 0.01
    assert found == 1 or drop(found - 1) > 0.01 or drop(max(1, found // 2)) > 0.01
