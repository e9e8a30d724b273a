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
from recon.pipeline.target_speedup import TargetSpeedup
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


class FakeTimer:
    """Stands in for ``median_latencies``: the dense layer takes 1 s, a module of rank r
    0.02 r s, times ``factor``; every other call is ``scatter`` slower on the low-rank side."""

    def __init__(self, factor=1.0, scatter=0.0):
        self.factor, self.scatter, self.calls = factor, scatter, []

    def __call__(self, modules, inputs, repeats, channels_last):
        self.calls.append(len(modules))
        wobble = 1 + self.scatter * (len(self.calls) % 2)
        return [1.0] + [0.02 * module.rank * self.factor * wobble for module in modules[1:]]

    def grids(self):
        """Calls that timed a whole grid (not a two-module re-check)."""
        return sum(count > 2 for count in self.calls)


@pytest.fixture
def timer(monkeypatch):
    fake = FakeTimer()
    monkeypatch.setattr(latency, "median_latencies", fake)
    return fake


def test_the_cache_file_is_reused_and_keyed_by_what_changes_latency(tmp_path, timer):
    path = tmp_path / "cache" / "latency.json"
    method, conv, x = methods.get("scheme2"), nn.Conv2d(8, 8, 3), torch.randn(2, 8, 9, 9)
    cache = LatencyCache(path)
    first = layer_latency(method, conv, x, cache=cache)
    assert timer.calls == [len(first.ranks) + 1] * latency.ROUNDS and first.spread == 0
    cache.save()
    again = layer_latency(method, conv, x, cache=LatencyCache(path))
    assert again == first and timer.grids() == latency.ROUNDS  # read back from the file, only re-checked
    assert timer.calls[latency.ROUNDS:] == [2] * latency.CHECK_ROUNDS
    layer_latency(method, conv, x, channels_last=True, cache=LatencyCache(path))
    layer_latency(method, conv, torch.randn(4, 8, 9, 9), cache=LatencyCache(path))
    assert timer.grids() == 3 * latency.ROUNDS  # another memory format or batch is another table
    keys = json.loads(path.read_text())
    assert list(keys) == [table_key(method, conv, x, False)]
    assert keys[table_key(method, conv, x, False)]["load"] >= 0


def test_a_table_timed_on_a_busy_machine_serves_its_run_but_is_not_cached(tmp_path, timer):
    timer.scatter = 0.6  # rounds 60% apart
    path = tmp_path / "latency.json"
    method, conv, x = methods.get("scheme2"), nn.Conv2d(8, 8, 3), torch.randn(2, 8, 9, 9)
    cache = LatencyCache(path)
    table = layer_latency(method, conv, x, cache=cache)
    assert not table.stable and table.spread == pytest.approx(0.6 / 1.6)  # rounds 1.6, 1, 1.6 apart
    assert cache.get(table_key(method, conv, x, False)) == table and list(cache.unstable.values()) == [table]
    cache.save()
    assert not path.exists()
    assert "timings unstable: 1 latency table(s) scattered by up to 38%" in latency.unstable_warning([table])


def test_a_cached_table_the_machine_no_longer_shows_is_timed_again_and_replaced(tmp_path, timer):
    path = tmp_path / "latency.json"
    method, conv, x = methods.get("scheme2"), nn.Conv2d(8, 8, 3), torch.randn(2, 8, 9, 9)
    cache = LatencyCache(path)
    noisy = layer_latency(method, conv, x, cache=cache)
    cache.save()
    timer.factor = 0.5  # the low-rank modules now measure twice as fast relative to dense
    cache = LatencyCache(path)
    fresh = layer_latency(method, conv, x, cache=cache)
    assert timer.grids() == 2 * latency.ROUNDS
    np.testing.assert_allclose(fresh.seconds, np.array(noisy.seconds) * 0.5)
    cache.save()
    assert LatencyCache(path).get(table_key(method, conv, x, False)).seconds == fresh.seconds
    timer.factor = 0.5 * 1.1  # within the tolerance: reused
    assert layer_latency(method, conv, x, cache=LatencyCache(path)) == fresh and timer.grids() == 2 * latency.ROUNDS


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"k": [1.0, [1, 2], [0.1]]}',
                                     '{"k": {"dense": -1, "ranks": [1], "seconds": [0.1]}}', "\x00\xff"])
def test_a_damaged_or_foreign_cache_file_is_ignored_with_a_warning_and_rewritten(tmp_path, timer, caplog, content):
    path = tmp_path / "latency.json"
    path.write_text(content)
    cache = LatencyCache(path)
    assert cache.tables == {} and "ignoring the latency cache" in caplog.text
    method, conv, x = methods.get("scheme2"), nn.Conv2d(8, 8, 3), torch.randn(2, 8, 9, 9)
    table = layer_latency(method, conv, x, cache=cache)
    cache.save()
    assert LatencyCache(path).tables == {table_key(method, conv, x, False): table}


def test_an_old_cache_entry_is_read_and_re_checked(tmp_path, timer):
    path = tmp_path / "latency.json"
    method, conv, x = methods.get("scheme2"), nn.Conv2d(8, 8, 3), torch.randn(2, 8, 9, 9)
    ranks = rank_grid(method.max_rank(method.geometry(conv)))
    path.write_text(json.dumps({table_key(method, conv, x, False): [1.0, ranks, [0.02 * r for r in ranks]]}))
    table = layer_latency(method, conv, x, cache=LatencyCache(path))
    assert table.ranks == tuple(ranks) and timer.calls == [2] * latency.CHECK_ROUNDS


def test_a_cache_folder_that_cannot_be_written_costs_one_warning_not_the_run(tmp_path, timer, caplog, monkeypatch):
    def refuse(path, write):  # as a read-only folder does (root ignores the folder's mode)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(latency, "replace_atomically", refuse)
    cache = LatencyCache(tmp_path / "latency.json")
    method, conv, x = methods.get("scheme2"), nn.Conv2d(8, 8, 3), torch.randn(2, 8, 9, 9)
    table = layer_latency(method, conv, x, cache=cache)
    cache.save()
    assert table.dense == 1.0 and caplog.text.count("cannot be written") == 1
    assert not (tmp_path / "latency.json").exists()


def test_the_cache_command_lists_and_clears(tmp_path, timer, monkeypatch, capsys):
    from recon.cli import cache as command
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    assert command.main(["list"]) == 0 and "no latency cache" in capsys.readouterr().out
    cache = LatencyCache(tmp_path / "latency.json")
    layer_latency(methods.get("scheme2"), nn.Conv2d(8, 8, 3), torch.randn(2, 8, 9, 9), cache=cache)
    cache.save()
    assert command.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "1 table(s)" in listed and "scheme2" in listed and "spread 0%" in listed and "input 2x8x9x9" in listed
    assert command.main(["clear"]) == 0 and "removed" in capsys.readouterr().out
    assert not (tmp_path / "latency.json").exists()


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
    policy = TargetSpeedup(1.2, cache=False, max_layer_loss=None, max_output_change=None)
    result = recon.compress(tiny(), tiny_batches, layers=["features.0", "features.4"], ranks=policy,
                            timing=recon.Timing(4, backend="onnxruntime", repeats=3), progress=False)
    assert "onnxruntime" in result.outcome.description and result.config.to_dict()["timing"]["backend"] == "onnxruntime"
    with pytest.raises(ConfigError, match="onnxruntime backend chooses its own layouts"):
        recon.Timing(channels_last=True, backend="onnxruntime")
