"""Accuracy vs measured speedup for every method on the bundled model.

    python -m benchmarks.accuracy_vs_speedup [--levels 2 4 10] [--finetune-images 5000]

conv2..conv5 are all compressed by the same factor r of multiply-adds (each layer gets the
largest rank whose MACs are at most dense / r). Methods: Scheme 2 with data reconstruction
(asymmetric), Scheme 2 filter (truncated SVD), Scheme 1 data, CP, Tucker-2 (equal ranks).
For each: test accuracy without fine-tuning, after one fine-tuning pass over
``--finetune-images`` training images (all parameters, Adam 1e-4), measured whole-model
speedup at batch 32 on this machine, and the conv MAC reduction. Writes a table to
RESULTS.md and the plot benchmarks/accuracy_vs_speedup.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import machine, markdown_table, write_section
from recon import compress, data, methods, zoo
from recon.bench.timing import latencies_by_format
from recon.errors import FitError
from recon.metrics import accuracy
from recon.nn import ConvGeometry
from recon.pipeline.finetune import finetune

LAYERS = ("conv2", "conv3", "conv4", "conv5")
CP_ITERATIONS = 50  # tensorly ALS iterations per CP fit (the CLI uses 200); keeps the benchmark short
PLOT = Path(__file__).resolve().parent / "accuracy_vs_speedup.png"
SETTINGS = {"scheme2-data-asym": ("scheme2", "asymmetric"), "scheme2-filter": ("scheme2", "filter"),
            "scheme1-data": ("scheme1", "data"), "cp": ("cp", "filter"), "tucker2": ("tucker2", "filter")}


def rank_for(method: str, conv, size: tuple[int, int], factor: float) -> int | None:
    """The largest rank of ``method`` whose MACs at ``size`` are at most the dense conv's / ``factor``."""
    return methods.get(method).rank_for_speedup(ConvGeometry.of(conv), size, factor) or None


def compress_all(model, label: str, factor: float, sizes, batches):
    """The compressed model, its ranks and the conv MAC reduction; FitError for failed CP fits."""
    method, mode = SETTINGS[label]
    ranks = {name: rank_for(method, getattr(model, name), sizes[name], factor) for name in LAYERS}
    ranks = {name: rank for name, rank in ranks.items() if rank is not None}
    result = compress(model, None if mode == "filter" else batches, ranks=ranks, mode=mode,
                      method=methods.with_settings(methods.resolve(method), {"cp": {"iterations": CP_ITERATIONS}}),
                      example_input=torch.zeros(1, 1, 28, 28), progress=False)
    dense = {name: ConvGeometry.of(getattr(model, name)).dense_macs(sizes[name]) for name in LAYERS}
    dense["conv1"] = ConvGeometry.of(model.conv1).dense_macs((28, 28))
    total = sum(result.layers[name].macs if name in result.layers else dense[name] for name in dense)
    return result.model, {name: record.rank for name, record in result.layers.items()}, sum(dense.values()) / total


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
    for method in dict.fromkeys(row["method"] for row in rows):
        points = [row for row in rows if row["method"] == method and row["accuracy"] is not None]
        for axis, key in zip(axes, ("macs", "measured", "measured_cl")):
            axis.plot([p[key] for p in points], [100 * p["accuracy"] for p in points], "o-", label=method)
    axes[0].set_xlabel("conv MAC reduction (x)")
    axes[1].set_xlabel("measured whole-model speedup, batch 32, NCHW (x)")
    axes[2].set_xlabel("measured whole-model speedup, batch 32, channels_last (x)")
    axes[0].set_ylabel("test accuracy, no fine-tuning (%)")
    for axis in axes:
        axis.axhline(100 * rows[0]["dense"], color="grey", linestyle="--", linewidth=1)
        axis.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    figure.suptitle("fmnist-alexnet: conv2-conv5 compressed by each method")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy_vs_speedup", description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[2, 4, 10], help="MAC reduction factors per layer")
    parser.add_argument("--methods", nargs="+",
                        default=["scheme2-data-asym", "scheme2-filter", "scheme1-data", "cp", "tucker2"])
    parser.add_argument("--finetune-images", type=int, default=5000, help="0 skips fine-tuning")
    parser.add_argument("--samples", type=int, default=4000)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = zoo.load_model("fmnist-alexnet")
    test = data.loader("test", batch_size=500)
    batches = lambda: data.loader("train", batch_size=250, limit=args.samples)
    timing = next(iter(batches()))[0][:32].contiguous()
    sizes = {"conv2": (14, 14), "conv3": (7, 7), "conv4": (7, 7), "conv5": (7, 7)}
    dense_acc = accuracy(model, test)
    rows = []
    for method in args.methods:
        for level in args.levels:
            row = {"method": method, "level": level, "dense": dense_acc, "accuracy": None}
            try:
                low, ranks, macs = compress_all(model, method, level, sizes, batches)
            except FitError as err:
                row.update(note=f"failed: {err}")
                rows.append(row)
                print(row, flush=True)
                continue
            measured, measured_cl = (dense / fast for dense, fast in latencies_by_format([model, low], timing).values())
            row.update(ranks=ranks, macs=macs, accuracy=accuracy(low, test), measured=measured, measured_cl=measured_cl)
            if args.finetune_images:
                train = data.loader("train", batch_size=128, shuffle=True, limit=args.finetune_images)
                finetune(low, train, 1, 1e-4, "all", report=lambda line: None)
                row["finetuned"] = accuracy(low, test)
            rows.append(row)
            print(row, flush=True)
    plot(rows)
    table = [[r["method"], f"{r['level']:g}x", r.get("ranks", r.get("note", "")),
              "" if r["accuracy"] is None else f"{r['macs']:.2f}x",
              "" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}",
              f"{100 * r['finetuned']:.2f}" if "finetuned" in r else "",
              "" if r["accuracy"] is None else f"{r['measured']:.2f}x",
              "" if r["accuracy"] is None else f"{r['measured_cl']:.2f}x"] for r in rows]
    body = "\n\n".join([
        "## Accuracy vs speedup, all methods (`python -m benchmarks.accuracy_vs_speedup`)",
        f"Machine: {machine()}. Dense fmnist-alexnet: {100 * dense_acc:.2f}% test accuracy. conv2..conv5 each "
        "reduced by the target factor of MACs (conv1 and the classifier stay dense; 'conv MACs' counts all five "
        f"convs). CP: {CP_ITERATIONS} ALS iterations. Fine-tuned = one pass over {args.finetune_images} training images, all parameters, Adam 1e-4. "
        "Measured = dense / low-rank time of the whole model at batch 32, same run, calls alternating, both models "
        "in the NCHW (default) or both in the channels_last memory format.",
        markdown_table(["method", "target", "ranks", "conv MACs", "test acc. %", "after fine-tune %", "measured NCHW",
                        "measured channels_last"], table),
        f"![accuracy vs speedup]({PLOT.name})",
    ])
    write_section("accuracy-vs-speedup", body)


if __name__ == "__main__":
    main()
