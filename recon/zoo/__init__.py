"""Bundled reference models, loadable by name without any download."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from recon.errors import ConfigError
from recon.zoo.models import CONV_NAMES, FmnistAlexNet, FmnistResNet, fold_batchnorm

ZOO_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bundled:
    """A bundled model: how to build it, its shipped weights, one input sample's shape."""

    factory: Callable[[], nn.Module]
    weights: Path
    input_size: tuple[int, ...]


BUNDLED = {"fmnist-alexnet": Bundled(FmnistAlexNet, ZOO_DIR / "fmnist_alexnet.pt", (1, 28, 28)),
           "fmnist-resnet": Bundled(FmnistResNet, ZOO_DIR / "fmnist_resnet.pt", (1, 28, 28))}

__all__ = ["BUNDLED", "CONV_NAMES", "FmnistAlexNet", "FmnistResNet", "file_sha256", "fold_batchnorm", "load_model",
           "weights_path"]


def _bundled(name: str) -> Bundled:
    if name not in BUNDLED:
        raise ConfigError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    return BUNDLED[name]


def weights_path(name: str) -> Path:
    """Path of the shipped weights of bundled model ``name``."""
    return _bundled(name).weights


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_model(name: str = "fmnist-alexnet") -> nn.Module:
    """The trained bundled model ``name`` in eval mode."""
    bundled = _bundled(name)
    if not bundled.weights.is_file():
        raise ConfigError(f"weights of {name!r} are missing at {bundled.weights}; retrain with `python -m recon.zoo.train`")
    model = bundled.factory()
    model.load_state_dict(torch.load(bundled.weights, map_location="cpu", weights_only=True))
    return model.eval()
