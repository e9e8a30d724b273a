"""Block reconstruction: blocks found by structure, held-out error never rises, too few
images refused, improved blocks handed over for saving."""
import copy

import pytest
import torch
from torch import nn

import recon
from recon.errors import ConfigError
from recon.pipeline.blocks import find_blocks, reconstruct_blocks
from recon.zoo.cifar import cifar_resnet


def test_blocks_are_the_smallest_non_container_parents():
    model = cifar_resnet(8)
    blocks = find_blocks(model, ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer3.0.conv2"])
    assert blocks == {"conv1": ["conv1"], "layer1.0": ["layer1.0.conv1", "layer1.0.conv2"],
                      "layer3.0": ["layer3.0.conv2"]}


def _compressed(seed: int = 0):
    torch.manual_seed(seed)
    model = cifar_resnet(8)
    data = [torch.randn(80, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    result = recon.compress(model, data, layers=r"layer.*conv.*", ranks=2, progress=False)
    return model, data, result


def _block_error(approx, dense, name, images):
    """Relative squared error of block ``name`` of ``approx`` on its own inputs against the dense block
    on the dense inputs: an independent recomputation with forward hooks over the whole models."""
    seen = {}
    hooks = [m.get_submodule(name).register_forward_hook(lambda mod, a, out, key=key: seen.__setitem__(key, out))
             for key, m in (("approx", approx), ("dense", dense))]
    with torch.no_grad():
        approx(images), dense(images)
    for hook in hooks:
        hook.remove()
    target = seen["dense"].double()
    return float(((seen["approx"].double() - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum())


@pytest.mark.slow
def test_reconstruction_lowers_block_errors_and_hands_blocks_over(tmp_path):
    model, data, result = _compressed()
    images = torch.cat(data)
    before = {name: _block_error(result.model, model, name, images) for name in ("layer1.0", "layer3.0")}
    handed = []
    path = tmp_path / "blocks.h5"
    report = result.reconstruct_blocks(data, path=path, epochs=5, progress=False)
    assert [b.block for b in report.blocks] == ["layer1.0", "layer2.0", "layer3.0"]
    for block in report.blocks:
        assert block.after <= block.before
    assert any(b.kept for b in report.blocks)
    after = {name: _block_error(result.model, model, name, images) for name in before}
    assert after["layer1.0"] < before["layer1.0"]
    # every improved block was saved at once, and the file reproduces the reconstructed model
    applied = recon.apply_bases(copy.deepcopy(model), path)
    kept = [layer for b in report.blocks if b.kept for layer in b.layers]
    for name in kept:
        torch.testing.assert_close(applied.get_submodule(name).dense_weight(),
                                   result.model.get_submodule(name).dense_weight())
        assert result.layers[name].mode == "reconstructed"


@pytest.mark.slow
def test_too_few_images_for_the_held_out_split_is_refused():
    model, data, result = _compressed()
    with pytest.raises(ConfigError, match="at least 160 images"):
        reconstruct_blocks(result.model, model, [data[0][:100]], progress=False)
    with pytest.raises(ConfigError, match="hold no low-rank layer"):
        reconstruct_blocks(result.model, model, data, blocks=["fc"], progress=False)
    with pytest.raises(ConfigError, match="no low-rank layer"):
        reconstruct_blocks(copy.deepcopy(model), model, data, progress=False)


@pytest.mark.slow
def test_blocks_carried_from_block_to_block_match_full_passes(monkeypatch):
    model, data, carried = _compressed()
    full = copy.deepcopy(carried)
    carried_report = carried.reconstruct_blocks(data, epochs=1, progress=False)
    monkeypatch.setattr("recon.pipeline.blocks.Carried.calls", lambda self, block: None)
    full_report = full.reconstruct_blocks(data, epochs=1, progress=False)
    for a, b in zip(carried_report.blocks, full_report.blocks):
        assert a.before == pytest.approx(b.before, rel=1e-5) and a.after == pytest.approx(b.after, rel=1e-4)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(carried.model(x), full.model(x), rtol=1e-4, atol=1e-5)
