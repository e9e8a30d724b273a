"""Timing in onnxruntime: modules exported to ONNX in memory and run by its CPU provider,
side by side like ``recon.bench.timing.median_latencies``, for users who deploy with it
(its kernels and fusions differ from torch's, so which rank pays can differ too)."""
from __future__ import annotations

import io
import statistics
import time

import torch
from torch import nn

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
    feeds = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs] * len(modules)
    if len(feeds) != len(modules):
        raise ValueError(f"got {len(feeds)} inputs for {len(modules)} modules")
    runs = [(session(module, feed), {"x": feed.detach().numpy()}) for module, feed in zip(modules, feeds)]
    for run, feed in runs:
        for _ in range(warmup):
            run.run(None, feed)
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for (run, feed), samples in zip(runs, times):
            start = time.perf_counter()
            run.run(None, feed)
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]
