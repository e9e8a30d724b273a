"""User data as recon reads it: a re-iterable of input batches, checked batch by batch.

Accepted: any re-iterable (a list, a ``DataLoader``) or a callable returning a fresh
iterable, yielding tensors, (inputs, labels, ...) tuples, dicts of tensors (keyword inputs of
the model's forward, ``recon.inputs``; values that are not tensors are left out) or
``recon.Inputs``; NumPy arrays are converted.
Each batch is checked (floating point, batched, finite), cast to the model's dtype and moved
to its device; at most ``samples`` samples are read per pass, so an endless source ends.
What is wrong is said in a ``DataError`` that names the batch. A source without ``len()``
(a generator function, an endless stream) and no ``samples`` is read up to ``UNSIZED_SAMPLES``
samples per pass, with a warning when that cap ends a pass.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from recon.errors import DataError
from recon.inputs import Batch, Inputs, keyword_inputs, moved, size, take

DataSource = Iterable | Callable[[], Iterable]
UNSIZED_SAMPLES = 100_000  # samples read per pass from a source without len() when no samples= is given
LOG = logging.getLogger("recon")


def _inputs(batch: object, index: int) -> Batch:
    """The inputs of one yielded batch: a checked tensor, or checked ``Inputs``."""
    if isinstance(batch, (dict, Inputs)):
        return keyword_inputs(batch, f"batch {index}")
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise DataError(f"batch {index} is an empty {type(batch).__name__}")
        batch = batch[0]
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if not isinstance(batch, torch.Tensor):
        raise DataError(f"batch {index} holds a {type(batch).__name__}, not a tensor of inputs")
    if not batch.is_floating_point():
        hint = " (are these labels? yield (inputs, labels) pairs)" if batch.ndim <= 1 else ""
        raise DataError(f"batch {index} has dtype {batch.dtype}{hint}: recon needs floating point inputs, "
                        "normalised the way the model was trained (e.g. images.float() / 255 and the model's "
                        "mean and std)")
    if batch.ndim < 2:
        raise DataError(f"batch {index} has shape {tuple(batch.shape)}: inputs need a batch dimension first")
    if batch.is_meta:
        raise DataError(f"batch {index} is on the meta device and holds no values: recon needs real inputs")
    if len(batch) == 0:
        raise DataError(f"batch {index} has shape {tuple(batch.shape)}: it holds no samples")
    if not torch.all(torch.isfinite(batch)):
        raise DataError(f"batch {index} contains NaN or infinite values")
    return batch


def _has_len(iterable: Iterable) -> bool:
    """Whether ``iterable`` says how long it is (a DataLoader over an IterableDataset may not)."""
    try:
        len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


class Batches:
    """A checked, bounded, re-iterable view of a data source, on a device and dtype."""

    def __init__(self, source: DataSource, samples: int | None = None, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        if samples is not None and samples < 1:
            raise DataError(f"samples must be >= 1, got {samples}")
        if not callable(source) and not isinstance(source, Iterable):
            raise DataError(f"data must be batches of inputs (a list, a DataLoader) or a function returning them, "
                            f"got {type(source).__name__}")
        if not callable(source) and iter(source) is source:
            raise DataError(f"data is a one-shot {type(source).__name__}: recon reads the data more than once; pass "
                            "a list, a DataLoader, or a function that returns a fresh iterable")
        self.source, self.samples, self.device, self.dtype = source, samples, device, dtype
        self.capped = False  # whether a pass was cut at UNSIZED_SAMPLES (said once)

    def _iterable(self) -> Iterable:
        if not callable(self.source):
            return self.source
        try:
            made = self.source()
        except Exception as err:  # a user's data factory can fail in any way; say where it came from
            raise DataError(f"the data factory failed: {type(err).__name__}: {err}") from err
        if not isinstance(made, Iterable):
            raise DataError(f"the data factory returned a {type(made).__name__}, not batches of inputs (a list, a "
                            "DataLoader, a generator)")
        return made

    def __iter__(self) -> Iterator[Batch]:
        seen = 0
        iterable = self._iterable()
        limit = self.samples if self.samples is not None or _has_len(iterable) else UNSIZED_SAMPLES
        iterator = iter(iterable)
        index = 0
        while limit is None or seen < limit:
            try:
                batch = next(iterator)
            except StopIteration:
                break
            except Exception as err:  # reading user data can fail in any way; name the batch
                raise DataError(f"reading batch {index} of the data failed: {type(err).__name__}: {err}") from err
            inputs = _inputs(batch, index)
            if limit is not None:
                inputs = take(inputs, limit - seen)
            seen += size(inputs)
            index += 1
            yield moved(inputs, self.device, self.dtype)
        if index == 0:
            raise DataError("the data yielded no batches")
        if limit is not None and seen >= limit and self.samples is None and not self.capped:
            self.capped = True
            LOG.warning("warning: the data has no len() and no samples= was given: read its first %d samples; pass "
                        "samples= to read more or fewer", limit)

    def first(self) -> Batch:
        """The first batch."""
        return next(iter(self))
