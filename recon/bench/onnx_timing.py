"""Timing in onnxruntime: modules exported to ONNX in memory and run by its CPU provider,
side by side like ``recon.bench.timing.median_latencies``, for users who deploy with it
(its kernels and fusions differ from torch's, so which rank pays can differ too)."""
from __future__ import annotations

import functools
import io

import torch
from torch import nn

from recon.bench.timing import feeds_for, round_robin
from recon.errors import ConfigError

OPSET = 17  # the ONNX opset of the exports (recon.export writes the same)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("the onnxruntime latency backend needs the onnxruntime package: "
                          "pip install onnxruntime") from None
    return onnxruntime


def version() -> str:
    """The installed onnxruntime's version (part of a latency table's key)."""
    return _onnxruntime().__version__


def session(module: nn.Module, example: torch.Tensor):
    """An onnxruntime CPU session of ``module`` traced on ``example`` (torch's thread count)."""
    ort = _onnxruntime()
    if not isinstance(example, torch.Tensor):
        raise ConfigError("the onnxruntime latency backend times models that take one tensor; this one takes keyword "
                          "or several inputs: time with the torch backend")
    if example.device.type != "cpu":
        raise ConfigError(f"the onnxruntime latency backend times on the CPU; the inputs are on {example.device}")
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module.eval(), (example,), buffer, input_names=["x"], output_names=["y"],
                          opset_version=OPSET, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def onnxruntime_latencies(modules: list[nn.Module], inputs: torch.Tensor | list[torch.Tensor], repeats: int = 20,
                          warmup: int = 3, channels_last: bool = False) -> list[float]:
    """Median seconds per onnxruntime call of each module, timed round-robin so that they
    share drift. ``channels_last`` is refused: onnxruntime chooses its own layouts."""
    if channels_last:
        raise ConfigError("channels_last is a torch memory format; onnxruntime chooses its own layouts")
    feeds = feeds_for(modules, inputs)
    runs = [(session(module, feed), {"x": feed.detach().numpy()}) for module, feed in zip(modules, feeds)]
    return round_robin([functools.partial(run.run, None, feed) for run, feed in runs], repeats, warmup)
