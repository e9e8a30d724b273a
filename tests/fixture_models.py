"""Small user-side models and data factories for the CLI tests (``--model tests.fixture_models:tiny``)."""
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1),
                                      nn.ReLU(), nn.Conv2d(8, 6, (3, 5), padding=(1, 2)))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny()


def tiny_batches():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 10, 10, generator=generator) for _ in range(3)]


def broken():
    raise RuntimeError("this factory always fails")


def only_linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))


# --data factories a hostile or careless user might pass
def wrong_channels():
    return [torch.randn(4, 5, 10, 10)]


def unbatched():
    return [torch.randn(3, 10, 10)]


def labels_only():
    return [torch.randint(0, 10, (4,))]


def uint8_images():
    return [torch.randint(0, 255, (4, 3, 10, 10), dtype=torch.uint8)]


def float64_images():
    return [torch.randn(4, 3, 10, 10, dtype=torch.float64)]


def numpy_images():
    import numpy as np

    return [np.random.default_rng(0).standard_normal((4, 3, 10, 10)).astype(np.float32)]


def dict_batches():
    return [{"image": torch.randn(4, 3, 10, 10), "label": torch.zeros(4)}]


def no_batches():
    return []


def raising():
    def batches():
        yield torch.randn(4, 3, 10, 10)
        raise OSError("disk went away")
    return _Restartable(batches)


def nan_images():
    images = torch.randn(4, 3, 10, 10)
    images[1, 0, 2, 2] = float("nan")
    return [torch.randn(4, 3, 10, 10), images]


def endless():
    def batches():
        while True:
            yield torch.randn(4, 3, 10, 10)
    return _Restartable(batches)


class _Restartable:
    """A re-iterable wrapper of a generator function."""

    def __init__(self, function):
        self.function = function

    def __iter__(self):
        return self.function()
