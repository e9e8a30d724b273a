"""Shared fixtures: small random conv layers and real Fashion-MNIST statistics."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from recon import data, observe, zoo


@pytest.fixture(scope="session")
def model():
    return zoo.load_model("fmnist-alexnet")


@pytest.fixture(scope="session")
def conv2_moments(model):
    """Symmetric input statistics of conv2 from 500 real training images."""
    batches = data.loader("train", batch_size=250, limit=500)
    return observe(model, batches, ["conv2"], patches_per_image=16, progress=False)["conv2"]


def decaying_weights(shape, seed=0, decay=0.7) -> np.ndarray:
    """Random conv weights whose (C*kh) x (N*kw) spectrum decays geometrically."""
    n, c, kh, kw = shape
    rng = np.random.default_rng(seed)
    rows, cols = c * kh, n * kw
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    k = min(rows, cols)
    matrix = (u[:, :k] * decay ** np.arange(k)) @ v[:, :k].T
    return matrix.reshape(c, kh, n, kw).transpose(2, 0, 1, 3).astype(np.float32)


@pytest.fixture(scope="session", autouse=True)
def _latency_cache(tmp_path_factory):
    """Latency tables of the tests go to a folder of their own, not the user's cache."""
    os.environ["RECON_CACHE_DIR"] = str(tmp_path_factory.mktemp("recon-cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
