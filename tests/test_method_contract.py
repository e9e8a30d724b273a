"""The contract every registered method keeps, checked over ``methods.REGISTRY``: its module
computes what its ``to_dense()`` layer computes (hypothesis geometries), its ``macs`` are the
multiply-adds torch's flop counter counts, and its layers survive a bases file."""
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import recon
from recon import methods

NAMES = sorted(methods.REGISTRY)
layers = st.fixed_dictionaries({
    "c": st.integers(2, 6), "n": st.integers(2, 8), "k": st.tuples(st.integers(1, 4), st.integers(2, 4)),
    "stride": st.tuples(st.integers(1, 2), st.integers(1, 2)), "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)), "groups": st.sampled_from([1, 1, 1, 2]),
    "bias": st.booleans(), "linear": st.booleans(), "seed": st.integers(0, 100), "rank": st.floats(0, 1),
})


def make_layer(g):
    torch.manual_seed(g["seed"])
    if g["linear"]:
        return nn.Linear(g["c"] * 3, g["n"], bias=g["bias"]), (g["c"] * 3,)
    groups = g["groups"]
    conv = nn.Conv2d(g["c"] * groups, g["n"] * groups, g["k"], stride=g["stride"], padding=g["padding"],
                     dilation=g["dilation"], groups=groups, bias=g["bias"])
    return conv, (g["c"] * groups, 9, 9)


def quick_module(method, layer, fraction):
    geometry = method.geometry(layer)
    rank = max(1, round(fraction * method.max_rank(geometry)))
    fitted = method.quick_fit(layer.weight.detach().double().numpy(), rank, geometry.groups)
    bias = None if layer.bias is None else layer.bias.detach().double().numpy()
    return method.build(geometry, fitted, bias)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(g=layers)
def test_the_module_computes_its_dense_layer_and_counts_its_macs(name, g):
    method = methods.get(name)
    layer, shape = make_layer({**g, "linear": g["linear"] and name == "svd"})  # only svd replaces Linear layers
    assume(method.eligible(layer) is None)  # a layer the method refuses (with a reason) has no module to check
    module = quick_module(method, layer, g["rank"])
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(g["seed"]))
    with torch.no_grad():
        torch.testing.assert_close(module(x), module.to_dense()(x), atol=1e-4, rtol=1e-4)
        counter = FlopCounterMode(display=False)
        with counter:
            module(x[:1])
    assert module.macs(shape) == counter.get_total_flops() // 2  # one multiply-add is two flops


@pytest.mark.parametrize("name", NAMES)
def test_a_layer_of_every_method_survives_a_bases_file(name, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5)).eval()
    method = methods.get(name)
    layer = "0" if method.eligible(model[0]) is None else "3"
    rank = max(1, method.max_rank(method.geometry(model.get_submodule(layer))) // 2)
    result = recon.compress(model, layers=[layer], method=name, ranks=rank, example_input=torch.zeros(1, 4, 6, 6),
                            progress=False)
    path = result.save(tmp_path / f"{name}.h5")
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5)).eval()
    applied = recon.apply_bases(fresh, path)
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(applied(x), result.model(x))
    assert type(applied.get_submodule(layer)) is method.module_class
