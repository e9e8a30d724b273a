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
