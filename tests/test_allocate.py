"""The Lagrangian allocation against brute force over every combination of choices."""
import itertools

import numpy as np
from hypothesis import given, settings, strategies as st

from recon.pipeline.allocate import LayerChoices, allocate


def layer(rng: np.random.Generator, size: int) -> LayerChoices:
    """Dense (rank 0, slowest, no loss) and ``size`` ranks: faster ones lose more."""
    seconds = np.concatenate([[1.0], np.sort(rng.uniform(0.05, 1.0, size))])
    losses = np.concatenate([[0.0], np.sort(rng.uniform(0.0, 1.0, size))[::-1]])
    return LayerChoices(tuple(range(size + 1)), seconds, losses)


def total(layers, ranks, field):
    return sum(getattr(layers[name], field)[layers[name].index(rank)] for name, rank in ranks.items())


def brute_force_loss(layers, budget):
    names = list(layers)
    best = np.inf
    for combo in itertools.product(*(range(len(layers[n].options)) for n in names)):
        if sum(layers[n].seconds[i] for n, i in zip(names, combo)) <= budget + 1e-12:
            best = min(best, sum(layers[n].losses[i] for n, i in zip(names, combo)))
    return best


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), count=st.integers(1, 4), size=st.integers(1, 5), fraction=st.floats(-0.5, 1.2))
def test_allocation_fits_the_budget_and_is_optimal_for_the_time_it_takes(seed, count, size, fraction):
    rng = np.random.default_rng(seed)
    layers = {f"layer{i}": layer(rng, size) for i in range(count)}
    fastest = sum(float(c.seconds.min()) for c in layers.values())
    budget = fastest + fraction * (count - fastest)  # below the fastest allocation when fraction < 0
    ranks = allocate(layers, budget)
    used = total(layers, ranks, "seconds")
    if fastest <= budget:
        assert used <= budget + 1e-9
        # a Lagrangian solution is optimal among all allocations that take no more time than it does
        assert total(layers, ranks, "losses") <= brute_force_loss(layers, used) + 1e-9
    else:
        assert used == fastest


def test_a_budget_that_fits_every_dense_layer_keeps_them_dense():
    layers = {"a": layer(np.random.default_rng(0), 3), "b": layer(np.random.default_rng(1), 3)}
    assert allocate(layers, 2.0) == {"a": 0, "b": 0}


def test_an_unreachable_budget_gives_the_fastest_choices():
    choices = LayerChoices((0, 1, 2), np.array([1.0, 0.5, 0.7]), np.array([0.0, 0.4, 0.2]))
    assert allocate({"a": choices}, 0.1) == {"a": 1}


def test_the_layer_whose_loss_is_cheapest_per_second_is_compressed_first():
    robust = LayerChoices((0, 1), np.array([1.0, 0.4]), np.array([0.0, 0.01]))
    fragile = LayerChoices((0, 1), np.array([1.0, 0.4]), np.array([0.0, 0.5]))
    assert allocate({"robust": robust, "fragile": fragile}, 1.5) == {"robust": 1, "fragile": 0}
