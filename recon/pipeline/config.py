"""``CompressConfig``: every setting of a compression, checked in one place.

``recon.compress`` takes a ``CompressConfig`` (or its fields as keywords), checks it before
any work, and writes it as JSON with every layer it fits, so a bases file says how it was
made and ``CompressConfig.from_bases(path)`` makes it again (``recon.bench.settings.Timing`` is its timing part).
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from recon import methods
from recon.bench.guard import MIN_SPEEDUP
from recon.bench.settings import WHOLE_MODEL_REPEATS, Timing
from recon.checks import check_flag, check_whole
from recon.errors import ConfigError
from recon.methods import Candidates, Method, SolverOptions
from recon.pipeline.policies import Fixed, RankPolicy
from recon.pipeline.report import MAX_OUTPUT_LOSS
from recon.pipeline.target_speedup import TargetSpeedup

CONFIG_VERSION = 2  # 2: mode "asymmetric", a "timing" dict; 1 (no "version"): asymmetric, channels_last, timing_batch
MODES = ("filter", "data", "asymmetric")


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """The settings of one ``recon.compress`` call, checked when made.

    method: a registered method, "auto" or a list of names (``recon.methods``); ranks: an int,
    a dict of layer name -> rank, or a rank policy (None here; ``compress`` needs one); mode:
    "filter" (match weights), "data" (match outputs), "asymmetric" (data mode on inputs from the
    network approximated so far), or None (data when there is data and the method fits data);
    guard / min_speedup: keep a layer dense unless measured ``min_speedup`` times faster;
    max_output_loss / dense_when_lossy: flag (and with dense_when_lossy keep dense) layers
    losing more output variance; fold_batchnorm: fold the BatchNorm after a conv into it;
    samples / patches_per_image: how much of the data the statistics read; solver: the
    solvers' settings; timing: how everything is timed.
    """

    method: str | tuple[str, ...] = "scheme2"
    ranks: Any = None
    mode: str | None = None
    guard: bool = False
    min_speedup: float = MIN_SPEEDUP
    max_output_loss: float = MAX_OUTPUT_LOSS
    dense_when_lossy: bool = False
    fold_batchnorm: bool = False
    samples: int | None = None
    patches_per_image: int | None = 32
    solver: SolverOptions = SolverOptions()
    timing: Timing = Timing()

    def __post_init__(self) -> None:
        candidates = methods.resolve(self.method)
        if isinstance(self.solver, SolverOptions) and self.solver.method_settings():  # the deprecated way
            candidates = methods.with_settings(candidates, methods.legacy_settings(vars(self.solver)))
            object.__setattr__(self, "solver", SolverOptions(seed=self.solver.seed, ridge=self.solver.ridge))
        object.__setattr__(self, "method", _method_spec(self.method, candidates))
        object.__setattr__(self, "ranks", _as_policy(self.ranks))
        if self.mode is not None and self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(map(repr, MODES))} or None, got {self.mode!r}")
        if self.mode in ("data", "asymmetric") and not candidates.fits_data:
            data_methods = [m.name for m in methods.REGISTRY.values() if m.fits_data]
            raise ConfigError(f"method {candidates.name} reconstructs weights only (mode='filter'); data "
                              f"reconstruction is for {', '.join(data_methods)}")
        for label in ("guard", "dense_when_lossy", "fold_batchnorm"):
            check_flag(label, getattr(self, label))
        for label in ("min_speedup", "max_output_loss"):
            value = getattr(self, label)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{label} must be a positive number, got {value!r}")
        check_whole("samples", self.samples, 1, optional=True)
        check_whole("patches_per_image", self.patches_per_image, 1, optional=True)
        if not isinstance(self.solver, SolverOptions):
            hint = ": recon.SolverOptions(**settings)" if isinstance(self.solver, dict) else ""
            raise ConfigError(f"solver must be a recon.SolverOptions, got {type(self.solver).__name__}{hint}")
        if not isinstance(self.timing, Timing):
            hint = ": recon.Timing(**settings)" if isinstance(self.timing, dict) else ""
            raise ConfigError(f"timing must be a recon.Timing, got {type(self.timing).__name__}{hint}")

    @property
    def candidates(self) -> Candidates:
        """The methods this compression may use."""
        return methods.resolve(self.method)

    def replace(self, **changes: Any) -> CompressConfig:
        """This config with ``changes`` (checked again)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; CompressConfig has "
                              f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every setting, with the schema version."""
        return {"version": CONFIG_VERSION, "method": self.candidates.name,
                "method_settings": {m.name: m.settings() for m in self.candidates.methods if m.settings()},
                "ranks": None if self.ranks is None else self.ranks.describe(), "mode": self.mode,
                "guard": self.guard, "min_speedup": self.min_speedup, "max_output_loss": self.max_output_loss,
                "dense_when_lossy": self.dense_when_lossy, "fold_batchnorm": self.fold_batchnorm,
                "samples": self.samples, "patches_per_image": self.patches_per_image,
                "solver": self.solver.to_dict(), "timing": dataclasses.asdict(self.timing)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], **changes: Any) -> CompressConfig:
        """The config ``to_dict`` wrote (any version up to ``CONFIG_VERSION``), with ``changes``.
        A rank policy that cannot be stored (``AccuracyBudget``'s metric) must come in
        ``changes``."""
        if not isinstance(values, dict):
            raise ConfigError(f"a config is a dict of settings, got {type(values).__name__}")
        version = values.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigError(f"config version must be a whole number >= 1, got {version!r}")
        if version > CONFIG_VERSION:
            raise ConfigError(f"the config is of version {version}, newer than this recon reads ({CONFIG_VERSION}): "
                              "upgrade recon to replay it")
        values = _from_version_1(values) if version == 1 else values
        try:
            method_settings = {**methods.legacy_settings(values["solver"]), **values.get("method_settings", {})}
            settings = {"method": _method_from_name(values["method"], method_settings), "mode": values["mode"],
                        "guard": values["guard"], "min_speedup": values["min_speedup"],
                        "max_output_loss": values["max_output_loss"], "dense_when_lossy": values["dense_when_lossy"],
                        "fold_batchnorm": values.get("fold_batchnorm", False), "samples": values["samples"],
                        "patches_per_image": values["patches_per_image"],
                        "solver": _solver_from_dict(values["solver"]), "timing": Timing(**values["timing"])}
            if "ranks" not in changes:
                settings["ranks"] = _policy_from_dict(values["ranks"])
        except KeyError as err:
            raise ConfigError(f"the config lacks the setting {err.args[0]!r}") from None
        except TypeError as err:
            raise ConfigError(f"the config holds a malformed setting: {err}") from None
        return cls(**settings).replace(**changes)

    @classmethod
    def from_bases(cls, path: str | Path, layer: str | None = None, **changes: Any) -> CompressConfig:
        """The config a bases file's layers were made with (of ``layer``, or the one all of them
        share), with ``changes``: ``compress(model, data, config=CompressConfig.from_bases(f))``
        makes the file again."""
        from recon.io.bases_file import read_bases  # reading HDF5 only when a file is replayed

        records = read_bases(path).layers
        if layer is not None:
            if layer not in records:
                raise ConfigError(f"{path} holds no layer {layer!r}; it holds {', '.join(records) or 'none'}")
            records = {layer: records[layer]}
        configs = {name: record.config for name, record in records.items()}
        distinct = {repr(sorted(config.items())) for config in configs.values()}
        if not configs:
            raise ConfigError(f"{path} holds no layers, so no config to replay")
        if len(distinct) > 1:
            raise ConfigError(f"the layers of {path} were made with {len(distinct)} different configs: pick one with "
                              f"layer=<name> ({', '.join(configs)})")
        return cls.from_dict(next(iter(configs.values())), **changes)


def _method_spec(spec: Any, candidates: Candidates) -> str | Method | tuple[str | Method, ...]:
    """A method setting as plain as it can be: a name or "auto" when every candidate has the
    registry's settings, else the methods themselves (one, or a tuple)."""
    if all(method == methods.get(method.name) for method in candidates.methods):
        if isinstance(spec, str):
            return spec
        names = tuple(m.name for m in candidates.methods)
        return names[0] if len(names) == 1 else names
    chosen = candidates.methods
    return chosen[0] if len(chosen) == 1 else chosen


def _method_from_name(name: Any, settings: dict[str, dict]) -> str | Method | tuple[str | Method, ...]:
    """The method setting of a stored name ("scheme2", or "auto(scheme2,cp)" for several) and
    the stored settings of its methods."""
    if not isinstance(name, str):
        raise ConfigError(f"the config's method must be a name, got {name!r}")
    several = re.fullmatch(rf"{methods.AUTO}\((.*)\)", name)
    names = several.group(1).split(",") if several else [name]
    chosen = methods.with_settings(methods.resolve(names), settings).methods
    return _method_spec(name if len(names) == 1 else tuple(names), Candidates(chosen))


def _as_policy(ranks: Any) -> RankPolicy | None:
    """``ranks`` as a rank policy: an int or dict as ``Fixed``; None stays None."""
    if ranks is None or isinstance(ranks, RankPolicy):
        return ranks
    if isinstance(ranks, np.integer):
        ranks = int(ranks)
    if isinstance(ranks, dict):  # NumPy ints would pass the checks and then fail the JSON of the bases file
        ranks = {name: int(rank) if isinstance(rank, np.integer) else rank for name, rank in ranks.items()}
    if isinstance(ranks, (dict, int, str, tuple)) and not isinstance(ranks, bool):
        return Fixed(ranks)
    raise ConfigError(f"ranks must be an int, a dict, or a rank policy, got {type(ranks).__name__}")


def _policy_from_dict(description: Any) -> RankPolicy | None:
    """The rank policy a ``describe()`` dict stands for (None for none)."""
    if description is None:
        return None
    kind = description.get("policy") if isinstance(description, dict) else None
    if kind == "fixed":
        ranks = {name: tuple(r) if isinstance(r, list) else r for name, r in description["ranks"].items()}
        return Fixed(ranks["all"] if list(ranks) == ["all"] else ranks)
    if kind == "target_speedup":
        return TargetSpeedup(description["factor"], margin=description["margin"],
                             max_layer_loss=description["max_layer_loss"],
                             max_output_change=description["max_output_change"])
    if kind == "accuracy_budget":
        raise ConfigError(f"the config's ranks came from AccuracyBudget({description['points']:g}, metric), whose "
                          "metric function is not stored: pass ranks=recon.AccuracyBudget(points, metric)")
    raise ConfigError(f"the config's ranks are no rank policy recon knows: {description!r}")


def _solver_from_dict(values: dict[str, Any]) -> SolverOptions:
    """The shared solver settings of a stored dict (its method fields, from earlier versions,
    go to the methods: ``methods.legacy_settings``)."""
    ridge = values["ridge"]
    return SolverOptions(seed=values["seed"], ridge=tuple(ridge) if isinstance(ridge, list) else ridge)


def _from_version_1(values: dict[str, Any]) -> dict[str, Any]:
    """A version-1 config (``asymmetric`` beside ``mode``; ``channels_last``, ``timing_batch``
    and a TargetSpeedup's ``repeats`` and ``backend`` apart) in the version-2 layout."""
    ranks = values.get("ranks") or {}
    timing = {"batch": values.get("timing_batch", 32), "channels_last": values.get("channels_last", False)}
    if ranks.get("policy") == "target_speedup":
        timing.update(channels_last=ranks.get("channels_last", timing["channels_last"]),
                      batch=ranks.get("batch", timing["batch"]), backend=ranks.get("backend", "torch"),
                      repeats=ranks.get("repeats", WHOLE_MODEL_REPEATS))
    mode = "asymmetric" if values.get("asymmetric") else values.get("mode")
    return {**values, "mode": mode, "timing": timing}
