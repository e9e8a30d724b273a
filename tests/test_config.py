"""CompressConfig and Timing: checked settings, stored and replayed; the older call forms."""
import json

import pytest
import torch

import recon
from recon import methods
from recon.errors import ConfigError
from recon.pipeline.config import CONFIG_VERSION
from tests.fixture_models import tiny, tiny_batches


def test_a_config_survives_its_dict_and_json():
    config = recon.CompressConfig(method=[methods.Scheme2(lbfgs_iterations=50), "tucker2"],
                                  ranks=recon.TargetSpeedup(2.5, max_output_change=0.2),
                                  mode="asymmetric", guard=True, samples=100, patches_per_image=None,
                                  solver=recon.SolverOptions(ridge=(1e-3, 1e-2)),
                                  timing=recon.Timing(16, True, repeats=7), fold_batchnorm=True)
    stored = json.loads(json.dumps(config.to_dict()))
    again = recon.CompressConfig.from_dict(stored)
    assert stored["version"] == CONFIG_VERSION and again.to_dict() == config.to_dict()
    assert again.timing == recon.Timing(16, True, repeats=7)
    assert again.method == (methods.Scheme2(lbfgs_iterations=50), methods.get("tucker2"))
    assert again.method[0] != methods.get("scheme2")  # the setting made it through
    assert isinstance(again.ranks, recon.TargetSpeedup) and again.ranks.max_output_change == 0.2
    assert again.solver == config.solver


@pytest.mark.slow
def test_a_bases_file_replays_its_settings(tmp_path):
    made = recon.compress(tiny(), tiny_batches, ranks={"features.0": 2, "features.4": 3}, mode="asymmetric",
                          patches_per_image=None, solver=recon.SolverOptions(lbfgs_iterations=30), progress=False)
    path = made.save(tmp_path / "made.h5")
    config = recon.CompressConfig.from_bases(path)
    assert config.mode == "asymmetric" and config.ranks.ranks == {"features.0": 2, "features.4": 3}
    again = recon.compress(tiny(), tiny_batches, config=config, progress=False)
    for name, record in made.layers.items():  # the same settings on the same data make the same factors
        for key, value in record.module.state_dict().items():
            torch.testing.assert_close(again.layers[name].module.state_dict()[key], value)
    changed = recon.CompressConfig.from_bases(path, ranks=1)
    assert changed.ranks.ranks == 1 and changed.mode == "asymmetric"


def test_a_config_of_a_newer_version_or_of_an_unstorable_policy_is_refused():
    stored = recon.CompressConfig(ranks=2).to_dict()
    with pytest.raises(ConfigError, match=f"version {CONFIG_VERSION + 1}, newer than this recon reads"):
        recon.CompressConfig.from_dict({**stored, "version": CONFIG_VERSION + 1})
    budget = recon.CompressConfig(ranks=recon.AccuracyBudget(0.5, lambda model: 1.0)).to_dict()
    with pytest.raises(ConfigError, match="metric function is not stored: pass ranks="):
        recon.CompressConfig.from_dict(budget)
    assert recon.CompressConfig.from_dict(budget, ranks=3).ranks.ranks == 3
    with pytest.raises(ConfigError, match="lacks the setting 'guard'"):
        recon.CompressConfig.from_dict({k: v for k, v in stored.items() if k != "guard"})


def test_a_version_1_config_reads_as_version_2(tmp_path):
    """The dict that bases files written before the version field hold."""
    old = {"method": "scheme2", "mode": "data", "asymmetric": True,
           "ranks": {"policy": "target_speedup", "factor": 2.0, "batch": 8, "input_shape": [3, 10, 10],
                     "channels_last": True, "margin": 0.03, "repeats": 20, "max_layer_loss": 0.3,
                     "max_output_change": 0.1, "backend": "torch", "allocation": "latency tables, Lagrangian"},
           "samples": None, "patches_per_image": 32, "guard": False, "min_speedup": 1.05, "channels_last": True,
           "timing_batch": 32, "max_output_loss": 0.3, "dense_when_lossy": False,
           "solver": recon.SolverOptions().to_dict(), "fold_batchnorm": False}
    config = recon.CompressConfig.from_dict(old)
    assert config.mode == "asymmetric" and config.timing == recon.Timing(8, True, repeats=20)
    assert config.ranks.factor == 2.0


@pytest.mark.parametrize("settings, message", [
    ({"mode": "filter", "method": "cp", "guard": "yes"}, "guard must be True or False"),
    ({"mode": "data", "method": "cp"}, "method cp reconstructs weights only"),
    ({"samples": 0}, "samples must be a whole number >= 1 or None"),
    ({"min_speedup": float("inf")}, "min_speedup must be a positive number"),
    ({"ranks": 2.5}, "ranks must be an int, a dict, or a rank policy, got float"),
    ({"method": "svd2"}, "unknown method 'svd2'"),
])
def test_a_config_checks_itself_when_made(settings, message):
    with pytest.raises(ConfigError, match=message):
        recon.CompressConfig(**settings)


def test_the_older_call_forms_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="compress\\(asymmetric=, channels_last=, timing_batch="):
        result = recon.compress(tiny(), tiny_batches, ranks=2, asymmetric=True, channels_last=True, timing_batch=8,
                                guard=True, progress=False)
    assert result.config.mode == "asymmetric" and result.config.timing == recon.Timing(8, True)
    assert all(record.guard is not None for record in result.layers.values())
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigError, match="input_size is the shape of one sample"):
        recon.compress(tiny(), ranks=2, input_size=(3, 0, 10))
    with pytest.warns(DeprecationWarning, match="TargetSpeedup\\(factor, example_input"):
        policy = recon.TargetSpeedup(1.2, torch.randn(4, 3, 10, 10), channels_last=True, repeats=3, cache=False)
    result = recon.compress(tiny(), tiny_batches, ranks=policy, guard=True, progress=False)
    assert result.config.timing == recon.Timing(4, True, repeats=3)  # the guard timed as the policy did
    assert "batch 4, channels_last" in result.outcome.description
    with pytest.raises(ConfigError, match="TargetSpeedup's batch=4 and the timing's batch=8 disagree"):
        recon.compress(tiny(), tiny_batches, ranks=policy, timing=recon.Timing(8), progress=False)


def test_the_example_input_is_what_every_timing_runs_on(monkeypatch):
    """One example, cut or cycled to the timing batch, feeds the guard and the policy alike."""
    seen = []
    real = recon.pipeline.compress.capture_layer_inputs

    def capture(model, layers, batch):
        seen.append(tuple(batch.shape))
        return real(model, layers, batch)

    monkeypatch.setattr("recon.pipeline.compress.capture_layer_inputs", capture)
    example = torch.randn(3, 3, 10, 10)
    result = recon.compress(tiny(), tiny_batches, ranks=recon.TargetSpeedup(1.2, cache=False), guard=True,
                            example_input=example, timing=recon.Timing(7, repeats=2), progress=False)
    assert seen == [(7, 3, 10, 10)]  # the layer inputs are captured once, for the policy and the guard
    assert "batch 7" in result.outcome.description
    assert all(record.input_shape is not None for record in result.layers.values())


def test_method_settings_in_solver_options_still_work_and_move_onto_the_methods():
    with pytest.warns(DeprecationWarning, match="SolverOptions\\(lbfgs_iterations=, cp_iterations="):
        solver = recon.SolverOptions(lbfgs_iterations=30, cp_iterations=5, seed=3)
    config = recon.CompressConfig(method=["scheme2", "cp"], solver=solver)
    assert config.method == (methods.Scheme2(lbfgs_iterations=30), methods.CP(iterations=5, seed=3))
    assert config.solver == recon.SolverOptions(seed=3)
    stored = config.to_dict()
    assert stored["method_settings"] == {"scheme2": {"lbfgs_iterations": 30}, "cp": {"iterations": 5, "seed": 3}}
    assert recon.CompressConfig.from_dict(stored).method == config.method


@pytest.mark.parametrize("make, message", [
    (lambda: methods.Scheme2(lbfgs_iterations=0), "lbfgs_iterations must be a whole number in 1"),
    (lambda: methods.CP(seed=-1), "seed must be a whole number in 0"),
    (lambda: methods.Scheme1(schedule=3), "schedule must be a solvers.schedule.LambdaSchedule"),
    (lambda: methods.get("svd").replaced(rank=3), "method svd has no setting rank; its settings: none"),
])
def test_method_settings_are_checked_when_made(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
