"""The low-rank modules against the dense layers they compute, over shapes, strides, paddings
and dilations; recon.nn needs neither JAX nor h5py."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import recon
from recon.errors import LayerError
from recon.nn import (ConvGeometry, CPConv, LinearGeometry, LowRankExpConv, LowRankLinear, Scheme1Conv, Scheme2Conv,
                      Tucker2Conv)
from recon.nn.replace import replace_layer, restore_dense
from solvers import scheme1, scheme2
from tests.fixture_models import tiny, tiny_batches

geometries = st.fixed_dictionaries({
    "c": st.integers(1, 5), "n": st.integers(1, 6),
    "kh": st.integers(1, 5), "kw": st.integers(2, 5),
    "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "padding": st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.just("same"), st.just("valid")),
    "bias": st.booleans(),
})
CONV_MODULES = {"scheme1": Scheme1Conv, "scheme2": Scheme2Conv, "cp": CPConv, "tucker2": Tucker2Conv}


def make_conv(g):
    stride = (1, 1) if g["padding"] == "same" else g["stride"]
    return nn.Conv2d(g["c"], g["n"], (g["kh"], g["kw"]), stride=stride, padding=g["padding"],
                     dilation=g["dilation"], bias=g["bias"])


def random_module(kind, geometry, rank, bias, seed):
    """A module of ``kind`` with random factors (and bias)."""
    module = kind(geometry, rank, bias=bias)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return module


@settings(max_examples=80, deadline=None)
@given(g=geometries, kind=st.sampled_from(sorted(CONV_MODULES)), seed=st.integers(0, 1000),
       size=st.tuples(st.integers(9, 16), st.integers(9, 16)), rank=st.integers(1, 4))
def test_module_equals_its_dense_conv(g, kind, seed, size, rank):
    conv = make_conv(g)
    geometry = ConvGeometry.of(conv)
    module = random_module(CONV_MODULES[kind], geometry, (rank, rank) if kind == "tucker2" else rank, g["bias"], seed)
    x = torch.randn(2, g["c"], *size)
    expected = module.to_dense()(x)
    got = module(x)
    assert got.shape == conv(x).shape
    torch.testing.assert_close(got, expected, atol=1e-4 * max(1.0, float(expected.detach().abs().max())), rtol=1e-4)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(g=geometries.filter(lambda g: (g["kh"], g["kw"]) != (1, 1)), method=st.sampled_from(["scheme1", "scheme2"]))
def test_full_rank_bases_reproduce_the_original_conv(g, method):
    conv = make_conv(g)
    shape = conv.weight.shape
    full = scheme1.max_bases(shape) if method == "scheme1" else scheme2.max_rank(shape)
    module = recon.decompose(conv, full, method)
    x = torch.randn(2, g["c"], 12, 13)
    torch.testing.assert_close(module(x), conv(x), atol=2e-5, rtol=1e-4)


def test_linear_and_tucker2_at_full_rank_are_exact():
    linear = nn.Linear(20, 12)
    x = torch.randn(4, 20)
    torch.testing.assert_close(recon.decompose(linear, 12, "svd")(x), linear(x), atol=1e-5, rtol=1e-5)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=(2, 1), dilation=(1, 2))
    x = torch.randn(2, 6, 11, 10)
    torch.testing.assert_close(recon.decompose(conv, (8, 6), "tucker2")(x), conv(x), atol=1e-5, rtol=1e-4)


def test_macs_match_definition_and_speedup():
    geometry = ConvGeometry(64, 128, (5, 5), padding=(2, 2))
    module = Scheme2Conv(geometry, 16)
    assert module.macs((64, 14, 14)) == 16 * 64 * 5 * 14 * 14 + 128 * 16 * 5 * 14 * 14
    assert module.theoretical_speedup((14, 14)) == pytest.approx(128 * 64 * 25 / (16 * 5 * (64 + 128)))
    assert Scheme1Conv(geometry, 4).macs((14, 14)) == 64 * 4 * 196 * (5 + 5 + 128)
    assert LowRankLinear(LinearGeometry(100, 10), 3).macs((100,)) == 3 * 110
    assert LowRankLinear(LinearGeometry(100, 10), 3).macs((7, 100)) == 7 * 3 * 110


def test_empty_modules_load_their_own_state_dict():
    geometry = ConvGeometry(3, 4, (3, 3), padding=(1, 1))
    source = random_module(Tucker2Conv, geometry, (2, 3), True, 0)
    copy = Tucker2Conv(geometry, (2, 3), bias=True)
    copy.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(copy(x), source(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        Tucker2Conv(geometry, (3, 3), bias=True).load_state_dict(source.state_dict())


def test_layers_the_methods_cannot_reproduce_are_refused():
    with pytest.raises(LayerError, match="groups=2"):
        recon.decompose(nn.Conv2d(4, 4, 3, groups=2), 2, "scheme1")
    with pytest.raises(LayerError, match="padding_mode='circular'"):
        recon.decompose(nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), 2)
    with pytest.raises(LayerError, match="1x1 kernel"):
        recon.decompose(nn.Conv2d(4, 4, 1), 2, "cp")

    class SameConv(nn.Conv2d):  # timm's Conv2dSame pattern: padding computed in forward
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

    with pytest.raises(LayerError, match="SameConv overrides forward"):
        recon.decompose(SameConv(4, 4, 3), 2)


def test_wrong_factor_shapes_are_refused():
    geometry = ConvGeometry(3, 4, (3, 3))
    with pytest.raises(ValueError, match="factor 'horizontal' must hold \\(4, 2, 1, 3\\) values"):
        Scheme2Conv.from_factors(geometry, {"vertical": np.zeros((2, 3, 3)), "horizontal": np.zeros((4, 3, 3))})
    with pytest.raises(ValueError, match="takes factors"):
        Scheme2Conv.from_factors(geometry, {"vertical": np.zeros((2, 3, 3))})


def test_repr_names_scheme_and_geometry():
    text = repr(recon.decompose(nn.Conv2d(3, 8, 3, padding=1), 4))
    assert "Scheme2Conv(3, 8, kernel_size=(3, 3)" in text and "rank=4" in text and "scheme=2" in text


@pytest.mark.parametrize("method", ["scheme1", "scheme2"])
def test_script_inference_mode_and_half_precisions(method):
    conv = nn.Conv2d(6, 8, 3, padding=1)
    module = recon.decompose(conv, 4, method)
    assert isinstance(module, LowRankExpConv)
    x = torch.randn(2, 6, 10, 10)
    scripted = torch.jit.script(module)
    with torch.inference_mode():
        reference = module(x)
        torch.testing.assert_close(scripted(x), reference)
        for dtype in (torch.bfloat16, torch.float16):
            low = module.to(dtype)(x.to(dtype)).float()
            torch.testing.assert_close(low, reference, atol=0.1, rtol=0.05)
            module.float()


@pytest.mark.slow
def test_compile_matches_eager():
    module = recon.decompose(nn.Conv2d(4, 6, 3, padding=1), 3)
    x = torch.randn(1, 4, 8, 8)
    try:
        compiled = torch.compile(module)
        result = compiled(x)
    except Exception as err:  # torch.compile needs a C++ toolchain; say why when it is missing
        pytest.skip(f"torch.compile unavailable here: {err}")
    torch.testing.assert_close(result, module(x))


def test_recon_nn_imports_neither_jax_nor_h5py():
    code = ("import sys, recon.nn; bad = [m for m in ('jax', 'h5py', 'optax', 'solvers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_restore_dense_puts_back_layers_that_compute_the_same(caplog):
    result = recon.compress(tiny(), tiny_batches(), ranks=2, progress=False)
    model = result.model
    replace_layer(model, "head", recon.decompose(model.head, 1, method="svd"))
    x = tiny_batches()[0]
    before = model(x)
    assert restore_dense(model) is model
    assert not any(isinstance(m, recon.LowRankModule) for m in model.modules())
    assert [type(model.get_submodule(n)) for n in ("features.0", "features.2", "features.4", "head")] == \
        [nn.Conv2d] * 3 + [nn.Linear]
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level("WARNING", logger="recon"):
        restore_dense(model)  # nothing low-rank left: a no-op with a warning
    assert "no low-rank module" in caplog.text
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
