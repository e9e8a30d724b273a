"""Fit low-rank separable bases to a model's convolutions and save them as HDF5.

    python -m recon.fit --layer conv2 --bases 48

fits Scheme 2 with data reconstruction to conv2 of the bundled fmnist-alexnet on
Fashion-MNIST training images and writes bases/fmnist-alexnet.h5 (existing layers of that
file are kept). The file is rewritten atomically after every layer, so an interrupted run
keeps what was saved before it.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from recon import data, ranks, sources
from recon.baselines import peer_layer
from recon.evaluate import accuracy
from recon.fitting import FitSettings, check_num_bases, fit_model, layer_input_sizes
from recon.modules import ConvGeometry
from recon.search import search_ranks
from recon.stats import gather_moments
from recon.store import BasesFileError, LayerBases, model_sha256, update_bases
from recon.surgery import eligible_layers, get_conv, get_linear
from recon.timing import median_latencies
from solvers.schedule import LambdaSchedule

DEFAULTS = LambdaSchedule()
PEER_METHODS = ("cp", "tucker2", "svd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recon.fit", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="fmnist-alexnet",
                        help="bundled model name or package.module:factory returning an nn.Module")
    parser.add_argument("--weights", type=Path, help="state dict to load into a --model factory's model")
    parser.add_argument("--data", help="package.module:factory returning an iterable of input batches; "
                        "the bundled model uses Fashion-MNIST training images")
    parser.add_argument("--layer", action="append", required=True,
                        help="qualified conv name (repeatable), or 'all' for every eligible conv")
    parser.add_argument("--bases",
                        help="number of bases for every layer, or name=N pairs separated by commas "
                        "(or let --target-speedup / --accuracy-budget choose them)")
    parser.add_argument("--accuracy-budget", type=float,
                        help="choose bases per layer by bisection so that validation accuracy (last 5,000 "
                        "training images) drops by at most this many points in total (bundled model)")
    parser.add_argument("--target-speedup", type=float,
                        help="choose Scheme 2 ranks per layer so that the measured whole-model speedup "
                        "(batch of --guard-batch) reaches this factor (the search aims 3%% above it, for timing "
                        "noise); layers that don't pay stay dense")
    parser.add_argument("--scheme", type=int, choices=(1, 2), default=2, help="Jaderberg et al. scheme")
    parser.add_argument("--method", choices=("scheme1", "scheme2") + PEER_METHODS,
                        help="scheme1/scheme2 (same as --scheme), or a peer for comparison: cp (rank R), "
                        "tucker2 (R for both ranks, or 'evbmf'), svd (nn.Linear layers, rank R); peers "
                        "reconstruct weights only")
    parser.add_argument("--mode", choices=("filter", "data"),
                        help="reconstruct the weights (filter) or the layer's responses (data); "
                        "unset: data when data is available, else filter")
    parser.add_argument("--asymmetric", action="store_true",
                        help="data mode: fit each layer to inputs from the already approximated network")
    parser.add_argument("--samples", type=int, default=4000, help="images used for statistics")
    parser.add_argument("--patches-per-image", type=int, default=32,
                        help="patch locations sampled per image for statistics (0: all)")
    parser.add_argument("--lbfgs-iterations", type=int, default=200, help="Scheme 2 data mode L-BFGS iterations")
    schedule = parser.add_argument_group("Scheme 1 lambda schedule (relative units)")
    schedule.add_argument("--lambda-min", type=float, default=DEFAULTS.lambda_min)
    schedule.add_argument("--lambda-max", type=float, default=DEFAULTS.lambda_max)
    schedule.add_argument("--lambda-growth", type=float, default=DEFAULTS.growth)
    schedule.add_argument("--stages", type=int, default=DEFAULTS.max_stages)
    schedule.add_argument("--steps-per-stage", type=int, default=DEFAULTS.steps_per_stage)
    schedule.add_argument("--rank-tol", type=float, default=DEFAULTS.rank_tol,
                          help="stop once every basis has sigma2/sigma1 below this")
    parser.add_argument("--out", type=Path, help="bases file (default: bases/<model>.h5)")
    parser.add_argument("--seed", type=int, default=0, help="seed for patch sampling")
    parser.add_argument("--guard", action="store_true",
                        help="time each fitted layer against its dense conv (batch of --guard-batch) and keep "
                        "the dense conv unless the low-rank one is at least 5%% faster")
    parser.add_argument("--guard-batch", type=int, default=32, help="batch size the guard times with")
    parser.add_argument("--channels-last", action="store_true",
                        help="time the guard and --target-speedup with the models and inputs in the channels_last "
                        "memory format (on CPUs the faster layout for dense and low-rank models alike; time in the "
                        "format your inference code uses)")
    parser.add_argument("--eval", action="store_true", help="report test accuracy, dense vs low-rank")
    return parser


def parse_bases(text: str, layers: list[str]) -> dict[str, int]:
    """``48`` or ``conv2=48,conv3=64`` -> number of bases per layer."""
    try:
        if "=" not in text:
            return {name: int(text) for name in layers}
        pairs = dict(item.split("=", 1) for item in text.split(","))
        counts = {name.strip(): int(value) for name, value in pairs.items()}
    except ValueError:
        raise ValueError(f"--bases must be a whole number or name=N pairs separated by commas, got {text!r}") from None
    missing = [name for name in layers if name not in counts]
    if missing:
        raise ValueError(f"--bases gives no number for layer(s) {', '.join(missing)}")
    return {name: counts[name] for name in layers}


def resolve_layers(model: torch.nn.Module, requested: list[str]) -> list[str]:
    """Layer names in model order; 'all' means every eligible conv."""
    if "all" in requested:
        return eligible_layers(model)
    for name in requested:
        get_conv(model, name)
    return [name for name, _ in model.named_modules() if name in requested]


def warn_if_slower(layer: LayerBases) -> None:
    """Tell the user when the chosen bases cost more multiply-adds than the dense layer."""
    if layer.theoretical_speedup >= 1:
        return
    g: ConvGeometry = layer.geometry
    (kh, kw), c, n = g.kernel_size, g.in_channels, g.out_channels
    if layer.scheme == 1:
        hint = f"Scheme 1 breaks even near M = {max(1, int(kh * kw * n / (kh + kw + n)))} bases; Scheme 2 is cheaper here"
    else:
        hint = f"Scheme 2 breaks even near K = {max(1, int(kh * kw * c * n / (kh * c + kw * n)))}"
    print(f"warning: {layer.name} with {layer.num_bases} bases (scheme {layer.scheme}) costs "
          f"{1 / layer.theoretical_speedup:.2f}x the dense multiply-adds, so it will be slower; {hint}",
          file=sys.stderr)


def print_table(rows: list[tuple[LayerBases, float]]) -> None:
    header = f"{'layer':<12} {'scheme':>6} {'bases':>5} {'mode':>6} {'filter err':>10} {'data err':>9} {'speedup':>8} {'fit s':>7}"
    print(header)
    print("-" * len(header))
    for layer, seconds in rows:
        print(f"{layer.name:<12} {layer.scheme:>6} {layer.num_bases:>5} {layer.mode:>6} "
              f"{layer.filter_rel_error:>10.4f} {layer.data_rel_error:>9.4f} "
              f"{layer.theoretical_speedup:>7.2f}x {seconds:>7.2f}")


def timing_example(args: argparse.Namespace, example: torch.Tensor | None) -> torch.Tensor:
    """The batch that layers and models are timed on: --guard-batch inputs shaped like the data."""
    if example is None:
        raise ValueError("--guard and --target-speedup need data (--data for a user model) to time layers "
                         "on their real input shapes")
    if args.guard_batch < 1:
        raise ValueError(f"--guard-batch must be >= 1, got {args.guard_batch}")
    return example[:1].expand(args.guard_batch, *example.shape[1:]).contiguous()


def guard_example(args: argparse.Namespace, example: torch.Tensor | None) -> torch.Tensor | None:
    """The guard's timing batch, or None when --guard is off."""
    return timing_example(args, example) if args.guard else None


def choose_ranks(args: argparse.Namespace, model: torch.nn.Module, layers: list[str], batches, example,
                 sizes: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Scheme 2 ranks per layer meeting --target-speedup as measured; dense layers are left out."""
    if args.scheme != 2:
        raise ValueError("--target-speedup selects Scheme 2 ranks; use --scheme 2")
    if batches is None:
        raise ValueError("--target-speedup needs data to rank layers by data error (--data for a user model)")
    timing_batch = timing_example(args, example)
    options = [ranks.layer_options(get_conv(model, name), name,
                                   gather_moments(model, name, batches(), None, args.patches_per_image or None,
                                                  args.seed), sizes[name]) for name in layers]
    all_macs = ranks.dense_macs_by_layer(model, example)
    other = sum(macs for name, macs in all_macs.items() if name not in layers)
    report = lambda line: print(line, file=sys.stderr)
    selection = ranks.select_ranks(model, options, other, args.target_speedup, timing_batch, report=report,
                                   channels_last=args.channels_last)
    chosen = {name: rank for name, rank in selection.ranks.items() if rank is not None}
    print(f"chosen ranks {chosen}: predicted {selection.predicted:.2f}x from MACs, measured {selection.measured:.2f}x "
          "with truncated-SVD factors", file=sys.stderr)
    if not chosen:
        raise ValueError("no layer pays off at this target; nothing to fit")
    return chosen


def peer_rank(args: argparse.Namespace, model: torch.nn.Module, name: str) -> int | tuple[int, int] | None:
    """The rank ``--bases`` gives a peer for layer ``name`` (Tucker-2: both ranks, capped; None: EVBMF)."""
    if args.method == "tucker2" and args.bases == "evbmf":
        return None
    count = parse_bases(args.bases, [name])[name]
    if args.method != "tucker2":
        return count
    conv = get_conv(model, name)
    return min(count, conv.out_channels), min(count, conv.in_channels)


def fit_peers(args: argparse.Namespace, model: torch.nn.Module, out: Path, sizes) -> int:
    """Fit a peer decomposition (``--method cp|tucker2|svd``) to each layer and save it."""
    rows = []
    model_hash = model_sha256(model)
    for name in args.layer:
        rank = peer_rank(args, model, name)
        layer = get_linear(model, name) if args.method == "svd" else get_conv(model, name)
        start = time.perf_counter()
        record = peer_layer(layer, name, args.method, rank, sizes.get(name))
        update_bases(out, args.model, model_hash, [record])
        rows.append((record, time.perf_counter() - start))
    print(f"{'layer':<14} {'method':>8} {'filter err':>10} {'speedup':>8} {'fit s':>7}")
    for record, seconds in rows:
        print(f"{record.name:<14} {record.method:>8} {record.filter_rel_error:>10.4f} "
              f"{record.theoretical_speedup:>7.2f}x {seconds:>7.2f}")
    return 0


def data_source(args: argparse.Namespace, bundled: bool):
    """A callable returning a fresh iterable of batches, or None when there is no data."""
    if args.data is not None:
        return lambda: sources.load_batches(args.data)
    if bundled:
        if args.samples > data.fit_split_size():
            raise ValueError(f"--samples must be <= {data.fit_split_size()}: the last {data.VALIDATION_SIZE} "
                             "training images are the validation split")
        return lambda: data.loader("train", batch_size=250, limit=args.samples)
    return None


def first_inputs(batches) -> torch.Tensor | None:
    """The input tensor of the first batch (batches may yield tensors or (inputs, labels))."""
    if batches is None:
        return None
    batch = next(iter(batches()))
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def input_sizes(model: torch.nn.Module, layers: list[str], example: torch.Tensor | None) -> dict:
    """Each layer's input (H, W) from one example image; large-input limit without data."""
    if example is None:
        return {name: (1024, 1024) for name in layers}
    return layer_input_sizes(model, layers, example[:1])


def choose_counts(args, model, layers, settings, batches, example, sizes, bundled) -> dict[str, int]:
    """Bases per layer from --bases, --target-speedup or --accuracy-budget."""
    if sum(x is not None for x in (args.bases, args.target_speedup, args.accuracy_budget)) != 1:
        raise ValueError("give exactly one of --bases, --target-speedup and --accuracy-budget")
    if args.target_speedup is not None:
        counts = choose_ranks(args, model, layers, batches, example, sizes)
    elif args.accuracy_budget is not None:
        if not bundled:
            raise ValueError("--accuracy-budget measures Fashion-MNIST validation accuracy: bundled model only")
        counts = search_ranks(model, layers, replace(settings, guard_input=None), batches, sizes,
                              data.loader("validation", batch_size=500), args.accuracy_budget / 100,
                              report=lambda line: print(line, file=sys.stderr))
    else:
        counts = parse_bases(args.bases, layers)
    for name, count in counts.items():
        check_num_bases(get_conv(model, name), args.scheme, count, name)
    return counts


def report_results(args, model, approx, example, bundled) -> None:
    """The whole-model lines after the table: measured speedup and test accuracy when asked."""
    if args.target_speedup is not None:
        timing_batch = timing_example(args, example)
        t_dense, t_low = median_latencies([model, approx], timing_batch, ranks.WHOLE_MODEL_REPEATS,
                                        channels_last=args.channels_last)
        layout = "channels_last" if args.channels_last else "NCHW"
        print(f"whole model: target {args.target_speedup:.2f}x, measured {t_dense / t_low:.2f}x "
              f"(batch {args.guard_batch}, {layout}, fitted bases)")
    if args.eval:
        if not bundled:
            raise ValueError("--eval measures Fashion-MNIST test accuracy and needs the bundled model")
        test = data.loader("test", batch_size=500)
        dense, low = accuracy(model, test, progress=True), accuracy(approx, test, progress=True)
        print(f"test accuracy: dense {100 * dense:.2f}%  low-rank {100 * low:.2f}%  ({100 * (low - dense):+.2f} points)")


def run(args: argparse.Namespace) -> int:
    model = sources.load_model(args.model, args.weights)
    if args.method in ("scheme1", "scheme2"):
        args.scheme = int(args.method[-1])
    bundled = args.model in sources.zoo.BUNDLED
    batches = data_source(args, bundled)
    mode = args.mode or ("data" if batches is not None else "filter")
    if mode == "data" and batches is None:
        raise ValueError("--mode data needs --data package.module:factory for a user model")
    out = args.out or Path("bases") / f"{Path(args.model.replace(':', '.')).name}.h5"
    if not out.parent.is_dir():
        raise BasesFileError(f"output folder {out.parent} does not exist; create it or choose another --out")
    example = first_inputs(batches)
    if args.method in PEER_METHODS:
        if args.bases is None or "all" in args.layer:
            raise ValueError(f"--method {args.method} needs --bases and explicitly named --layer(s)")
        return fit_peers(args, model, out, input_sizes(model, args.layer, None if args.method == "svd" else example))
    layers = resolve_layers(model, args.layer)
    sizes = input_sizes(model, layers, example)
    settings = FitSettings(
        scheme=args.scheme, mode=mode, asymmetric=args.asymmetric, lbfgs_iterations=args.lbfgs_iterations,
        patches_per_image=args.patches_per_image or None, seed=args.seed,
        guard_input=guard_example(args, example), channels_last=args.channels_last,
        schedule=LambdaSchedule(args.lambda_min, args.lambda_max, args.lambda_growth, args.stages,
                                args.steps_per_stage, args.rank_tol).validate())
    counts = choose_counts(args, model, layers, settings, batches, example, sizes, bundled)
    model_hash = model_sha256(model)
    rows: list[tuple[LayerBases, float]] = []

    def save(layer: LayerBases, seconds: float) -> None:
        update_bases(out, args.model, model_hash, [layer])
        rows.append((layer, seconds))
        print(f"{layer.name}: fitted {layer.num_bases} bases in {seconds:.2f} s, saved to {out}", file=sys.stderr)
        warn_if_slower(layer)

    print(f"fitting {', '.join(counts)} of {args.model}: scheme {args.scheme}, {mode} reconstruction"
          f"{' (asymmetric)' if args.asymmetric and mode == 'data' else ''}", file=sys.stderr)
    approx = fit_model(model, counts, settings, batches, sizes, save,
                       on_guard=lambda decision: print(decision, file=sys.stderr))
    print_table(rows)
    if example is None:
        print("(speedups are for large inputs: no data was given to measure layer input sizes)")
    report_results(args, model, approx, example, bundled)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, KeyError, TypeError, ImportError, FileNotFoundError, data.DataError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: layers saved so far are in the bases file; it was not damaged", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
