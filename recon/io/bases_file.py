"""Bases files: HDF5, schema v2 (docs/guide.md and DESIGN.md); schema v1 files stay readable.

```
/  attrs: format="recon.bases", version=2, created, recon_version, model, model_sha256
/layers/<qualified.layer.name>/
   attrs: method, rank, mode, bias (bool), kind ("conv" | "linear") and the geometry,
          filter_energy_lost, output_variance_lost, fit_seconds, weight_sha256, bias_sha256,
          config (JSON of the fit settings), and when known input_shape, dense_macs, macs,
          guard_dense_ms, guard_low_rank_ms, statistics_{patches, dim, effective_rank,
          condition, unseen} (data mode: how well the input statistics determine the fit),
          folded_batchnorm (the BatchNorm folded into the module, when one was)
   datasets: the module's state_dict, by name; history/ (per-stage solver diagnostics)
```

One reader validates everything: format, version, every attribute it converts (naming the
layer and the attribute at fault), and the tensors, by building the module through the
method registry and comparing names and shapes with its state_dict before loading it.
A damaged file (bytes changed on disk, a half-copied file) is a BasesFileError saying so:
the global heaps are checked before HDF5 reads them (some damage there makes HDF5 loop
forever), what HDF5 raises on reading is reported as damage, and so are values recon would
not have written (a NaN recorded error, a hash that is not one). The factors are covered by
their sha256; damage that leaves other attributes valid can still go unseen.
Writes are atomic and locked (``recon.io.atomic``).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import mmap
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from recon import methods
from recon.errors import BasesFileError, ConfigError, ReconError
from recon.io.atomic import exclusive, replace_atomically, resolve
from recon.io.schema_v1 import v1_factors
from recon.nn import ConvGeometry, Geometry, LinearGeometry, LowRankModule
from recon.record import GuardDecision, LayerRecord
from recon.version import __version__
from solvers.conditioning import Conditioning

FORMAT = "recon.bases"
VERSION = 2
CHECKSUM = "sha256"  # attribute of every dataset written: the sha256 of its values, verified on reading
MAX_SIZE = 1 << 28  # the most values a factor, and the largest channel count, a bases file may declare
MAX_HISTORY = 1 << 20  # the most values a solver-diagnostics dataset may declare
MODES = ("filter", "data", "calibrated", "reconstructed", "finetuned")
DAMAGED = "the file is damaged; re-save it from its fit (Compression.save) or fit again"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # starts the superblock, at byte 0, 512, 1024, 2048, ...
GLOBAL_HEAP = b"GCOL\x01\x00\x00\x00"  # starts a global heap collection: signature, version 1, reserved
HEAP_HEADER = 16  # bytes of a collection's header, and of each object's header in it (8-byte lengths)
# what HDF5, h5py and the decoding of a damaged file's values raise
READ_ERRORS = (OSError, RuntimeError, LookupError, ValueError, TypeError, AttributeError, OverflowError)


@dataclass
class BasesFile:
    """A whole bases file: which model it belongs to and its layers by qualified name."""

    model: str
    model_sha256: str
    layers: dict[str, LayerRecord]
    created: str = ""
    recon_version: str = __version__
    version: int = VERSION


class _Reader:
    """Attribute access that names the file, layer and attribute of every failure."""

    def __init__(self, node: h5py.HLObject, where: str) -> None:
        self.node, self.where = node, where

    def fail(self, message: str) -> BasesFileError:
        return BasesFileError(f"{self.where}: {message}: {DAMAGED}")

    def has(self, key: str) -> bool:
        return key in self.node.attrs

    def get(self, key: str, convert: Callable[[Any], Any] = lambda value: value):
        if key not in self.node.attrs:
            raise self.fail(f"attribute {key!r} is missing")
        value = self.node.attrs[key]
        value = value.decode() if isinstance(value, bytes) else value
        try:
            return convert(value)
        except (TypeError, ValueError) as err:
            raise self.fail(f"attribute {key!r} is malformed ({value!r}: {err})") from None

    def optional(self, key: str, convert: Callable[[Any], Any], default: Any = None):
        return self.get(key, convert) if self.has(key) else default


def _pair(value: Any) -> tuple[int, int]:
    pair = tuple(int(v) for v in np.atleast_1d(value))
    if len(pair) != 2:
        raise ValueError(f"expected 2 values, got {len(pair)}")
    return pair  # type: ignore[return-value]


def _padding(value: Any) -> tuple[int, int] | str:
    if isinstance(value, str):
        if value not in ("same", "valid"):
            raise ValueError("expected a pair, 'same' or 'valid'")
        return value
    return _pair(value)


def _rank(value: Any) -> int | tuple[int, ...]:
    values = tuple(int(v) for v in np.atleast_1d(value))
    if not values or min(values) < 1:
        raise ValueError("ranks are positive integers")
    return values[0] if np.ndim(value) == 0 else values


def _energy_lost(value: Any) -> float:
    """A recorded weight error: a NaN would switch the check of the factors against it off."""
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError("expected a finite number >= 0, the fraction of the weights' energy the factors lose")
    return number


def _digest(value: Any) -> str:
    """A sha256 as recorded: 64 hexadecimal digits (a damaged one would blame the model's weights)."""
    if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
        raise ValueError("expected a sha256, 64 hexadecimal digits")
    return value


def _optional_digest(value: Any) -> str | None:
    """A recorded bias sha256, or None where the layer has no bias (recorded as "")."""
    return None if value == "" else _digest(value)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in np.atleast_1d(value))


def _geometry_attrs(geometry: Geometry) -> dict[str, Any]:
    if isinstance(geometry, LinearGeometry):
        return {"kind": "linear", "in_features": geometry.in_features, "out_features": geometry.out_features}
    padding = geometry.padding if isinstance(geometry.padding, str) else np.array(geometry.padding)
    return {"kind": "conv", "in_channels": geometry.in_channels, "out_channels": geometry.out_channels,
            "kernel_size": np.array(geometry.kernel_size), "stride": np.array(geometry.stride),
            "padding": padding, "dilation": np.array(geometry.dilation), "groups": geometry.groups}


def _positive(value: Any) -> int:
    number = int(value)
    if number < 1 or number > MAX_SIZE:
        raise ValueError(f"expected a whole number in 1..{MAX_SIZE}")
    return number


def _positive_pair(value: Any) -> tuple[int, int]:
    return tuple(_positive(v) for v in _pair(value))  # type: ignore[return-value]


def _read_geometry(attrs: _Reader, kind: str) -> Geometry:
    if kind == "linear":
        return LinearGeometry(attrs.get("in_features", _positive), attrs.get("out_features", _positive))
    if kind != "conv":
        raise attrs.fail(f"attribute 'kind' must be 'conv' or 'linear', got {kind!r}")
    geometry = ConvGeometry(attrs.get("in_channels", _positive), attrs.get("out_channels", _positive),
                            attrs.get("kernel_size", _positive_pair), attrs.get("stride", _positive_pair),
                            attrs.get("padding", _padding), attrs.get("dilation", _positive_pair),
                            attrs.get("groups", _positive))
    if geometry.in_channels % geometry.groups or geometry.out_channels % geometry.groups:
        raise attrs.fail(f"attribute 'groups' ({geometry.groups}) must divide in_channels ({geometry.in_channels}) "
                         f"and out_channels ({geometry.out_channels})")
    return geometry


def _write_layer(group: h5py.Group, record: LayerRecord) -> None:
    attrs: dict[str, Any] = {
        "method": record.method, "rank": np.array(record.rank), "mode": record.mode,
        "bias": record.module.bias is not None, **_geometry_attrs(record.geometry),
        "filter_energy_lost": record.filter_energy_lost, "output_variance_lost": record.output_variance_lost,
        "fit_seconds": record.fit_seconds, "weight_sha256": record.weight_sha256,
        "bias_sha256": record.bias_sha256 or "", "config": json.dumps(record.config)}
    if record.input_shape is not None:
        attrs["input_shape"] = np.array(record.input_shape)
    if record.dense_macs is not None and record.macs is not None:
        attrs.update(dense_macs=record.dense_macs, macs=record.macs)
    if record.guard is not None:
        attrs.update(guard_dense_ms=record.guard.dense_ms, guard_low_rank_ms=record.guard.low_rank_ms)
    if record.folded_batchnorm is not None:
        attrs["folded_batchnorm"] = record.folded_batchnorm
    if record.statistics is not None:
        attrs.update({f"statistics_{key}": value for key, value in record.statistics._asdict().items()})
    group.attrs.update(attrs)
    for name, tensor in record.module.state_dict().items():
        _write_dataset(group, name, tensor.detach().cpu().float().numpy())
    history = group.create_group("history")
    for key, values in record.history.items():
        _write_dataset(history, key, np.asarray(values))


def _write_dataset(group: h5py.Group, name: str, values: np.ndarray) -> None:
    """A dataset with the sha256 of its values (checked on every read)."""
    group.create_dataset(name, data=values).attrs[CHECKSUM] = _sha256(values)


def _sha256(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _check_tensors(tensors: dict[str, h5py.Dataset], module: LowRankModule, at: str) -> None:
    """Compare ``tensors`` (not read yet) with ``module``'s state_dict names, shapes and dtypes."""
    expected = {name: tuple(value.shape) for name, value in module.state_dict().items()}
    for name, shape in expected.items():
        if name not in tensors:
            raise BasesFileError(f"{at}: field {name!r} is missing")
        dataset = tensors[name]
        if dataset.shape != shape:
            raise BasesFileError(f"{at}: field {name!r} has shape {dataset.shape}, expected {shape}")
        if dataset.dtype.kind != "f" or dataset.dtype.itemsize > 8:
            raise BasesFileError(f"{at}: field {name!r} has dtype {dataset.dtype}, expected float32 or float64")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise BasesFileError(f"{at}: unexpected field {unexpected[0]!r} (a {type(module).__name__} holds "
                             f"{', '.join(expected)})")


def _values(dataset: h5py.Dataset, name: str, at: str) -> np.ndarray:
    """The values of a checked dataset: finite, and matching their recorded checksum."""
    values = np.asarray(dataset)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise BasesFileError(f"{at}: field {name!r} contains NaN or infinite values")
    recorded = dataset.attrs.get(CHECKSUM)
    if recorded is not None:
        recorded = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
        if recorded != _sha256(values):
            raise BasesFileError(f"{at}: field {name!r} does not match its recorded checksum (its values changed "
                                 f"after they were written): {DAMAGED}")
    return values


def _module(method: methods.Method, geometry: Geometry, rank: Any, tensors: dict[str, h5py.Dataset | np.ndarray],
            at: str) -> LowRankModule:
    """The module of ``method`` filled with ``tensors`` (rank, shapes and dtypes validated
    before anything is allocated or read)."""
    try:
        method.check_rank(geometry, rank)
        module = method.module_class(geometry, rank, bias="bias" in tensors)
    except (TypeError, ValueError, ConfigError) as err:
        raise BasesFileError(f"{at}: rank {rank!r} or geometry does not fit method {method.name!r} ({err})") from None
    _check_tensors(tensors, module, at)
    values = {name: _values(t, name, at) if isinstance(t, h5py.Dataset) else t for name, t in tensors.items()}
    module.load_state_dict({name: torch.from_numpy(np.asarray(a, np.float32)) for name, a in values.items()},
                           strict=True)
    if not torch.all(torch.isfinite(module.dense_weight())):
        raise BasesFileError(f"{at}: the factors overflow float32 (the weight they compose is not finite)")
    return module.eval()


def _children(group: h5py.Group, at: str) -> dict[str, h5py.Group | h5py.Dataset]:
    """The members of ``group``; refuses what would make recon read outside the file (soft and
    external links, external storage, virtual datasets)."""
    children = {}
    for key in group:
        link = group.get(key, getlink=True)
        if link is None:
            raise _damaged(at, f"member {group.name}/{key} is listed but cannot be opened")
        if not isinstance(link, h5py.HardLink):
            raise BasesFileError(f"{at}: {group.name}/{key} is a {type(link).__name__}; bases files hold their own "
                                 "data, and recon does not follow links")
        child = group[key]
        if isinstance(child, h5py.Dataset) and (child.is_virtual or child.external):
            raise BasesFileError(f"{at}: dataset {child.name} keeps its values outside the file "
                                 f"({'virtual' if child.is_virtual else 'external storage'}); refused")
        children[key] = child
    return children


def _datasets(group: h5py.Group, at: str) -> dict[str, h5py.Dataset]:
    """The datasets of ``group`` (checked by ``_children``), not read yet."""
    return {key: value for key, value in _children(group, at).items() if isinstance(value, h5py.Dataset)}


def _history(group: h5py.Group, at: str) -> dict[str, np.ndarray]:
    """A layer's solver diagnostics, each at most ``MAX_HISTORY`` values."""
    if "history" not in group:
        return {}
    history = _children(group, at)["history"]
    if not isinstance(history, h5py.Group):
        raise BasesFileError(f"{at}: 'history' must be a group")
    datasets = _datasets(history, at)
    for key, dataset in datasets.items():
        if dataset.size > MAX_HISTORY or dataset.dtype.itemsize > 8:
            raise BasesFileError(f"{at}: history/{key} declares {dataset.size:,} values of {dataset.dtype}; "
                                 f"solver diagnostics hold at most {MAX_HISTORY:,} numbers")
    return {key: _values(dataset, f"history/{key}", at) for key, dataset in datasets.items()}


def _read_layer_v2(name: str, group: h5py.Group, at: str) -> LayerRecord:
    attrs = _Reader(group, at)
    method = _method(attrs, attrs.get("method", str))
    geometry = _read_geometry(attrs, attrs.get("kind", str))
    rank = attrs.get("rank", _rank)
    tensors = _datasets(group, at)
    if attrs.get("bias", bool) != ("bias" in tensors):
        raise attrs.fail("field 'bias' is missing" if "bias" not in tensors else "unexpected field 'bias'")
    guard = None
    if attrs.has("guard_dense_ms"):
        guard = GuardDecision(name, attrs.get("guard_dense_ms", float), attrs.get("guard_low_rank_ms", float), True)
    return LayerRecord(
        name=name, method=method.name, rank=rank, mode=_mode(attrs), geometry=geometry,
        module=_module(method, geometry, rank, tensors, at), weight_sha256=attrs.get("weight_sha256", _digest),
        bias_sha256=attrs.get("bias_sha256", _optional_digest),
        filter_energy_lost=attrs.get("filter_energy_lost", _energy_lost),
        output_variance_lost=attrs.get("output_variance_lost", float),
        input_shape=attrs.optional("input_shape", _shape), dense_macs=attrs.optional("dense_macs", int),
        macs=attrs.optional("macs", int), fit_seconds=attrs.get("fit_seconds", float), guard=guard,
        statistics=_read_statistics(attrs), folded_batchnorm=attrs.optional("folded_batchnorm", str),
        config=attrs.get("config", json.loads), history=_history(group, at))


def _read_statistics(attrs: _Reader) -> Conditioning | None:
    if not attrs.has("statistics_patches"):
        return None
    kinds = dict(zip(Conditioning._fields, (int, int, float, float, int)))
    return Conditioning(**{key: attrs.get(f"statistics_{key}", kind) for key, kind in kinds.items()})


def _method(attrs: _Reader, name: str) -> methods.Method:
    if name not in methods.REGISTRY:
        raise attrs.fail(f"attribute 'method' must be one of {', '.join(methods.REGISTRY)}, got {name!r}")
    return methods.REGISTRY[name]


def _mode(attrs: _Reader) -> str:
    mode = attrs.get("mode", str)
    if mode not in MODES:
        raise attrs.fail(f"attribute 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _read_layer_v1(name: str, group: h5py.Group, at: str) -> LayerRecord:
    """A schema v1 layer: Scheme 1/2 factors in solver layout, or a peer's factor matrices."""
    attrs = _Reader(group, at)
    if attrs.has("method"):
        method = _method(attrs, attrs.get("method", str))
        mode, data_error = "filter", float("nan")
    else:
        method = _method(attrs, f"scheme{attrs.get('scheme', int)}")
        mode, data_error = _mode(attrs), attrs.get("data_rel_error", float)
    datasets = _datasets(group, at)
    for key, dataset in datasets.items():
        if dataset.size > MAX_SIZE:
            raise attrs.fail(f"field {key!r} declares {dataset.size:,} values (at most {MAX_SIZE:,})")
    datasets = {key: _values(dataset, key, at) for key, dataset in datasets.items()}
    bias = datasets.pop("bias", None)
    try:
        factors, rank = v1_factors(method.name, datasets)
    except (KeyError, IndexError) as err:
        raise attrs.fail(f"field {err.args[0]!r} is missing") from None
    if attrs.has("num_bases") and attrs.get("num_bases", int) != rank:
        raise attrs.fail(f"attribute 'num_bases' says {attrs.get('num_bases', int)} but the factors hold {rank}")
    kind = "linear" if attrs.has("in_features") else "conv"
    geometry = _read_geometry(attrs, kind)
    if kind == "conv" and geometry.groups != 1:
        raise attrs.fail("groups must be 1 in schema v1")
    module = _module(method, geometry, rank, _v1_tensors(method, geometry, rank, factors, bias, at), at)
    return LayerRecord(name=name, method=method.name, rank=rank, mode=mode, geometry=geometry, module=module,
                       weight_sha256=attrs.get("weight_sha256", _digest), bias_sha256=None,
                       filter_energy_lost=attrs.get("filter_rel_error", _energy_lost), output_variance_lost=data_error,
                       history=_history(group, at))


def _v1_tensors(method: methods.Method, geometry: Geometry, rank: Any, factors: dict[str, np.ndarray],
                bias: np.ndarray | None, at: str) -> dict[str, np.ndarray]:
    """v1 factors reshaped into the module's state_dict layout (sizes checked first)."""
    shapes = method.module_class.factor_shapes(geometry, rank)
    tensors = {}
    for key, shape in shapes.items():
        if key not in factors:
            raise BasesFileError(f"{at}: field {key!r} is missing")
        if factors[key].size != int(np.prod(shape)):
            raise BasesFileError(f"{at}: field {key!r} holds {factors[key].size} values, expected {int(np.prod(shape))}")
        tensors[key] = factors[key].reshape(shape)
    if bias is not None:
        tensors["bias"] = bias
    return tensors


def check_path(path: object, what: str = "path") -> Path:
    """``path`` as a Path; ConfigError unless it is a str or os.PathLike (not bytes, not None)."""
    if isinstance(path, (bytes, bytearray)) or not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"{what} must be a str or os.PathLike naming a bases file, got {type(path).__name__}")
    return Path(path)


def _damaged(where: str, what: str) -> BasesFileError:
    return BasesFileError(f"{where}: {what}: {DAMAGED}")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Report what HDF5 raises on reading ``path`` as damage (the cause chained); recon's own
    errors pass unchanged."""
    try:
        yield
    except ReconError:
        raise
    except READ_ERRORS as err:
        raise _damaged(str(path), f"HDF5 cannot read it ({type(err).__name__}: {err})") from err


def _length_size(data: mmap.mmap) -> int | None:
    """The size of lengths (bytes) the file's superblock declares; None without a superblock."""
    offset = 0
    while offset + 16 <= len(data):
        if data[offset:offset + 8] == HDF5_SIGNATURE:
            return data[offset + (14 if data[offset + 8] < 2 else 10)]  # superblock versions 0-1 and 2-3
        offset = 512 if offset == 0 else 2 * offset
    return None


def _heap_problem(data: mmap.mmap, start: int) -> str | None:
    """What is wrong with the global heap collection at byte ``start``, its objects walked as HDF5
    walks them (None: nothing)."""
    end = start + int.from_bytes(data[start + 8:start + 16], "little")
    if not start + HEAP_HEADER <= end <= len(data):
        return f"declares {end - start} bytes, past the end of the file"
    at = start + HEAP_HEADER
    while at + HEAP_HEADER <= end:
        index = int.from_bytes(data[at:at + 2], "little")
        size = int.from_bytes(data[at + 8:at + 16], "little")
        step = size if index == 0 else HEAP_HEADER + -(-size // 8) * 8  # free space (0) counts its header
        if step < HEAP_HEADER or at + step > end:
            return f"holds object {index} of {size} bytes at byte {at}, which does not fit in it"
        at += step
    return None


def _check_global_heaps(path: Path) -> None:
    """Refuse a damaged global heap collection (HDF5 keeps variable-length strings, such as the
    attributes, there) before HDF5 reads it: an object of size 0 there makes HDF5 loop forever.
    Files with other than 8-byte lengths are left to HDF5."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if _length_size(data) != 8:
                return
            start = data.find(GLOBAL_HEAP)
            while start >= 0:
                problem = _heap_problem(data, start)
                if problem:
                    raise _damaged(str(path), f"the global heap at byte {start} {problem}")
                start = data.find(GLOBAL_HEAP, start + 1)


def _existing(path: object) -> Path:
    """``path`` after checking that it names a file."""
    path = check_path(path)
    if path.is_dir():
        raise BasesFileError(f"{path} is a directory, not a bases file")
    if not path.is_file():
        raise BasesFileError(f"bases file {path} does not exist")
    return path


@contextlib.contextmanager
def _opened(path: str | os.PathLike) -> Iterator[tuple[h5py.File, _Reader, int]]:
    """The open bases file, a reader of its root attributes and its schema version, after
    checking that it is one (format, version, the layers group); for reading only: what HDF5
    raises in the ``with`` block is reported as damage."""
    path = _existing(path)
    _check_global_heaps(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise BasesFileError(f"{path} is not a readable HDF5 file ({err})") from err
    with handle as source, _reading(path):
        root = _Reader(source, str(path))
        fmt = root.optional("format", str)
        if fmt != FORMAT:
            raise BasesFileError(f"{path} is not a recon bases file (format={fmt!r}, expected {FORMAT!r})")
        version = root.get("version", int)
        if version not in (1, VERSION):
            raise BasesFileError(f"{path} has schema version {version}; this recon reads versions 1 and {VERSION}")
        if "layers" not in source:
            raise BasesFileError(f"{path}: group '/layers' is missing")
        layers = _children(source, str(path))["layers"]
        if not isinstance(layers, h5py.Group):
            raise _damaged(str(path), f"'/layers' is a {type(layers).__name__}, not the group of layers a bases file "
                                      "holds")
        yield source, root, version


def _group(node: h5py.HLObject, at: str) -> h5py.Group:
    if not isinstance(node, h5py.Group):
        raise BasesFileError(f"{at}: a layer must be a group, not a {type(node).__name__}")
    return node


def read_bases(path: str | os.PathLike) -> BasesFile:
    """Read and validate a bases file (schema v1 or v2); BasesFileError says what and where."""
    with _opened(path) as (source, root, version):
        read_layer = _read_layer_v2 if version == VERSION else _read_layer_v1
        layers = {name: read_layer(name, _group(group, f"{path}: layer {name!r}"), f"{path}: layer {name!r}")
                  for name, group in _children(source["layers"], str(path)).items()}
        return BasesFile(model=root.get("model", str), model_sha256=root.get("model_sha256", str), layers=layers,
                         created=root.get("created", str), recon_version=root.get("recon_version", str),
                         version=version)


def write_bases(path: str | os.PathLike, bases: BasesFile, overwrite: bool = False) -> Path:
    """Write ``bases`` to ``path`` as schema v2, atomically (see ``recon.io.atomic``), replacing
    a bases file of the same model; anything else at ``path`` only with ``overwrite``."""
    check_replaceable(path, bases.model_sha256, overwrite)
    with exclusive(path) as target:  # under the lock of update_bases, whose temporaries it would otherwise race
        return replace_atomically(target, lambda temporary: _write(temporary, bases.model, bases.model_sha256,
                                                                   bases.layers.values(), bases.created))


def _write(temporary: Path, model: str, model_hash: str, records: Iterable[LayerRecord], created: str = "",
           kept_from: h5py.File | None = None, kept: Iterable[str] = ()) -> None:
    """A schema v2 file holding ``records`` and, copied untouched from ``kept_from``, the layers ``kept``."""
    with h5py.File(temporary, "w") as out:
        out.attrs.update({"format": FORMAT, "version": VERSION, "recon_version": __version__,
                          "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(),
                          "model": model, "model_sha256": model_hash})
        layers = out.create_group("layers")
        for name in kept:
            kept_from.copy(kept_from["layers"][name], layers, name=name)
        for record in records:
            _write_layer(layers.create_group(record.name), record)


def check_folder(path: str | os.PathLike) -> Path:
    """The resolved ``path`` after checking that a file can be written there."""
    target = resolve(check_path(path))
    if target.is_dir():
        raise BasesFileError(f"cannot write {path}: it is a directory; give a file name such as {Path(path) / 'bases.h5'}")
    if not target.parent.is_dir():
        raise BasesFileError(f"cannot write {path}: folder {target.parent} does not exist")
    if target.exists() and not os.access(target, os.W_OK):
        raise BasesFileError(f"cannot write {path}: the file is read-only")
    try:
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as err:
        raise BasesFileError(f"cannot write in {target.parent}: {err.strerror or err}") from None
    return target


def _is_new(target: Path) -> bool:
    """No file there yet, or an empty one (as ``tempfile.NamedTemporaryFile`` leaves)."""
    return not target.exists() or target.stat().st_size == 0


def check_replaceable(path: str | os.PathLike, model_hash: str, overwrite: bool = False) -> Path:
    """``check_folder``, then refuse to replace an existing file that is not a bases file of the
    model ``model_hash`` (a checkpoint, another model's bases), unless ``overwrite``."""
    target = check_folder(path)
    if overwrite or _is_new(target):
        return target
    hint = "choose another file, or pass overwrite=True (the CLIs: --force)"
    try:
        with _opened(target) as (_, root, _):
            existing = root.get("model_sha256", str)
    except BasesFileError as err:
        raise BasesFileError(f"{path} exists and is not a recon bases file ({err}); refusing to overwrite it: "
                             f"{hint}") from None
    if existing != model_hash:
        raise BasesFileError(f"{path} holds bases of another model (sha256 {existing[:12]}...); refusing to overwrite "
                             f"it: {hint}")
    return target


def check_destination(path: str | os.PathLike, model: str, model_hash: str) -> None:
    """Refuse, before any work, a destination that cannot be written or that holds another
    model's bases (layers are added to a file of the same model)."""
    target = check_folder(path)
    if not _is_new(target):
        with _opened(target) as (_, root, _):
            _check_same_model(target, root.get("model", str), root.get("model_sha256", str), model, model_hash)


def _check_same_model(path: Path, existing_model: str, existing_hash: str, model: str, model_hash: str) -> None:
    if existing_hash != model_hash:
        raise BasesFileError(
            f"{path} holds bases for another model ({existing_model}, sha256 {existing_hash[:12]}...); "
            f"refusing to add layers of {model} (sha256 {model_hash[:12]}...). Choose another output file.")


def update_bases(path: str | os.PathLike, model: str, model_hash: str, records: list[LayerRecord]) -> list[str]:
    """Add or replace ``records`` in the file at ``path`` (created if absent), atomically;
    returns the names of the file's layers.

    Layers already in the file and not in ``records`` are kept (copied as they are; a version 1
    file is converted); the read, merge and write happen under the file's lock, so concurrent
    updates do not lose each other's layers. The file is read and validated first: a damaged
    one is refused rather than copied, and so is a file fitted to another model (different
    ``model_sha256``) rather than mixed.
    """
    check_folder(path)
    new = {record.name: record for record in records}
    with exclusive(path) as target:
        if _is_new(target):
            replace_atomically(target, lambda temporary: _write(temporary, model, model_hash, new.values()))
            return list(new)
        existing = read_bases(target)
        _check_same_model(target, existing.model, existing.model_sha256, model, model_hash)
        kept = [name for name in existing.layers if name not in new]
        if existing.version != VERSION:
            records = [existing.layers[name] for name in kept] + list(new.values())
            replace_atomically(target, lambda temporary: _write(temporary, model, model_hash, records))
        else:
            with h5py.File(target, "r") as source:  # validated above: copied as it is
                replace_atomically(target, lambda temporary: _write(temporary, model, model_hash, new.values(),
                                                                     kept_from=source, kept=kept))
        return kept + list(new)
