"""HDF5 bases files: round trip, validation, atomic writes."""
import h5py
import numpy as np
import pytest
import torch
from torch import nn

from recon import apply_bases, load_bases
from recon.modules import ConvGeometry
from recon.store import (BasesFile, BasesFileError, LayerBases, read_bases, update_bases, weight_sha256,
                         write_bases)


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 6, 3, padding=1)
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(6, 4, (5, 3), stride=2, padding="valid", bias=False))

    def forward(self, x):
        return self.block(self.conv_a(x))


def layer_for(model, name, scheme, rng, num_bases=2):
    conv = model.get_submodule(name)
    n, c, kh, kw = conv.weight.shape
    vertical = rng.standard_normal((num_bases, kh) if scheme == 1 else (num_bases, c, kh))
    horizontal = rng.standard_normal((num_bases, kw) if scheme == 1 else (n, num_bases, kw))
    coeffs = rng.standard_normal((n, c, num_bases)) if scheme == 1 else None
    bias = rng.standard_normal(n).astype(np.float32) if conv.bias is not None else None
    return LayerBases(name, ConvGeometry.of(conv), scheme, "filter", vertical.astype(np.float32),
                      horizontal.astype(np.float32), None if coeffs is None else coeffs.astype(np.float32),
                      bias, weight_sha256(conv.weight), history={"lambda": np.array([0.1, 0.2])})


@pytest.fixture
def saved(tmp_path):
    model = TwoConvs()
    rng = np.random.default_rng(0)
    layers = {"conv_a": layer_for(model, "conv_a", 1, rng), "block.1": layer_for(model, "block.1", 2, rng)}
    path = write_bases(tmp_path / "b.h5", BasesFile("two-convs", "abc", layers))
    return model, layers, path


def test_round_trip_keeps_every_field(saved):
    _, layers, path = saved
    loaded = read_bases(path)
    assert loaded.model == "two-convs" and set(loaded.layers) == set(layers)
    for name, layer in layers.items():
        got = loaded.layers[name]
        assert got.geometry == layer.geometry and got.scheme == layer.scheme
        for field in ("vertical", "horizontal", "coeffs", "bias"):
            expected = getattr(layer, field)
            assert (getattr(got, field) is None) == (expected is None)
            if expected is not None:
                np.testing.assert_array_equal(getattr(got, field), expected)
        np.testing.assert_array_equal(got.history["lambda"], [0.1, 0.2])
    with h5py.File(path) as f:
        assert f.attrs["format"] == "recon.bases" and f.attrs["version"] == 1


def test_apply_bases_computes_what_the_factors_describe(saved):
    model, layers, path = saved
    x = torch.randn(2, 3, 11, 9)
    expected_model = TwoConvs()
    expected_model.load_state_dict(model.state_dict())
    for name, layer in layers.items():
        dense = layer.to_module().to_dense()
        parent, _, attr = name.rpartition(".")
        setattr(expected_model.get_submodule(parent) if parent else expected_model, attr, dense)
    apply_bases(model, path)
    torch.testing.assert_close(model(x), expected_model(x), atol=1e-5, rtol=1e-5)
    assert set(load_bases(path)) == {"conv_a", "block.1"}


def test_weight_mismatch_is_refused_unless_allowed(saved):
    _, _, path = saved
    other = TwoConvs()
    with pytest.raises(BasesFileError, match="weight_sha256 mismatch"):
        apply_bases(other, path)
    apply_bases(other, path, allow_mismatch=True)


def test_wrong_version_and_format_are_refused(saved, tmp_path):
    _, _, path = saved
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 2
    with pytest.raises(BasesFileError, match="schema version 2"):
        read_bases(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something"
    with pytest.raises(BasesFileError, match="not a recon bases file"):
        read_bases(other)


def test_corrupted_field_names_layer_and_field(saved):
    _, _, path = saved
    with h5py.File(path, "a") as f:
        data = f["layers/block.1/horizontal"][...]
        data[0, 0, 0] = np.nan
        f["layers/block.1/horizontal"][...] = data
    with pytest.raises(BasesFileError, match="layer 'block.1': field 'horizontal' contains NaN"):
        read_bases(path)


def test_wrong_shape_names_expected_shape(saved):
    _, _, path = saved
    with h5py.File(path, "a") as f:
        del f["layers/conv_a/coeffs"]
        f["layers/conv_a/coeffs"] = np.zeros((6, 3, 5), np.float32)
    with pytest.raises(BasesFileError, match="'coeffs' has shape \\(6, 3, 5\\), expected \\(6, 3, 2\\)"):
        read_bases(path)


def test_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "g.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(BasesFileError, match="not a readable HDF5 file"):
        read_bases(garbage)
    with pytest.raises(BasesFileError, match="does not exist"):
        read_bases(tmp_path / "none.h5")
    with pytest.raises(BasesFileError, match="folder .* does not exist"):
        write_bases(tmp_path / "missing" / "b.h5", BasesFile("m", "h", {}))


def test_interrupted_write_leaves_existing_file_intact(saved, monkeypatch):
    _, layers, path = saved
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("recon.store._write_layer", explode)
    with pytest.raises(KeyboardInterrupt):
        write_bases(path, BasesFile("two-convs", "abc", layers))
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_update_adds_layers_and_refuses_other_models(saved):
    model, layers, path = saved
    extra = layer_for(model, "conv_a", 2, np.random.default_rng(1), num_bases=3)
    merged = update_bases(path, "two-convs", "abc", [extra])
    assert merged.layers["conv_a"].scheme == 2 and "block.1" in read_bases(path).layers
    with pytest.raises(BasesFileError, match="another model"):
        update_bases(path, "other", "def", [extra])
