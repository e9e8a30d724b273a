"""Bundled reference models, loadable by name without any download."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from recon.zoo.models import CONV_NAMES, FmnistAlexNet, fold_batchnorm

ZOO_DIR = Path(__file__).resolve().parent
BUNDLED = {"fmnist-alexnet": (FmnistAlexNet, ZOO_DIR / "fmnist_alexnet.pt")}

__all__ = ["BUNDLED", "CONV_NAMES", "FmnistAlexNet", "fold_batchnorm", "load_model", "weights_path", "file_sha256"]


def weights_path(name: str) -> Path:
    """Path of the shipped weights of bundled model ``name``."""
    if name not in BUNDLED:
        raise KeyError(f"unknown bundled model {name!r}; bundled: {sorted(BUNDLED)}")
    return BUNDLED[name][1]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_model(name: str = "fmnist-alexnet") -> nn.Module:
    """The trained bundled model ``name`` in eval mode."""
    factory, path = BUNDLED[name] if name in BUNDLED else (None, weights_path(name))
    if not path.is_file():
        raise FileNotFoundError(
            f"weights of {name!r} are missing at {path}; retrain with `python -m recon.zoo.train`"
        )
    model = factory()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
