"""Hostile input to the Python API (issue 22, POOR cases): bad models, data, layers and entry
point arguments get a recon error that says what is wrong, before slow work; models with
tuple or dict outputs and a model trained after ``compress`` work end to end."""
import logging
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import recon
from recon.cli.common import enable_compilation_cache
from recon.errors import ConfigError, DataError, LayerError
from recon.io.bases_file import read_bases
from recon.pipeline import batches as batches_module
from recon.pipeline.batches import Batches
from recon.pipeline.finetune import finetune
from recon.pipeline.outputs import model_output
from recon.pipeline.prediction import output_change, output_sensitivities
from tests.fixture_models import tiny, tiny_batches


def _compress(model, data, **options):
    return recon.compress(model, data, ranks=2, progress=False, **options)


@pytest.mark.parametrize("data, message", [
    ([torch.zeros(0, 3, 10, 10)], "holds no samples"),
    ([torch.zeros(4, 3, 10, 10, device="meta")], "meta device"),
    (lambda: 42, "the data factory returned a int"),
])
def test_bad_batches_are_named(data, message):
    with pytest.raises(DataError, match=message):
        _compress(tiny(), data)


def test_a_source_without_len_is_capped_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(batches_module, "UNSIZED_SAMPLES", 10)

    def endless():
        while True:
            yield torch.randn(4, 3, 10, 10)

    batches = Batches(endless)
    with caplog.at_level(logging.WARNING, logger="recon"):
        assert [len(x) for x in batches] == [4, 4, 2]
        assert sum(len(x) for x in batches) == 10
    assert sum("no len()" in record.getMessage() for record in caplog.records) == 1
    sized = [torch.randn(4, 3, 10, 10) for _ in range(5)]
    assert sum(len(x) for x in Batches(sized)) == 20  # a source with len() is read whole


@pytest.mark.parametrize("layers, message", [(["nosuch"], "has no layer 'nosuch'"), (["features.1"], "is a ReLU")])
def test_observe_names_a_layer_it_cannot_observe(layers, message):
    with pytest.raises(LayerError, match=message):
        recon.observe(tiny(), tiny_batches(), layers, progress=False)


def _pruned():
    model = tiny()
    prune.l1_unstructured(model.features[0], "weight", 0.3)
    return model


@pytest.mark.parametrize("make, message", [
    (_pruned, r"prune.remove\(module, 'weight'\)"),
    (lambda: torch.jit.script(tiny()), "TorchScript"),
    (lambda: tiny().to("meta"), "meta device"),
    (lambda: nn.Sequential(nn.ReLU()), "has no parameters"),
])
def test_models_recon_cannot_work_on_are_refused_with_what_to_do(make, message):
    model = make()
    with pytest.raises(ConfigError, match=message):
        _compress(model, tiny_batches())
    with pytest.raises(ConfigError, match=message):
        recon.observe(model, tiny_batches(), progress=False)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, a, b):
        return self.conv(a) + self.conv(b)


def test_a_tuple_batch_for_a_forward_of_several_inputs_says_to_use_dict_batches():
    pair = (torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8))  # a tuple is (inputs, labels, ...)
    with pytest.raises(DataError, match="cannot be called on the first data sample .* dict batches, each key naming"):
        _compress(TwoInputs(), [pair])


class Aliased(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.again = self.conv
        self.mix = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.again(self.mix(self.conv(x)))


def test_a_module_registered_under_two_names_is_not_replaced():
    data = [torch.randn(4, 3, 8, 8)]
    result = _compress(Aliased(), data)
    assert "registered as conv, again" in result.skipped["conv"]
    assert list(result.layers) == ["mix"]
    assert isinstance(result.model.conv, nn.Conv2d) and result.model.again is result.model.conv
    for name in ("conv", "again"):
        with pytest.raises(LayerError, match="registered as conv, again"):
            _compress(Aliased(), data, layers=[name])


class TupleOutput(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.second(torch.relu(self.first(x)))
        return y.mean((2, 3)), {"map": y, "count": torch.ones(len(x), dtype=torch.long)}


def test_a_tuple_or_dict_output_counts_every_floating_tensor():
    output = (torch.randn(4, 2), {"map": torch.randn(4, 3, 5), "ids": torch.arange(4)})
    flat = model_output(output)
    assert torch.equal(flat, torch.cat([output[0], output[1]["map"].reshape(4, 15)], dim=1))
    with pytest.raises(DataError, match="recon compares outputs"):
        model_output({"ids": torch.arange(4)})


@pytest.mark.slow
def test_models_with_tuple_outputs_go_through_sensitivities_and_calibration():
    data = [torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    model = TupleOutput()
    result = _compress(model, data)
    probes = {name: result.model.get_submodule(name) for name in ("first", "second")}
    sensitivities = output_sensitivities(model, probes, data[0])
    assert all(math.isfinite(s) and s > 0 for s in sensitivities.values())
    change = output_change(model, result.model, data[0])
    expected = model_output(model(data[0])), model_output(result.model(data[0]))
    centred = expected[0] - expected[0].mean(0)
    assert change == pytest.approx(float(((expected[1] - expected[0]) ** 2).sum() / (centred ** 2).sum()), rel=1e-4)
    report = result.calibrate(data, samples=32, epochs=1, progress=False)
    assert report.after[0] <= report.before[0]


@pytest.fixture(scope="module")
def compressed():
    return _compress(tiny(), tiny_batches())


def _changed():
    model = tiny()
    with torch.no_grad():
        model.head.bias.add_(1.0)
    return model


@pytest.mark.parametrize("dense", [lambda: nn.Sequential(nn.Conv2d(3, 3, 1)), _changed])
def test_a_dense_model_other_than_the_one_compressed_is_refused(compressed, dense):
    with pytest.raises(ConfigError, match="not the model given to compress"):
        compressed.reference(dense())
    with pytest.raises(ConfigError, match="not the model given to compress"), pytest.warns(DeprecationWarning):
        compressed.calibrate(dense(), tiny_batches(), samples=8, epochs=1, progress=False)


def test_calibrate_refuses_a_second_positional_argument_that_follows_no_dense_model(compressed):
    with pytest.raises(ConfigError, match="takes the data and keyword options, got 2 positional"):
        compressed.calibrate(None, tiny_batches(), progress=False)


@pytest.mark.parametrize("data, message", [
    (None, "data must be batches"),
    ([torch.randn(4, 5, 10, 10)], "failed on the calibration data"),
])
def test_calibrate_names_bad_data(compressed, data, message):
    with pytest.raises(DataError, match=message):
        compressed.calibrate(data, samples=8, epochs=1, progress=False)


def test_calibrate_without_the_dense_model_is_the_same_as_with_it():
    results = [_compress(tiny(), tiny_batches()) for _ in range(2)]
    reports = [results[0].calibrate(tiny_batches(), samples=12, epochs=1, progress=False)]
    with pytest.warns(DeprecationWarning, match="calibrate\\(dense, data\\) is deprecated"):
        reports.append(results[1].calibrate(tiny(), tiny_batches(), samples=12, epochs=1, progress=False))
    assert reports[0].before == reports[1].before and reports[0].after == reports[1].after
    x = tiny_batches()[0]
    torch.testing.assert_close(results[0].model(x), results[1].model(x))


def test_calibrate_names_layers_the_dense_model_lacks(compressed):
    with pytest.raises(ConfigError, match="dense has no layer features"):
        recon.pipeline.calibrate.calibrate(compressed.model, nn.Sequential(nn.Conv2d(3, 3, 1)), tiny_batches(),
                                           progress=False)


@pytest.mark.parametrize("train, message", [
    (tiny_batches(), "is a Tensor: fine-tuning needs \\(inputs, labels\\)"),
    ([(tiny_batches()[0], torch.rand(4))], "labels of dtype torch.float32"),
    ([(tiny_batches()[0], torch.tensor([0, 1, 5, 1]))], "labels 0..5, but the model has 2 classes"),
])
def test_finetune_checks_its_batches_and_labels(compressed, train, message):
    with pytest.raises(DataError, match=message):
        finetune(compressed.model, train, 1, 1e-3, report=lambda line: None)


def test_decompose_names_moments_that_are_not_moments():
    with pytest.raises(ConfigError, match="got dict"):
        recon.decompose(tiny().features[0], 2, moments={"a": 1})


def test_save_after_the_users_own_training_writes_what_the_model_computes(tmp_path):
    result = _compress(tiny(), tiny_batches())
    module = result.model.features[0]
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(1.1)
    path = result.save(tmp_path / "trained.h5")
    model = recon.apply_bases(tiny(), path)
    x = tiny_batches()[0]
    torch.testing.assert_close(model(x), result.model(x))
    record = read_bases(path).layers["features.0"]
    assert record.mode == "finetuned" and math.isnan(record.output_variance_lost)
    assert read_bases(path).layers["features.2"].mode == "data"  # untouched layers keep their record


def test_a_jax_cache_folder_others_can_write_is_not_used(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "jax"
    folder.mkdir()
    folder.chmod(0o777)
    monkeypatch.setenv("RECON_JAX_CACHE", str(folder))
    with caplog.at_level(logging.WARNING, logger="recon"):
        assert enable_compilation_cache() is None
    assert "not private" in caplog.text and "chmod 700" in caplog.text
