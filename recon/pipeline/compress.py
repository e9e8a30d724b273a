"""``recon.compress``: the whole pipeline behind one call.

    result = recon.compress(model, loader, layers="all", method="scheme2", ranks=48)
    result.model        # approximated copy, on the model's device
    result.layers       # per-layer records
    result.save("bases/model.h5")

Order of work: check every argument and every rank (nothing slow happens before), select
the layers, read the input shapes from one sample, gather symmetric statistics of every
layer in one pass (data mode), let the rank policy choose, then fit the layers front to back
(asymmetric mode: each on inputs from the model approximated so far, carried block by block,
``recon.pipeline.asymmetric``), time each against its
dense layer when the guard is on, and let the policy measure the outcome.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recon import methods
from recon.bench.guard import MIN_SPEEDUP, time_replacement
from recon.bench.timing import capture_layer_inputs
from recon.errors import ConfigError, DataError
from recon.folding import batchnorm_pairs, fold_batchnorms
from recon.io.bases_file import update_bases
from recon.io.hashing import model_sha256
from recon.methods import Candidates, Method, SolverOptions
from recon.model_checks import check_model, copied
from recon.nn import LowRankModule
from recon.pipeline.asymmetric import AsymmetricObserver
from recon.pipeline.batches import Batches, DataSource
from recon.pipeline.blocks import BlockReport, BlockResult, reconstruct_blocks
from recon.pipeline.calibrate import CalibrationReport, calibrate
from recon.pipeline.config import CompressConfig
from recon.pipeline.fitting import fit_layer, fit_layers, to_numpy
from recon.pipeline.observe import observe
from recon.pipeline.policies import Choice, Fixed, Outcome, RankPolicy, RankProblem
from recon.pipeline.report import MAX_OUTPUT_LOSS, table
from recon.pipeline.save import write_records
from recon.pipeline.select import LayerSpec, refusals, select_layers
from recon.pipeline.target_speedup import TargetSpeedup
from recon.record import LayerRecord, current_record, retrained_records
from recon.surgery import replace_layer

LOG = logging.getLogger("recon")
MODES = ("filter", "data")
SENSITIVITY_SAMPLES = 256  # samples (from the first batches) that layer sensitivities are measured on
FEW_PATCHES_PER_DIM = 10  # fewer patches per input dimension than this: statistics too thin to trust
MAX_TIMING_BATCH = 4096  # the largest guard timing batch (a larger one only allocates more)
REVISIONS = 2  # at most this many times the policy revises its allocation after measuring the fitted model


@dataclass
class Compression:
    """What ``compress`` made: the approximated model and a record of every layer.

    ``layers`` holds every fitted layer in model order (a layer the guard kept dense has
    ``kept`` False and is not saved); ``skipped`` the layers the method refused, with why;
    ``outcome`` what the rank policy measured at the end (TargetSpeedup), else None;
    ``folded`` conv name -> the BatchNorm folded into it (``fold_batchnorm=True``);
    ``dense`` the copy of the model that ``compress`` worked on (BatchNorms folded): the
    reference that calibration, block reconstruction and ``save`` measure the modules against.
    """

    model: nn.Module
    layers: dict[str, LayerRecord]
    skipped: dict[str, str]
    config: CompressConfig
    model_name: str
    model_sha256: str
    outcome: Outcome | None = None
    dense_layers: list[str] = field(default_factory=list)
    folded: dict[str, str] = field(default_factory=dict)
    dense: nn.Module | None = None

    @property
    def kept(self) -> list[LayerRecord]:
        """The records of the layers that were replaced."""
        return [record for record in self.layers.values() if record.kept]

    def table(self) -> str:
        """The per-layer table the CLI prints."""
        return table(self.layers.values(), self.config.max_output_loss, self.dense_layers, self.skipped,
                     self.config.method)

    def reference(self, dense: nn.Module | None = None) -> nn.Module:
        """The dense model the low-rank layers are to reproduce: the copy ``compress`` worked on
        (BatchNorms folded as in ``.model``), or ``dense`` (the model given to ``compress``,
        checked by its hash) folded the same way."""
        if dense is None:
            return self.dense
        check_model(dense, "dense")
        if model_sha256(dense) != self.model_sha256:
            raise ConfigError("dense is not the model given to compress (its parameters differ): pass that model, "
                              "unchanged")
        return fold_batchnorms(copy.deepcopy(dense), self.folded) if self.folded else dense

    def _reference_and_data(self, data: Any, legacy: tuple, what: str) -> tuple[nn.Module, Any]:
        """(the dense reference, the data) of ``what(data)``, or of the older ``what(dense, data)``."""
        if not isinstance(data, nn.Module):
            if legacy:
                raise ConfigError(f"{what} takes the data and keyword options, got {1 + len(legacy)} positional "
                                  "arguments")
            return self.reference(), data
        warnings.warn(f"{what}(dense, data) is deprecated: the Compression keeps its dense reference; call "
                      f"{what}(data)", DeprecationWarning, stacklevel=3)
        if len(legacy) != 1:
            raise ConfigError(f"{what}(dense, data): give the data after the dense model")
        return self.reference(data), legacy[0]

    def calibrate(self, data: DataSource, *legacy: Any, **options: Any) -> CalibrationReport:
        """Calibrate ``.model`` to the dense model (``reference()``) on unlabeled ``data``
        (``recon.pipeline.calibrate.calibrate``, which takes the ``options``), and update the
        records so that ``save`` writes the calibrated factors."""
        dense, data = self._reference_and_data(data, legacy, "calibrate")
        report = calibrate(self.model, dense, data, **options)
        for record in retrained_records(dense, self.model, {r.name: r for r in self.kept}, "calibrated"):
            self.layers[record.name] = record
        return report

    def reconstruct_blocks(self, data: DataSource, *legacy: Any, path: str | Path | None = None,
                           **options: Any) -> BlockReport:
        """Block reconstruction of ``.model`` against the dense model (``reference()``) on
        unlabeled ``data`` (``recon.pipeline.blocks.reconstruct_blocks``, which takes the
        ``options``); the records are updated so that ``save`` writes the new factors, and with
        ``path`` each improved block's layers are saved there at once (atomically), so an
        interruption loses nothing already reconstructed."""
        dense, data = self._reference_and_data(data, legacy, "reconstruct_blocks")

        def update(result: BlockResult) -> None:
            records = {name: self.layers[name] for name in result.layers if name in self.layers}
            for record in retrained_records(dense, self.model, records, "reconstructed"):
                self.layers[record.name] = record
            if path is not None:
                update_bases(path, self.model_name, self.model_sha256, [self.layers[name] for name in records])

        return reconstruct_blocks(self.model, dense, data, on_block=update, **options)

    def save(self, path: str | Path, merge: bool = True, overwrite: bool = False) -> Path:
        """Write the replaced layers to a bases file (schema v2), atomically. With ``merge``,
        layers already in the file (of the same model) are kept; otherwise it is replaced. A
        file at ``path`` that is not a bases file of this model is refused unless ``overwrite``."""
        records = [self._as_now(record) for record in self.kept]
        if not records:
            raise ConfigError(f"nothing to save: no layer was replaced (kept dense: "
                              f"{', '.join(self.dense_layers + [r.name for r in self.layers.values()]) or 'none'})")
        return write_records(path, self.model_name, self.model_sha256, records, merge, overwrite)

    def _as_now(self, record: LayerRecord) -> LayerRecord:
        """``record`` as ``.model`` holds its layer now (the user may have trained or edited it)."""
        module = self.model.get_submodule(record.name)
        if not isinstance(module, LowRankModule):
            raise ConfigError(f"layer {record.name!r} of .model is a {type(module).__name__} now, not the low-rank "
                              "module compress put there: nothing of it to save")
        return current_record(record, self.reference().get_submodule(record.name), module)


def _as_policy(ranks: Any) -> RankPolicy:
    if isinstance(ranks, RankPolicy):
        return ranks
    if ranks is None:
        raise ConfigError("give ranks: an int, a dict of layer name -> rank, recon.TargetSpeedup(...) or "
                          "recon.AccuracyBudget(...)")
    if isinstance(ranks, np.integer):
        ranks = int(ranks)
    if isinstance(ranks, dict):  # NumPy ints would pass the checks and then fail the JSON of the bases file
        ranks = {name: int(rank) if isinstance(rank, np.integer) else rank for name, rank in ranks.items()}
    if isinstance(ranks, (dict, int, str, tuple)) and not isinstance(ranks, bool):
        return Fixed(ranks)
    raise ConfigError(f"ranks must be an int, a dict, or a rank policy, got {type(ranks).__name__}")


def _check_input_size(input_size: Any) -> tuple[int, ...] | None:
    if input_size is None:
        return None
    size = tuple(input_size) if isinstance(input_size, (tuple, list, torch.Size)) else (input_size,)
    if not size or not all(isinstance(v, int) and v > 0 for v in size):
        raise ConfigError(f"input_size is the shape of one sample without the batch, e.g. (3, 32, 32); got {input_size!r}")
    return size


def _resolve_mode(mode: str | None, data: DataSource | None, method: Candidates, asymmetric: bool) -> str:
    """The reconstruction mode: data when there is data and a candidate fits data (candidates
    that do not fit data are fitted to their weights all the same)."""
    mode = mode or ("data" if data is not None and method.fits_data else "filter")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "data" and not method.fits_data:
        data_methods = [m.name for m in methods.REGISTRY.values() if m.fits_data]
        raise ConfigError(f"method {method.name} reconstructs weights only (mode='filter'); data reconstruction "
                          f"is for {', '.join(data_methods)}")
    if mode == "data" and data is None:
        raise ConfigError("data reconstruction needs data: pass batches of the model's inputs")
    if asymmetric and mode != "data":
        raise ConfigError("asymmetric fitting is a form of data reconstruction: it needs mode='data' and data")
    return mode


@dataclass
class _Plan:
    """The checked arguments of one ``compress`` call."""

    method: Candidates
    mode: str
    policy: RankPolicy
    layers: list[str]
    config: CompressConfig


def _shapes(model: nn.Module, layers: list[str], example: torch.Tensor | None) -> dict[str, tuple[int, ...]] | None:
    """Each layer's input shape (without the batch) from one forward pass of the example's first sample."""
    if example is None:
        return None
    try:
        captured = capture_layer_inputs(model, layers, example[:1])
    except TypeError as err:  # a forward that wants several inputs or keywords
        raise DataError(f"the model cannot be called on one input tensor ({err}): recon calls model(inputs) with "
                        "each batch's inputs (the first element of a tuple batch); wrap a model that takes several "
                        "inputs or keywords in a module whose forward takes one tensor") from err
    except RuntimeError as err:
        hint = "; do the batches have a batch dimension first?" if example.ndim <= 3 else ""
        raise DataError(f"the model failed on the first data sample (batch shape {tuple(example.shape)}): {err}{hint}") \
            from err
    return {name: tuple(x.shape[1:]) for name, x in captured.items()}


def compress(model: nn.Module, data: DataSource | None = None, *, layers: LayerSpec | None = None,
             method: str | list[str] | Method | Candidates = "scheme2", ranks: Any = None, mode: str | None = None,
             asymmetric: bool = False,
             guard: bool = False, channels_last: bool = False, device: str | torch.device | None = None,
             input_size: tuple[int, ...] | None = None, samples: int | None = None,
             patches_per_image: int | None = 32, solver: SolverOptions = SolverOptions(),
             min_speedup: float = MIN_SPEEDUP, timing_batch: int = 32, max_output_loss: float = MAX_OUTPUT_LOSS,
             dense_when_lossy: bool = False, model_name: str | None = None, progress: bool = True,
             on_layers: Callable[[list[LayerRecord]], None] | None = None,
             fold_batchnorm: bool = False) -> Compression:
    """Replace layers of ``model`` by low-rank modules; ``model`` itself is not changed.

    Args:
      model: a trained torch model, on any device.
      data: batches of the model's inputs (a DataLoader, a list, or a function returning a
        fresh iterable; tensors or (inputs, labels) pairs). None: filter reconstruction only.
      layers: names, "all", a regular expression, a filter function ``fn(module, name)``, or
        a list; default "all" (the dict's names when ``ranks`` is a dict).
      method: a registered method (``recon.methods.REGISTRY``); "auto" or a list of names lets
        ``TargetSpeedup`` choose a method (or dense) per layer among them, by measured time and
        predicted loss.
      ranks: an int for every layer, a dict name -> rank, or a policy
        (``TargetSpeedup``, ``AccuracyBudget``).
      mode: "data" (match the layer's outputs; default with data) or "filter" (match weights).
      asymmetric: data mode with inputs from the already approximated layers (front to back).
      guard: time every fitted layer against its dense original and keep the dense layer
        unless the low-rank one is ``min_speedup`` times faster.
      channels_last: time in the channels_last memory format.
      device: where statistics, solvers' inputs and timing run (default: the model's device);
        the result stays on the model's device.
      input_size: one sample's input shape, e.g. (3, 32, 32), for MACs without data.
      samples: read at most this many samples of ``data`` per pass.
      patches_per_image: patch locations sampled per sample for statistics (None: all).
      solver: settings of the iterative solvers (and the sampling seed).
      timing_batch: batch size of the guard's timing input.
      max_output_loss: a layer losing more of its output variance than this is flagged in the
        table (data mode); with ``dense_when_lossy`` it is kept dense instead.
      model_name: what the bases file calls the model (default: its class name).
      progress: progress bars; per-layer events go to the ``recon`` logger.
      on_layers: called with the records of kept layers as soon as they are final (e.g. to save):
        each layer at once when fitted one by one (asymmetric mode), all together after a
        batched fit.
      fold_batchnorm: fold each BatchNorm that takes a selected conv's output (found in the
        ``torch.fx`` graph) into it before anything else: the folded conv is what is fitted and
        replaced, the BatchNorm becomes Identity, the bases file records it, and speed is
        measured against the dense model folded the same way. A pair that would not fold
        exactly is left as it is, with a warning naming it (``recon.folding``).
    """
    check_model(model)
    plan = _plan(model, data, layers, method, ranks, mode, asymmetric, guard, channels_last, input_size, samples,
                 patches_per_image, solver, min_speedup, timing_batch, max_output_loss, dense_when_lossy, fold_batchnorm,
                 device, on_layers)
    home = next(model.parameters()).device
    work = copied(model).to(device or home).eval()
    folded = _fold(work, plan.layers) if fold_batchnorm else {}
    batches = None if data is None else Batches(data, samples, next(work.parameters()).device,
                                                next(work.parameters()).dtype)
    example = _example(plan.policy, batches, _check_input_size(input_size), work)
    shapes = _shapes(work, plan.layers, example)
    symmetric = None
    if plan.mode == "data" and (not asymmetric or plan.policy.uses_statistics):
        symmetric = observe(work, batches, plan.layers, patches_per_image, solver.seed, progress)

    def fit(name: str, choice: Choice, moments=None) -> LayerRecord:
        moments = moments if moments is not None else (None if symmetric is None else symmetric[name])
        return fit_layer(choice.method, work.get_submodule(name), name, choice.rank, moments, solver,
                         None if shapes is None else shapes[name], plan.config.to_dict())

    problem = RankProblem(work, {name: plan.method.for_layer(work.get_submodule(name)) for name in plan.layers},
                          plan.layers, {name: plan.method.geometry(work.get_submodule(name)) for name in plan.layers},
                          {name: to_numpy(work.get_submodule(name).weight) for name in plan.layers},
                          symmetric, None if batches is None else _sensitivity_sample(batches), fit, LOG.info)
    search = plan.policy.choose(problem)
    chosen = search.chosen
    guard_inputs = _guard_inputs(work, plan.layers, example, timing_batch) if guard else {}

    def fit_round(chosen: dict[str, Choice], previous: dict[str, LayerRecord]) -> tuple[dict[str, LayerRecord], nn.Module]:
        """Every chosen layer fitted and placed in a fresh copy of ``work``; a layer whose choice
        is the same as in ``previous`` keeps its record when its fit cannot have changed (always
        in symmetric mode, before the first changed layer in asymmetric mode)."""
        approx = copy.deepcopy(work)
        changed = [name for name in chosen if name not in previous or not _same_choice(previous[name], chosen[name])]
        moved = [plan.layers.index(name) for name in changed + [n for n in previous if n not in chosen]]
        first_change = min(moved, default=len(plan.layers))  # asymmetric: every later layer sees other inputs
        reusable = {name: record for name, record in previous.items() if name in chosen and name not in changed
                    and (not asymmetric or plan.layers.index(name) < first_change)}
        records: dict[str, LayerRecord] = {}
        pending: list[LayerRecord] = []
        # without asymmetry every layer's statistics are known now: solve layers of one shape together
        fitted = {} if asymmetric else _fit_together(work, {n: chosen[n] for n in changed}, symmetric, solver, shapes,
                                                     plan.config)
        front = AsymmetricObserver(work, approx, batches, list(chosen), patches_per_image, solver.seed,
                                   progress) if asymmetric else None
        for name in (name for name in plan.layers if name in chosen):
            if name in reusable or name in fitted:
                record = reusable.get(name) or fitted[name]
            elif not chosen[name].method.fits_data or (symmetric is not None and not any(r.kept for r in records.values())):
                # symmetric: a method that fits weights only refits just its bias; and until a layer is
                # replaced, the approximated model is the dense one
                record = fit(name, chosen[name])
            else:
                record = fit(name, chosen[name], front.moments(name))
            if name not in reusable:
                judge(record, name)
            replace_layer(approx, name, record.module if record.kept else copy.deepcopy(work.get_submodule(name)))
            records[name] = record
            pending += [record] if record.kept and name not in reusable else []
            if pending and on_layers is not None and asymmetric:  # fitted one by one: hand each over at once
                on_layers(pending)
                pending = []
        if pending and on_layers is not None:
            on_layers(pending)
        return records, approx

    def judge(record: LayerRecord, name: str) -> None:
        """Record the fold, warn about thin statistics, keep the layer dense when lossy or slow."""
        record.folded_batchnorm = folded.get(name)
        _warn_about_statistics(record, min(solver.ridges))
        if record.output_variance_lost > max_output_loss and dense_when_lossy:
            record.dense_reason = f"output variance lost {record.output_variance_lost:.3f} > {max_output_loss:g}"
        elif name in guard_inputs:
            record.guard = time_replacement(work.get_submodule(name), record.module, guard_inputs[name], name,
                                            min_speedup, channels_last=channels_last)
            record.dense_reason = None if record.guard.kept else f"guard: {record.guard.speedup:.2f}x is not faster"
        LOG.info("%s: %s rank %s fitted in %.2f s%s", name, record.method, record.rank, record.fit_seconds,
                 "" if record.kept else f" (dense kept: {record.dense_reason})")

    records, approx = fit_round(chosen, {})
    for _ in range(REVISIONS):  # the policy may trade ranks back once it has measured the fitted model
        revised = plan.policy.revise(search, work, approx)
        if revised is None:
            break
        search, chosen = revised, revised.chosen
        records, approx = fit_round(chosen, records)
    outcome = plan.policy.outcome(search, work, approx)
    if outcome is not None and folded:
        outcome = dataclasses.replace(outcome, description=f"{outcome.description}; against the dense model with "
                                      f"the same {len(folded)} BatchNorm(s) folded")
    approx = approx.to(home)
    for record in records.values():
        record.module = record.module.to(home)
    return Compression(approx, records, refusals(model, plan.method), plan.config, model_name or type(model).__name__,
                       model_sha256(model), outcome, [name for name in plan.layers if name not in chosen], folded,
                       work.to(home))


def _same_choice(record: LayerRecord, choice: Choice) -> bool:
    """Whether ``record`` is a fit of ``choice``."""
    return record.method == choice.method.name and record.rank == choice.rank


def _fold(work: nn.Module, layers: list[str]) -> dict[str, str]:
    """Fold into ``work`` (in place) the BatchNorms after ``layers`` that fold exactly; warn,
    naming the layer, about those that do not. Returns conv name -> BatchNorm name."""
    pairs = batchnorm_pairs(work, layers)
    for conv, reason in pairs.refused.items():
        LOG.warning("warning: %s: its BatchNorm is not folded: %s", conv, reason)
    fold_batchnorms(work, pairs.folds)
    return pairs.folds


def _fit_together(work: nn.Module, chosen: dict[str, Choice], symmetric: dict[str, Any] | None,
                  solver: SolverOptions, shapes: dict[str, tuple[int, ...]] | None,
                  config: CompressConfig) -> dict[str, LayerRecord]:
    """Every chosen layer fitted on symmetric statistics (or its weights), each method's
    layers in batched calls; records in the order of ``chosen``."""
    by_method: dict[Method, dict[str, Choice]] = {}
    for name, choice in chosen.items():
        by_method.setdefault(choice.method, {})[name] = choice
    records: dict[str, LayerRecord] = {}
    for method, picked in by_method.items():
        moments = {name: None if symmetric is None else symmetric[name] for name in picked}
        records.update(fit_layers(method, {name: work.get_submodule(name) for name in picked},
                                  {name: choice.rank for name, choice in picked.items()}, moments, solver, shapes,
                                  config.to_dict()))
    return {name: records[name] for name in chosen}


def _warn_about_statistics(record: LayerRecord, ridge: float) -> None:
    """Warn, naming the layer, when its statistics are too thin or blind to some input directions."""
    stats = record.statistics
    if stats is None:
        return
    if stats.patches_per_dim < FEW_PATCHES_PER_DIM:
        LOG.warning("warning: %s: statistics from %d patches for %d input dimensions (%.1f per dimension, fewer "
                    "than %d): the fit may follow noise; give more samples or patches per image",
                    record.name, stats.patches, stats.dim, stats.patches_per_dim, FEW_PATCHES_PER_DIM)
    if stats.unseen:
        kept = "the ridge keeps them at the original weights" if ridge > 0 else "with ridge 0 the fit is free there"
        LOG.warning("warning: %s: the inputs never vary in %d of %d directions (effective rank %.1f); %s",
                    record.name, stats.unseen, stats.dim, stats.effective_rank, kept)


def check_device(device: Any) -> torch.device | None:
    """``device`` as a torch device that exists here (None stays None); ConfigError otherwise."""
    if device is None:
        return None
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r} ({err})") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
    if where.type == "meta":
        raise ConfigError("device 'meta' holds no values: recon needs real weights and data")
    return where


def _plan(model, data, layers, method_name, ranks, mode, asymmetric, guard, channels_last, input_size, samples,
          patches_per_image, solver, min_speedup, timing_batch, max_output_loss, dense_when_lossy,
          fold_batchnorm, device, on_layers) -> _Plan:
    """Every argument checked, the layers selected and the ranks validated: before any work."""
    method = methods.resolve(method_name)
    mode = _resolve_mode(mode, data, method, asymmetric)
    policy = _as_policy(ranks)
    if method.single is None and not policy.chooses_methods:
        raise ConfigError(f"method {method.name} chooses a method per layer, which needs a policy that chooses "
                          "methods (recon.TargetSpeedup); with fixed ranks or AccuracyBudget name one method")
    if layers is None:
        layers = list(policy.ranks) if isinstance(policy, Fixed) and isinstance(policy.ranks, dict) else "all"
    names = select_layers(model, layers, method)
    geometries = {name: method.geometry(model.get_submodule(name)) for name in names}
    if method.single is not None:
        policy.check(method.single, geometries)
    for label, value, minimum in (("samples", samples, 1), ("patches_per_image", patches_per_image, 1),
                                  ("timing_batch", timing_batch, 1)):
        if value is not None and (not isinstance(value, int) or value < minimum):
            raise ConfigError(f"{label} must be a whole number >= {minimum}, got {value!r}")
    for label, value in (("min_speedup", min_speedup), ("max_output_loss", max_output_loss)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{label} must be a positive number, got {value!r}")
    if timing_batch > MAX_TIMING_BATCH:
        raise ConfigError(f"timing_batch must be at most {MAX_TIMING_BATCH}, got {timing_batch}")
    if not isinstance(solver, SolverOptions):
        hint = ": recon.SolverOptions(**settings)" if isinstance(solver, dict) else ""
        raise ConfigError(f"solver must be a recon.SolverOptions, got {type(solver).__name__}{hint}")
    if on_layers is not None and not callable(on_layers):
        raise ConfigError(f"on_layers must be a function of a list of records, got {type(on_layers).__name__}")
    check_device(device)
    _check_input_size(input_size)
    if not isinstance(fold_batchnorm, bool):
        raise ConfigError(f"fold_batchnorm must be True or False, got {fold_batchnorm!r}")
    if guard and data is None and input_size is None and not isinstance(policy, TargetSpeedup):
        raise ConfigError("the guard times layers on their real input shapes: give data or input_size")
    config = CompressConfig(method.name, mode, asymmetric, policy.describe(), samples, patches_per_image, guard,
                            min_speedup, channels_last, timing_batch, max_output_loss, dense_when_lossy, solver,
                            fold_batchnorm)
    return _Plan(method, mode, policy, names, config)


def _example(policy: RankPolicy, batches: Batches | None, input_size: tuple[int, ...] | None,
             work: nn.Module) -> torch.Tensor | None:
    """One batch the layer input shapes are read from: the data's first, else the policy's
    example input, else zeros of ``input_size``."""
    parameter = next(work.parameters())
    if batches is not None:
        return batches.first()
    if isinstance(policy, TargetSpeedup):
        return policy.example_input.to(parameter.device)
    if input_size is not None:
        return torch.zeros(1, *input_size, device=parameter.device, dtype=parameter.dtype)
    return None


def _sensitivity_sample(batches: Batches) -> torch.Tensor:
    """Up to ``SENSITIVITY_SAMPLES`` samples from the first batches (one batch of one sample has
    no variation to measure a sensitivity on)."""
    taken, count = [], 0
    for inputs in batches:
        taken.append(inputs[: SENSITIVITY_SAMPLES - count])
        count += len(taken[-1])
        if count >= SENSITIVITY_SAMPLES:
            break
    return torch.cat(taken)


def _guard_inputs(work: nn.Module, layers: list[str], example: torch.Tensor,
                  timing_batch: int) -> dict[str, torch.Tensor]:
    """Each layer's real input for a batch of ``timing_batch`` copies of the example's first sample."""
    batch = example[:1].expand(timing_batch, *example.shape[1:]).contiguous()
    return capture_layer_inputs(work, layers, batch)
