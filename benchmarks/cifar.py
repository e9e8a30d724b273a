"""The real CIFAR-10 data of the residual-network benchmarks: the published ResNet-20 and the
CIFAR-10 images in ``../shared/data`` (or ``$RECON_SHARED_DATA``), split as its README says.

Calibration uses the first ``calibration`` training images only; top-1 agreement with the
dense model is measured on the remaining training images (never seen by the fit), accuracy
on the test images.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recon.zoo.cifar import CIFAR_MEAN, CIFAR_STD, load_cifar_resnet

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WEIGHTS, IMAGES = "resnet20-cifar10.th", "cifar10-subset.npz"


def data_dir() -> Path:
    """The folder with the published weights and images; SystemExit naming what is missing."""
    folder = Path(os.environ.get("RECON_SHARED_DATA", SHARED))
    missing = [name for name in (WEIGHTS, IMAGES) if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f"the real CIFAR-10 benchmark needs {', '.join(missing)} in {folder}; "
                         "set RECON_SHARED_DATA to the folder that holds them")
    return folder


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 NCHW RGB images as the published model's float32 inputs."""
    x = torch.from_numpy(images).float() / 255
    mean, std = torch.tensor(CIFAR_MEAN)[:, None, None], torch.tensor(CIFAR_STD)[:, None, None]
    return ((x - mean) / std).contiguous()


@dataclass
class Cifar:
    """The benchmark's model and its three image sets (normalised tensors, int64 labels)."""

    model: nn.Module
    calibration: torch.Tensor
    calibration_labels: torch.Tensor
    held_out: torch.Tensor
    held_out_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor

    def batches(self, batch_size: int = 256) -> list[torch.Tensor]:
        """The calibration images as a list of batches (what ``compress`` and ``calibrate`` read)."""
        return list(self.calibration.split(batch_size))


def load(calibration: int = 1024) -> Cifar:
    """The published ResNet-20 and the images: the first ``calibration`` training images to fit
    on, the remaining training images for agreement, the test images for accuracy."""
    folder = data_dir()
    arrays = np.load(folder / IMAGES)
    train, train_labels = normalise(arrays["train_x"]), torch.from_numpy(arrays["train_y"])
    if not 0 < calibration < len(train):
        raise SystemExit(f"calibration images must number 1..{len(train) - 1}, got {calibration}")
    return Cifar(load_cifar_resnet(folder / WEIGHTS, 20), train[:calibration], train_labels[:calibration],
                 train[calibration:],
                 train_labels[calibration:], normalise(arrays["test_x"]), torch.from_numpy(arrays["test_y"]))


def fashion(calibration: int = 1024, held_out: int = 3636) -> Cifar:
    """The bundled fmnist-resnet and Fashion-MNIST split the same way: the first ``calibration``
    training images to fit on, the next ``held_out`` for agreement, the 10,000 test images."""
    from recon import data, zoo

    images, labels = data.load_split("train")
    train, test = data.normalize(images[:calibration + held_out]), data.dataset("test")
    return Cifar(zoo.load_model("fmnist-resnet").eval(), train[:calibration], labels[:calibration], train[calibration:],
                 labels[calibration:calibration + held_out], test.tensors[0], test.tensors[1])


@torch.inference_mode()
def predictions(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Top-1 class of every image."""
    model.eval()
    return torch.cat([model(batch).argmax(1) for batch in images.split(batch_size)])


def quality(model: nn.Module, dense: nn.Module, data: Cifar) -> tuple[float, float]:
    """(test accuracy, top-1 agreement with ``dense`` on the held-out training images), as fractions."""
    accuracy = float((predictions(model, data.test) == data.test_labels).float().mean())
    agreement = float((predictions(model, data.held_out) == predictions(dense, data.held_out)).float().mean())
    return accuracy, agreement
