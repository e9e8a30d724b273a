"""Fit low-rank bases to a model's layers and save them as HDF5.

    python -m recon.fit --layer conv2 --bases 48

fits Scheme 2 with data reconstruction to conv2 of the bundled fmnist-alexnet on
Fashion-MNIST training images and writes bases/fmnist-alexnet.h5 (existing layers of that
file are kept). Every argument is checked before any work; the file is rewritten atomically
after every layer, so an interrupted run keeps what was saved before it. A thin shell over
``recon.compress``: every option is one of its arguments. Exit status: 0 done, 2 bad input,
3 --target-speedup missed (the bases are saved), 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recon import methods
from recon.bench.latency import BACKENDS
from recon.cli import common, sources
from recon.errors import ConfigError
from recon.io.bases_file import check_destination, update_bases
from recon.io.hashing import model_sha256
from recon.methods import SolverOptions
from recon.methods.base import check_schedule
from recon.metrics import accuracy
from recon.bench.settings import Timing
from recon.pipeline.compress import Compression, compress
from recon.pipeline.config import MODES, CompressConfig
from recon.pipeline.policies import AccuracyBudget, Fixed, RankPolicy
from recon.pipeline.target_speedup import TargetSpeedup
from recon.record import LayerRecord
from solvers.schedule import LambdaSchedule

LOG = logging.getLogger("recon")
DEFAULTS = CompressConfig()  # every default of a setting the CLI shares with recon.compress
SOLVER, TIMING = DEFAULTS.solver, DEFAULTS.timing
SCHEME2, SCHEME1, CP = methods.Scheme2(), methods.Scheme1(), methods.CP()  # the methods' own defaults
SCHEDULE = SCHEME1.schedule
TARGET_MISSED = 3  # exit status when --target-speedup was not reached (the bases are saved all the same)
CALIBRATION_MIN_SAMPLES = 2  # recon.pipeline.calibrate holds at least one out and trains on the rest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recon.fit", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_argument_group("model and data")
    source.add_argument("--model", default="fmnist-alexnet",
                        help="bundled model name or package.module:factory returning an nn.Module")
    source.add_argument("--weights", type=Path, help="state dict to load into a --model factory's model")
    source.add_argument("--data", help="package.module:factory returning a re-iterable of input batches (tensors or "
                        "(inputs, labels) pairs); the bundled model uses Fashion-MNIST training images")
    source.add_argument("--samples", type=common.positive_int, default=4000, help="samples read for statistics")
    source.add_argument("--input-size", type=common.input_size,
                        help="one input sample as CxHxW (e.g. 3x32x32), for MACs and timing without --data")
    source.add_argument("--device", type=common.device, help="run on this device (e.g. cuda); default: cpu")
    what = parser.add_argument_group("what to replace")
    what.add_argument("--layer", action="append", required=True,
                      help="qualified layer name (repeatable), 'all' for every layer the method can replace, or a "
                      "regular expression over layer names")
    kind = what.add_mutually_exclusive_group()
    kind.add_argument("--method", choices=(*methods.REGISTRY, methods.AUTO), default="scheme2",
                      help="; ".join(f"{m.name}: {m.summary}" for m in methods.REGISTRY.values())
                      + f"; {methods.AUTO}: with --target-speedup, the method (or dense) per layer that the search "
                      "finds best for its measured time")
    kind.add_argument("--scheme", type=int, choices=(1, 2), help="same as --method scheme1 / scheme2")
    ranks = what.add_mutually_exclusive_group(required=True)
    ranks.add_argument("--bases", help="rank of every layer, or name=N pairs separated by commas "
                       "(tucker2 also takes 'evbmf')")
    ranks.add_argument("--target-speedup", type=common.positive_float,
                       help="choose ranks so that the measured whole-model speedup (batch of --guard-batch) reaches "
                       "this factor (aiming 3%% above it, for timing noise): per-layer latency tables (cached in "
                       "$RECON_CACHE_DIR or ~/.cache/recon) and sensitivity-weighted errors feed a global allocation, "
                       "confirmed by at most two whole-model timings; layers that don't pay stay dense")
    ranks.add_argument("--accuracy-budget", type=common.positive_float,
                       help="choose ranks per layer by bisection so that validation accuracy (last 5,000 training "
                       "images) drops by at most this many points in total (bundled model)")
    how = parser.add_argument_group("how to fit")
    how.add_argument("--mode", choices=MODES,
                     help="reconstruct the weights (filter), the layer's responses (data), or the responses to inputs "
                     "from the already approximated network (asymmetric); default: data when there is data and the "
                     "method fits data, else filter")
    how.add_argument("--asymmetric", action="store_true", help="same as --mode asymmetric")
    how.add_argument("--patches-per-image", type=common.nonnegative_int, default=DEFAULTS.patches_per_image,
                     help="patch locations sampled per sample for statistics (0: all)")
    how.add_argument("--seed", type=common.seed, default=SOLVER.seed, help="seed for patch sampling and CP (0..2**32-1)")
    how.add_argument("--lbfgs-iterations", type=common.positive_int, default=SCHEME2.lbfgs_iterations,
                     help="scheme2 data mode: L-BFGS iterations")
    how.add_argument("--cp-iterations", type=common.positive_int, default=CP.iterations, help="cp: ALS iterations")
    how.add_argument("--ridge", type=common.nonnegative_float, default=SOLVER.ridge,
                     help="data mode: weight of ||W_hat - W||^2 (times the mean input variance) added to the output "
                     "error, so input directions the data never varies in stay at the original weights; 0: none")
    how.add_argument("--max-output-loss", type=common.positive_float, default=DEFAULTS.max_output_loss,
                     help="flag layers that lose more than this fraction of their output variance; "
                     "--target-speedup in data mode never picks a rank predicted to lose more")
    how.add_argument("--dense-when-lossy", action="store_true",
                     help="keep the dense layer wherever the output variance lost exceeds --max-output-loss")
    schedule = parser.add_argument_group("scheme1 lambda schedule (relative units)")
    schedule.add_argument("--lambda-min", type=common.positive_float, default=SCHEDULE.lambda_min)
    schedule.add_argument("--lambda-max", type=common.positive_float, default=SCHEDULE.lambda_max)
    schedule.add_argument("--lambda-growth", type=common.positive_float, default=SCHEDULE.growth)
    schedule.add_argument("--stages", type=common.positive_int, default=SCHEDULE.max_stages)
    schedule.add_argument("--steps-per-stage", type=common.positive_int, default=SCHEDULE.steps_per_stage)
    schedule.add_argument("--rank-tol", type=common.positive_float, default=SCHEDULE.rank_tol,
                          help="stop once every basis has sigma2/sigma1 below this")
    schedule.add_argument("--stage-tolerance", type=common.nonnegative_float, default=SCHEDULE.tolerance,
                          help="end a stage once the objective changes by less than this (relative) per step")
    timing = parser.add_argument_group("measured speed")
    timing.add_argument("--guard", action="store_true",
                        help="time each fitted layer against its dense layer (batch of --guard-batch) and keep the "
                        "dense layer unless the low-rank one is at least --min-speedup times faster")
    timing.add_argument("--guard-batch", type=common.timing_batch, default=TIMING.batch,
                        help=f"batch size the guard and --target-speedup time with (at most {common.MAX_TIMING_BATCH})")
    timing.add_argument("--min-speedup", type=common.positive_float, default=DEFAULTS.min_speedup,
                        help="the guard keeps a low-rank layer only when at least this much faster")
    timing.add_argument("--channels-last", action="store_true",
                        help="time in the channels_last memory format (on CPUs the faster layout for dense and "
                        "low-rank models alike; time in the format your inference code uses)")
    timing.add_argument("--latency-backend", choices=BACKENDS, default=TIMING.backend,
                        help="where --target-speedup times layers and models: torch eager, or onnxruntime's CPU "
                        "provider (each module exported to ONNX; for models deployed with onnxruntime); only with "
                        "--target-speedup (the guard times with torch)")
    calibration = parser.add_argument_group("calibration without labels (after fitting)")
    calibration.add_argument("--calibrate", action="store_true",
                             help="correct each replaced layer's output means, then train the low-rank factors to "
                             "reproduce the dense model's layer and final outputs (Adam, no labels); each step is "
                             "kept only if it lowers the output error on held-out images")
    calibration.add_argument("--calibrate-samples", type=common.whole_number(CALIBRATION_MIN_SAMPLES), default=5000,
                             help=f"unlabeled samples for --calibrate, at least {CALIBRATION_MIN_SAMPLES} (a tenth, "
                             "at most 500, held out)")
    calibration.add_argument("--calibrate-epochs", type=common.positive_int, default=4,
                             help="passes of --calibrate over its samples")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, help="bases file (default: bases/<model>.h5; layers are added to it)")
    output.add_argument("--eval", action="store_true", help="report test accuracy, dense vs low-rank (bundled model)")
    return parser


def parse_bases(text: str) -> Any:
    """``48``, ``evbmf`` or ``conv2=48,conv3=64`` -> a rank, or ranks by layer name."""
    if "=" not in text:
        return _rank(text)
    ranks: dict[str, Any] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            raise ConfigError(f"--bases must be a number or name=N pairs separated by commas, got {text!r}")
        if name in ranks:
            raise ConfigError(f"--bases names layer {name!r} twice")
        ranks[name] = _rank(value.strip())
    return ranks


def _rank(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        if not text.isidentifier():
            raise ConfigError(f"--bases must be a whole number, a word such as 'evbmf', or name=N pairs, got {text!r}") \
                from None
        return text


def _method(args: argparse.Namespace) -> methods.Candidates:
    """The candidate methods, each with the settings of its own the options give."""
    if args.method == methods.AUTO and args.target_speedup is None:
        raise ConfigError(f"--method {methods.AUTO} chooses a method per layer by measured time: it needs "
                          "--target-speedup")
    schedule = LambdaSchedule(args.lambda_min, args.lambda_max, args.lambda_growth, args.stages, args.steps_per_stage,
                              args.rank_tol, args.stage_tolerance)
    check_schedule(schedule)  # whichever methods take it
    settings = {"scheme2": {"lbfgs_iterations": args.lbfgs_iterations}, "scheme1": {"schedule": schedule},
                "cp": {"iterations": args.cp_iterations, "seed": args.seed}}
    return methods.with_settings(methods.resolve(f"scheme{args.scheme}" if args.scheme else args.method), settings)


def _data(args: argparse.Namespace, bundled: bool, mode: str):
    """The data source the fit reads: --data, Fashion-MNIST for a bundled model in data mode
    (filter mode needs none: the zoo knows the input size), else None."""
    if args.data is not None:
        return sources.data_factory(args.data)
    if bundled and mode != "filter":
        return sources.fashion_mnist("train", args.samples)
    if mode != "filter":
        raise ConfigError(f"--mode {mode} needs --data package.module:factory for a user model")
    return None


def _policy(args: argparse.Namespace) -> RankPolicy:
    if args.target_speedup is not None:
        return TargetSpeedup(args.target_speedup, max_layer_loss=args.max_output_loss)
    if args.accuracy_budget is not None:
        validation = sources.fashion_mnist("validation", None, batch_size=500)()
        return AccuracyBudget(args.accuracy_budget, lambda candidate: accuracy(candidate, validation))
    return Fixed(parse_bases(args.bases))


def warn_if_slower(record: LayerRecord) -> None:
    """Tell the user when the chosen rank costs more multiply-adds than the dense layer."""
    if not record.theoretical_speedup < 1:
        return
    method = methods.get(record.method)
    even = method.rank_for_speedup(record.geometry, record.input_shape)
    hint = f"{record.method} breaks even near rank {even}" if even else f"{record.method} never saves MACs here"
    LOG.warning("warning: %s at rank %s costs %.2fx the dense multiply-adds, so it will be slower; %s",
                record.name, record.rank, 1 / record.theoretical_speedup, hint)


def _report(args: argparse.Namespace, model: torch.nn.Module, result: Compression) -> None:
    print(result.table())
    if result.outcome is not None:
        print(f"whole model: {result.outcome.description}")
        if not result.outcome.met:
            print(f"error: {result.outcome.description}", file=sys.stderr)
    if args.eval:
        test = sources.fashion_mnist("test", None, batch_size=500)()
        dense, low = accuracy(model, test, progress=True), accuracy(result.model, test, progress=True)
        print(f"test accuracy: dense {100 * dense:.2f}%  low-rank {100 * low:.2f}%  ({100 * (low - dense):+.2f} points)")


def _check_combinations(args: argparse.Namespace, bundled: bool) -> None:
    """Refuse options that need another option, or a bundled model, without it."""
    if (args.eval or args.accuracy_budget is not None) and not bundled:
        raise ConfigError("--eval and --accuracy-budget measure Fashion-MNIST accuracy: bundled models only")
    if args.calibrate and not bundled and args.data is None:
        raise ConfigError("--calibrate needs unlabeled inputs: give --data package.module:factory")
    if args.latency_backend != TIMING.backend and args.target_speedup is None:
        raise ConfigError(f"--latency-backend only applies with --target-speedup (the guard times with "
                          f"{TIMING.backend}): drop --latency-backend {args.latency_backend} or give --target-speedup")
    if args.asymmetric and args.mode not in (None, "asymmetric"):
        raise ConfigError(f"--asymmetric is --mode asymmetric: drop --mode {args.mode} or --asymmetric")


def _calibration_data(args: argparse.Namespace, data: Callable | None) -> Callable | None:
    """What --calibrate reads (None without it): --data, else Fashion-MNIST training images."""
    if not args.calibrate:
        return None
    if args.data is None:
        return sources.fashion_mnist("train", args.calibrate_samples, option="--calibrate-samples")
    return data


def fit(args: argparse.Namespace) -> int:
    model = sources.load_model(args.model, args.weights).to(args.device or "cpu")
    bundled = sources.is_bundled(args.model)
    _check_combinations(args, bundled)
    method = _method(args)
    mode = "asymmetric" if args.asymmetric else args.mode or (
        "data" if (args.data is not None or bundled) and method.fits_data else "filter")
    config = CompressConfig(
        method=method, ranks=_policy(args), mode=mode, guard=args.guard, min_speedup=args.min_speedup,
        max_output_loss=args.max_output_loss, dense_when_lossy=args.dense_when_lossy, samples=args.samples,
        patches_per_image=args.patches_per_image or None,
        solver=SolverOptions(seed=args.seed, ridge=args.ridge),
        timing=Timing(args.guard_batch, args.channels_last, args.latency_backend))
    input_size = args.input_size or sources.input_size(args.model)
    data = _data(args, bundled, mode)
    calibration_data = _calibration_data(args, data)
    out = args.out or Path("bases") / f"{Path(args.model.replace(':', '.')).name}.h5"
    if args.out is None:
        out.parent.mkdir(exist_ok=True)
    model_hash = model_sha256(model)
    check_destination(out, args.model, model_hash)

    def write(records: list[LayerRecord]) -> None:
        update_bases(out, args.model, model_hash, records)
        LOG.info("%s: saved to %s", ", ".join(record.name for record in records), out)

    def save(records: list[LayerRecord]) -> None:
        write(records)
        for record in records:
            warn_if_slower(record)

    example = None if data is not None or input_size is None else torch.zeros(1, *input_size)
    if data is None and example is None and (args.guard or args.target_speedup is not None):
        raise ConfigError("--guard and --target-speedup time layers on their real input shapes: give --data or "
                          "--input-size")
    LOG.info("fitting %s of %s: %s, %s reconstruction", ", ".join(args.layer), args.model, method.name, mode)
    result = compress(model, data, config, layers=args.layer, example_input=example, model_name=args.model,
                      on_layers=save)
    if args.calibrate and not result.kept:
        print("calibration skipped: no layer was replaced")
    elif args.calibrate:
        report = result.calibrate(calibration_data, samples=args.calibrate_samples,
                                  epochs=args.calibrate_epochs)
        print(f"calibration: {report.describe()}")
        write(result.kept)
    _report(args, model, result)
    return TARGET_MISSED if result.outcome is not None and not result.outcome.met else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.run(lambda: fit(args),
                      interrupted="interrupted: layers saved so far are in the bases file; it was not damaged")


if __name__ == "__main__":
    sys.exit(main())
