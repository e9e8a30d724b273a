"""TargetSpeedup measures the fitted model: each layer's share of the output change in the
approximated network, and ranks traded back when the fitted model breaks the output bound."""
import copy
import logging

import pytest
import torch

import recon
from recon.bench.latency import LayerLatency, rank_grid
from recon.pipeline.outputs import relative_change
from recon.pipeline.prediction import contributions
from recon.surgery import replace_layer
from tests.fixture_models import tiny, tiny_batches

LAYERS = ["features.0", "features.2", "features.4"]


@pytest.mark.slow
def test_each_layers_share_is_the_change_that_goes_when_it_alone_is_dense_again():
    model = tiny()
    approx = recon.compress(model, tiny_batches, ranks=3, progress=False).model
    sample = torch.cat(tiny_batches())
    change, shares = contributions(model, approx, LAYERS, sample)
    with torch.no_grad():
        reference = model(sample)
        assert change == pytest.approx(float(relative_change(approx(sample), reference)), rel=1e-5)
        for name in LAYERS:  # independent truth: a copy of the approximated model with that layer dense
            restored = copy.deepcopy(approx)
            replace_layer(restored, name, copy.deepcopy(model.get_submodule(name)))
            expected = change - float(relative_change(restored(sample), reference))
            assert shares[name] == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert change > 0 and any(share > 0 for share in shares.values())


def _stub_timing(monkeypatch):
    """Layer tables where a rank's time grows with the rank, and a whole model measured at 2x."""
    def layer_latency(method, layer, inputs, channels_last, cache, backend):
        ranks = tuple(rank_grid(method.max_rank(method.geometry(layer))))
        return LayerLatency(1.0, ranks, tuple(0.05 + 0.01 * rank for rank in ranks))

    monkeypatch.setattr("recon.pipeline.target_speedup.layer_latency", layer_latency)
    monkeypatch.setattr("recon.pipeline.target_speedup.latencies", lambda backend: (
        lambda models, inputs, repeats, channels_last: [1.0] + [0.5] * (len(models) - 1)))


def _compress(revisions: int, monkeypatch):
    monkeypatch.setattr("recon.pipeline.compress.REVISIONS", revisions)
    policy = recon.TargetSpeedup(10, cache=False, max_layer_loss=None, max_output_change=0.05)
    return recon.compress(tiny(), tiny_batches, layers=LAYERS, ranks=policy, patches_per_image=None,
                          timing=recon.Timing(4), progress=False)


@pytest.mark.slow
def test_a_fitted_model_that_breaks_the_bound_gets_rank_back(monkeypatch, caplog):
    """Sensitivities stubbed a thousand times too small: the search's prediction promises an
    output change far below the bound, the fitted model breaks it, and the revision must give
    rank back until the measured change falls."""
    _stub_timing(monkeypatch)
    monkeypatch.setattr("recon.pipeline.target_speedup.output_sensitivities",
                        lambda model, probes, sample: {name: 1e-3 for name in probes})
    first = _compress(0, monkeypatch)
    with caplog.at_level(logging.INFO, logger="recon"):
        revised = _compress(2, monkeypatch)
    assert first.outcome.output_change > 0.05 * 1.1  # the unrevised fit breaks the bound
    assert "rank allocation revised" in caplog.text
    assert revised.outcome.output_change < first.outcome.output_change
    ranks = lambda result: {r.name: r.rank for r in result.kept}
    assert all(ranks(revised).get(name, 10 ** 6) >= rank for name, rank in ranks(first).items())
    sample = torch.cat(tiny_batches())  # the sensitivity sample: up to 256 samples of the first batches
    with torch.no_grad():
        independent = float(relative_change(revised.model(sample).double(), tiny()(sample).double()))
    assert revised.outcome.output_change == pytest.approx(independent, rel=1e-6)
    assert "output change measured" in revised.outcome.description
