"""Bases files: HDF5, schema v1 (docs/hdf5-schema.md and DESIGN.md).

One reader validates everything (format, version, attributes, shapes, dtypes, finiteness)
and names the layer and field at fault. Writes go to a temporary file in the target folder
that replaces the target with ``os.replace``: an interrupted write never damages an
existing file.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from recon.modules import ConvGeometry, LowRankExpConv

FORMAT = "recon.bases"
VERSION = 1
RECON_VERSION = "0.1.0"
MODES = ("filter", "data")


class BasesFileError(ValueError):
    """A bases file is missing, unreadable, of another format or version, or inconsistent."""


@dataclass
class LayerBases:
    """The fitted factors of one layer and what is known about their quality."""

    name: str
    geometry: ConvGeometry
    scheme: int
    mode: str
    vertical: np.ndarray
    horizontal: np.ndarray
    coeffs: np.ndarray | None
    bias: np.ndarray | None
    weight_sha256: str
    lambda_final: float = float("nan")
    filter_rel_error: float = float("nan")
    data_rel_error: float = float("nan")
    theoretical_speedup: float = float("nan")
    history: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_bases(self) -> int:
        return int(self.vertical.shape[0])

    def to_module(self) -> LowRankExpConv:
        """The ``LowRankExpConv`` these factors describe."""
        return LowRankExpConv.from_bases(self.geometry, self.vertical, self.horizontal, self.coeffs, self.bias)


PEER_FACTORS = {
    "cp": ("out_factor", "in_factor", "row_factor", "col_factor"),
    "tucker2": ("core", "out_factor", "in_factor"),
    "svd": ("first", "second"),
}


@dataclass
class PeerLayer:
    """A peer decomposition of one layer (CP, Tucker-2 of a conv; truncated SVD of a Linear).

    cp: out_factor (N,R), in_factor (C,R), row_factor (kh,R), col_factor (kw,R);
    tucker2: core (R_out,R_in,kh,kw), out_factor (N,R_out), in_factor (C,R_in);
    svd: first (R,in_features), second (out_features,R). ``geometry`` is None for svd.
    """

    name: str
    method: str
    factors: dict[str, np.ndarray]
    bias: np.ndarray | None
    weight_sha256: str
    geometry: ConvGeometry | None = None
    features: tuple[int, int] | None = None
    filter_rel_error: float = float("nan")
    theoretical_speedup: float = float("nan")

    def to_module(self) -> torch.nn.Module:
        from recon import baselines

        f = self.factors
        if self.method == "cp":
            return baselines.CPConv(self.geometry, f["out_factor"], f["in_factor"], f["row_factor"],
                                    f["col_factor"], self.bias)
        if self.method == "tucker2":
            return baselines.Tucker2Conv(self.geometry, f["core"], f["out_factor"], f["in_factor"], self.bias)
        return baselines.low_rank_linear(f["first"], f["second"], self.bias)


def _peer_shapes(layer: PeerLayer) -> dict[str, tuple[int, ...]]:
    f = layer.factors
    if layer.method == "svd":
        rank = f["first"].shape[0]
        shapes = {"first": (rank, layer.features[0]), "second": (layer.features[1], rank)}
        out = layer.features[1]
    else:
        g = layer.geometry
        (kh, kw), n, c = g.kernel_size, g.out_channels, g.in_channels
        out = n
        if layer.method == "cp":
            rank = f["in_factor"].shape[1]
            shapes = {"out_factor": (n, rank), "in_factor": (c, rank), "row_factor": (kh, rank), "col_factor": (kw, rank)}
        else:
            r_out, r_in = f["core"].shape[:2]
            shapes = {"core": (r_out, r_in, kh, kw), "out_factor": (n, r_out), "in_factor": (c, r_in)}
    if layer.bias is not None:
        shapes["bias"] = (out,)
    return shapes


@dataclass
class BasesFile:
    """A whole bases file: which model it belongs to and its layers by qualified name."""

    model: str
    model_sha256: str
    layers: dict[str, LayerBases | PeerLayer]
    created: str = ""
    recon_version: str = RECON_VERSION


def weight_sha256(weight: torch.Tensor) -> str:
    """sha256 of a weight tensor's float32 values (C order): identifies the layer fitted."""
    array = np.ascontiguousarray(weight.detach().cpu().float().numpy())
    return hashlib.sha256(array.tobytes()).hexdigest()


def model_sha256(model: torch.nn.Module) -> str:
    """sha256 over the names and float32 values of a model's parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().float().numpy()).tobytes())
    return digest.hexdigest()


def _expected_shapes(layer: LayerBases) -> dict[str, tuple[int, ...]]:
    g, k = layer.geometry, layer.num_bases
    (kh, kw), n, c = g.kernel_size, g.out_channels, g.in_channels
    if layer.scheme == 1:
        shapes = {"vertical": (k, kh), "horizontal": (k, kw), "coeffs": (n, c, k)}
    else:
        shapes = {"vertical": (k, c, kh), "horizontal": (n, k, kw)}
    if layer.bias is not None:
        shapes["bias"] = (n,)
    return shapes


def _check_arrays(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], at: str) -> None:
    for name, shape in shapes.items():
        if name not in arrays or arrays[name] is None:
            raise BasesFileError(f"{at}: field {name!r} is missing")
        array = arrays[name]
        if array.shape != shape:
            raise BasesFileError(f"{at}: field {name!r} has shape {array.shape}, expected {shape}")
        if array.dtype.kind != "f":
            raise BasesFileError(f"{at}: field {name!r} has dtype {array.dtype}, expected floating point")
        if not np.all(np.isfinite(array)):
            raise BasesFileError(f"{at}: field {name!r} contains NaN or infinite values")


def validate_layer(layer: LayerBases | PeerLayer, where: str = "") -> None:
    """Raise BasesFileError naming the layer and field that breaks schema v1."""
    at = f"{where}layer {layer.name!r}"
    if isinstance(layer, PeerLayer):
        if layer.method not in PEER_FACTORS:
            raise BasesFileError(f"{at}: method must be one of {sorted(PEER_FACTORS)}, got {layer.method!r}")
        if (layer.method == "svd") != (layer.features is not None):
            raise BasesFileError(f"{at}: 'svd' layers need in/out features and other methods a conv geometry")
        missing = [f for f in PEER_FACTORS[layer.method] if f not in layer.factors]
        if missing:
            raise BasesFileError(f"{at}: field {missing[0]!r} is missing")
        _check_arrays({**layer.factors, "bias": layer.bias}, _peer_shapes(layer), at)
        return
    if layer.scheme not in (1, 2):
        raise BasesFileError(f"{at}: scheme must be 1 or 2, got {layer.scheme!r}")
    if layer.mode not in MODES:
        raise BasesFileError(f"{at}: mode must be one of {MODES}, got {layer.mode!r}")
    if (layer.coeffs is None) != (layer.scheme == 2):
        raise BasesFileError(f"{at}: field 'coeffs' is required for scheme 1 and absent for scheme 2")
    shapes = _expected_shapes(layer)
    _check_arrays({name: getattr(layer, name) for name in shapes}, shapes, at)


def _geometry_attrs(geometry: ConvGeometry) -> dict[str, object]:
    padding = geometry.padding if isinstance(geometry.padding, str) else np.array(geometry.padding)
    return {"in_channels": geometry.in_channels, "out_channels": geometry.out_channels,
            "kernel_size": np.array(geometry.kernel_size), "stride": np.array(geometry.stride),
            "padding": padding, "dilation": np.array(geometry.dilation), "groups": 1}


def _write_peer(group: h5py.Group, layer: PeerLayer) -> None:
    attrs = {"method": layer.method, "weight_sha256": layer.weight_sha256,
             "filter_rel_error": layer.filter_rel_error, "theoretical_speedup": layer.theoretical_speedup}
    if layer.geometry is not None:
        attrs.update(_geometry_attrs(layer.geometry))
    else:
        attrs.update({"in_features": layer.features[0], "out_features": layer.features[1]})
    group.attrs.update(attrs)
    for name, array in {**layer.factors, "bias": layer.bias}.items():
        if array is not None:
            group.create_dataset(name, data=np.asarray(array, np.float32))


def _write_layer(group: h5py.Group, layer: LayerBases | PeerLayer) -> None:
    if isinstance(layer, PeerLayer):
        _write_peer(group, layer)
        return
    attrs = {"scheme": layer.scheme, "num_bases": layer.num_bases, "mode": layer.mode,
             "lambda_final": layer.lambda_final, "filter_rel_error": layer.filter_rel_error,
             "data_rel_error": layer.data_rel_error, "theoretical_speedup": layer.theoretical_speedup,
             "weight_sha256": layer.weight_sha256, **_geometry_attrs(layer.geometry)}
    group.attrs.update(attrs)
    for name in ("vertical", "horizontal", "coeffs", "bias"):
        array = getattr(layer, name)
        if array is not None:
            group.create_dataset(name, data=np.asarray(array, np.float32))
    history = group.create_group("history")
    for key, values in layer.history.items():
        history.create_dataset(key, data=np.asarray(values))


def write_bases(path: str | os.PathLike, bases: BasesFile) -> Path:
    """Write ``bases`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise BasesFileError(f"cannot write {path}: folder {path.parent} does not exist")
    for layer in bases.layers.values():
        validate_layer(layer)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        with h5py.File(temporary, "w") as out:
            out.attrs.update({"format": FORMAT, "version": VERSION, "recon_version": RECON_VERSION,
                              "created": bases.created or _dt.datetime.now(_dt.timezone.utc).isoformat(),
                              "model": bases.model, "model_sha256": bases.model_sha256})
            layers = out.create_group("layers")
            for name, layer in bases.layers.items():
                _write_layer(layers.create_group(name), layer)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def _attr(node: h5py.HLObject, key: str, where: str):
    if key not in node.attrs:
        raise BasesFileError(f"{where}: attribute {key!r} is missing")
    value = node.attrs[key]
    return value.decode() if isinstance(value, bytes) else value


def _read_geometry(group: h5py.Group, where: str) -> ConvGeometry:
    pair = lambda key: tuple(int(v) for v in _attr(group, key, where))
    padding = _attr(group, "padding", where)
    if int(_attr(group, "groups", where)) != 1:
        raise BasesFileError(f"{where}: groups must be 1 in schema v1")
    return ConvGeometry(int(_attr(group, "in_channels", where)), int(_attr(group, "out_channels", where)),
                        pair("kernel_size"), pair("stride"),
                        padding if isinstance(padding, str) else tuple(int(v) for v in padding),
                        pair("dilation"))


def _read_peer(name: str, group: h5py.Group, path: Path, method: str) -> PeerLayer:
    where = f"{path}: layer {name!r}"
    dataset = lambda key: np.asarray(group[key]) if key in group else None
    if method not in PEER_FACTORS:
        raise BasesFileError(f"{where}: method must be one of {sorted(PEER_FACTORS)}, got {method!r}")
    svd = method == "svd"
    layer = PeerLayer(
        name=name, method=method, factors={key: dataset(key) for key in PEER_FACTORS[method] if key in group},
        bias=dataset("bias"), weight_sha256=str(_attr(group, "weight_sha256", where)),
        geometry=None if svd else _read_geometry(group, where),
        features=(int(_attr(group, "in_features", where)), int(_attr(group, "out_features", where))) if svd else None,
        filter_rel_error=float(_attr(group, "filter_rel_error", where)),
        theoretical_speedup=float(_attr(group, "theoretical_speedup", where)))
    validate_layer(layer, f"{path}: ")
    return layer


def _read_layer(name: str, group: h5py.Group, path: Path) -> LayerBases | PeerLayer:
    where = f"{path}: layer {name!r}"
    if "method" in group.attrs:
        return _read_peer(name, group, path, str(_attr(group, "method", where)))
    dataset = lambda key: np.asarray(group[key]) if key in group else None
    for key in ("vertical", "horizontal"):
        if key not in group:
            raise BasesFileError(f"{where}: field {key!r} is missing")
    layer = LayerBases(
        name=name, geometry=_read_geometry(group, where), scheme=int(_attr(group, "scheme", where)),
        mode=str(_attr(group, "mode", where)), vertical=dataset("vertical"), horizontal=dataset("horizontal"),
        coeffs=dataset("coeffs"), bias=dataset("bias"), weight_sha256=str(_attr(group, "weight_sha256", where)),
        lambda_final=float(_attr(group, "lambda_final", where)),
        filter_rel_error=float(_attr(group, "filter_rel_error", where)),
        data_rel_error=float(_attr(group, "data_rel_error", where)),
        theoretical_speedup=float(_attr(group, "theoretical_speedup", where)),
        history={key: np.asarray(value) for key, value in group.get("history", {}).items()})
    if int(_attr(group, "num_bases", where)) != layer.num_bases:
        raise BasesFileError(f"{where}: attribute 'num_bases' says {_attr(group, 'num_bases', where)} "
                             f"but field 'vertical' holds {layer.num_bases}")
    validate_layer(layer, f"{path}: ")
    return layer


def read_bases(path: str | os.PathLike) -> BasesFile:
    """Read and validate a bases file; BasesFileError says what is wrong and where."""
    path = Path(path)
    if not path.is_file():
        raise BasesFileError(f"bases file {path} does not exist")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise BasesFileError(f"{path} is not a readable HDF5 file ({err})") from err
    with handle as source:
        fmt = source.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != FORMAT:
            raise BasesFileError(f"{path} is not a recon bases file (format={fmt!r}, expected {FORMAT!r})")
        version = int(_attr(source, "version", str(path)))
        if version != VERSION:
            raise BasesFileError(f"{path} has schema version {version}; this recon reads version {VERSION}")
        layers = source.get("layers")
        if layers is None:
            raise BasesFileError(f"{path}: group '/layers' is missing")
        return BasesFile(
            model=str(_attr(source, "model", str(path))), model_sha256=str(_attr(source, "model_sha256", str(path))),
            layers={name: _read_layer(name, group, path) for name, group in layers.items()},
            created=str(_attr(source, "created", str(path))),
            recon_version=str(_attr(source, "recon_version", str(path))))


def update_bases(path: str | os.PathLike, model: str, model_hash: str,
                 layers: list[LayerBases | PeerLayer]) -> BasesFile:
    """Add or replace ``layers`` in the file at ``path`` (created if absent), atomically.

    Layers already in the file and not in ``layers`` are kept. A file fitted to another
    model (different ``model_sha256``) is refused rather than mixed.
    """
    path = Path(path)
    if path.exists():
        existing = read_bases(path)
        if existing.model_sha256 != model_hash:
            raise BasesFileError(
                f"{path} holds bases for another model ({existing.model}, sha256 {existing.model_sha256[:12]}...); "
                f"refusing to add layers of {model} (sha256 {model_hash[:12]}...). Choose another --out.")
        merged = dict(existing.layers)
    else:
        merged = {}
    merged.update({layer.name: layer for layer in layers})
    bases = BasesFile(model=model, model_sha256=model_hash, layers=merged)
    write_bases(path, bases)
    return bases
