import numpy as np
import torch
from torch import nn

from recon.stats import gather_moments


def numpy_patches(inputs, kh, kw, stride, padding, dilation):
    """Explicit im2col in NumPy, patch vectors in (c, y, x) order."""
    x = np.pad(inputs, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    b, c, h, w = x.shape
    out_h = (h - dilation * (kh - 1) - 1) // stride + 1
    out_w = (w - dilation * (kw - 1) - 1) // stride + 1
    rows = []
    for i in range(b):
        for oy in range(out_h):
            for ox in range(out_w):
                ys = oy * stride + dilation * np.arange(kh)
                xs = ox * stride + dilation * np.arange(kw)
                rows.append(x[i][:, ys][:, :, xs].reshape(-1))
    return np.array(rows)


def test_hook_moments_equal_explicit_unfold():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, (3, 2), stride=2, padding=1, dilation=2))
    inputs = [torch.randn(3, 2, 11, 10, dtype=torch.float64) for _ in range(2)]
    model = model.double()
    moments = gather_moments(model, "2", inputs, progress=False)
    layer_inputs = [torch.relu(model[0](x)).detach().numpy() for x in inputs]
    patches = np.concatenate([numpy_patches(x, 3, 2, 2, 1, 2) for x in layer_inputs])
    assert moments.count == len(patches)
    np.testing.assert_allclose(moments.mean, patches.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(moments.second, patches.T @ patches / len(patches), rtol=1e-10, atol=1e-12)


def test_asymmetric_moments_use_approximated_inputs():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)).double()
    approx = nn.Sequential(nn.Conv2d(1, 2, 3), model[1]).double()
    inputs = [torch.randn(2, 1, 8, 8, dtype=torch.float64)]
    moments = gather_moments(model, "1", inputs, approx_model=approx, progress=False)
    x = numpy_patches(model[0](inputs[0]).detach().numpy(), 3, 3, 1, 0, 1)
    x_hat = numpy_patches(approx[0](inputs[0]).detach().numpy(), 3, 3, 1, 0, 1)
    np.testing.assert_allclose(moments.cross, x.T @ x_hat / len(x), rtol=1e-10)
    np.testing.assert_allclose(moments.second_hat, x_hat.T @ x_hat / len(x), rtol=1e-10)
    np.testing.assert_allclose(moments.mean_hat, x_hat.mean(0), rtol=1e-10)


def test_patch_sampling_keeps_count_bounded():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    moments = gather_moments(model, "0", [torch.randn(5, 1, 10, 10)], patches_per_image=7, progress=False)
    assert moments.count == 35
    assert moments.second.shape == (9, 9)
