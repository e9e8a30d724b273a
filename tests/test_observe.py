"""Statistics from hooks against explicit im2col in NumPy; one pass against one pass per layer."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from recon import observe
from recon.errors import DataError
from recon.nn import ConvGeometry
from recon.pipeline.batches import Batches
from recon.pipeline.observe import PatchSampler, observe_asymmetric


def numpy_patches(inputs, kh, kw, stride, padding, dilation):
    """Explicit im2col in NumPy, patch vectors in (c, y, x) order, locations row-major."""
    x = np.pad(inputs, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    b, c, h, w = x.shape
    out_h = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    rows = []
    for i in range(b):
        for oy in range(out_h):
            for ox in range(out_w):
                ys = oy * stride[0] + dilation[0] * np.arange(kh)
                xs = ox * stride[1] + dilation[1] * np.arange(kw)
                rows.append(x[i][:, ys][:, :, xs].reshape(-1))
    return np.array(rows).reshape(b, out_h * out_w, -1)


def test_hook_moments_equal_explicit_unfold():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, (3, 2), stride=2, padding=1, dilation=2))
    inputs = [torch.randn(3, 2, 11, 10, dtype=torch.float64) for _ in range(2)]
    model = model.double()
    moments = observe(model, inputs, ["2"], patches_per_image=None, progress=False)["2"]
    layer_inputs = [torch.relu(model[0](x)).detach().numpy() for x in inputs]
    patches = np.concatenate([numpy_patches(x, 3, 2, (2, 2), (1, 1), (2, 2)).reshape(-1, 18) for x in layer_inputs])
    assert moments.count == len(patches)
    np.testing.assert_allclose(moments.mean, patches.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(moments.second_hat, patches.T @ patches / len(patches), rtol=1e-10, atol=1e-12)


def test_a_float32_model_forms_batch_products_in_float32_and_sums_them_in_float64():
    """Products in the inputs' precision: within float32 rounding of the float64 truth over
    many batches (the running sums do not drift), and kept as float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    inputs = [torch.randn(8, 4, 12, 12) for _ in range(40)]
    moments = observe(model, inputs, ["2"], patches_per_image=None, progress=False)["2"]
    layer_inputs = [torch.relu(model[0](x)).detach().double().numpy() for x in inputs]
    patches = np.concatenate([numpy_patches(x, 3, 3, (1, 1), (0, 0), (1, 1)).reshape(-1, 72) for x in layer_inputs])
    second = patches.T @ patches / len(patches)
    assert moments.second_hat.dtype == np.float64
    np.testing.assert_allclose(moments.mean, patches.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(moments.second_hat, second, rtol=0, atol=1e-5 * np.abs(second).max())


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 3), kh=st.integers(1, 4), kw=st.integers(1, 4), stride=st.tuples(st.integers(1, 3), st.integers(1, 2)),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       per_image=st.integers(1, 6), seed=st.integers(0, 50))
def test_sampled_patches_are_the_explicit_patches_at_the_drawn_locations(c, kh, kw, stride, padding, dilation,
                                                                         per_image, seed):
    conv = nn.Conv2d(c, 2, (kh, kw), stride=stride, padding=padding, dilation=dilation)
    inputs = torch.randn(3, c, 12, 11, dtype=torch.float64)
    sampler = PatchSampler("conv", ConvGeometry.of(conv), per_image, seed)
    index = sampler.draw(inputs)
    got = sampler.patches(inputs, index).numpy()
    explicit = numpy_patches(inputs.numpy(), kh, kw, stride, padding, dilation)
    if index is None:
        expected = explicit.reshape(-1, explicit.shape[-1])
    else:
        expected = np.concatenate([explicit[b, index[b].numpy()] for b in range(3)])
    np.testing.assert_array_equal(got, expected)


def test_one_pass_equals_one_pass_per_layer():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(), nn.Linear(5 * 6 * 6, 3))
    batches = [torch.randn(4, 1, 8, 8) for _ in range(3)]
    together = observe(model, batches, ["0", "2", "4"], patches_per_image=5, seed=3, progress=False)
    for name in ("0", "2", "4"):
        alone = observe(model, batches, [name], patches_per_image=5, seed=3, progress=False)[name]
        np.testing.assert_array_equal(together[name].second_hat, alone.second_hat)
        np.testing.assert_array_equal(together[name].mean, alone.mean)
    assert together["4"].count == 12 and together["4"].dim == 180  # one feature vector per sample


def test_asymmetric_moments_use_approximated_inputs():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)).double()
    approx = nn.Sequential(nn.Conv2d(1, 2, 3), model[1]).double()
    inputs = [torch.randn(2, 1, 8, 8, dtype=torch.float64)]
    moments = observe_asymmetric(model, approx, Batches(inputs), "1", patches_per_image=None, progress=False)
    x = numpy_patches(model[0](inputs[0]).detach().numpy(), 3, 3, (1, 1), (0, 0), (1, 1)).reshape(-1, 18)
    x_hat = numpy_patches(approx[0](inputs[0]).detach().numpy(), 3, 3, (1, 1), (0, 0), (1, 1)).reshape(-1, 18)
    weights = model[1].weight.detach().reshape(2, -1).numpy()
    np.testing.assert_allclose(moments.output_cross, weights @ x.T @ x_hat / len(x), rtol=1e-10)
    np.testing.assert_allclose(moments.second_hat, x_hat.T @ x_hat / len(x), rtol=1e-10)
    np.testing.assert_allclose(moments.mean_hat, x_hat.mean(0), rtol=1e-10)
    assert moments.output_energy == pytest.approx(np.sum((x @ weights.T) ** 2) / len(x), rel=1e-10)


def test_patch_sampling_keeps_count_bounded_and_is_seeded():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    batch = [torch.randn(5, 1, 10, 10)]
    first = observe(model, batch, ["0"], patches_per_image=7, seed=1, progress=False)["0"]
    again = observe(model, batch, ["0"], patches_per_image=7, seed=1, progress=False)["0"]
    other = observe(model, batch, ["0"], patches_per_image=7, seed=2, progress=False)["0"]
    assert first.count == 35 and first.second_hat.shape == (9, 9)
    np.testing.assert_array_equal(first.second_hat, again.second_hat)
    assert not np.array_equal(first.second_hat, other.second_hat)


def test_a_layer_that_never_runs_and_unbatched_inputs_are_named():
    class WithSpare(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Conv2d(1, 2, 3))
            self.spare = nn.Conv2d(2, 2, 3)

        def forward(self, x):
            return self[0](x)

    with pytest.raises(DataError, match="layer\\(s\\) spare never ran"):
        observe(WithSpare(), [torch.randn(2, 1, 6, 6)], ["0", "spare"], progress=False)
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(DataError, match="layer '0' received an input of shape \\(1, 6, 6\\)"):
        observe(model, [torch.randn(1, 6, 6)], ["0"], progress=False)
