"""Fashion-MNIST from the idx files of the Debian package ``dataset-fashion-mnist``.

The files are read as they ship (gzip-compressed idx), validated (magic number, item
count, image shape, label range) and returned as tensors. Nothing is downloaded: a missing
or damaged file is an error that names the file and the package that provides it.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from recon.errors import ConfigError, DataError

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
INSTALL_HINT = f"apt-get update && apt-get install -y {DEBIAN_PACKAGE}"

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
IMAGE_SIZE = 28
NUM_CLASSES = 10
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Per-pixel statistics of the training images (computed once from the 60,000 images).
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530


def data_dir() -> Path:
    """The folder holding the idx files: ``$RECON_DATA_DIR`` or the Debian package's."""
    return Path(os.environ.get("RECON_DATA_DIR", DEFAULT_DATA_DIR))


def _read_idx(path: Path, magic: int, count: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Read one idx file (gzip or plain) and check its header against what we expect."""
    if not path.is_file():
        raise DataError(
            f"Fashion-MNIST file {path} is missing. Install the Debian package "
            f"{DEBIAN_PACKAGE} ({INSTALL_HINT}) or point RECON_DATA_DIR at a folder "
            f"holding the idx files."
        )
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path} ({err}); reinstall {DEBIAN_PACKAGE}") from err
    ndim = 1 + len(item_shape)
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, no idx header; reinstall {DEBIAN_PACKAGE}")
    found_magic = struct.unpack(">I", raw[:4])[0]
    if found_magic != magic:
        raise DataError(f"{path} has magic number {found_magic}, expected {magic}: not this idx file")
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = (count, *item_shape)
    if dims != expected:
        raise DataError(f"{path} declares shape {dims}, expected {expected}")
    payload = np.frombuffer(raw, dtype=np.uint8, offset=header_size)
    if payload.size != int(np.prod(expected)):
        raise DataError(
            f"{path} is truncated or padded: {payload.size} data bytes, expected "
            f"{int(np.prod(expected))}; reinstall {DEBIAN_PACKAGE}"
        )
    return payload.reshape(expected)


def _split_file(split: str, kind: str) -> Path:
    return data_dir() / f"{SPLIT_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (n, 28, 28) and labels as int64 (n,) for ``split`` in {train, test}."""
    if split not in SPLIT_SIZES:
        raise ConfigError(f"unknown split {split!r}; allowed: {sorted(SPLIT_SIZES)} (and 'validation' in dataset())")
    count = SPLIT_SIZES[split]
    images = _read_idx(_split_file(split, "images"), IMAGE_MAGIC, count, (IMAGE_SIZE, IMAGE_SIZE))
    label_path = _split_file(split, "labels")
    labels = _read_idx(label_path, LABEL_MAGIC, count, ())
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{label_path} has label {labels.max()}, allowed 0..{NUM_CLASSES - 1}")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 28, 28) images to float32 (n, 1, 28, 28), standardised with the training statistics."""
    return ((images.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD).unsqueeze(1)


VALIDATION_SIZE = 5_000  # the last 5,000 training images: for model selection, never for fitting


def dataset(split: str, limit: int | None = None, offset: int = 0) -> TensorDataset:
    """Normalised images and labels of a split: ``limit`` items from ``offset`` (default all).

    ``split`` may also be ``validation``: the last VALIDATION_SIZE training images. Fitting
    code that wants data disjoint from it uses ``fit_split_size()`` training images at most.
    """
    if split == "validation":
        split, offset = "train", SPLIT_SIZES["train"] - VALIDATION_SIZE + offset
        limit = VALIDATION_SIZE if limit is None else min(limit, VALIDATION_SIZE)
    images, labels = load_split(split)
    stop = None if limit is None else offset + limit
    return TensorDataset(normalize(images[offset:stop]), labels[offset:stop])


def fit_split_size() -> int:
    """How many leading training images are disjoint from the validation split."""
    return SPLIT_SIZES["train"] - VALIDATION_SIZE


def loader(split: str, batch_size: int = 256, limit: int | None = None,
           shuffle: bool = False, seed: int = 0, offset: int = 0) -> DataLoader:
    """A DataLoader over ``dataset(split, limit, offset)``; shuffling is seeded."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset(split, limit, offset), batch_size=batch_size, shuffle=shuffle,
                      generator=generator)
