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


LEGACY_SETTINGS = {"lbfgs_iterations": ("scheme2", "lbfgs_iterations"), "schedule": ("scheme1", "schedule"),
                   "cp_iterations": ("cp", "iterations")}  # SolverOptions field -> (method, its setting)


def with_settings(candidates: Candidates, settings: dict[str, dict]) -> Candidates:
    """``candidates`` with each method's settings changed as ``settings`` (method name -> its
    settings) says; methods not named keep theirs."""
    return Candidates(tuple(method.replaced(**settings[method.name]) if settings.get(method.name) else method
                            for method in candidates.methods))


def legacy_settings(values: dict) -> dict[str, dict]:
    """Method settings (name -> settings) from the method fields of a ``SolverOptions`` or its
    stored dict (``lbfgs_iterations``, ``schedule``, ``cp_iterations``)."""
    settings: dict[str, dict] = {}
    for field, (method, setting) in LEGACY_SETTINGS.items():
        if values.get(field) is not None:
            settings.setdefault(method, {})[setting] = values[field]
    if "cp" in settings:  # CP was seeded with the sampling seed then
        settings["cp"]["seed"] = values.get("seed", 0)
    return settings


def for_module(module_class: type) -> Method:
    """The method whose modules are of ``module_class``."""
    for method in REGISTRY.values():
        if method.module_class is module_class:
            return method
    raise ConfigError(f"no method builds {module_class.__name__} modules")


__all__ = ["AUTO", "CP", "Candidates", "Fitted", "Method", "REGISTRY", "RIDGE_GRID", "SVD", "Scheme1", "Scheme2",
           "SolverOptions", "Tucker2", "for_module", "get", "legacy_settings", "resolve", "with_settings"]
