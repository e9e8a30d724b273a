"""Input statistics of many layers in one pass over the data.

``observe`` hooks every target layer and runs each batch through the model once: each hook
turns its layer's input into patches x of length D (C*kh*kw in the (c, y, x) order of the
flattened conv weight; the feature vector of a linear layer), keeps ``patches_per_image``
seeded random locations of each sample (all when None), and adds them to float64 running
sums of x and x x^T on the model's device. A batch's products are formed in the precision of
the layer's inputs (float32 at least: half the time of float64 on a CPU; its rounding, about
1e-6 of an entry, is far below the sampling noise of the statistics and the float32 of the
solvers) and summed over batches in float64. Memory is O(D^2) per layer whatever the number of
images, and the data is read once whatever the number of layers. Every fifth sample's patches
are also summed apart (``Moments.held_out``), for choices judged on samples a fit did not see.

``AsymmetricSums`` gathers what the asymmetric objective needs for one layer: the same
patches seen through the dense model (x) and through the partly approximated one (x_hat),
E[x_hat x_hat^T] and the cross moment projected on the layer's weights, E[(W x) x_hat^T];
``observe_asymmetric`` feeds it with forward passes that stop at the layer.
Each layer has its own sampler seeded with ``seed``, so the locations drawn for a layer are
the same in every pass and whatever other layers are observed.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from recon.errors import ConfigError, DataError, LayerError
from recon.inputs import Batch, cat, describe, of_call, run, size, take
from recon.io.hashing import model_sha256
from recon.model_checks import check_model
from recon.nn import ConvGeometry, Geometry, geometry_of
from recon.pipeline.batches import Batches, DataSource
from solvers.objectives import Moments


class PatchSampler:
    """Seeded patch extraction for one layer: (sampled patches, D) from a batch of its inputs."""

    def __init__(self, name: str, geometry: Geometry, per_image: int | None, seed: int) -> None:
        self.name, self.geometry, self.per_image = name, geometry, per_image
        self.generator = torch.Generator().manual_seed(seed)

    def _check(self, inputs: torch.Tensor) -> None:
        if isinstance(self.geometry, ConvGeometry) and inputs.ndim != 4:
            raise DataError(f"layer {self.name!r} received an input of shape {tuple(inputs.shape)}; a convolution's "
                            "inputs must be (N, C, H, W): do the batches have a batch dimension?")

    def locations(self, batch: int, count: int) -> torch.Tensor | None:
        """(batch, per_image) sampled location indices, or None for all locations."""
        if self.per_image is None or self.per_image >= count:
            return None
        return torch.rand(batch, count, generator=self.generator).argsort(1)[:, : self.per_image]

    def draw(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """Location indices for a batch of this layer's inputs (None: all)."""
        self._check(inputs)
        if isinstance(self.geometry, ConvGeometry):
            out_h, out_w = self.geometry.output_size(*inputs.shape[-2:])
            return self.locations(inputs.shape[0], out_h * out_w)
        return self.locations(inputs.shape[0], int(inputs[0].numel() // inputs.shape[-1]))

    def patches(self, inputs: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """The patches (P, D) of ``inputs`` at ``index`` (from ``draw``), in ``precision(inputs)``."""
        g, dtype = self.geometry, precision(inputs)
        if not isinstance(g, ConvGeometry):
            rows = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])
            if index is not None:
                rows = torch.gather(rows, 1, index.to(rows.device)[..., None].expand(-1, -1, rows.shape[-1]))
            return rows.reshape(-1, rows.shape[-1]).to(dtype)
        padded = F.pad(inputs, list(g.side_padding()))
        if index is None:
            columns = F.unfold(padded, g.kernel_size, dilation=g.dilation, stride=g.stride)
            return columns.transpose(1, 2).reshape(-1, columns.shape[1]).to(dtype)
        index = index.to(inputs.device)
        _, out_w = g.output_size(*inputs.shape[-2:])
        (kh, kw), (sh, sw), (dh, dw) = g.kernel_size, g.stride, g.dilation
        arange = lambda size, step: torch.arange(size, device=inputs.device) * step
        rows = (index // out_w)[..., None] * sh + arange(kh, dh)          # (B, k, kh)
        cols = (index % out_w)[..., None] * sw + arange(kw, dw)           # (B, k, kw)
        batch = torch.arange(inputs.shape[0], device=inputs.device)[:, None, None, None]
        picked = padded[batch, :, rows[..., None], cols[..., None, :]]  # (B, k, kh, kw, C)
        patches = torch.empty(*index.shape, inputs.shape[1], kh, kw, dtype=dtype, device=inputs.device)
        patches.copy_(picked.permute(0, 1, 4, 2, 3))  # reorder and widen in one copy
        return patches.reshape(-1, inputs.shape[1] * kh * kw)


def precision(inputs: torch.Tensor) -> torch.dtype:
    """The dtype a batch's patches and products are formed in: the inputs', float32 at least."""
    return torch.promote_types(inputs.dtype, torch.float32)


def gram(x: torch.Tensor) -> torch.Tensor:
    """x^T x in x's dtype; on the CPU through NumPy, whose BLAS uses the symmetric rank-k update
    (half the work of a general product; measured 0.23 s against 0.43 s for 8000 x 1600 in
    float64, 0.25 s against 0.39 s for float32 against float64 at 8192 x 1728)."""
    if x.device.type == "cpu":
        array = x.numpy()
        return torch.from_numpy(array.T @ array)
    return x.T @ x


def grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Patches (P, D) as (G, P, D / G): each group's channels are contiguous in (c, y, x) order."""
    return x.reshape(x.shape[0], groups, -1).transpose(0, 1)


def second_moments(x: torch.Tensor, groups: int) -> torch.Tensor:
    """x^T x (D, D), or each group's block (G, D/G, D/G) for a grouped convolution."""
    if groups == 1:
        return gram(x)
    blocks = grouped(x, groups)
    return blocks.transpose(1, 2) @ blocks


def first_moments(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The sum of the patches (D,), or per group (G, D/G), in x's dtype (torch's pairwise sum
    keeps float32 exact to rounding, at a fraction of the time of a widening sum; the running
    sums widen it)."""
    total = x.sum(0)
    return total if groups == 1 else total.reshape(groups, -1)


class _Sums:
    """Running float64 sums over patches on one device."""

    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, key: str, value: torch.Tensor) -> None:
        """Add one batch's ``value`` (any float dtype) to the float64 sum under ``key``."""
        value = value.double()
        self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()

    def mean(self, key: str):
        return (self.sums[key] / self.count).cpu().numpy()

    def combined(self, other: "_Sums") -> "_Sums":
        """The sums of both (``other`` empty or holding the same keys)."""
        both = _Sums()
        both.count = self.count + other.count
        both.sums = {key: value + other.sums[key] if key in other.sums else value for key, value in self.sums.items()}
        return both


HELD_OUT_EVERY = 5
"""Every fifth sample, in the order the data comes, is summed apart as well (``Moments.held_out``),
so a fit can be judged on samples it was not fitted to (the per-layer ridge choice)."""


class _Folds:
    """The running sums of one layer's patches in two folds: the held-out samples (every
    ``HELD_OUT_EVERY``-th) and the rest; the moments are those of both, the held-out fold's
    alongside. Costs nothing extra: each patch is summed once, in its fold."""

    def __init__(self) -> None:
        self.kept, self.held, self.samples = _Sums(), _Sums(), 0

    @property
    def count(self) -> int:
        return self.kept.count + self.held.count

    def split(self, batch: int, *rows: torch.Tensor) -> list[tuple[_Sums, list[torch.Tensor]]]:
        """(fold, its rows of each of ``rows``) for sample-major patch rows of a batch of
        ``batch`` samples (several tensors: the same rows of each)."""
        held = torch.arange(self.samples, self.samples + batch) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
        self.samples += batch
        held_samples = int(held.sum())
        mask = held.repeat_interleave(rows[0].shape[0] // batch).to(rows[0].device)
        folds = ((self.kept, ~mask, batch - held_samples), (self.held, mask, held_samples))
        return [(fold, [tensor[part] for tensor in rows]) for fold, part, samples in folds if samples]

    def moments(self, build: Callable[[_Sums], Moments]) -> Moments:
        """``build`` of all the sums, with the held-out fold's as ``held_out`` (None if empty)."""
        whole = build(self.kept.combined(self.held))
        return whole._replace(held_out=build(self.held) if self.held.count else None)


class _InputHook:
    """A forward pre-hook that hands each input of one module to ``consume``."""

    def __init__(self, module: nn.Module, consume) -> None:
        self.handle = module.register_forward_pre_hook(lambda _, args: consume(args[0].detach()))

    def remove(self) -> None:
        self.handle.remove()


def _forward(model: nn.Module, inputs: Batch, index: int) -> None:
    """One batch through ``model``; a failure names the batch and its shape."""
    try:
        run(model, inputs)
    except RuntimeError as err:
        raise DataError(f"the model failed on data batch {index} of shape {describe(inputs)}: {err}") from err


def _batches(batches: Batches, description: str, progress: bool):
    """(index, inputs) of every batch, with a progress bar."""
    return enumerate(tqdm(batches, desc=description, unit="batch", disable=not progress, leave=False))


SAMPLE_SIZE = 256  # samples of the observed inputs an Observation keeps (what TargetSpeedup's sensitivities run on)


@dataclass
class Observation(Mapping):
    """Symmetric moments of some layers of one model, by layer name (a read-only mapping), with
    what ``compress`` needs to fit and allocate from them without reading the data again: the
    first batch seen (``example``), up to ``SAMPLE_SIZE`` samples of the inputs (``sample``), the
    model's hash, the device it ran on, and the sampling settings."""

    moments: dict[str, Moments]
    model_sha256: str
    device: torch.device
    patches_per_image: int | None
    seed: int
    example: Batch | None = None
    sample: Batch | None = None

    def __getitem__(self, name: str) -> Moments:
        return self.moments[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.moments)

    def __len__(self) -> int:
        return len(self.moments)

    def check_for(self, model_hash: str, layers: list[str], device: torch.device) -> None:
        """Refuse (ConfigError) using this observation for ``layers`` of the model whose
        ``model_sha256`` is ``model_hash``, on ``device``."""
        if model_hash != self.model_sha256:
            raise ConfigError("the observation was made on another model (its parameters differ): observe this model")
        missing = [name for name in layers if name not in self.moments]
        if missing:
            raise ConfigError(f"the observation holds no statistics of layer(s) {', '.join(missing)} (it holds "
                              f"{', '.join(self.moments) or 'none'}): observe them too, or select fewer layers")
        if torch.device(device) != self.device:
            raise ConfigError(f"the observation was made on {self.device} and compress works on {device}: observe on "
                              f"that device or pass device={str(self.device)!r}")


class _Observer:
    """The hooks that sum every observed layer's input moments while the model runs, and the
    samples of the model's inputs kept along."""

    def __init__(self, model: nn.Module, layers: list[str], patches_per_image: int | None, seed: int) -> None:
        self.model, self.layers, self.patches_per_image, self.seed = model, layers, patches_per_image, seed
        self.sums = {name: _Folds() for name in layers}
        self.samplers = {name: PatchSampler(name, geometry_of(model.get_submodule(name)), patches_per_image, seed)
                         for name in layers}
        self.example: Batch | None = None
        self.kept: list[Batch] = []
        self.hooks = [_InputHook(model.get_submodule(name), self._consumer(name)) for name in layers]

    def _consumer(self, name: str) -> Callable[[torch.Tensor], None]:
        def consume(inputs: torch.Tensor) -> None:
            sampler = self.samplers[name]
            groups = sampler.geometry.groups
            for total, (x,) in self.sums[name].split(inputs.shape[0], sampler.patches(inputs, sampler.draw(inputs))):
                total.count += x.shape[0]
                total.add("x", first_moments(x, groups))
                total.add("xx", second_moments(x, groups))
        return consume

    def seen(self, batch: Batch) -> None:
        """Keep the first batch and the first ``SAMPLE_SIZE`` samples of the model's inputs."""
        self.example = batch if self.example is None else self.example
        count = sum(size(kept) for kept in self.kept)
        if count < SAMPLE_SIZE:
            self.kept.append(take(batch, SAMPLE_SIZE - count))

    def finish(self, model_hash: str) -> Observation:
        """The hooks removed and the sums as an ``Observation`` of the model whose hash is ``model_hash``."""
        for hook in self.hooks:
            hook.remove()
        _check_seen(self.sums)
        symmetric = lambda total: Moments.symmetric(total.count, total.mean("x"), total.mean("xx"))
        parameter = next(self.model.parameters())
        return Observation({name: folds.moments(symmetric) for name, folds in self.sums.items()},
                           model_hash, parameter.device, self.patches_per_image, self.seed,
                           self.example, cat(self.kept) if self.kept else None)


def observe(model: nn.Module, data: Batches | DataSource, layers: list[str] | str = "all",
            patches_per_image: int | None = 32, seed: int = 0, progress: bool = True,
            samples: int | None = None) -> Observation:
    """Symmetric moments (x_hat = x) of every layer in ``layers`` (names; "all": every Conv2d
    and Linear), from one pass of ``data`` through ``model`` (at most ``samples`` samples), as
    an ``Observation`` (``observation[name]`` is a layer's ``Moments``; ``compress`` takes it in
    place of the data)."""
    layers = _observable(check_model(model), layers)
    parameter = next(model.parameters())
    batches = data if isinstance(data, Batches) else Batches(data, samples, parameter.device, parameter.dtype)
    return gather(model, batches, layers, patches_per_image, seed, progress, model_sha256(model))


def gather(model: nn.Module, batches: Batches, layers: list[str], patches_per_image: int | None, seed: int,
           progress: bool, model_hash: str) -> Observation:
    """``observe`` of checked ``layers`` and ``batches``, for a model whose hash is known
    (``compress`` hashes its model once)."""
    observer = _Observer(model, layers, patches_per_image, seed)
    model.eval()
    try:
        with torch.inference_mode():
            for index, inputs in _batches(batches, f"statistics of {len(layers)} layer(s)", progress):
                observer.seen(inputs)
                _forward(model, inputs, index)
    except BaseException:
        for hook in observer.hooks:
            hook.remove()
        raise
    return observer.finish(model_hash)


@contextmanager
def observing(model: nn.Module, layers: list[str] | str = "all", patches_per_image: int | None = 32,
              seed: int = 0) -> Iterator[Observation]:
    """Gather the statistics of ``observe`` while the user's own code runs ``model`` (their
    loop, device and batch format)::

        with recon.observing(model, ["conv2", "conv3"]) as observation:
            for batch in loader:
                model(**batch)
        result = recon.compress(model, observation, ranks=48)

    The first call's arguments become the example input and the calls' inputs (up to
    ``SAMPLE_SIZE`` samples) the sample sensitivities are measured on. The observation is
    filled when the block ends; run the model under ``torch.no_grad()`` or in eval mode as
    your inference does (the statistics are of what the layers receive)."""
    layers = _observable(check_model(model), layers)
    observer = _Observer(model, layers, patches_per_image, seed)
    observation = Observation({}, "", next(model.parameters()).device, patches_per_image, seed)

    call_hook = model.register_forward_pre_hook(lambda _, args, kwargs: observer.seen(of_call(args, kwargs)),
                                                with_kwargs=True)
    try:
        yield observation
    except BaseException:
        for hook in observer.hooks:
            hook.remove()
        raise
    finally:
        call_hook.remove()
    finished = observer.finish(model_sha256(model))
    for name in ("moments", "model_sha256", "device", "example", "sample"):
        setattr(observation, name, getattr(finished, name))


def recorded_batches(model: nn.Module, forward_loop: Callable[[nn.Module], Any]) -> list[Batch]:
    """The batches ``forward_loop(model)`` (the user's own loop over their data) calls ``model``
    with, kept so that recon can run them through the model again (asymmetric mode)."""
    if not callable(forward_loop):
        raise ConfigError(f"forward_loop must be a function that runs the model over the data, got "
                          f"{type(forward_loop).__name__}")
    calls: list[Batch] = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: calls.append(of_call(args, kwargs)),
                                           with_kwargs=True)
    try:
        with torch.inference_mode():
            forward_loop(model)
    except Exception as err:  # the user's loop can fail in any way; say where
        raise DataError(f"forward_loop failed: {type(err).__name__}: {err}") from err
    finally:
        hook.remove()
    if not calls:
        raise DataError("forward_loop never called the model: it must run the model over the data")
    return calls


def _observable(model: nn.Module, layers: list[str] | str) -> list[str]:
    """``layers`` as a list of the model's Conv2d / Linear names; LayerError naming any other."""
    convs = [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    if layers == "all":
        return convs
    names = [layers] if isinstance(layers, str) else list(layers)
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(name, str) or name not in modules:
            raise LayerError(f"model has no layer {name!r}; its Conv2d and Linear layers: {', '.join(convs) or 'none'}")
        if name not in convs:
            raise LayerError(f"layer {name!r} is a {type(modules[name]).__name__}: statistics are gathered for "
                             f"Conv2d and Linear layers ({', '.join(convs) or 'none'})")
    return names


def _check_seen(sums: dict[str, _Folds]) -> None:
    unseen = [name for name, total in sums.items() if total.count == 0]
    if unseen:
        raise DataError(f"layer(s) {', '.join(unseen)} never ran while the data went through the model")


class _Reached(Exception):
    """Raised by a pre-hook to end a forward pass once the hooked layer's input is known."""


def stop_at(model: nn.Module, layer: str, run: Callable[[], Any]) -> torch.Tensor:
    """What ``layer`` of ``model`` receives when ``run()`` calls ``model``; the call stops right
    there, before the layer and everything after it (a layer called twice gives its first input;
    ``layer`` "" is ``model`` itself)."""

    def stop(module: nn.Module, args: tuple) -> None:
        raise _Reached(args[0].detach())

    handle = model.get_submodule(layer).register_forward_pre_hook(stop)
    try:
        run()
    except _Reached as reached:
        return reached.args[0]
    finally:
        handle.remove()
    raise DataError(f"layer {layer} never ran while the data went through the model")


def input_of(model: nn.Module, layer: str, inputs: Batch, index: int) -> torch.Tensor:
    """What ``layer`` receives when the batch ``inputs`` (number ``index``) goes through ``model``."""
    return stop_at(model, layer, lambda: _forward(model, inputs, index))


class AsymmetricSums:
    """Running sums of the asymmetric moments of one layer, from pairs of its inputs in the
    dense model (x) and in the approximated one (x_hat); one seeded sampler picks the same
    patch locations of both."""

    def __init__(self, name: str, dense_layer: nn.Module, patches_per_image: int | None, seed: int) -> None:
        self.sampler = PatchSampler(name, geometry_of(dense_layer), patches_per_image, seed)
        self.groups = self.sampler.geometry.groups
        self.weights = dense_layer.weight.detach().reshape(self.groups, dense_layer.weight.shape[0] // self.groups,
                                                           -1).double()
        self.folds = _Folds()

    def add(self, dense_inputs: torch.Tensor, approx_inputs: torch.Tensor) -> None:
        """Add one batch: the layer's inputs in the dense and in the approximated model."""
        locations = self.sampler.draw(dense_inputs)
        x_all, x_hat_all = (self.sampler.patches(inputs, locations) for inputs in (dense_inputs, approx_inputs))
        for total, (x, x_hat) in self.folds.split(dense_inputs.shape[0], x_all, x_hat_all):
            outputs = grouped(x, self.groups) @ self.weights.to(x.dtype).transpose(1, 2)  # (G, P, N / G)
            total.count += x.shape[0]
            total.add("x", first_moments(x, self.groups))
            total.add("x_hat", first_moments(x_hat, self.groups))
            total.add("xx_hat", second_moments(x_hat, self.groups))
            total.add("yx_hat", outputs.transpose(1, 2) @ grouped(x_hat, self.groups))
            total.add("yy", (outputs * outputs).sum((1, 2), dtype=torch.float64))

    def moments(self) -> Moments:
        _check_seen({self.sampler.name: self.folds})
        single = (lambda value: value[0]) if self.groups == 1 else (lambda value: value)
        build = lambda total: Moments(total.count, total.mean("x"), total.mean("x_hat"), total.mean("xx_hat"),
                                      single(total.mean("yx_hat")), single(total.mean("yy")))
        return self.folds.moments(build)


def observe_asymmetric(model: nn.Module, approx: nn.Module, batches: Batches, layer: str,
                       patches_per_image: int | None = 32, seed: int = 0, progress: bool = True) -> Moments:
    """Asymmetric moments of ``layer``: x from ``model``, x_hat from ``approx``; each batch goes
    through both models up to the layer only (``recon.pipeline.asymmetric`` does the same for
    many layers in a few passes)."""
    sums = AsymmetricSums(layer, model.get_submodule(layer), patches_per_image, seed)
    model.eval()
    approx.eval()
    with torch.inference_mode():
        for index, inputs in _batches(batches, f"statistics of {layer} (asymmetric)", progress):
            sums.add(input_of(model, layer, inputs, index), input_of(approx, layer, inputs, index))
    return sums.moments()
