"""Block reconstruction without labels: the low-rank factors of each block, optimised jointly,
so that the approximated block fed the approximated network's inputs reproduces the dense
block's output, residual addition and nonlinearity included.

Per-layer fits match each layer's linear output; in a residual stack their errors pass
through BatchNorm, ReLU and the shortcuts of every later block and compound. Matching whole
blocks front to back, each on the inputs the approximated network really gives it (X_hat, from
the blocks already reconstructed), lets a block absorb what came before:

    min over the block's factors  ||block_hat(X_hat) - block(X)||^2 / ||block(X) - mean||^2

Adam from the closed-form fit, step sizes relative to each factor tensor's size (factors
balanced first), on all but a held-out tenth of the calibration images; the state with the
lowest held-out error is kept, and only if that error is below the closed form's. A block is
the smallest submodule holding a replaced layer that is not a container (``nn.Sequential``,
``nn.ModuleList``, ``nn.ModuleDict``) or the model itself; a replaced layer with no such parent
is its own block. The blocks' inputs are carried from block to block (``recon.pipeline.propagate``):
about one forward pass of each model in all, no labels.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from recon.errors import ConfigError, DataError
from recon.inputs import Batch, cat, chunks, size
from recon.nn import LowRankModule
from recon.pipeline.batches import Batches
from recon.pipeline.finetune import clipped_step, only_trainable, relative_adam, shuffled_batches
from recon.pipeline.observe import input_of
from recon.pipeline.propagate import Carried
from recon.pipeline.outputs import relative_change

LOG = logging.getLogger("recon")
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
HELD_OUT_FRACTION = 0.1
MIN_HELD_OUT = 16  # held-out images below which a block's result cannot be judged


@dataclass(frozen=True)
class BlockResult:
    """One block: its replaced layers, relative output error on the held-out images before and
    after (``after`` equals ``before`` when the result was not kept), the steps taken."""

    block: str
    layers: tuple[str, ...]
    before: float
    after: float
    steps: int

    @property
    def kept(self) -> bool:
        return self.after < self.before


@dataclass(frozen=True)
class BlockReport:
    """Every block's result and the seconds taken."""

    blocks: tuple[BlockResult, ...]
    seconds: float

    def describe(self) -> str:
        kept = [b for b in self.blocks if b.kept]
        errors = ", ".join(f"{b.block} {b.before:.4f}->{b.after:.4f}" for b in self.blocks)
        return (f"block reconstruction: {len(kept)} of {len(self.blocks)} blocks improved on held-out images "
                f"({errors}) in {self.seconds:.0f} s")


def find_blocks(model: nn.Module, layers: list[str]) -> dict[str, list[str]]:
    """Block name -> the named layers inside it, in model order (see the module docstring)."""
    modules = dict(model.named_modules())
    blocks: dict[str, list[str]] = {}
    for layer in layers:
        parent = layer.rpartition(".")[0]
        block = parent if parent and not isinstance(modules[parent], CONTAINERS) else layer
        blocks.setdefault(block, []).append(layer)
    order = {name: index for index, name in enumerate(modules)}
    return dict(sorted(blocks.items(), key=lambda item: order[item[0]]))


class _BlockInputs:
    """What each block receives in the dense and in the approximated model for every image:
    carried block by block (``recon.pipeline.propagate``), else from passes that stop at the block."""

    def __init__(self, dense: nn.Module, approx: nn.Module, chunks: list[Batch], blocks: list[str]) -> None:
        self.dense, self.approx, self.chunks = dense, approx, chunks
        self.carried = Carried(dense, approx, chunks, blocks)

    def __call__(self, block: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(dense inputs, approximated inputs) of ``block``, the blocks before it as they are now."""
        calls = self.carried.calls(block)
        if calls is not None:
            return tuple(torch.cat([args[0] for args, _ in calls[side]]) for side in ("dense", "approx"))
        with torch.no_grad():
            return tuple(torch.cat([input_of(model, block, chunk, index) for index, chunk in enumerate(self.chunks)])
                         for model in (self.dense, self.approx))


def _error(block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> float:
    """Relative squared error of ``block`` on ``inputs`` against ``targets``, over all images."""
    with torch.no_grad():
        outputs = torch.cat([block(x) for x in inputs.split(batch_size)])
    return float(relative_change(outputs.double(), targets.double()))


def _fit_block(block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, held: int, epochs: int,
               batch_size: int, lr: float, generator: torch.Generator, label: str,
               progress: bool) -> tuple[float, float, int]:
    """Adam on the block's low-rank parameters; returns (held-out error before, best after, steps),
    with the block holding its best state (or its first one when nothing improved)."""
    modules = [m for m in block.modules() if isinstance(m, LowRankModule)]
    for module in modules:
        module.balance_()
    parameters = [p for m in modules for p in m.parameters()]
    train_x, train_y = inputs[held:], targets[held:]
    before = best = _error(block, inputs[:held], targets[:held], batch_size)
    best_state = copy.deepcopy(block.state_dict())
    optimizer = relative_adam(parameters, lr)
    steps = 0
    with only_trainable(block, parameters):
        for epoch in range(epochs):
            for index in shuffled_batches(len(train_x), batch_size, generator, train_x.device,
                                          f"{label} {epoch + 1}/{epochs}", progress):
                loss = relative_change(block(train_x[index]), train_y[index])
                if not torch.isfinite(loss):
                    break
                clipped_step(optimizer, loss, parameters)
                steps += 1
            error = _error(block, inputs[:held], targets[:held], batch_size)
            if error < best:
                best, best_state = error, copy.deepcopy(block.state_dict())
    block.load_state_dict(best_state)
    return before, best, steps


def _check(samples: int, epochs: int, batch_size: int, lr: float) -> None:
    for label, value, minimum in (("samples", samples, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{label} must be a whole number >= {minimum}, got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"lr must be a number > 0, got {lr!r}")


def reconstruct_blocks(approx: nn.Module, dense: nn.Module, data: Iterable, *, blocks: list[str] | None = None,
                       samples: int = 1024, epochs: int = 10, batch_size: int = 64, lr: float = 1e-2, seed: int = 0,
                       progress: bool = True,
                       on_block: Callable[[BlockResult], None] | None = None) -> BlockReport:
    """Reconstruct the blocks of ``approx`` (a model with low-rank modules) against ``dense``
    (the model its layers reproduce, BatchNorms folded alike) on at most ``samples`` unlabeled
    inputs from ``data``, front to back, in place.

    ``blocks``: module names to treat as blocks (default: ``find_blocks``); each must hold a
    low-rank layer. ``on_block`` is called after each block whose result was kept (e.g. to save
    it). Raises ConfigError when there are too few images for the held-out split.
    """
    _check(samples, epochs, batch_size, lr)
    layers = [name for name, module in approx.named_modules() if isinstance(module, LowRankModule)]
    if not layers:
        raise ConfigError("the model has no low-rank layer: nothing to reconstruct")
    found = find_blocks(approx, layers)
    if blocks is not None:
        modules = dict(approx.named_modules())
        unknown = [name for name in blocks if name not in modules]
        if unknown:
            raise ConfigError(f"block(s) {', '.join(unknown)} are not modules of the model")
        found = {name: [layer for layer in layers if layer == name or layer.startswith(name + ".")] for name in blocks}
        empty = [name for name, inside in found.items() if not inside]
        if empty:
            raise ConfigError(f"block(s) {', '.join(empty)} hold no low-rank layer")
    parameter = next(approx.parameters())
    images = cat(list(Batches(data, samples, parameter.device, parameter.dtype)))
    held = int(size(images) * HELD_OUT_FRACTION)
    if held < MIN_HELD_OUT:
        raise ConfigError(f"block reconstruction holds out {HELD_OUT_FRACTION:.0%} of the calibration images to judge "
                          f"each block and needs at least {MIN_HELD_OUT} held out: give at least "
                          f"{int(MIN_HELD_OUT / HELD_OUT_FRACTION)} images (got {size(images)})")
    start, generator, results = time.perf_counter(), torch.Generator().manual_seed(seed), []
    approx.eval()
    dense.eval()
    block_inputs = _BlockInputs(dense, approx, chunks(images, batch_size), list(found))
    for name, inside in found.items():
        try:
            dense_block = dense.get_submodule(name)
        except AttributeError:
            raise DataError(f"block {name!r} is not in the dense model: is it the model the layers were fitted to?") \
                from None
        dense_inputs, inputs = block_inputs(name)
        with torch.no_grad():
            targets = torch.cat([dense_block(x) for x in dense_inputs.split(batch_size)])
        before, after, steps = _fit_block(approx.get_submodule(name), inputs, targets, held, epochs, batch_size, lr,
                                          generator, f"block {name}", progress)
        result = BlockResult(name, tuple(inside), before, after, steps)
        results.append(result)
        LOG.info("block %s (%s): held-out output error %.4f -> %.4f after %d steps%s", name, ", ".join(inside),
                 before, after, steps, "" if result.kept else " (closed form kept)")
        if result.kept and on_block is not None:
            on_block(result)
    report = BlockReport(tuple(results), time.perf_counter() - start)
    LOG.info("%s", report.describe())
    return report
