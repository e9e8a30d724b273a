"""The published CIFAR ResNet reader: names mapped, shortcuts padded as the published code pads."""
import pytest
import torch
from torch import nn

from recon.errors import ConfigError
from recon.zoo.cifar import cifar_resnet, load_cifar_resnet
from recon.zoo.models import PadShortcut


def test_a_checkpoint_in_the_published_layout_loads(tmp_path):
    torch.manual_seed(0)
    model = cifar_resnet(20)
    state = {("module." + k).replace("module.fc.", "module.linear."): v for k, v in model.state_dict().items()}
    torch.save({"best_prec1": 91.0, "state_dict": state}, tmp_path / "published.th")
    loaded = load_cifar_resnet(tmp_path / "published.th", 20)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ConfigError, match="not a ResNet-32 checkpoint"):
        load_cifar_resnet(tmp_path / "published.th", 32)
    with pytest.raises(ConfigError, match="6n \\+ 2"):
        cifar_resnet(21)


def test_centred_pad_shortcut_matches_the_published_formula():
    x = torch.randn(2, 16, 8, 8)
    expected = nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))  # planes // 4 on both sides
    torch.testing.assert_close(PadShortcut(16, 2, centred=True)(x), expected)
    torch.testing.assert_close(PadShortcut(16, 2)(x)[:, :16], x[:, :, ::2, ::2])
