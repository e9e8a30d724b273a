"""Dense and approximated activations carried front to back through a model, so that fitting
layer after layer (or block after block) on the approximated network's inputs costs a few
passes of the calibration data for the whole network instead of one pass per layer.

The model is traced with ``torch.fx``, each block (a module holding layers to fit, from
``recon.pipeline.blocks.find_blocks``) kept as one call. The calibration images, in chunks,
then go through the graph one node at a time, through the dense model and through the
approximated one side by side; every node's values are kept until the last node using them
has run, so what is held at once is the few activations live at one point of the network
(two copies: dense and approximated) for every calibration image. When a block is reached
its inputs are handed out; the approximated side moves past the block only once the caller
asks for a later block, by then with the block's layers replaced.

A model that does not trace, takes more than one input, or calls a block more than once
raises ``Untraceable``; ``Carried`` then says so and callers run both models from the input
for every layer.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import fx, nn

Call = tuple[tuple, dict]  # the positional and keyword arguments of one call
LOG = logging.getLogger("recon")


class Untraceable(Exception):
    """The model cannot be propagated node by node (the message says why)."""


class _BlockTracer(fx.Tracer):
    """A tracer that keeps the named blocks as single calls."""

    def __init__(self, blocks: set[str]) -> None:
        super().__init__()
        self.blocks = blocks

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.blocks or super().is_leaf_module(module, qualified_name)


def _trace(model: nn.Module, blocks: list[str]) -> fx.Graph:
    try:
        graph = _BlockTracer(set(blocks) - {""}).trace(model)
    except Exception as err:  # tracing runs the user's forward symbolically: any failure means no graph
        raise Untraceable(f"torch.fx cannot trace {type(model).__name__} ({type(err).__name__}: {err})") from err
    inputs = [node for node in graph.nodes if node.op == "placeholder" and not node.args]
    if len(inputs) != 1:
        raise Untraceable(f"{type(model).__name__}.forward takes {len(inputs)} inputs; propagation feeds one")
    for block in blocks:
        calls = [node for node in graph.nodes if node.op == "call_module" and node.target == block]
        if len(calls) != 1:
            raise Untraceable(f"block {block!r} is called {len(calls)} times in the traced graph")
    return graph


def _attribute(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


class Propagation:
    """Activations of ``models`` (side name -> model, all of the first one's structure) for
    ``chunks`` of inputs, advanced through the blocks in their order in the graph (see the
    module docstring)."""

    def __init__(self, models: dict[str, nn.Module], chunks: list[torch.Tensor], blocks: list[str]) -> None:
        graph = _trace(next(iter(models.values())), blocks)
        self.models = models
        self.chunks = chunks
        self.nodes = list(graph.nodes)
        self.position = 0  # the next node to run: the block whose inputs were last handed out, or before it
        self.block_node = {str(node.target): index for index, node in enumerate(self.nodes)
                           if node.op == "call_module" and str(node.target) in blocks}
        self.last_use: dict[fx.Node, int] = {}
        for index, node in enumerate(self.nodes):
            for used in node.all_input_nodes:
                self.last_use[used] = index
        self.values: dict[str, dict[fx.Node, list[Any]]] = {side: {} for side in self.models}

    def calls(self, block: str) -> dict[str, list[Call]]:
        """The arguments ``block`` receives, per chunk, on every side (e.g. "dense", "approx"):
        runs the graph up to the block, with the blocks before it as they are now. Raises
        Untraceable for a block already passed."""
        self.advance(block)
        node = self.nodes[self.position]
        return {side: [self._arguments(node, side, chunk) for chunk in range(len(self.chunks))]
                for side in self.models}

    def advance(self, block: str) -> None:
        """Run the graph up to ``block`` (Untraceable for a block already passed)."""
        index = self.block_node[block]
        if index < self.position:
            raise Untraceable(f"block {block!r} runs before a block already propagated")
        for position in range(self.position, index):
            self._compute(self.nodes[position])
            for used in self.nodes[position].all_input_nodes:
                if self.last_use[used] == position:
                    for values in self.values.values():
                        values.pop(used, None)
        self.position = index

    def rest(self, side: str, chunk: int = 0) -> Any:
        """The model's output on one chunk, running the graph from where the walk stands (on
        copies of the values kept so far: an in-place operation cannot change them)."""
        values = {node: fx.node.map_aggregate(kept[chunk], _copy) for node, kept in self.values[side].items()}
        lookup = lambda used: values[used]
        for position in range(self.position, len(self.nodes)):
            node = self.nodes[position]
            if node.op == "output":
                return fx.node.map_arg(node.args[0], lookup)
            if node.op == "placeholder":
                values[node] = self.chunks[chunk]
            else:
                values[node] = _execute(self.models[side], node, fx.node.map_arg(node.args, lookup),
                                        fx.node.map_arg(node.kwargs, lookup))
            for used in node.all_input_nodes:
                if self.last_use[used] == position:
                    values.pop(used, None)
        raise Untraceable("the traced graph has no output node")

    def _arguments(self, node: fx.Node, side: str, chunk: int) -> Call:
        values = self.values[side]
        lookup = lambda used: values[used][chunk]
        return fx.node.map_arg(node.args, lookup), fx.node.map_arg(node.kwargs, lookup)

    def _compute(self, node: fx.Node) -> None:
        """``node``'s value for every chunk, on both sides."""
        for side, model in self.models.items():
            if node.op == "placeholder":
                self.values[side][node] = list(self.chunks)
                continue
            with torch.no_grad():  # not inference_mode: block reconstruction trains on these values
                self.values[side][node] = [_execute(model, node, *self._arguments(node, side, chunk))
                                           for chunk in range(len(self.chunks))]


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _execute(model: nn.Module, node: fx.Node, args: tuple, kwargs: dict) -> Any:
    """The value of one graph node, computed with ``model``'s own modules and attributes."""
    if node.op == "call_module":
        return model.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    if node.op == "get_attr":
        return _attribute(model, str(node.target))
    raise Untraceable(f"graph node {node.format_node()} cannot be run")


class Carried:
    """A ``Propagation`` that gives up instead of raising: ``calls`` is None, after one warning
    that the caller runs both models from the input for every layer or block instead, when the
    model cannot be propagated or the block runs before one already propagated."""

    def __init__(self, dense: nn.Module, approx: nn.Module, chunks: list[torch.Tensor], blocks: list[str]) -> None:
        self.propagation: Propagation | None = None
        try:
            if not all(isinstance(chunk, torch.Tensor) for chunk in chunks):
                raise Untraceable("the model takes keyword or several inputs; propagation feeds one tensor")
            self.propagation = Propagation({"dense": dense, "approx": approx}, chunks, blocks)
        except Untraceable as err:
            self._give_up(err)

    @property
    def active(self) -> bool:
        return self.propagation is not None

    def _give_up(self, err: Untraceable) -> None:
        LOG.warning("warning: the approximated network's inputs come from running both models from the input for "
                    "every layer or block (time grows with the square of the depth): %s", err)
        self.propagation = None

    def calls(self, block: str) -> dict[str, list[Call]] | None:
        """``Propagation.calls``, or None."""
        if self.propagation is None:
            return None
        try:
            return self.propagation.calls(block)
        except Untraceable as err:
            self._give_up(err)
            return None
