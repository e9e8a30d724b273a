"""The never-slower guard keeps dense convs where the low-rank module is not faster."""
import time

import pytest
import torch
from torch import nn

import recon
from recon import apply_bases
from recon.bench.guard import GUARD_MAX_ROUNDS, guard_replacements, time_replacement
from recon.nn import LowRankExpConv
from recon.record import GuardDecision
from tests.fixture_models import tiny


class Sleepy(nn.Module):
    """Computes like ``inner`` but takes at least ``seconds`` per call."""

    def __init__(self, inner, seconds):
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.inner(x)


@pytest.mark.slow
def test_real_timing_rejects_a_slower_replacement_and_keeps_a_faster_one():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 8, 8)
    slow = Sleepy(recon.decompose(conv, 2), 0.1)
    assert not time_replacement(conv, slow, x, "slow", repeats=3).kept
    fast = recon.decompose(conv, 2)
    decision = time_replacement(Sleepy(conv, 0.1), fast, x, "fast", repeats=3)
    assert decision.kept and decision.speedup > 1.05


@pytest.mark.parametrize("dense_ms, low_ms, kept", [(1.0, 0.9, True), (1.0, 0.97, False), (1.0, 1.5, False)])
def test_decision_threshold_is_five_percent(monkeypatch, dense_ms, low_ms, kept):
    conv = nn.Conv2d(3, 3, 3)
    low = recon.decompose(conv, 2)
    monkeypatch.setattr("recon.bench.guard.median_latencies",
                        lambda modules, inputs, repeats, channels_last: [(dense_ms if m is conv else low_ms) / 1e3 for m in modules])
    decision = time_replacement(conv, low, torch.zeros(1, 3, 5, 5), "c")
    assert decision == GuardDecision("c", pytest.approx(dense_ms), pytest.approx(low_ms), kept)


def test_decision_takes_the_least_favourable_round(monkeypatch):
    conv = nn.Conv2d(3, 3, 3)
    low = recon.decompose(conv, 2)
    rounds = iter([[1.2e-3, 1e-3], [1.0e-3, 1e-3], [1.0e-3, 1e-3], [1.01e-3, 1e-3]])  # 1.2x, then parity
    monkeypatch.setattr("recon.bench.guard.median_latencies", lambda modules, inputs, repeats, channels_last: next(rounds))
    decision = time_replacement(conv, low, torch.zeros(1, 3, 5, 5), "c")
    assert not decision.kept and decision.speedup == pytest.approx(1.0)
    assert next(rounds, None) is None  # the first two disagreed, so it timed until the middle rounds agreed


def test_rounds_that_never_agree_stop_at_the_cap_and_decide_by_their_lower_end(monkeypatch):
    conv = nn.Conv2d(3, 3, 3)
    low = recon.decompose(conv, 2)
    ratios = [1.4, 0.9] * 10
    calls = iter(ratios)
    monkeypatch.setattr("recon.bench.guard.median_latencies",
                        lambda modules, inputs, repeats, channels_last: [next(calls) * 1e-3, 1e-3])
    decision = time_replacement(conv, low, torch.zeros(1, 3, 5, 5), "c")
    assert len(ratios) - len(list(calls)) == GUARD_MAX_ROUNDS
    assert not decision.kept and decision.speedup == pytest.approx(0.9)


def test_apply_bases_with_example_input_keeps_only_faster_layers(tmp_path, monkeypatch):
    model = tiny()
    path = recon.compress(model, ranks=2, progress=False).save(tmp_path / "b.h5")
    # features.0's replacement is "faster", features.4's is "slower"
    fake = {"features.0": (2.0, 1.0), "features.2": (2.0, 1.0), "features.4": (1.0, 2.0)}
    decisions = []

    def fake_guard(model, replacements, example, min_speedup, channels_last):
        result = [GuardDecision(name, *fake[name], fake[name][0] / fake[name][1] >= min_speedup)
                  for name in replacements]
        decisions.extend(result)
        return result

    monkeypatch.setattr("recon.surgery.guard_replacements", fake_guard)
    dense = model.features[4]
    apply_bases(model, path, example_input=torch.randn(1, 3, 11, 9))
    assert isinstance(model.features[0], LowRankExpConv)
    assert model.features[4] is dense
    assert {d.layer for d in decisions} == {"features.0", "features.2", "features.4"}


def test_guard_replacements_times_on_real_input_shapes():
    model = tiny()
    replacements = {"features.4": recon.decompose(model.features[4], 2)}
    decisions = guard_replacements(model, replacements, torch.randn(2, 3, 11, 9), repeats=3)
    assert [d.layer for d in decisions] == ["features.4"]
    assert decisions[0].dense_ms > 0 and decisions[0].low_rank_ms > 0
