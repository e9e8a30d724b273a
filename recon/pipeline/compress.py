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

import torch
from torch import nn

from recon.bench.guard import time_replacement
from recon.bench.settings import Timing
from recon.bench.timing import capture_layer_inputs
from recon.errors import ConfigError, DataError
from recon.folding import batchnorm_pairs, fold_batchnorms
from recon.inputs import Batch, cat, describe, moved, size, take
from recon.io.bases_file import update_bases
from recon.io.hashing import model_sha256
from recon.methods import Candidates, Method, SolverOptions
from recon.model_checks import check_example, check_model, copied
from recon.nn import LowRankModule
from recon.pipeline.asymmetric import AsymmetricObserver
from recon.pipeline.batches import Batches, DataSource
from recon.pipeline.blocks import BlockReport, BlockResult, reconstruct_blocks
from recon.pipeline.calibrate import CalibrationReport, calibrate
from recon.pipeline.config import CompressConfig
from recon.pipeline.fitting import fit_layer, fit_layers, to_numpy
from recon.pipeline.observe import SAMPLE_SIZE, Observation, gather, recorded_batches
from recon.pipeline.policies import Choice, Fixed, Outcome, RankPolicy, RankProblem
from recon.pipeline.report import table
from recon.pipeline.save import write_records
from recon.pipeline.select import LayerSpec, refusals, select_layers
from recon.pipeline.target_speedup import TargetSpeedup
from recon.record import LayerRecord, current_record, retrained_records
from recon.surgery import replace_layer

LOG = logging.getLogger("recon")
FEW_PATCHES_PER_DIM = 10  # fewer patches per input dimension than this: statistics too thin to trust
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


def _check_input_size(input_size: Any) -> tuple[int, ...] | None:
    if input_size is None:
        return None
    size = tuple(input_size) if isinstance(input_size, (tuple, list, torch.Size)) else (input_size,)
    if not size or not all(isinstance(v, int) and v > 0 for v in size):
        raise ConfigError(f"input_size is the shape of one sample without the batch, e.g. (3, 32, 32); got {input_size!r}")
    return size


def _resolve_mode(mode: str | None, data: DataSource | Observation | None, method: Candidates) -> str:
    """The reconstruction mode: data when there is data (or an observation) and a candidate
    fits data (candidates that do not fit data are fitted to their weights all the same)."""
    mode = mode or ("data" if data is not None and method.fits_data else "filter")
    if mode == "asymmetric" and isinstance(data, Observation):
        raise ConfigError("asymmetric mode runs the data through the model as it is approximated, which an "
                          "observation cannot: pass the data itself")
    if mode != "filter" and data is None:
        raise ConfigError(f"mode={mode!r} is data reconstruction, which needs data: pass batches of the model's inputs")
    return mode


@dataclass
class _Plan:
    """The checked arguments of one ``compress`` call."""

    method: Candidates
    mode: str
    policy: RankPolicy
    layers: list[str]
    config: CompressConfig


def _layer_inputs(model: nn.Module, layers: list[str], example: Batch | None, source: str,
                  whole_batch: bool) -> dict[str, torch.Tensor] | None:
    """Each layer's input within ``example`` (within its first sample unless ``whole_batch``:
    the shapes are all that is needed then); None without an example. ``source`` names where
    the example came from, for errors."""
    if example is None:
        return None
    batch = example if whole_batch else take(example, 1)
    try:
        return capture_layer_inputs(model, layers, batch)
    except TypeError as err:  # a forward that wants several inputs or keywords
        raise DataError(f"the model cannot be called on {source} ({err}): recon calls model(inputs) with each "
                        "batch's inputs (the first element of a tuple batch); feed a model that takes several inputs "
                        "or keywords dict batches, each key naming a parameter of its forward") from err
    except RuntimeError as err:
        hint = "; do the batches have a batch dimension first?" if isinstance(example, torch.Tensor) and \
            example.ndim <= 3 else ""
        raise DataError(f"the model failed on {source}: {err}{hint}") from err


def compress(model: nn.Module, data: DataSource | None = None, config: CompressConfig | None = None, *,
             layers: LayerSpec | None = None, example_input: Any = None, device: str | torch.device | None = None,
             model_name: str | None = None, progress: bool = True,
             on_layers: Callable[[list[LayerRecord]], None] | None = None,
             forward_loop: Callable[[nn.Module], Any] | None = None, **settings: Any) -> Compression:
    """Replace layers of ``model`` by low-rank modules; ``model`` itself is not changed.

    Args:
      model: a trained torch model, on any device.
      data: batches of the model's inputs (a DataLoader, a list, or a function returning a
        fresh iterable; tensors, (inputs, labels) pairs or dicts of keyword inputs), or an
        ``Observation`` of the model (``recon.observe``, ``recon.observing``: its statistics,
        example and sample are used and the data is not read again; not for asymmetric mode).
        None: filter reconstruction only.
      config: every setting of the compression (``recon.CompressConfig``; default: its
        defaults). ``settings`` are the same fields given as keywords, e.g.
        ``compress(model, data, method="scheme2", ranks=48, mode="asymmetric",
        timing=recon.Timing(channels_last=True))``; with ``config`` they replace its fields.
      layers: names, "all", a regular expression, a filter function ``fn(module, name)``, or
        a list; default "all" (the dict's names when ``ranks`` is a dict).
      example_input: one batch of inputs that timing, the rank policy and the layers' input
        shapes (MACs) are measured on, cut or cycled to ``timing.batch`` samples (default: the
        data's first batch; without data, needed for the guard and ``TargetSpeedup``).
      device: where statistics, solvers' inputs and timing run (default: the model's device);
        the result stays on the model's device.
      model_name: what the bases file calls the model (default: its class name).
      progress: progress bars; per-layer events go to the ``recon`` logger.
      on_layers: called with the records of kept layers as soon as they are final (e.g. to save):
        each layer at once when fitted one by one (asymmetric mode), all together after a
        batched fit.
      forward_loop: instead of ``data``, a function that runs the model it is given over the
        data as the user's own code does (their device, batch format); the batches it calls
        the model with are recorded once and serve as the data (asymmetric mode included).

    The settings (``CompressConfig``): ``method`` (a registered method, "auto" or a list of
    names for ``TargetSpeedup`` to choose among per layer), ``ranks`` (an int, a dict, or a
    policy: ``TargetSpeedup``, ``AccuracyBudget``), ``mode`` ("filter", "data", "asymmetric"),
    ``guard`` and ``min_speedup`` (keep a layer dense unless measured that much faster),
    ``max_output_loss`` and ``dense_when_lossy``, ``fold_batchnorm`` (fold each BatchNorm that
    takes a selected conv's output, found in the ``torch.fx`` graph, into it first: the folded
    conv is fitted and replaced, the BatchNorm becomes Identity, the bases file records it,
    and speed is measured against the dense model folded the same way; a pair that would not
    fold exactly is left, with a warning naming it), ``samples``, ``patches_per_image``,
    ``solver`` and ``timing``. The keywords ``asymmetric``, ``channels_last``, ``timing_batch``
    and ``input_size`` of earlier versions still work, with a DeprecationWarning.
    """
    check_model(model)
    config, example_input = _settled(config, settings, example_input)
    example_input = None if example_input is None else check_example(example_input, "example_input")
    if forward_loop is not None and data is not None:
        raise ConfigError("give data (or an observation) or forward_loop, not both")
    model_hash = model_sha256(model)
    plan = _plan(model, data if forward_loop is None else forward_loop, layers, config, example_input, device,
                 on_layers, model_hash)
    home = next(model.parameters()).device
    observation = data if isinstance(data, Observation) else None  # its statistics, example and sample stand in
    config = plan.config
    solver, asymmetric = config.solver, plan.mode == "asymmetric"
    work = copied(model).to(device or home).eval()
    data = data if forward_loop is None else recorded_batches(work, forward_loop)
    folded = _fold(work, plan.layers) if config.fold_batchnorm else {}
    batches = None if data is None or observation is not None else Batches(
        data, config.samples, next(work.parameters()).device, next(work.parameters()).dtype)
    example, source = _timing_example(example_input, batches, observation, work, config.timing.batch)
    timed = config.guard or plan.policy.measures_speed
    inputs = _layer_inputs(work, plan.layers, example, source, whole_batch=timed)
    shapes = None if inputs is None else {name: tuple(x.shape[1:]) for name, x in inputs.items()}
    if observation is None and (plan.mode == "data" or (asymmetric and plan.policy.uses_statistics)):
        observation = gather(work, batches, plan.layers, config.patches_per_image, solver.seed, progress, model_hash)
    symmetric = None
    if observation is not None and (plan.mode == "data" or asymmetric):
        symmetric = {name: observation[name] for name in plan.layers}
    sample = observation.sample if observation is not None else None if batches is None else _sensitivity_sample(
        batches)

    def fit(name: str, choice: Choice, moments=None) -> LayerRecord:
        moments = moments if moments is not None else (None if symmetric is None else symmetric[name])
        return fit_layer(choice.method, work.get_submodule(name), name, choice.rank, moments, solver,
                         None if shapes is None else shapes[name], config.to_dict())

    problem = RankProblem(work, {name: plan.method.for_layer(work.get_submodule(name)) for name in plan.layers},
                          plan.layers, {name: plan.method.geometry(work.get_submodule(name)) for name in plan.layers},
                          {name: to_numpy(work.get_submodule(name).weight) for name in plan.layers},
                          symmetric, sample, fit, LOG.info,
                          example if timed else None, config.timing, inputs if timed else None)
    search = plan.policy.choose(problem)
    chosen = search.chosen
    guard_inputs = inputs if config.guard else {}
    problem = inputs = None  # the layer inputs are kept for the guard only

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
                                                     config)
        front = AsymmetricObserver(work, approx, batches, list(chosen), config.patches_per_image, solver.seed,
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
        if record.output_variance_lost > config.max_output_loss and config.dense_when_lossy:
            record.dense_reason = f"output variance lost {record.output_variance_lost:.3f} > {config.max_output_loss:g}"
        elif name in guard_inputs:
            record.guard = time_replacement(work.get_submodule(name), record.module, guard_inputs[name], name,
                                            config.min_speedup, channels_last=config.timing.channels_last)
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
    return Compression(approx, records, refusals(model, plan.method), config, model_name or type(model).__name__,
                       model_hash, outcome, [name for name in plan.layers if name not in chosen], folded,
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


LEGACY_SETTINGS = ("asymmetric", "channels_last", "timing_batch", "input_size")


def _settled(config: CompressConfig | None, settings: dict[str, Any],
             example_input: Any) -> tuple[CompressConfig, Any]:
    """(the config with ``settings`` applied, the example input), the older keywords and the
    older ``TargetSpeedup(factor, example_input, ...)`` moved to where they belong now."""
    if config is None:
        config = CompressConfig()
    elif not isinstance(config, CompressConfig):
        hint = ": recon.CompressConfig.from_dict(settings)" if isinstance(config, dict) else ""
        raise ConfigError(f"config must be a recon.CompressConfig, got {type(config).__name__}{hint}")
    legacy = {name: settings.pop(name) for name in LEGACY_SETTINGS if name in settings}
    if legacy:
        warnings.warn(f"compress({', '.join(f'{name}=' for name in legacy)}) is deprecated: use mode='asymmetric', "
                      "timing=recon.Timing(batch, channels_last) and example_input=", DeprecationWarning, stacklevel=3)
    timing = {}
    if "channels_last" in legacy:
        timing["channels_last"] = legacy["channels_last"]
    if "timing_batch" in legacy:
        timing["batch"] = legacy["timing_batch"]
    if timing:
        settings["timing"] = dataclasses.replace(settings.get("timing", config.timing), **timing)
    if legacy.get("asymmetric"):
        mode = settings.get("mode", config.mode)
        if mode not in (None, "data", "asymmetric"):
            raise ConfigError("asymmetric fitting is a form of data reconstruction: it needs mode='data' and data")
        settings["mode"] = "asymmetric"
    if legacy.get("input_size") is not None:
        if example_input is not None:
            raise ConfigError("give example_input or input_size (deprecated), not both")
        example_input = torch.zeros(1, *_check_input_size(legacy["input_size"]))
    config = config.replace(**settings)
    policy = config.ranks
    if isinstance(policy, TargetSpeedup) and policy.legacy is not None:
        example, given = policy.legacy
        for name, value in given.items():
            current = getattr(config.timing, name)
            if current != getattr(Timing(), name) and current != value:
                raise ConfigError(f"TargetSpeedup's {name}={value!r} and the timing's {name}={current!r} disagree: "
                                  "give the timing once, as compress(timing=recon.Timing(...))")
        config = config.replace(timing=dataclasses.replace(config.timing, **given))
        if example is not None and example_input is not None and example_input is not example:
            raise ConfigError("TargetSpeedup's example input and compress's example_input differ: give "
                              "compress(example_input=...) alone")
        example_input = example if example is not None else example_input
    return config, example_input


def _plan(model: nn.Module, data: DataSource | Observation | None, layers: LayerSpec | None, config: CompressConfig,
          example_input: Any, device: Any, on_layers: Any, model_hash: str) -> _Plan:
    """Every argument checked, the layers selected and the ranks validated: before any work."""
    method = config.candidates
    mode = _resolve_mode(config.mode, data, method)
    policy = config.ranks
    if policy is None:
        raise ConfigError("give ranks: an int, a dict of layer name -> rank, recon.TargetSpeedup(...) or "
                          "recon.AccuracyBudget(...)")
    if method.single is None and not policy.chooses_methods:
        raise ConfigError(f"method {method.name} chooses a method per layer, which needs a policy that chooses "
                          "methods (recon.TargetSpeedup); with fixed ranks or AccuracyBudget name one method")
    if layers is None:
        layers = list(policy.ranks) if isinstance(policy, Fixed) and isinstance(policy.ranks, dict) else "all"
    names = select_layers(model, layers, method)
    geometries = {name: method.geometry(model.get_submodule(name)) for name in names}
    if method.single is not None:
        policy.check(method.single, geometries)
    if on_layers is not None and not callable(on_layers):
        raise ConfigError(f"on_layers must be a function of a list of records, got {type(on_layers).__name__}")
    check_device(device)
    if data is None and example_input is None:
        for needed, what in ((config.guard, "the guard times layers"),
                             (policy.measures_speed, f"{type(policy).__name__} times the model")):
            if needed:
                raise ConfigError(f"{what} on their real inputs: give data or example_input (one batch of inputs)")
    if config.guard and config.timing.backend != "torch":
        raise ConfigError(f"the guard times layers with torch, not {config.timing.backend}: drop guard=True (the "
                          "rank policy's latency tables keep the layers that do not pay dense) or the backend")
    if isinstance(data, Observation):  # the statistics were sampled as the observation says
        data.check_for(model_hash, names, torch.device(device or next(model.parameters()).device))
        config = config.replace(patches_per_image=data.patches_per_image)
    return _Plan(method, mode, policy, names, config.replace(mode=mode))


def _timing_example(example_input: Any, batches: Batches | None, observation: Observation | None, work: nn.Module,
                    batch: int) -> tuple[Batch | None, str]:
    """(the batch every timing runs on: ``example_input``, else the data's first batch, on the
    working device with its samples cut or cycled to ``batch``, or None without either; what
    it was made from, for errors)."""
    if example_input is not None:
        source, what = example_input, "example_input"
    elif observation is not None:
        source, what = observation.example, "the observation's first batch"
    else:
        source, what = None if batches is None else batches.first(), "the first data sample"
    if source is None:
        return None, ""
    described = f"{what} (batch shape {describe(source)})"
    parameter = next(work.parameters())
    source = moved(source, parameter.device, parameter.dtype)
    return take(cat([source] * math.ceil(batch / size(source))), batch), described


def _sensitivity_sample(batches: Batches) -> Batch:
    """Up to ``SAMPLE_SIZE`` samples from the first batches, as an observation keeps them, when
    no statistics were gathered (one batch of one sample has no variation to measure a
    sensitivity on)."""
    taken, count = [], 0
    for inputs in batches:
        taken.append(take(inputs, SAMPLE_SIZE - count))
        count += size(taken[-1])
        if count >= SAMPLE_SIZE:
            break
    return cat(taken)
