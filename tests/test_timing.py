"""Side-by-side timing: calls alternate between modules, and channels_last times copies."""
import pytest
import torch
from torch import nn

from recon.bench.timing import Spread, median_latencies, round_latencies, spread_until_stable


class Recorder(nn.Module):
    """Identity that logs (its label, whether its input was channels_last) on every call."""

    def __init__(self, label, log):
        super().__init__()
        self.label = label
        self.record = lambda entry: log.append(entry)  # a function survives deepcopy; a list would be copied
        self.weight = nn.Parameter(torch.randn(4, 3, 2, 2))

    def forward(self, x):
        self.record((self.label, x.is_contiguous(memory_format=torch.channels_last)
                         and not x.is_contiguous()))
        return x


def test_calls_alternate_after_warmup():
    log = []
    a, b = Recorder("a", log), Recorder("b", log)
    times = median_latencies([a, b], torch.zeros(2, 3, 5, 5), repeats=4, warmup=1)
    assert [label for label, _ in log] == ["a", "b"] + ["a", "b"] * 4
    assert len(times) == 2 and all(t >= 0 for t in times)


def test_channels_last_times_converted_copies_and_leaves_the_originals():
    log = []
    module = Recorder("a", log)
    x = torch.randn(2, 3, 5, 5)
    median_latencies([module], x, repeats=2, warmup=0, channels_last=True)
    assert log and all(channels_last for _, channels_last in log)
    assert module.weight.is_contiguous() and x.is_contiguous()


def test_one_input_per_module_is_checked():
    with pytest.raises(ValueError, match="2 inputs for 1 modules"):
        median_latencies([nn.Identity()], [torch.zeros(1), torch.zeros(1)])


def test_rounds_are_separate_side_by_side_timings_and_spread_reports_their_range():
    log = []
    a, b = Recorder("a", log), Recorder("b", log)
    rounds = round_latencies([a, b], torch.zeros(2, 3, 5, 5), rounds=3, repeats=2)
    assert len(rounds) == 3 and all(len(times) == 2 for times in rounds)
    assert [label for label, _ in log] == (["a"] * 3 + ["b"] * 3 + ["a", "b"] * 2) * 3  # warmup, then alternating
    spread = Spread((1.5, 1.52, 1.56, 2.0))
    assert spread.median == pytest.approx(1.54)
    assert spread.describe() == "1.54x (1.50-2.00, 4 rounds)"
    assert not Spread((1.4, 1.6, 1.5, 2.0)).stable  # without the one outlier the rounds still range over 13%


def test_spread_until_stable_stops_once_the_rounds_agree_and_says_when_they_never_do():
    agreeing = iter([(2.0, 1.0), (2.1, 1.0), (1.96, 1.0), (5.0, 1.0)])
    spread = spread_until_stable(lambda: next(agreeing))
    assert spread.rounds == (2.0, 2.1, 1.96) and spread.stable and spread.low == 1.96
    outlier = iter([(2.0, 1.0), (3.0, 1.0), (2.0, 1.0), (2.05, 1.0), (9.0, 1.0)])
    spread = spread_until_stable(lambda: next(outlier))
    assert spread.rounds == (2.0, 3.0, 2.0, 2.05) and spread.middle == (2.0, 2.0, 2.05)  # one disturbed round does not decide
    assert spread.stable and spread.low == 2.0
    # two disturbed rounds of four do decide (a busy machine's 0.90-2.47x once passed as stable): timing goes on
    disturbed = iter([(2.47, 1.0), (0.9, 1.0), (1.26, 1.0), (1.27, 1.0), (0.95, 1.0), (2.2, 1.0), (1.1, 1.0),
                      (1.6, 1.0), (0.8, 1.0)])
    spread = spread_until_stable(lambda: next(disturbed), max_rounds=9)
    assert len(spread.rounds) == 9 and not spread.stable and "timings unstable" in spread.describe()
    noisy = iter([(1.0, 1.0), (2.0, 1.0)] * 5)
    spread = spread_until_stable(lambda: next(noisy), max_rounds=9)
    assert len(spread.rounds) == 9 and not spread.stable and "timings unstable" in spread.describe()
