"""The method protocol: everything the pipeline, the store, the guard and the rank policies
need to know about one decomposition, so that none of them branches on a method's name.

A method says which layers it can replace and why not (``eligible``), which ranks make sense
(``max_rank``, ``check_rank``), what a rank costs without building anything (``macs``), how
to fit factors to a layer's weights (``fit``; to its input statistics too when
``fits_data``), how good each rank would be before fitting when there is a closed form
(``rank_errors``), and which module holds the result (``module_class``).
"""
from __future__ import annotations

import dataclasses
import warnings
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any, ClassVar, NamedTuple

import numpy as np
from torch import nn

from recon.checks import check_whole
from recon.errors import ConfigError
from recon.nn import Geometry, LowRankModule, geometry_of
from recon.nn.base import Rank
from solvers.objectives import Moments
from solvers.schedule import LambdaSchedule

SEED_BITS = 32  # NumPy's legacy seeding (CP's initialisation) takes seeds below 2**32


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """Settings of the solvers (the defaults fit the bundled model's layers).

    ``ridge``: data mode adds ridge * (mean input variance) * ||W_hat - W||^2 to the output
    error, so input directions the statistics do not see stay at the original weights
    (``solvers.objectives.data_objective``); 0 is the plain data objective. A tuple of values
    (e.g. ``RIDGE_GRID``) fits each layer with each of them on the statistics without their
    held-out samples and keeps, per layer, the one whose fit loses least on the held-out ones.
    """

    lbfgs_iterations: int | None = None
    schedule: LambdaSchedule | None = None
    cp_iterations: int | None = None
    seed: int = 0
    ridge: float | tuple[float, ...] = 1e-3

    def __post_init__(self) -> None:
        for name, low, bits in (("lbfgs_iterations", 1, 63), ("cp_iterations", 1, 63), ("seed", 0, SEED_BITS)):
            value = getattr(self, name)
            if value is not None:
                check_whole(name, value, low, bits=bits)
        if isinstance(self.ridge, (list, tuple)):
            object.__setattr__(self, "ridge", tuple(self.ridge))
        for ridge in self.ridges:
            if isinstance(ridge, bool) or not isinstance(ridge, (int, float, np.floating)) or not (
                    np.isfinite(ridge) and ridge >= 0):
                raise ConfigError(f"ridge must be a finite number >= 0 or a non-empty tuple of them, got {self.ridge!r}")
        if not self.ridges:
            raise ConfigError("ridge must be a finite number >= 0 or a non-empty tuple of them, got ()")
        if self.schedule is not None:
            check_schedule(self.schedule)
        if self.method_settings():
            warnings.warn(f"SolverOptions({', '.join(f'{k}=' for k in self.method_settings())}) is deprecated: each "
                          "method carries its own options: Scheme2(lbfgs_iterations=...), Scheme1(schedule=...), "
                          "CP(iterations=..., seed=...)", DeprecationWarning, stacklevel=3)

    @property
    def ridges(self) -> tuple[float, ...]:
        """The ridge values to try (one when ``ridge`` is a number)."""
        return self.ridge if isinstance(self.ridge, tuple) else (self.ridge,)

    def method_settings(self) -> dict[str, Any]:
        """The method options given here in the deprecated way (``lbfgs_iterations``,
        ``schedule``, ``cp_iterations``), to be moved onto the methods."""
        return {name: getattr(self, name) for name in ("lbfgs_iterations", "schedule", "cp_iterations")
                if getattr(self, name) is not None}

    def with_ridge(self, ridge: float) -> "SolverOptions":
        """These options with one ``ridge``."""
        return dataclasses.replace(self, ridge=float(ridge))

    def to_dict(self) -> dict[str, Any]:
        ridge = list(self.ridge) if isinstance(self.ridge, tuple) else self.ridge
        return {"seed": self.seed, "ridge": ridge}


def check_schedule(schedule: Any) -> None:
    """ConfigError unless ``schedule`` is a valid ``LambdaSchedule``."""
    if not isinstance(schedule, LambdaSchedule):
        raise ConfigError(f"schedule must be a solvers.schedule.LambdaSchedule, got {type(schedule).__name__}")
    try:
        schedule.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None


RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0)
"""The ridge values ``SolverOptions(ridge=RIDGE_GRID)`` (``--ridge held-out``) chooses from per layer."""


class Fitted(NamedTuple):
    """Factors in the module's layout (``module_class.factor_shapes`` names), their rank and
    the solver's per-stage history (empty for closed forms)."""

    factors: dict[str, np.ndarray]
    rank: Rank
    history: dict[str, np.ndarray]


HOOKS = {"_forward_hooks": "forward hook", "_forward_pre_hooks": "forward pre-hook",
         "_backward_hooks": "backward hook", "_backward_pre_hooks": "backward pre-hook"}


def overridden_forward(layer: nn.Module, base: type[nn.Module]) -> str | None:
    """Why a layer of class ``base`` (or a subclass) cannot be replaced as if it computed
    ``base``'s plain forward, or None: a subclass overriding the forward, a forward set on the
    instance (e.g. by a wrapping library), or hooks, which a replacement would silently drop."""
    kind = type(layer)
    changed = [name for name in ("forward", "_conv_forward") if hasattr(base, name)
               and getattr(kind, name) is not getattr(base, name)]
    if kind is not base and changed:
        return (f"its class {kind.__name__} overrides {changed[0]}() of nn.{base.__name__}, so what it computes "
                "is not a plain convolution of its weight")
    if "forward" in vars(layer):
        return "its forward is replaced on the instance (a patch or a wrapping library), which a replacement would drop"
    hooks = {label: len(getattr(layer, name, {})) for name, label in HOOKS.items()}
    present = [f"{count} {kind}{'s' if count > 1 else ''}" for kind, count in hooks.items() if count]
    if present:
        return (f"it has {', '.join(present)} (a mask, weight_norm, pruning or an observer?), which a replacement "
                "would drop; remove them (handle.remove(), torch.nn.utils.prune.remove) or replace the layer yourself")
    return None


class Method(ABC):
    """One decomposition. Subclasses set the class attributes and implement the abstract methods;
    a method with settings of its own (``Scheme2(lbfgs_iterations=...)``) takes them in its
    constructor and lists them in ``settings``. Methods compare equal when of one kind with
    equal settings."""

    name: ClassVar[str]
    summary: ClassVar[str]
    module_class: ClassVar[type[LowRankModule]]
    fits_data: ClassVar[bool] = False
    exact_rank_errors: ClassVar[bool] = False  # rank_errors equal the errors of quick_fit, not a bound

    def eligible(self, layer: nn.Module) -> str | None:
        """None when this method can replace ``layer``, else the reason it cannot; by default
        a plain, ungrouped, zero-padded ``nn.Conv2d`` with a kernel larger than 1x1."""
        return conv_refusal(layer)

    @abstractmethod
    def max_rank(self, geometry: Geometry) -> int:
        """The largest rank worth fitting (full reconstruction, or the dense cost)."""

    def check_rank(self, geometry: Geometry, rank: Any) -> None:
        """Raise ConfigError unless ``rank`` is an int in 1..max_rank."""
        top = self.max_rank(geometry)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= top:
            raise ConfigError(f"{self.name} needs a rank in 1..{top} for this layer ({self.rank_hint(geometry)}), "
                              f"got {rank!r}")

    def rank_hint(self, geometry: Geometry) -> str:
        """Where the largest rank comes from, for error messages."""
        return f"max {self.max_rank(geometry)}"

    def module_rank(self, geometry: Geometry, rank: Any) -> Rank:
        """The rank ``module_class`` takes for a rank given as ``check_rank`` accepts it."""
        return rank

    def macs(self, geometry: Geometry, rank: Rank, input_shape: tuple[int, ...]) -> int:
        """Multiply-accumulates per sample of the module at ``rank`` (no module is built)."""
        return self.module_class.count_macs(geometry, rank, input_shape)

    def rank_for_speedup(self, geometry: Geometry, input_shape: tuple[int, ...], factor: float = 1.0) -> int:
        """The largest rank whose MACs are at most the dense layer's divided by ``factor`` (0: none);
        ``factor`` 1 gives the break-even rank."""
        dense = geometry.dense_macs(input_shape)
        ranks = [r for r in range(1, self.max_rank(geometry) + 1) if self.macs(geometry, r, input_shape) * factor <= dense]
        return ranks[-1] if ranks else 0

    @abstractmethod
    def fit(self, weights: np.ndarray, rank: Any, moments: Moments | None, options: SolverOptions,
            groups: int = 1) -> Fitted:
        """Factors for ``weights`` (float64, the layer's weight shape) at ``rank``.

        ``moments`` (input statistics) select data reconstruction; None, filter reconstruction.
        ``groups`` > 1 only reaches methods whose ``eligible`` accepts grouped convolutions.
        """

    def batch_key(self, geometry: Geometry, rank: Any, data_mode: bool) -> Hashable:
        """Layers with equal keys are solved together by ``fit_many``; default: equal shapes."""
        return (geometry.weight_shape, geometry.groups, rank, data_mode)

    def fit_many(self, problems: list[tuple[np.ndarray, Moments | None]], rank: Any, options: SolverOptions,
                 groups: int = 1) -> list[Fitted]:
        """``fit`` for several layers sharing a ``batch_key`` ((weights, moments) each); one by
        one unless a method solves them as one batch."""
        return [self.fit(weights, rank, moments, options, groups) for weights, moments in problems]

    def quick_fit(self, weights: np.ndarray, rank: Any, groups: int = 1) -> Fitted:
        """Factors made fast, to time the module on realistic activations (the time of a whole
        model depends on its activations' values: random factors measured 5-10% slower than
        fitted ones here). Default: the filter-mode fit."""
        return self.fit(weights, rank, None, SolverOptions(), groups)

    def rank_errors(self, weights: np.ndarray, covariance: np.ndarray | None, groups: int = 1) -> np.ndarray | None:
        """Predicted relative error of every rank 1..max_rank before fitting (entry r-1 for
        rank r): of the layer's outputs for the centred input ``covariance`` (per group, stacked,
        for a grouped convolution), of its weights when None. None when the method has no cheap
        estimate."""
        return None

    def build(self, geometry: Geometry, fitted: Fitted, bias: np.ndarray | None) -> LowRankModule:
        """The module holding ``fitted`` factors and ``bias`` (float32, on the CPU)."""
        return self.module_class.from_factors(geometry, fitted.factors, bias, rank=fitted.rank)

    def geometry(self, layer: nn.Module) -> Geometry:
        return geometry_of(layer)

    def settings(self) -> dict[str, Any]:
        """The method's own settings, JSON-ready (none by default)."""
        return {}

    def replaced(self, **settings: Any) -> "Method":
        """This method with ``settings`` changed (checked); ConfigError naming any it does not have."""
        unknown = sorted(set(settings) - set(self.settings()))
        if unknown:
            raise ConfigError(f"method {self.name} has no setting {', '.join(unknown)}; its settings: "
                              f"{', '.join(self.settings()) or 'none'}")
        current = {name: getattr(self, name) for name in self.settings()}
        return type(self)(**{**current, **settings})

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.settings() == self.settings()

    def __hash__(self) -> int:
        return hash((type(self), repr(sorted(self.settings().items()))))

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.settings().items() if type(self)().settings().get(k) != v}
        return f"<method {self.name}{''.join(f' {k}={v}' for k, v in changed.items())}>"


def conv_refusal(layer: nn.Module, grouped: bool = False, pointwise: bool = False) -> str | None:
    """Why ``layer`` is not a plain zero-padded ``nn.Conv2d`` (ungrouped unless ``grouped``,
    with a kernel larger than 1x1 unless ``pointwise``), or None when it is."""
    if not isinstance(layer, nn.Conv2d):
        return f"it is a {type(layer).__name__} layer, not an nn.Conv2d"
    overridden = overridden_forward(layer, nn.Conv2d)
    if overridden:
        return overridden
    if layer.padding_mode != "zeros":
        return f"padding_mode={layer.padding_mode!r} (only 'zeros' is reproduced)"
    if layer.groups != 1 and not grouped:
        return f"it is a grouped convolution (groups={layer.groups}); its groups would be mixed (scheme2 keeps them)"
    if tuple(layer.kernel_size) == (1, 1) and not pointwise:
        return "it has a 1x1 kernel: nothing to separate (scheme2 splits it into two 1x1 convs)"
    return None
