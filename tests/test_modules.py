"""LowRankExpConv against the dense convolution it replaces."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from recon.modules import ConvGeometry, LowRankExpConv, Scheme1Conv, Scheme2Conv
from solvers import scheme1, scheme2

geometries = st.fixed_dictionaries({
    "c": st.integers(1, 5), "n": st.integers(1, 6),
    "kh": st.integers(1, 5), "kw": st.integers(2, 5),
    "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "padding": st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.just("same"), st.just("valid")),
    "bias": st.booleans(),
})


def make_conv(g):
    stride = (1, 1) if g["padding"] == "same" else g["stride"]
    return nn.Conv2d(g["c"], g["n"], (g["kh"], g["kw"]), stride=stride, padding=g["padding"],
                     dilation=g["dilation"], bias=g["bias"])


def random_module(conv, scheme, rng):
    geometry = ConvGeometry.of(conv)
    n, c, kh, kw = conv.weight.shape
    bias = rng.standard_normal(n) if conv.bias is not None else None
    if scheme == 1:
        m = int(rng.integers(1, 5))
        return Scheme1Conv(geometry, rng.standard_normal((m, kh)), rng.standard_normal((m, kw)),
                           rng.standard_normal((n, c, m)), bias)
    k = int(rng.integers(1, 6))
    return Scheme2Conv(geometry, rng.standard_normal((k, c, kh)), rng.standard_normal((n, k, kw)), bias)


@settings(max_examples=60, deadline=None)
@given(g=geometries, scheme=st.sampled_from([1, 2]), seed=st.integers(0, 1000),
       size=st.tuples(st.integers(9, 16), st.integers(9, 16)))
def test_module_equals_its_dense_conv(g, scheme, seed, size):
    conv = make_conv(g)
    module = random_module(conv, scheme, np.random.default_rng(seed))
    x = torch.randn(2, g["c"], *size)
    expected = module.to_dense()(x)
    got = module(x)
    assert got.shape == conv(x).shape
    torch.testing.assert_close(got, expected, atol=1e-5 * max(1.0, float(expected.detach().abs().max())), rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(g=geometries, scheme=st.sampled_from([1, 2]))
def test_full_rank_bases_reproduce_the_original_conv(g, scheme):
    conv = make_conv(g)
    n, c, kh, kw = conv.weight.shape
    full = scheme1.max_bases(conv.weight.shape) if scheme == 1 else scheme2.max_rank(conv.weight.shape)
    module = LowRankExpConv.from_conv(conv, scheme=scheme, num_bases=full)
    x = torch.randn(2, g["c"], 12, 13)
    torch.testing.assert_close(module(x), conv(x), atol=2e-5, rtol=1e-4)


def test_macs_match_definition_and_speedup():
    conv = nn.Conv2d(64, 128, 5, padding=2)
    module = LowRankExpConv.from_conv(conv, scheme=2, num_bases=16)
    assert module.macs((14, 14)) == 16 * 64 * 5 * 14 * 14 + 128 * 16 * 5 * 14 * 14
    assert module.theoretical_speedup((14, 14)) == pytest.approx(128 * 64 * 25 / (16 * 5 * (64 + 128)))
    scheme1 = LowRankExpConv.from_conv(conv, scheme=1, num_bases=4)
    assert scheme1.macs((14, 14)) == 64 * 4 * 196 * (5 + 5 + 128)


def test_grouped_and_circular_convs_are_refused():
    with pytest.raises(ValueError, match="groups=2"):
        LowRankExpConv.from_conv(nn.Conv2d(4, 4, 3, groups=2), 2, 2)
    with pytest.raises(ValueError, match="padding_mode='circular'"):
        LowRankExpConv.from_conv(nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), 2, 2)
    with pytest.raises(ValueError, match="scheme must be 1 or 2"):
        LowRankExpConv.from_conv(nn.Conv2d(4, 4, 3), 3, 2)


def test_wrong_factor_shapes_are_refused():
    geometry = ConvGeometry.of(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="horizontal must have shape \\(4, 2, 3\\)"):
        Scheme2Conv(geometry, np.zeros((2, 3, 3)), np.zeros((4, 3, 3)))


def test_repr_names_scheme_and_geometry():
    text = repr(LowRankExpConv.from_conv(nn.Conv2d(3, 8, 3, padding=1), 2, 4))
    assert "Scheme2Conv(3, 8, kernel_size=(3, 3)" in text and "num_bases=4" in text


@pytest.mark.parametrize("scheme", [1, 2])
def test_script_inference_mode_and_half_precisions(scheme):
    conv = nn.Conv2d(6, 8, 3, padding=1)
    module = LowRankExpConv.from_conv(conv, scheme, 4)
    x = torch.randn(2, 6, 10, 10)
    scripted = torch.jit.script(module)
    with torch.inference_mode():
        reference = module(x)
        torch.testing.assert_close(scripted(x), reference)
        for dtype in (torch.bfloat16, torch.float16):
            low = module.to(dtype)(x.to(dtype)).float()
            torch.testing.assert_close(low, reference, atol=0.1, rtol=0.05)
            module.float()


def test_compile_matches_eager():
    module = LowRankExpConv.from_conv(nn.Conv2d(4, 6, 3, padding=1), 2, 3)
    x = torch.randn(1, 4, 8, 8)
    try:
        compiled = torch.compile(module)
        result = compiled(x)
    except Exception as err:  # torch.compile needs a C++ toolchain; say why when it is missing
        pytest.skip(f"torch.compile unavailable here: {err}")
    torch.testing.assert_close(result, module(x))
