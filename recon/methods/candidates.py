"""The methods one compression may use: a single named method, or several for a policy to
choose among per layer (``method="auto"``: every registered method that accepts the layer)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from recon.errors import ConfigError
from recon.methods.base import Method
from recon.nn import Geometry

AUTO = "auto"


@dataclass(frozen=True)
class Candidates:
    """Methods in order of preference; a layer is eligible when one of them accepts it."""

    methods: tuple[Method, ...]

    @property
    def name(self) -> str:
        """The method's name for one method, "auto(scheme2,scheme1,...)" for several."""
        names = ",".join(m.name for m in self.methods)
        return names if len(self.methods) == 1 else f"{AUTO}({names})"

    @property
    def single(self) -> Method | None:
        """The method when there is only one, else None."""
        return self.methods[0] if len(self.methods) == 1 else None

    @property
    def fits_data(self) -> bool:
        """Whether some candidate fits data (the others refit only their bias in data mode)."""
        return any(m.fits_data for m in self.methods)

    def for_layer(self, layer: nn.Module) -> tuple[Method, ...]:
        """The candidates that can replace ``layer``, in order of preference."""
        return tuple(m for m in self.methods if m.eligible(layer) is None)

    def eligible(self, layer: nn.Module) -> str | None:
        """None when some candidate can replace ``layer``, else every candidate's reason."""
        reasons = [(m.name, m.eligible(layer)) for m in self.methods]
        if any(reason is None for _, reason in reasons):
            return None
        if len(reasons) == 1:
            return reasons[0][1]
        return "; ".join(f"{name}: {reason}" for name, reason in reasons)

    def geometry(self, layer: nn.Module) -> Geometry:
        """The layer's geometry, as its candidates see it (every method reads ``geometry_of``)."""
        return self.methods[0].geometry(layer)


def resolve_candidates(spec: str | Method | Candidates | Sequence[str | Method],
                       registry: dict[str, Method]) -> Candidates:
    """The ``Candidates`` of a method name, "auto" (every method of ``registry``), a Method
    (with its own settings), or a list of names and Methods (``Candidates`` pass through)."""
    if isinstance(spec, Candidates):
        return spec
    if isinstance(spec, Method):
        return Candidates((spec,))
    if isinstance(spec, str):
        if spec == AUTO:
            return Candidates(tuple(registry.values()))
        items = [spec]
    elif isinstance(spec, Sequence) and spec and all(isinstance(item, (str, Method)) for item in spec):
        items = list(spec)
    else:
        raise ConfigError(f"method must be a method name, {AUTO!r}, a method such as recon.methods.Scheme2(...) or a "
                          f"list of them; got {spec!r}")
    unknown = [item for item in items if isinstance(item, str) and item not in registry]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r}; available: {', '.join(registry)}, or {AUTO!r} for all")
    chosen = [registry[item] if isinstance(item, str) else item for item in items]
    names = [method.name for method in chosen]
    if len(set(names)) != len(names):
        raise ConfigError(f"method names must not repeat, got {names!r}")
    return Candidates(tuple(chosen))
