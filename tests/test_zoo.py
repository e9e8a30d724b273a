"""The bundled models: architectures, shipped weights, accuracy, and every command on each."""
import pytest
from torch import nn

from recon import data, zoo
from recon.cli.evaluate import main as evaluate_main
from recon.cli.export import main as export_main
from recon.cli.finetune import main as finetune_main
from recon.cli.fit import main as fit_main
from recon.metrics import accuracy


def test_bundled_alexnet_architecture(model):
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert list(convs) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert convs["conv2"].kernel_size == (5, 5)
    assert convs["conv2"].in_channels >= 64 and convs["conv2"].out_channels >= 128
    for name in ("conv3", "conv4", "conv5"):
        assert convs[name].kernel_size == (3, 3) and convs[name].out_channels >= 192
    assert not model.training


def test_bundled_resnet_is_a_residual_network_with_batchnorm_and_projections():
    resnet = zoo.load_model("fmnist-resnet")
    convs = {name: m for name, m in resnet.named_modules() if isinstance(m, nn.Conv2d)}
    norms = [m for m in resnet.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 21 and len(norms) == 21
    assert sorted(name for name, m in convs.items() if m.kernel_size == (1, 1)) == [
        "layer2.0.shortcut.0", "layer3.0.shortcut.0"]
    assert {m.out_channels for m in convs.values()} == {32, 64, 128} and not resnet.training


@pytest.mark.slow
@pytest.mark.parametrize("name, floor", [("fmnist-alexnet", 0.91), ("fmnist-resnet", 0.92)])
def test_bundled_weights_reach_accuracy_on_fixed_subset(name, floor):
    subset = data.loader("test", batch_size=500, limit=2000)
    assert accuracy(zoo.load_model(name), subset) >= floor


@pytest.mark.parametrize("name", list(zoo.BUNDLED))
def test_weights_hash_matches_readme(name):
    readme = (zoo.ZOO_DIR / "README.md").read_text()
    assert zoo.file_sha256(zoo.weights_path(name)) in readme


@pytest.mark.slow
def test_every_command_takes_the_resnet(tmp_path, capsys):
    bases = tmp_path / "r.h5"
    common = ["--model", "fmnist-resnet"]
    assert fit_main([*common, "--layer", "layer3\\.1\\..*", "--bases", "32", "--samples", "500",
                     "--out", str(bases)]) == 0
    assert evaluate_main([*common, "--bases", str(bases), "--limit", "500", "--repeats", "2"]) == 0
    assert export_main([*common, "--bases", str(bases), "--out", str(tmp_path / "r.onnx")]) == 0
    assert finetune_main([*common, "--bases", str(bases), "--limit", "256", "--out", str(tmp_path / "f.h5")]) == 0
    assert "layer3.1.conv2" in capsys.readouterr().out
