"""Fine-tune a low-rank model on Fashion-MNIST: ``python -m recon.finetune --bases FILE --epochs N``.

Loads the bundled model, replaces the layers of the bases file, and trains either only the
low-rank factors (``--train factors``, default) or every parameter (``--train all``) with
Adam on the labels and the dense model's predictions (distillation), step sizes relative to
each tensor's size and clipped gradients, reporting test accuracy before training and after
each epoch; the state of the best validation accuracy (last 5,000 training images, the state
before training included) is kept. Saves the fine-tuned
factors as a bases file that ``apply_bases`` loads; with ``--train all`` the other layers
changed too, so the whole state dict is saved beside it (``.pt``).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from recon import data
from recon.cli import common, sources
from recon.cli.export import check_writable
from recon.errors import ConfigError
from recon.io.bases_file import BasesFile, check_replaceable, read_bases, write_bases
from recon.pipeline.finetune import TRAINABLE, finetune
from recon.record import retrained_records
from recon.surgery import apply_bases


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recon.finetune", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bases", type=Path, required=True, help="bases file from recon.fit")
    parser.add_argument("--epochs", type=common.positive_int, default=1)
    parser.add_argument("--lr", type=common.positive_float, default=1e-3,
                        help="Adam step size relative to each parameter tensor's RMS value")
    parser.add_argument("--train", choices=TRAINABLE, default="factors", help="which parameters to train")
    parser.add_argument("--limit", type=common.positive_int, help="train on the first N training images only")
    parser.add_argument("--out", type=Path, help="bases file to write (default: FILE with .finetuned.h5)")
    parser.add_argument("--model", default="fmnist-alexnet", help="bundled model name")
    parser.add_argument("--device", type=common.device, help="train on this device (e.g. cuda); default: cpu")
    parser.add_argument("--seed", type=common.seed, default=0, help="seed for shuffling and training (0..2**32-1)")
    parser.add_argument("--force", action="store_true",
                        help="replace --out even when it is not a bases file of this model (e.g. a checkpoint)")
    return parser


def run_finetune(args: argparse.Namespace) -> int:
    if not sources.is_bundled(args.model):
        raise ConfigError(f"--model must be a bundled model ({', '.join(sources.zoo.BUNDLED)}): training uses "
                          "Fashion-MNIST")
    out = args.out or args.bases.with_suffix(".finetuned.h5")
    source = read_bases(args.bases)
    check_replaceable(out, source.model_sha256, args.force)  # before training, not after
    state_out = out.with_suffix(".pt")
    if args.train == "all":
        check_writable(state_out)
    dense = sources.load_model(args.model).to(args.device or "cpu")
    model = apply_bases(copy.deepcopy(dense), args.bases)
    train = data.loader("train", batch_size=128, shuffle=True, seed=args.seed,  # not the validation images
                        limit=min(args.limit or data.fit_split_size(), data.fit_split_size()))
    finetune(model, train, args.epochs, args.lr, args.train, data.loader("test", batch_size=500), args.seed,
             teacher=dense, validation=data.loader("validation", batch_size=500))
    records = retrained_records(dense, model.cpu(), source.layers, "finetuned")
    write_bases(out, BasesFile(source.model, source.model_sha256, {r.name: r for r in records}), args.force)
    print(f"saved {out}")
    if args.train == "all":
        torch.save(model.state_dict(), state_out)
        print(f"saved {state_out} (--train all changed layers outside the bases file too: load it with "
              "model.load_state_dict after apply_bases)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.run(lambda: run_finetune(args))


if __name__ == "__main__":
    sys.exit(main())
