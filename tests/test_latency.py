"""Latency tables: the rank grid, interpolation, real timings, and the cache file reused."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

import recon
from recon import methods
from recon.bench import latency
from recon.bench.latency import LatencyCache, LayerLatency, layer_latency, rank_grid, table_key
from recon.bench.onnx_timing import onnxruntime_latencies
from recon.errors import ConfigError
from recon.pipeline.policies import TargetSpeedup
from tests.fixture_models import tiny, tiny_batches


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


def test_onnxruntime_times_modules_side_by_side_and_keys_its_tables_apart(tmp_path):
    pytest.importorskip("onnxruntime")
    method, conv, x = methods.get("scheme2"), nn.Conv2d(8, 16, 3, padding=1), torch.randn(4, 8, 12, 12)
    seconds = onnxruntime_latencies([conv, nn.Sequential(conv, nn.ReLU())], x, repeats=3)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    cache = LatencyCache(tmp_path / "latency.json")
    table = layer_latency(method, conv, x, cache=cache, repeats=2, backend="onnxruntime")
    assert table.dense > 0 and len(table.seconds) == len(table.ranks)
    assert table_key(method, conv, x, False, "onnxruntime") != table_key(method, conv, x, False)
    assert cache.get(table_key(method, conv, x, False, "onnxruntime")) == table
    with pytest.raises(ConfigError, match="channels_last is a torch memory format"):
        onnxruntime_latencies([conv], x, channels_last=True)
    with pytest.raises(ConfigError, match="unknown latency backend 'tvm'; available: torch, onnxruntime"):
        layer_latency(method, conv, x, backend="tvm")


def test_target_speedup_runs_on_onnxruntime_end_to_end():
    pytest.importorskip("onnxruntime")
    policy = TargetSpeedup(1.2, torch.randn(4, 3, 10, 10), cache=False, repeats=3, backend="onnxruntime",
                           max_layer_loss=None, max_output_change=None)
    result = recon.compress(tiny(), tiny_batches, layers=["features.0", "features.4"], ranks=policy, progress=False)
    assert "onnxruntime" in result.outcome.description and result.config.ranks["backend"] == "onnxruntime"
    with pytest.raises(ConfigError, match="onnxruntime backend chooses its own layouts"):
        TargetSpeedup(2, torch.zeros(1, 3, 10, 10), channels_last=True, backend="onnxruntime")
