"""Reading schema v1 factors: what each method's v1 datasets were called and where their rank
sits, so that the methods themselves know nothing of old files."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from recon.methods.cp import CP
from recon.methods.tucker2 import Tucker2

Factors = dict[str, np.ndarray]
CP_NAMES = {"out": "out_factor", "in": "in_factor", "rows": "row_factor", "columns": "col_factor"}


def _named_like_the_module(rank_key: str) -> Callable[[Factors], tuple[Factors, Any]]:
    """v1 datasets named like the module's factors, the rank leading in ``rank_key``."""
    return lambda datasets: (dict(datasets), int(datasets[rank_key].shape[0]))


def _cp(datasets: Factors) -> tuple[Factors, int]:
    return CP.module_factors({key: datasets[name] for key, name in CP_NAMES.items()}), datasets["in_factor"].shape[1]


def _tucker2(datasets: Factors) -> tuple[Factors, tuple[int, int]]:
    core = datasets["core"]
    return Tucker2.module_factors(core, datasets["out_factor"], datasets["in_factor"]), tuple(core.shape[:2])


CONVERTERS = {"scheme1": _named_like_the_module("vertical"), "scheme2": _named_like_the_module("vertical"),
              "svd": _named_like_the_module("first"), "cp": _cp, "tucker2": _tucker2}


def v1_factors(method: str, datasets: Factors) -> tuple[Factors, Any]:
    """(factors in the module's names, any shape of the right size; the rank) of a schema v1
    layer of ``method``. KeyError or IndexError when a dataset is missing or malformed."""
    return CONVERTERS[method](datasets)
