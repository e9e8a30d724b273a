"""Calibration without labels: errors against the dense model fall on images it never saw,
steps that do not help are undone, and the calibrated factors survive a bases file."""
import copy

import pytest
import torch
from torch import nn

import recon
from recon import apply_bases, data
from recon.cli import fit
from recon.io.bases_file import read_bases
from recon.pipeline.calibrate import calibrate


def train(limit=1000):
    return lambda: data.loader("train", batch_size=250, limit=limit)


def unseen_images(limit=500):
    return torch.cat([images for images, _ in data.loader("test", batch_size=500, limit=limit)])


def output_error(approx, dense, images):
    with torch.no_grad():
        reference = dense(images)
        return float(((approx(images) - reference) ** 2).sum() / ((reference - reference.mean(0)) ** 2).sum())


@pytest.fixture(scope="module")
def compressed(model):
    return recon.compress(model, layers=["conv2", "conv3", "conv4", "conv5"], ranks=8, example_input=torch.zeros(1, 1, 28, 28),
                          progress=False)


@pytest.mark.slow
def test_calibration_lowers_the_error_on_unseen_images_and_saves(model, compressed, tmp_path):
    result = copy.deepcopy(compressed)
    images = unseen_images()
    before = output_error(result.model, model, images)
    report = result.calibrate(train(), samples=1000, epochs=1, progress=False)
    after = output_error(result.model, model, images)
    assert after < 0.7 * before and report.after[0] < report.before[0]
    assert {record.mode for record in result.kept} == {"calibrated"}
    path = result.save(tmp_path / "calibrated.h5")
    loaded = apply_bases(copy.deepcopy(model), path)
    torch.testing.assert_close(loaded(images), result.model(images))
    assert read_bases(path).layers["conv2"].mode == "calibrated"


@pytest.mark.slow
def test_steps_that_raise_the_held_out_error_are_undone(model, compressed):
    approx = copy.deepcopy(compressed.model)
    before = copy.deepcopy(approx.state_dict())
    report = calibrate(approx, model, train(600), samples=600, epochs=1, lr=100.0, progress=False)
    assert report.steps == 0 and report.after == report.after_bias
    if report.after_bias == report.before:  # the bias correction was undone too: nothing changed
        assert all(torch.equal(before[k], v) for k, v in approx.state_dict().items())


class NoBias(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(16)
        self.second = nn.Conv2d(16, 8, 3, padding=1, bias=False)

    def forward(self, x):
        return self.second(torch.relu(self.norm(self.first(x)))).mean((2, 3))


def test_layers_without_bias_get_one_and_batchnorm_statistics_stay(tmp_path):
    model = NoBias().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-1, 1)
    batches = [torch.randn(50, 3, 8, 8) + 1.0 for _ in range(8)]
    result = recon.compress(model, layers=["first", "second"], ranks=2, example_input=torch.zeros(1, 3, 8, 8), progress=False)
    running = model.norm.running_mean.clone()
    result.calibrate(batches, samples=400, epochs=2, progress=False)
    assert torch.equal(result.model.norm.running_mean, running)
    # the inputs' offset of 1 moves the means of the rank-2 outputs: the correction helps and stays
    assert all(result.model.get_submodule(name).bias is not None for name in ("first", "second"))
    loaded = apply_bases(copy.deepcopy(model), result.save(tmp_path / "b.h5"))
    torch.testing.assert_close(loaded(batches[0]), result.model(batches[0]))


def test_an_undone_bias_correction_removes_the_biases_it_added(monkeypatch):
    model = NoBias().eval()
    batches = [torch.randn(50, 3, 8, 8) + 1.0 for _ in range(4)]
    approx = recon.compress(model, layers=["first", "second"], ranks=2, example_input=torch.zeros(1, 3, 8, 8), progress=False).model
    before = copy.deepcopy(approx.state_dict())
    approx.requires_grad_(False)  # a frozen model trains its factors all the same, and stays frozen
    errors = iter([(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)])  # every step measured worse than the one before
    monkeypatch.setattr("recon.pipeline.calibrate._errors", lambda *args: next(errors))
    report = calibrate(approx, model, batches, samples=200, epochs=1, progress=False)
    assert report.after == report.before == (1.0, 1.0) and report.steps == 0
    assert approx.first.bias is None and approx.second.bias is None
    assert not any(p.requires_grad for p in approx.parameters())
    assert approx.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in approx.state_dict().items())


def test_bad_calibration_arguments_are_named(model, compressed):
    with pytest.raises(recon.ConfigError, match="no low-rank layer"):
        calibrate(copy.deepcopy(model), model, train())
    with pytest.raises(recon.ConfigError, match="epochs must be a whole number >= 0, got -1"):
        calibrate(copy.deepcopy(compressed.model), model, train(), epochs=-1)


@pytest.mark.slow
def test_the_cli_calibrates_and_saves(tmp_path, capsys):
    out = tmp_path / "c.h5"
    assert fit.main(["--layer", "conv3", "--bases", "8", "--mode", "filter", "--calibrate", "--calibrate-samples",
                     "600", "--calibrate-epochs", "1", "--out", str(out)]) == 0
    assert "calibration: relative squared error" in capsys.readouterr().out
    assert read_bases(out).layers["conv3"].mode == "calibrated"
