"""recon.save_bases: any low-rank model (from compress, apply_bases or by hand, trained since)
written as a bases file that apply_bases turns the dense model back into."""
import copy

import pytest
import torch
from torch import nn

import recon
from recon.errors import ConfigError
from recon.io.bases_file import read_bases
from recon.nn.replace import replace_layer
from recon.zoo.models import ResNet
from tests.fixture_models import tiny, tiny_batches


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    model = ResNet(3, 4, 1)
    for module in model.modules():  # BatchNorms with statistics of their own, so that folding matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _train_a_little(model: nn.Module) -> None:
    """Stand-in for the user's own training: every low-rank factor changes."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, recon.LowRankModule):
                for parameter in module.parameters():
                    parameter.mul_(1.05).add_(0.01)


@pytest.mark.slow
def test_a_trained_compression_with_folded_batchnorms_round_trips(tmp_path):
    dense = _resnet()
    data = [torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    result = recon.compress(dense, data, layers=r"layer\d\.0\.conv\d", ranks=2, fold_batchnorm=True, progress=False)
    assert result.folded
    _train_a_little(result.model)
    path = recon.save_bases(result.model, tmp_path / "trained.h5", dense)
    records = read_bases(path).layers
    assert set(records) == {r.name for r in result.kept}
    assert {name: r.folded_batchnorm for name, r in records.items()} == {n: result.folded.get(n) for n in records}
    restored = recon.apply_bases(copy.deepcopy(dense), path)
    torch.testing.assert_close(restored(data[0]), result.model(data[0]), rtol=1e-4, atol=1e-5)


def test_a_model_made_by_hand_saves_and_other_dense_models_are_refused(tmp_path):
    dense = tiny()
    model = copy.deepcopy(dense)
    replace_layer(model, "features.0", recon.decompose(dense.features[0], 2))
    replace_layer(model, "head", recon.decompose(dense.head, 1, method="svd"))
    path = recon.save_bases(model, tmp_path / "hand.h5", dense)
    assert {name: r.method for name, r in read_bases(path).layers.items()} == {"features.0": "scheme2", "head": "svd"}
    x = tiny_batches()[0]
    torch.testing.assert_close(recon.apply_bases(tiny(), path)(x), model(x))
    with pytest.raises(ConfigError, match="no low-rank module"):
        recon.save_bases(tiny(), tmp_path / "none.h5", dense)
    with pytest.raises(ConfigError, match="dense has no layer"):
        recon.save_bases(model, tmp_path / "other.h5", nn.Sequential(nn.Conv2d(3, 8, 3)))
    other = copy.deepcopy(dense)
    other.features[0] = nn.Conv2d(3, 8, 5, padding=2)
    with pytest.raises(ConfigError, match="is dense the model it was made from"):
        recon.save_bases(model, tmp_path / "other.h5", other)
