"""Bisection rank search against accuracies measured independently."""
import copy

from recon import data
from recon.evaluate import accuracy
from recon.fitting import FitSettings, fit_layer
from recon.search import search_layer


def test_search_returns_a_count_within_budget_and_smaller_counts_exceed_it(model):
    validation = data.loader("validation", batch_size=500, limit=1000)
    dense = accuracy(model, validation)
    settings = FitSettings(mode="filter")
    budget = 0.01
    found = search_layer(model, "conv3", settings, None, (7, 7), validation, dense, budget, report=lambda s: None)

    def drop(count):
        approx = copy.deepcopy(model)
        fit_layer(model, approx, "conv3", count, settings, None, (7, 7))
        return dense - accuracy(approx, validation)

    assert drop(found) <= budget
    assert found == 1 or drop(found - 1) > budget or drop(max(1, found // 2)) > budget
