"""Target-speedup rank selection."""
import re

import numpy as np
import pytest
import torch

from recon import fit
from recon.ranks import LayerOptions, dense_macs_by_layer, greedy_ranks, layer_options, select_ranks
from recon.stats import gather_moments
from recon.store import read_bases
from tests.fixture_models import tiny, tiny_batches


def option(name, dense, errors, macs_per_rank):
    errors = np.asarray(errors, float)
    return LayerOptions(name, dense, errors, macs_per_rank * np.arange(1, len(errors) + 1), lambda r: None)


def test_greedy_prefers_least_error_per_mac_and_reaches_goal():
    cheap = option("cheap", 100, [0.5, 0.1, 0.01, 0.0], 10)      # low error even at small rank
    costly = option("costly", 100, [0.9, 0.6, 0.3, 0.0], 10)
    ranks, predicted = greedy_ranks([cheap, costly], other_macs=0, goal=1.5)
    assert predicted >= 1.5
    assert ranks["cheap"] is not None
    assert ranks["costly"] is None or ranks["costly"] >= ranks["cheap"]
    total = sum(o.dense_macs if ranks[o.name] is None else o.macs[ranks[o.name] - 1] for o in (cheap, costly))
    assert predicted == pytest.approx(200 / total)


def test_unreachable_goal_stops_at_smallest_ranks():
    only = option("a", 100, [0.5, 0.2], 40)
    ranks, predicted = greedy_ranks([only], other_macs=100, goal=10)
    assert ranks == {"a": 1}
    assert predicted == pytest.approx(200 / 140)


def test_layer_options_match_explicit_errors_and_macs():
    model = tiny()
    conv = model.features[0]
    moments = gather_moments(model, "features.0", tiny_batches(), progress=False)
    options = layer_options(conv, "features.0", moments, (10, 10))
    assert len(options.errors) == 9
    assert options.errors[-1] == pytest.approx(0, abs=1e-9)
    assert np.all(np.diff(options.errors) <= 1e-9)
    assert options.macs[0] == 3 * 3 * 10 * 10 + 8 * 3 * 10 * 10
    assert options.dense_macs == dense_macs_by_layer(model, torch.zeros(1, 3, 10, 10))["features.0"]


def test_cli_target_speedup_fits_chosen_ranks(tmp_path, capsys):
    out = tmp_path / "t.h5"
    code = fit.main(["--model", "tests.fixture_models:tiny", "--data", "tests.fixture_models:tiny_batches",
                     "--layer", "all", "--target-speedup", "1.3", "--guard-batch", "4", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert re.search(r"predicted \d+\.\d+x from MACs, measured \d+\.\d+x", captured.err)
    assert "whole model: target 1.30x, measured" in captured.out
    assert set(read_bases(out).layers) <= {"features.0", "features.4"}


def test_cli_needs_exactly_one_of_bases_and_target(tmp_path, capsys):
    assert fit.main(["--model", "tests.fixture_models:tiny", "--layer", "all", "--out", str(tmp_path / "x.h5")]) == 2
    assert "exactly one of --bases, --target-speedup and --accuracy-budget" in capsys.readouterr().err


def test_select_ranks_raises_the_goal_until_the_measured_speedup_clears_the_margin(monkeypatch):
    """Timing stubbed as 'time = MACs + a fixed cost that low-rank layers cannot remove'."""
    options = [option("conv", 1000, 0.5 * 0.6 ** np.arange(1, 10), 100)]  # convex: the greedy steps one rank at a time
    fixed = 500

    def fake_latencies(models, inputs, repeats, channels_last):
        _, ranks = models  # the stubbed model_with_ranks hands over the chosen ranks
        return [1000 + fixed, (1000 if ranks["conv"] is None else 100 * ranks["conv"]) + fixed]

    monkeypatch.setattr("recon.ranks.median_latencies", fake_latencies)
    monkeypatch.setattr("recon.ranks.model_with_ranks", lambda model, options, ranks: dict(ranks))
    lines = []
    selection = select_ranks(tiny(), options, other_macs=0, target=1.4, example=torch.zeros(1, 3, 10, 10),
                             report=lines.append, margin=0.05)
    # MACs first stop at rank 6 (1.67x >= 1.47x), measured 1500/1100 = 1.36x; then rank 5: 1500/1000 = 1.5x >= 1.47x
    assert selection.ranks == {"conv": 5}
    assert selection.measured == pytest.approx(1.5)
    assert len(lines) == 2


def test_select_ranks_rejects_a_target_of_one_or_less():
    with pytest.raises(ValueError, match="must be > 1"):
        select_ranks(tiny(), [], 0, 1.0, torch.zeros(1, 3, 10, 10))
