from torch import nn

from recon import data, zoo
from recon.metrics import accuracy


def test_bundled_model_architecture(model):
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert list(convs) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert convs["conv2"].kernel_size == (5, 5)
    assert convs["conv2"].in_channels >= 64 and convs["conv2"].out_channels >= 128
    for name in ("conv3", "conv4", "conv5"):
        assert convs[name].kernel_size == (3, 3) and convs[name].out_channels >= 192
    assert not model.training


def test_bundled_weights_reach_accuracy_on_fixed_subset(model):
    subset = data.loader("test", batch_size=500, limit=2000)
    assert accuracy(model, subset) >= 0.91


def test_weights_hash_matches_readme():
    readme = (zoo.ZOO_DIR / "README.md").read_text()
    assert zoo.file_sha256(zoo.weights_path("fmnist-alexnet")) in readme
