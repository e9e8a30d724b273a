"""Measured speed of LowRankExpConv vs nn.Conv2d, side by side in one run.

    python -m benchmarks.inference_speed [--quick] [--device cpu|cuda]

For the bundled model's convs (at their real input sizes) and VGG-16 conv shapes, batch 1
and 32, Scheme 1 and Scheme 2 with the largest number of bases whose theoretical speedup
(dense MACs / low-rank MACs) is at least 2x and 4x; Scheme 2 on grouped (ResNeXt / RegNet
shapes), depthwise 5x5 and 7x7 (MobileNet / ConvNeXt) and 1x1 convs in a section of its own. Reports measured speedup (dense time /
low-rank time), theoretical speedup, and efficiency = measured / theoretical. Random
factors: values don't change the time. Whole bundled model: Scheme 2 on conv2..conv5 at
the same targets.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import machine, markdown_table, write_section
from recon import methods
from recon.bench.placeholders import random_module
from recon.bench.timing import latencies_by_format
from recon.nn import ConvGeometry, LowRankModule

BUNDLED = [("fmnist conv2", 64, 128, 5, 14), ("fmnist conv3", 128, 192, 3, 7), ("fmnist conv4", 192, 192, 3, 7)]
VGG = [("VGG 64->64 @224", 64, 64, 3, 224), ("VGG 256->256 @56", 256, 256, 3, 56),
       ("VGG 512->512 @28", 512, 512, 3, 28), ("VGG 512->512 @14", 512, 512, 3, 14)]


def module_for_speedup(conv: nn.Conv2d, method: str, target: float, size: int) -> LowRankModule | None:
    """``method``'s module (random factors) at the largest rank whose theoretical speedup at
    ``size`` is >= ``target``; None when no rank reaches it."""
    geometry = ConvGeometry.of(conv)
    rank = methods.get(method).rank_for_speedup(geometry, (size, size), target)
    return random_module(methods.get(method), geometry, rank) if rank else None


def layer_rows(cases, batches, targets, device, repeats) -> list[list[object]]:
    rows = []
    for name, c, n, k, size in cases:
        conv = nn.Conv2d(c, n, k, padding=k // 2).to(device)
        for batch in batches:
            x = torch.randn(batch, c, size, size, device=device)
            for scheme in (1, 2):
                for target in targets:
                    low = module_for_speedup(conv, f"scheme{scheme}", target, size)
                    if low is None:
                        rows.append([name, batch, scheme, f">={target}x", "-", "unreachable"] + [""] * 6)
                        continue
                    low = low.to(device)
                    theory = low.theoretical_speedup((size, size))
                    rows.append([name, batch, scheme, f">={target}x", low.rank, f"{theory:.2f}x"]
                                + measured_cells(conv, low, x, repeats, theory))
                    print(rows[-1], flush=True)
    return rows


def measured_cells(dense: nn.Module, low: nn.Module, x: torch.Tensor, repeats: int, theory: float) -> list[str]:
    """Per memory format: dense / low-rank ms, measured speedup, efficiency (measured / theoretical)."""
    cells = []
    for t_dense, t_low in latencies_by_format([dense, low], x, repeats).values():
        measured = t_dense / t_low
        cells += [f"{1e3 * t_dense:.2f} / {1e3 * t_low:.2f}", f"{measured:.2f}x", f"{measured / theory:.2f}"]
    return cells


# (label, in, out, kernel, groups, size, ranks per group: ints, or MAC reduction targets as "2x")
COVERAGE = [("grouped 3x3 128->128 g=32 @28", 128, 128, 3, 32, 28, ["2x", "4x"]),
            ("grouped 3x3 256->256 g=8 @14", 256, 256, 3, 8, 14, ["2x", "4x"]),
            ("depthwise 5x5 C=256 @28", 256, 256, 5, 256, 28, [1, 2]),
            ("depthwise 7x7 C=384 @14", 384, 384, 7, 384, 14, [1, 2, 3]),
            ("1x1 256->256 @28", 256, 256, 1, 1, 28, ["2x", "4x"]),
            ("1x1 512->2048 @7", 512, 2048, 1, 1, 7, ["2x", "4x"])]


def coverage_rows(device: str, repeats: int) -> list[list[object]]:
    """Scheme 2 on grouped, depthwise and 1x1 convolutions (random factors), batch 1 and 32."""
    method = methods.get("scheme2")
    rows = []
    for label, c, n, k, groups, size, choices in COVERAGE:
        conv = nn.Conv2d(c, n, k, padding=k // 2, groups=groups).to(device)
        geometry = ConvGeometry.of(conv)
        for batch in (1, 32):
            x = torch.randn(batch, c, size, size, device=device)
            for choice in choices:
                rank = choice if isinstance(choice, int) else method.rank_for_speedup(
                    geometry, (size, size), float(choice[:-1]))
                low = random_module(method, geometry, rank).to(device)
                theory = low.theoretical_speedup((size, size))
                rows.append([label, batch, rank, f"{theory:.2f}x"] + measured_cells(conv, low, x, repeats, theory))
                print(rows[-1], flush=True)
    return rows


def onnx_seconds(model: nn.Module, x: torch.Tensor, repeats: int, folder: Path) -> float | None:
    """Median onnxruntime (CPU) time of ``model`` exported to ONNX; None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    from recon.cli.export import export_onnx

    path = export_onnx(model.cpu(), torch.zeros(1, *x.shape[1:]), folder / f"m{id(model)}.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"images": x.cpu().numpy()}
    for _ in range(2):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def whole_model_rows(targets, device, repeats) -> list[list[object]]:
    from recon import zoo
    from recon.surgery import replace_layer

    rows = []
    dense = zoo.load_model("fmnist-alexnet").to(device)
    sizes = {"conv2": 14, "conv3": 7, "conv4": 7, "conv5": 7}
    with tempfile.TemporaryDirectory() as folder:
        for batch in (1, 32):
            x = torch.randn(batch, 1, 28, 28, device=device)
            for target in targets:
                low = zoo.load_model("fmnist-alexnet").to(device)
                for name, size in sizes.items():
                    replace_layer(low, name, module_for_speedup(getattr(dense, name), "scheme2", target, size).to(device))
                row = [batch, f">={target}x per layer (conv2-5)"]
                for t_dense, t_low in latencies_by_format([dense, low], x, repeats).values():
                    row.append(f"{1e3 * t_dense:.2f} / {1e3 * t_low:.2f} = {t_dense / t_low:.2f}x")
                onnx = ""
                if device == "cpu":
                    o_dense = onnx_seconds(dense, x, repeats, Path(folder))
                    o_low = onnx_seconds(low, x, repeats, Path(folder))
                    onnx = "" if o_dense is None else f"{1e3 * o_dense:.2f} / {1e3 * o_low:.2f} = {o_dense / o_low:.2f}x"
                rows.append(row + [onnx])
                print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bundled shapes and batch 1 only")
    parser.add_argument("--coverage-only", action="store_true",
                        help="only the grouped, depthwise and 1x1 rows (their own RESULTS section)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = args.device.startswith("cuda")
    coverage = coverage_rows(args.device, args.repeats)
    write_section(f"coverage-{args.device}", "\n\n".join([
        f"## Grouped, depthwise and 1x1 convolutions on {args.device} "
        f"(`python -m benchmarks.inference_speed --device {args.device}`)",
        f"Machine: {machine()}.",
        "Scheme 2 per group (depthwise: each kernel a sum of K separable filters; 1x1: two 1x1 convs) with random "
        "factors against the dense conv, calls alternating; rank = K per group, for a MAC reduction target or given; "
        "theoretical = dense MACs / low-rank MACs; efficiency = measured / theoretical.",
        markdown_table(["layer", "batch", "rank", "theoretical", "NCHW dense / low-rank ms", "NCHW measured",
                        "NCHW efficiency", "channels_last dense / low-rank ms", "channels_last measured",
                        "channels_last efficiency"], coverage)]))
    if args.coverage_only:
        return
    targets = (2, 4)
    cases = BUNDLED if args.quick else BUNDLED + VGG
    batches = (1,) if args.quick else (1, 32)
    rows = layer_rows(cases, batches, targets, args.device, args.repeats)
    whole = whole_model_rows(targets, args.device, args.repeats)
    body = "\n\n".join([
        f"## Inference speed on {args.device} (`python -m benchmarks.inference_speed --device {args.device}`)",
        f"Machine: {machine()}.",
        "Measured speedup = dense time / low-rank time (medians of repeated runs, calls alternating, same input, "
        "same run), with dense and low-rank both in the NCHW (default) or both in the channels_last memory format; "
        "theoretical = dense MACs / low-rank MACs; efficiency = measured / theoretical.",
        markdown_table(["layer", "batch", "scheme", "target", "bases", "theoretical", "NCHW dense / low-rank ms",
                        "NCHW measured", "NCHW efficiency", "channels_last dense / low-rank ms",
                        "channels_last measured", "channels_last efficiency"], rows),
        "Whole fmnist-alexnet, Scheme 2 on conv2..conv5 with each layer at the target:",
        markdown_table(["batch", "setting", "torch NCHW dense / low-rank ms", "torch channels_last dense / low-rank ms",
                        "onnxruntime dense / low-rank ms"], whole),
    ])
    write_section(f"inference-{args.device}", body)


if __name__ == "__main__":
    main()
