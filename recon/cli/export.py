"""Export the low-rank model to ONNX: ``python -m recon.export --bases FILE --out model.onnx``."""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch
from torch import nn

from recon.bench.onnx_timing import OPSET
from recon.cli import common, sources
from recon.errors import ConfigError
from recon.surgery import apply_bases


def check_writable(out: Path) -> None:
    """Refuse, before any work, an output path that cannot be written."""
    if out.is_dir():
        raise ConfigError(f"cannot write {out}: it is a directory")
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"cannot write {out}: permission denied")


def export_onnx(model: nn.Module, example: torch.Tensor, out: Path) -> Path:
    """Write ``model`` as ONNX (batch dimension dynamic) and return the path."""
    check_writable(out)
    torch.onnx.export(model.eval(), (example,), str(out), input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                      dynamo=False)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recon.export", description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=Path, required=True, help="bases file from recon.fit")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--model", default="fmnist-alexnet", help="bundled name or package.module:factory")
    parser.add_argument("--weights", type=Path, help="state dict for a --model factory")
    parser.add_argument("--input-size", type=common.input_size,
                        help="one input sample as CxHxW (default: the bundled model's, 1x28x28)")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="apply bases even if the model's weights differ from those fitted")
    return parser


def export(args: argparse.Namespace) -> int:
    check_writable(args.out)
    size = args.input_size or sources.input_size(args.model)
    if size is None:
        raise ConfigError("--input-size is needed for a user model (e.g. 3x32x32)")
    dense = sources.load_model(args.model, args.weights)
    sources.check_input_size(dense, size)
    model = apply_bases(copy.deepcopy(dense), args.bases, args.allow_mismatch)
    export_onnx(model, torch.zeros(1, *size), args.out)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.run(lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())
