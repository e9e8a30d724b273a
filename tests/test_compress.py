"""recon.compress from Python: what it returns, what it leaves alone, how it reads the data."""
import copy
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import recon
from recon.record import GuardDecision
from recon.errors import ConfigError, DataError
from recon.io.bases_file import read_bases
from tests.fixture_models import tiny, tiny_batches


def loader():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(24, 3, 10, 10, generator=generator)
    return DataLoader(TensorDataset(images, torch.zeros(24, dtype=torch.long)), batch_size=8)


def test_compress_returns_a_model_records_and_a_file_that_loads(tmp_path):
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    result = recon.compress(model, loader(), ranks=2, progress=False)
    assert set(result.layers) == {"features.0", "features.2", "features.4"}
    assert all(record.mode == "data" and record.rank == 2 for record in result.layers.values())
    assert set(result.skipped) == {"head"}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    path = result.save(tmp_path / "b.h5")
    fresh = recon.apply_bases(tiny(), path)
    x = torch.randn(3, 3, 10, 10)
    torch.testing.assert_close(fresh(x), result.model(x))
    assert "features.0" in result.table() and "output var. lost" in result.table()
    config = read_bases(path).layers["features.0"].config
    assert config["method"] == "scheme2" and config["ranks"] == {"policy": "fixed", "ranks": {"all": 2}}


def test_statistics_take_one_pass_over_the_data():
    model = tiny()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))  # copied with the model
    recon.compress(model, loader(), ranks=2, progress=False)
    # one sample to read the input shapes, then each of the three batches once
    assert calls == [1, 8, 8, 8]


def test_layers_by_pattern_function_and_dict():
    model = tiny()
    by_pattern = recon.compress(model, layers=re.compile(r"features\.4"), ranks=2, progress=False)
    by_function = recon.compress(model, layers=lambda module, name: module.out_channels == 6, ranks=2, progress=False)
    by_dict = recon.compress(model, ranks={"features.4": 3}, progress=False)
    assert list(by_pattern.layers) == list(by_function.layers) == list(by_dict.layers) == ["features.4"]
    assert by_dict.layers["features.4"].rank == 3


def test_asymmetric_mode_fits_each_layer_to_the_approximated_inputs():
    model = tiny()
    result = recon.compress(model, tiny_batches, ranks=2, mode="asymmetric", patches_per_image=None, progress=False)
    record = result.layers["features.4"]
    # recompute the asymmetric output error from explicit activations of both models
    inputs = torch.cat(tiny_batches())
    with torch.no_grad():
        dense_in = model.features[3](model.features[2](model.features[1](model.features[0](inputs))))
        approx_in = result.model.features[3](result.model.features[2](result.model.features[1](
            result.model.features[0](inputs))))
        target = model.features[4](dense_in)
        got = result.model.features[4](approx_in)
    lost = float(((got - target) ** 2).sum() / ((target - target.mean((0, 2, 3), keepdim=True)) ** 2).sum())
    assert record.output_variance_lost == pytest.approx(lost, rel=1e-3)


def test_the_guard_keeps_dense_what_is_not_faster(monkeypatch, tmp_path):
    verdict = {"features.0": True, "features.2": True, "features.4": False}
    monkeypatch.setattr("recon.pipeline.compress.time_replacement",
                        lambda dense, low, inputs, name, min_speedup, channels_last: GuardDecision(
                            name, 1.0, 0.5 if verdict[name] else 2.0, verdict[name]))
    model = tiny()
    result = recon.compress(model, ranks=2, guard=True, example_input=torch.zeros(1, 3, 10, 10), progress=False)
    assert isinstance(result.model.features[4], nn.Conv2d) and not result.layers["features.4"].kept
    assert isinstance(result.model.features[0], recon.LowRankModule)
    assert "dense kept" in result.table()
    assert set(read_bases(result.save(tmp_path / "g.h5")).layers) == {"features.0", "features.2"}
    verdict["features.0"] = verdict["features.2"] = False
    nothing = recon.compress(model, ranks=2, guard=True, example_input=torch.zeros(1, 3, 10, 10), progress=False)
    with pytest.raises(recon.ConfigError, match="nothing to save: no layer was replaced"):
        nothing.save(tmp_path / "none.h5")
    assert not (tmp_path / "none.h5").exists()


def test_filter_mode_without_data_reports_macs_for_the_given_input_size():
    result = recon.compress(tiny(), ranks=2, example_input=torch.zeros(1, 3, 32, 32), progress=False)
    record = result.layers["features.0"]
    assert record.input_shape == (3, 32, 32)
    assert record.dense_macs == 8 * 3 * 9 * 32 * 32
    unknown = recon.compress(tiny(), ranks=2, progress=False)
    assert unknown.layers["features.0"].input_shape is None and "input shapes are unknown" in unknown.table()


def test_bad_arguments_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="give ranks"):
        recon.compress(tiny())
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module"):
        recon.compress("resnet", ranks=2)
    for mode in ("data", "asymmetric"):
        with pytest.raises(ConfigError, match=f"mode='{mode}' is data reconstruction, which needs data"):
            recon.compress(tiny(), ranks=2, mode=mode)
    with pytest.raises(ConfigError, match="unknown method 'svd2'"):
        recon.compress(tiny(), ranks=2, method="svd2")
    with pytest.raises(DataError, match="one-shot generator"):
        recon.compress(tiny(), (x for x in tiny_batches()), ranks=2)


def test_nan_weights_name_the_layer():
    model = tiny()
    with torch.no_grad():
        model.features[4].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(recon.LayerError, match="layer 'features.4': its weights contain NaN"):
        recon.compress(model, ranks=2, progress=False)


def test_a_cuda_model_stays_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here (the GPU run is recorded in benchmarks/RESULTS.md when one is lent)")
    model = tiny().cuda()
    result = recon.compress(model, tiny_batches, ranks=2, progress=False)
    assert next(result.model.parameters()).is_cuda
    x = torch.randn(2, 3, 10, 10, device="cuda")
    np.testing.assert_allclose(result.model(x).cpu().detach(), result.model.cpu()(x.cpu()).detach(), atol=1e-4)


def test_asymmetric_statistics_of_a_grouped_layer_match_its_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=4))
    batches = [torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    result = recon.compress(model, batches, ranks={"0": 2, "2": 2}, mode="asymmetric", patches_per_image=None,
                            progress=False)
    inputs = torch.cat(batches)
    with torch.no_grad():
        target = model(inputs)
        got = result.model(inputs)
    lost = float(((got - target) ** 2).sum() / ((target - target.mean((0, 2, 3), keepdim=True)) ** 2).sum())
    assert result.layers["2"].output_variance_lost == pytest.approx(lost, rel=1e-3)
