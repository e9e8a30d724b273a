"""Export the low-rank model to ONNX: ``python -m recon.export --bases FILE --out model.onnx``."""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

from recon import sources
from recon.store import BasesFileError
from recon.surgery import apply_bases

OPSET = 17


def export_onnx(model: nn.Module, example: torch.Tensor, out: Path) -> Path:
    """Write ``model`` as ONNX (batch dimension dynamic) and return the path."""
    if not out.parent.is_dir():
        raise ValueError(f"cannot write {out}: folder {out.parent} does not exist")
    torch.onnx.export(model.eval(), (example,), str(out), input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=OPSET,
                      dynamo=False)
    return out


def low_rank_model(model_spec: str, bases: Path, weights: Path | None = None) -> nn.Module:
    """The model of ``model_spec`` with the layers of ``bases`` replaced."""
    return apply_bases(copy.deepcopy(sources.load_model(model_spec, weights)), bases)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recon.export", description=__doc__.splitlines()[0])
    parser.add_argument("--bases", type=Path, required=True, help="bases file from recon.fit")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--model", default="fmnist-alexnet", help="bundled name or package.module:factory")
    parser.add_argument("--weights", type=Path, help="state dict for a --model factory")
    parser.add_argument("--input-shape", default="1,28,28", help="C,H,W of one input image")
    args = parser.parse_args(argv)
    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
        if len(shape) != 3:
            raise ValueError(f"--input-shape must be C,H,W, got {args.input_shape!r}")
        model = low_rank_model(args.model, args.bases, args.weights)
        export_onnx(model, torch.zeros(1, *shape), args.out)
    except (ValueError, BasesFileError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
