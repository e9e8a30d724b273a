"""The registry of decomposition methods, by name (see ``recon.methods.base.Method``).

Adding a method = one file with a ``Method`` subclass + one line here + its tests.
"""
from __future__ import annotations

from collections.abc import Sequence

from recon.errors import ConfigError
from recon.methods.base import RIDGE_GRID, Fitted, Method, SolverOptions
from recon.methods.candidates import AUTO, Candidates, resolve_candidates
from recon.methods.cp import CP
from recon.methods.scheme1 import Scheme1
from recon.methods.scheme2 import Scheme2
from recon.methods.svd import SVD
from recon.methods.tucker2 import Tucker2

REGISTRY: dict[str, Method] = {method.name: method for method in (Scheme2(), Scheme1(), CP(), Tucker2(), SVD())}


def get(name: str) -> Method:
    """The method registered as ``name``; ConfigError listing the registered ones otherwise."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def resolve(spec: str | Method | Candidates | Sequence[str]) -> Candidates:
    """The methods a compression may use: one name, "auto" (all of them), or a list of names."""
    return resolve_candidates(spec, REGISTRY)


def for_module(module_class: type) -> Method:
    """The method whose modules are of ``module_class``."""
    for method in REGISTRY.values():
        if method.module_class is module_class:
            return method
    raise ConfigError(f"no method builds {module_class.__name__} modules")


__all__ = ["AUTO", "Candidates", "Fitted", "Method", "REGISTRY", "RIDGE_GRID", "SolverOptions", "for_module", "get", "resolve"]
