"""Fine-tune a low-rank model on Fashion-MNIST: ``python -m recon.finetune --bases FILE --epochs N``.

Loads the bundled model, replaces the layers of the bases file, and trains either only the
new low-rank factors (``--train factors``, default) or every parameter (``--train all``)
with Adam, reporting test accuracy before training and after each epoch. Saves the
fine-tuned model's state dict; load it with ``apply_bases(model, FILE)`` followed by
``model.load_state_dict(torch.load(OUT))``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from recon import data, sources
from recon.evaluate import accuracy
from recon.modules import LowRankExpConv
from recon.store import BasesFileError
from recon.surgery import apply_bases


def trainable_parameters(model: torch.nn.Module, which: str) -> list[torch.nn.Parameter]:
    """Parameters to train: those of the LowRankExpConv modules, or all."""
    if which == "all":
        return list(model.parameters())
    params = [p for m in model.modules() if isinstance(m, LowRankExpConv) for p in m.parameters()]
    if not params:
        raise ValueError("the bases file replaced no layer: nothing to fine-tune with --train factors")
    return params


def finetune(model: torch.nn.Module, epochs: int, lr: float, which: str, batch_size: int = 128,
             seed: int = 0, limit: int | None = None, test_limit: int | None = None,
             report=print) -> list[float]:
    """Train ``model`` in place; returns test accuracy before training and after each epoch."""
    torch.manual_seed(seed)
    params = trainable_parameters(model, which)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    train = data.loader("train", batch_size=batch_size, shuffle=True, seed=seed, limit=limit)
    test = data.loader("test", batch_size=500, limit=test_limit)
    history = [accuracy(model, test)]
    report(f"epoch 0: test accuracy {100 * history[0]:.2f}%")
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        for images, labels in tqdm(train, desc=f"epoch {epoch}/{epochs}", unit="batch"):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        history.append(accuracy(model, test))
        report(f"epoch {epoch}: test accuracy {100 * history[-1]:.2f}% ({time.perf_counter() - start:.0f} s)")
    return history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recon.finetune", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bases", type=Path, required=True, help="bases file from recon.fit")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    parser.add_argument("--train", choices=("factors", "all"), default="factors", help="which parameters to train")
    parser.add_argument("--limit", type=int, help="train on the first N training images only")
    parser.add_argument("--out", type=Path, help="state dict to write (default: next to the bases file)")
    parser.add_argument("--model", default="fmnist-alexnet", help="bundled model name")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        out = args.out or args.bases.with_suffix(".finetuned.pt")
        if not out.parent.is_dir():
            raise ValueError(f"cannot write {out}: folder {out.parent} does not exist")
        model = apply_bases(sources.load_model(args.model), args.bases)
        finetune(model, args.epochs, args.lr, args.train, seed=args.seed, limit=args.limit)
        torch.save(model.state_dict(), out)
        print(f"saved {out}")
    except (ValueError, BasesFileError, data.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
