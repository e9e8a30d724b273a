"""Shared fixtures: small random conv layers and real Fashion-MNIST statistics.

Loading this file imports neither torch nor recon: the tests of ``solvers/`` run without torch
(tests/test_layout.py checks it). Fixtures that need them import them when they run; torch-free
helpers live in tests/helpers.py.
"""
from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(scope="session")
def model():
    from recon import zoo

    return zoo.load_model("fmnist-alexnet")


@pytest.fixture(scope="session")
def conv2_moments(model):
    """Symmetric input statistics of conv2 from 500 real training images."""
    from recon import data, observe

    batches = data.loader("train", batch_size=250, limit=500)
    return observe(model, batches, ["conv2"], patches_per_image=16, progress=False)["conv2"]


@pytest.fixture(scope="session", autouse=True)
def _latency_cache(tmp_path_factory):
    """Latency tables of the tests go to a folder of their own, not the user's cache."""
    os.environ["RECON_CACHE_DIR"] = str(tmp_path_factory.mktemp("recon-cache"))


@pytest.fixture(autouse=True)
def _seed():
    """Seed torch before each test, if anything has loaded it (every test that uses torch imports it at
    module level, so it is loaded by then); a torch-free test does not import it."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)
