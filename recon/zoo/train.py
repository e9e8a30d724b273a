"""Train a bundled model on Fashion-MNIST: ``python -m recon.zoo.train --model fmnist-resnet``.

Seeded and CPU-friendly: random 2-pixel shifts and horizontal flips, AdamW with a one-cycle
schedule and label smoothing, in the channels_last memory format (faster on CPUs).
``fmnist-alexnet`` trains with batch normalisation and ships it folded into its convolutions;
``fmnist-resnet`` keeps its BatchNorm modules, as real networks do.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from recon import data
from recon.metrics import accuracy
from recon.zoo import BUNDLED, file_sha256
from recon.zoo.models import FmnistAlexNet, FmnistResNet, fold_batchnorm

RECIPES = {  # model name -> (build the trainable model, turn it into the shipped one, default epochs)
    "fmnist-alexnet": (lambda: FmnistAlexNet(batchnorm=True), fold_batchnorm, 8),
    "fmnist-resnet": (FmnistResNet, lambda model: model.eval(), 8),
}


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 2-pixel shifts (zero-padded crops) and horizontal flips of a batch."""
    padded = F.pad(images, (2, 2, 2, 2), value=float(images.min()))
    batch = images.shape[0]
    dy, dx = torch.randint(0, 5, (2,), generator=generator).tolist()
    shifted = padded[:, :, dy:dy + 28, dx:dx + 28]
    flip = torch.rand(batch, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], shifted.flip(-1), shifted)


def train(name: str, epochs: int, batch_size: int, lr: float, seed: int, out: Path) -> None:
    build, finish, _ = RECIPES[name]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_loader = data.loader("train", batch_size=batch_size, shuffle=True, seed=seed)
    model = build().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(train_loader))
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch")
        for images, labels in bar:
            inputs = augment(images, generator).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(inputs), labels, label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    minutes = (time.perf_counter() - start) / 60
    shipped = finish(model.eval()).to(memory_format=torch.contiguous_format)
    test_accuracy = accuracy(shipped, data.loader("test", batch_size=500))
    torch.save(shipped.state_dict(), out)
    print(f"trained {name} for {epochs} epochs in {minutes:.1f} min; test accuracy {100 * test_accuracy:.2f}%")
    print(f"saved {out} (sha256 {file_sha256(out)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recon.zoo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(RECIPES), default="fmnist-alexnet", help="bundled model to train")
    parser.add_argument("--epochs", type=int, help="training epochs (default 8)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, help="where to save the weights (default: the bundled weights file)")
    args = parser.parse_args(argv)
    train(args.model, args.epochs or RECIPES[args.model][2], args.batch_size, args.lr, args.seed,
          args.out or BUNDLED[args.model].weights)


if __name__ == "__main__":
    main()
