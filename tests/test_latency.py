"""Latency tables: the rank grid, interpolation, real timings, and the cache file reused."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

from recon import methods
from recon.bench import latency
from recon.bench.latency import LatencyCache, LayerLatency, layer_latency, rank_grid, table_key


@given(top=st.integers(1, 5000), points=st.integers(2, 12))
def test_rank_grid_spans_one_to_the_largest_rank(top, points):
    grid = rank_grid(top, points)
    assert grid[0] == 1 and grid[-1] == top and len(grid) <= points
    assert grid == sorted(set(grid))


def test_latency_is_linear_between_timed_ranks_and_flat_beyond():
    table = LayerLatency(2.0, (1, 5, 9), (0.2, 1.0, 1.4))
    assert table.at(3) == pytest.approx(0.6)
    assert table.at(7) == pytest.approx(1.2)
    assert table.at(20) == pytest.approx(1.4)
    np.testing.assert_allclose(table.at(np.array([1, 5])), [0.2, 1.0])


def test_a_real_table_times_dense_and_every_grid_rank():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    table = layer_latency(methods.get("scheme2"), conv, torch.randn(4, 16, 12, 12), repeats=3)
    assert table.ranks == tuple(rank_grid(methods.get("scheme2").max_rank(methods.get("scheme2").geometry(conv))))
    assert table.dense > 0 and all(s > 0 for s in table.seconds)


def test_the_cache_file_is_reused_and_keyed_by_what_changes_latency(tmp_path, monkeypatch):
    calls = []

    def fake(modules, inputs, repeats, channels_last):
        calls.append(len(modules))
        return [1.0] + [0.1 * i for i in range(1, len(modules))]

    monkeypatch.setattr(latency, "median_latencies", fake)
    path = tmp_path / "cache" / "latency.json"
    method, conv, x = methods.get("scheme2"), nn.Conv2d(8, 8, 3), torch.randn(2, 8, 9, 9)
    cache = LatencyCache(path)
    first = layer_latency(method, conv, x, cache=cache)
    cache.save()
    again = layer_latency(method, conv, x, cache=LatencyCache(path))
    assert again == first and len(calls) == 1  # read back from the file, not timed again
    layer_latency(method, conv, x, channels_last=True, cache=LatencyCache(path))
    layer_latency(method, conv, torch.randn(4, 8, 9, 9), cache=LatencyCache(path))
    assert len(calls) == 3  # another memory format or batch is another table
    keys = json.loads(path.read_text())
    assert list(keys) == [table_key(method, conv, x, False)]


def test_a_damaged_cache_file_counts_as_empty(tmp_path):
    path = tmp_path / "latency.json"
    path.write_text("{not json")
    assert LatencyCache(path).tables == {}
