"""BatchNorm folding: exact against the unfolded model, refused where it would not be exact,
recorded in bases files and reproduced by apply_bases."""
import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import recon
from recon.errors import ConfigError, LayerError
from recon.folding import batchnorm_pairs, fold_batchnorms, folded_conv
from recon.zoo.cifar import cifar_resnet


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so folding is tested."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.2)
            module.weight.data.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 2 - 1)
    return model.eval()


@settings(max_examples=20, deadline=None)
@given(channels=st.integers(1, 6), outputs=st.integers(1, 6), kernel=st.sampled_from([1, 3, (1, 3)]),
       stride=st.integers(1, 2), dilation=st.integers(1, 2), bias=st.booleans(), affine=st.booleans())
def test_folded_conv_equals_conv_then_batchnorm(channels, outputs, kernel, stride, dilation, bias, affine):
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, outputs, kernel, stride, padding=1, dilation=dilation, bias=bias)
    norm = nn.BatchNorm2d(outputs, affine=affine)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.2, 2)
    norm.eval()
    x = torch.randn(2, channels, 9, 9)
    torch.testing.assert_close(folded_conv(conv, norm)(x), norm(conv(x)), atol=1e-5, rtol=1e-5)


def test_resnet_pairs_found_in_the_graph_and_folding_is_exact():
    model = randomise_batchnorms(cifar_resnet(20))
    pairs = batchnorm_pairs(model)
    assert len(pairs.folds) == 19 and not pairs.refused
    assert pairs.folds["layer2.0.conv1"] == "layer2.0.bn1"
    folded = fold_batchnorms(copy.deepcopy(model), pairs.folds)
    assert isinstance(folded.layer2.get_submodule("0.bn1"), nn.Identity)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


class SharedNorm(nn.Module):
    """A BatchNorm called after two convs; a conv whose output also feeds a shortcut."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.norm, self.other = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.norm(self.a(x))
        x = self.norm(self.b(x))
        y = self.c(x)
        return self.other(y) + y


def test_folding_refused_when_not_exact_naming_the_layer():
    pairs = batchnorm_pairs(SharedNorm().eval())
    assert not pairs.folds
    assert "shared" in pairs.refused["a"] and "shared" in pairs.refused["b"]
    assert "feeds 2 operations" in pairs.refused["c"]
    training = cifar_resnet(20).train()
    assert "training mode" in batchnorm_pairs(training).refused["conv1"]


def test_untraceable_model_is_refused_clearly():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.norm(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(ConfigError, match="torch.fx cannot trace Branchy"):
        batchnorm_pairs(Branchy().eval())


@pytest.mark.slow
def test_compress_folds_and_apply_bases_reproduces_the_model(tmp_path):
    model = randomise_batchnorms(cifar_resnet(8))
    data = [torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    result = recon.compress(model, data, layers=r"layer.*conv.*", ranks=4, fold_batchnorm=True, progress=False)
    assert result.folded == {f"layer{s}.0.conv{c}": f"layer{s}.0.bn{c}" for s in (1, 2, 3) for c in (1, 2)}
    assert isinstance(result.model.layer1[0].bn1, nn.Identity)
    # the low-rank module replaces conv + BatchNorm: its weight error is against the folded conv
    reference = result.reference(model)
    for name, record in result.layers.items():
        assert record.folded_batchnorm == result.folded[name]
        dense = reference.get_submodule(name).weight.detach().double()
        lost = float(((record.module.dense_weight().detach().double() - dense) ** 2).sum() / (dense ** 2).sum())
        assert lost == pytest.approx(record.filter_energy_lost, rel=1e-4, abs=1e-6)
    path = result.save(tmp_path / "folded.h5")
    applied = recon.apply_bases(copy.deepcopy(model), path)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(applied(x), result.model(x), atol=1e-5, rtol=1e-5)
    # a model whose BatchNorm no longer follows the conv is refused, naming the layer, and unchanged
    moved = copy.deepcopy(model)
    moved.layer1[0].bn1.train()
    with pytest.raises(LayerError, match="layer1.0.conv1.*training mode"):
        recon.apply_bases(moved, path)
    assert isinstance(moved.layer1[0].bn1, nn.BatchNorm2d) and isinstance(moved.layer1[0].conv1, nn.Conv2d)
