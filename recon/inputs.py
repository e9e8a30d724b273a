"""A model's inputs for one batch: one tensor, or ``Inputs`` (positional and keyword tensors).

Most models take one tensor, and recon passes it as it is. A model whose forward takes keywords
(``model(pixel_values=x)``, most Hugging Face vision models) or several inputs is fed from dict
batches: each key names a parameter of its forward, and keys the forward does not take (labels,
ids kept for bookkeeping) are left out. The functions below treat both kinds alike, so the
rest of recon calls ``run(model, batch)`` and never looks inside.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from recon.errors import DataError


@dataclass(frozen=True)
class Inputs:
    """One batch for ``model(*args, **kwargs)``; every tensor in it has the batch first."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> list[torch.Tensor]:
        return [value for value in (*self.args, *self.kwargs.values()) if isinstance(value, torch.Tensor)]

    def map(self, change) -> Inputs:
        """These inputs with ``change`` applied to every tensor."""
        apply = lambda value: change(value) if isinstance(value, torch.Tensor) else value
        return Inputs(tuple(apply(v) for v in self.args), {k: apply(v) for k, v in self.kwargs.items()})


Batch = Union[torch.Tensor, Inputs]


def _parameters(model: nn.Module) -> tuple[set[str], bool]:
    """(the names ``model.forward`` takes by keyword, whether it takes any keyword)."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return set(), True
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = {name for name, p in signature.parameters.items() if p.kind in kinds}
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


def keyword_inputs(batch: dict | Inputs, what: str) -> Inputs:
    """The checked ``Inputs`` of a dict batch (its tensors by key; other values are left out)
    or of an ``Inputs``; DataError naming ``what`` otherwise."""
    if isinstance(batch, dict):
        tensors = {str(k): torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
        batch = Inputs(kwargs={k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)})
    tensors = batch.tensors()
    if not any(t.is_floating_point() for t in tensors):
        raise DataError(f"{what} holds no floating point tensor (keys {sorted(batch.kwargs)[:6]}): recon "
                        "needs the model's floating point inputs, normalised the way the model was trained")
    if any(t.ndim == 0 or t.is_meta for t in tensors) or len({len(t) for t in tensors}) != 1 or not len(tensors[0]):
        raise DataError(f"{what}: its tensors must all have the same batch dimension first, with samples and "
                        f"real values; got shapes {[tuple(t.shape) for t in tensors]}")
    if not all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
        raise DataError(f"{what} contains NaN or infinite values")
    return batch


def run(model: nn.Module, batch: Batch) -> Any:
    """``model`` on one batch: ``model(tensor)``, or ``model(*args, **kwargs)`` with the keywords
    its forward does not take left out."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    names, any_keyword = _parameters(model)
    kwargs = batch.kwargs if any_keyword else {k: v for k, v in batch.kwargs.items() if k in names}
    if batch.kwargs and not kwargs and not batch.args:
        raise DataError(f"the batch's keys {sorted(batch.kwargs)} name none of {type(model).__name__}.forward's "
                        f"parameters ({', '.join(sorted(names)) or 'none'}): name dict keys after them")
    return model(*batch.args, **kwargs)


def of_call(args: tuple, kwargs: dict) -> Batch:
    """The batch a call ``model(*args, **kwargs)`` was given (detached): the tensor of a call
    with one tensor, else ``Inputs``."""
    if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
        return args[0].detach()
    return Inputs(tuple(args), dict(kwargs)).map(lambda t: t.detach())


def size(batch: Batch) -> int:
    """The number of samples in a batch."""
    return len(batch) if isinstance(batch, torch.Tensor) else len(batch.tensors()[0])


def take(batch: Batch, start: int, stop: int | None = None) -> Batch:
    """Samples ``start:stop`` of a batch (``take(b, n)``: the first n)."""
    if stop is None:
        start, stop = 0, start
    return batch[start:stop] if isinstance(batch, torch.Tensor) else batch.map(lambda t: t[start:stop])


def select(batch: Batch, index: torch.Tensor) -> Batch:
    """The samples of a batch at ``index``."""
    return batch[index] if isinstance(batch, torch.Tensor) else batch.map(lambda t: t[index.to(t.device)])


def chunks(batch: Batch, length: int) -> list[Batch]:
    """A batch split into consecutive pieces of at most ``length`` samples."""
    return [take(batch, start, start + length) for start in range(0, size(batch), length)]


def device_of(batch: Batch) -> torch.device:
    """Where a batch's (first) tensor is."""
    return (batch if isinstance(batch, torch.Tensor) else batch.tensors()[0]).device


def cat(batches: list[Batch]) -> Batch:
    """Batches of the same kind joined along the batch."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)
    args = tuple(torch.cat([b.args[i] for b in batches]) if isinstance(a, torch.Tensor) else a
                 for i, a in enumerate(first.args))
    kwargs = {k: torch.cat([b.kwargs[k] for b in batches]) if isinstance(v, torch.Tensor) else v
              for k, v in first.kwargs.items()}
    return Inputs(args, kwargs)


def moved(batch: Batch, device: torch.device | None, dtype: torch.dtype | None = None) -> Batch:
    """A batch on ``device``, its floating point tensors in ``dtype`` (others keep theirs)."""
    move = lambda t: t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
    return move(batch) if isinstance(batch, torch.Tensor) else batch.map(move)


def channels_last(batch: Batch) -> Batch:
    """A batch with its 4-D tensors in the channels_last memory format."""
    convert = lambda t: t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t
    return convert(batch) if isinstance(batch, torch.Tensor) else batch.map(convert)


def describe(batch: Batch) -> str:
    """A batch's shape for messages: "(4, 3, 32, 32)", or each tensor's by name."""
    if isinstance(batch, torch.Tensor):
        return str(tuple(batch.shape))
    parts = [str(tuple(a.shape)) for a in batch.args if isinstance(a, torch.Tensor)]
    parts += [f"{k}={tuple(v.shape)}" for k, v in batch.kwargs.items() if isinstance(v, torch.Tensor)]
    return ", ".join(parts)
