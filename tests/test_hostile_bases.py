"""Hostile input, round 4: bases files damaged byte by byte or of the wrong structure, recorded
errors that would switch their own check off, and ``apply_bases`` arguments of the wrong kind."""
import multiprocessing
import re

import h5py
import numpy as np
import pytest
import torch

import recon
from recon.errors import BasesFileError, ConfigError, LayerError
from recon.io.bases_file import CHECKSUM, read_bases, update_bases
from tests.fixture_models import Tiny, tiny
from tests.test_hostile_files import _edit, saved  # noqa: F401  (saved: a bases file of tiny's three convs)

DAMAGED = "damaged.*re-save it"


def _flip(path, start: int, length: int) -> None:
    """Invert ``length`` bytes of the file at ``path`` from byte ``start`` (negative: from the end)."""
    data = bytearray(path.read_bytes())
    start %= len(data)
    data[start:start + length] = bytes(byte ^ 0xFF for byte in data[start:start + length])
    path.write_bytes(bytes(data))


def _apply(path):
    return recon.apply_bases(tiny(), path)


@pytest.mark.parametrize("start, length", [(-1000, 1000), (-2000, 1000), (-5000, 1000), (-8000, 500), (-12000, 1000)])
def test_bytes_flipped_near_the_end_are_refused_as_damage(saved, start, length):
    bases = read_bases(saved)
    _flip(saved, start, length)
    for read in (read_bases, _apply, lambda path: update_bases(path, bases.model, bases.model_sha256,
                                                               [bases.layers["features.0"]])):
        with pytest.raises(BasesFileError, match=DAMAGED):
            read(saved)


def _report(read, path, queue) -> None:
    try:
        read(path)
        queue.put("no error")
    except Exception as err:
        queue.put(f"{type(err).__name__}: {err}")


def _error_within(seconds: float, read, path) -> str:
    """What ``read(path)`` raises, run in a forked process killed after ``seconds``: HDF5 loops
    forever on some damage, and a test must fail on it, not hang."""
    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    child = context.Process(target=_report, args=(read, path, queue))
    child.start()
    child.join(seconds)
    if child.is_alive():
        child.kill()
        pytest.fail(f"{read.__name__} still ran after {seconds} s: HDF5 loops on the damage")
    return queue.get()


@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called")  # JAX warns of any fork; this child does not use it
def test_a_damaged_global_heap_is_refused_before_hdf5_loops_on_it(saved):
    """HDF5 keeps the variable-length strings (the attributes) in a global heap; an object of
    size 0 there makes it loop forever, so recon checks the heap before HDF5 reads it."""
    data = bytearray(saved.read_bytes())
    heap = data.find(b"GCOL\x01")
    data[heap + 16:heap + 32] = bytes(16)  # the first object: index 0 (free space) of size 0
    saved.write_bytes(bytes(data))
    assert re.match(f"BasesFileError: .*global heap.*{DAMAGED}", _error_within(30, read_bases, saved))


def test_layers_stored_as_a_dataset_are_refused_as_damage(saved):
    with h5py.File(saved, "r+") as handle:
        del handle["layers"]
        handle["layers"] = np.zeros(3)
    for read in (read_bases, _apply):
        with pytest.raises(BasesFileError, match=f"'/layers' is a Dataset, not the group of layers.*{DAMAGED}"):
            read(saved)


def _drop_checksums(handle: h5py.File) -> None:
    handle["layers"].visititems(lambda name, node: node.attrs.__delitem__(CHECKSUM)
                                if isinstance(node, h5py.Dataset) else None)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.25])
@pytest.mark.parametrize("checksums", [True, False])
def test_a_recorded_error_that_is_not_a_finite_fraction_is_refused(saved, value, checksums):
    """A NaN recorded error would switch the recorded-error check off: a factor scaled by 1.5
    (caught by its checksum where the file has one) would then load."""
    def edit(group):
        group.attrs["filter_energy_lost"] = value
        if not checksums:
            group["vertical"][...] = group["vertical"][...] * 1.5
            _drop_checksums(group.file)

    _edit(saved, edit)
    for read in (read_bases, _apply):
        with pytest.raises(BasesFileError, match=f"attribute 'filter_energy_lost' is malformed.*finite.*{DAMAGED}"):
            read(saved)


@pytest.mark.parametrize("attribute, change", [("weight_sha256", lambda digest: "Z" + digest[1:]),
                                               ("bias_sha256", lambda digest: digest[:40])])
def test_a_damaged_recorded_hash_is_refused_not_blamed_on_the_model(saved, attribute, change):
    _edit(saved, lambda group: group.attrs.__setitem__(attribute, change(group.attrs[attribute])))
    with pytest.raises(BasesFileError, match=f"attribute '{attribute}' is malformed.*64 hexadecimal.*{DAMAGED}"):
        _apply(saved)


@pytest.mark.parametrize("dtype, cast", [("float16", "half"), ("bfloat16", "bfloat16")])
def test_a_model_cast_to_half_precision_is_named_not_blamed_on_changed_weights(saved, dtype, cast):
    with pytest.raises(LayerError, match=f"the model is {dtype}, the bases were fitted on float32: apply to the "
                                         f"float32 model, then call \\.{cast}\\(\\)"):
        recon.apply_bases(getattr(tiny(), cast)(), saved)
    torch.manual_seed(1)
    other = Tiny()  # other weights, cast too
    with pytest.raises(BasesFileError, match=f"weight_sha256 mismatch, beyond the rounding of a cast to torch.{dtype}"):
        recon.apply_bases(getattr(other, cast)(), saved)
    model = getattr(recon.apply_bases(tiny(), saved), cast)()  # what the message says to do
    assert model.features[0].vertical.dtype == getattr(torch, dtype)
    assert model(torch.randn(2, 3, 10, 10, dtype=getattr(torch, dtype))).isfinite().all()


def _scripted():
    return torch.jit.script(tiny())


def _traced():
    return torch.jit.trace(tiny(), torch.randn(1, 3, 10, 10))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit
@pytest.mark.parametrize("arguments, message", [
    ({"model": lambda: "tiny"}, "apply_bases: model must be a torch.nn.Module, got str"),
    ({"model": _scripted}, "apply_bases: model is a TorchScript .* recon needs the eager nn.Module"),
    ({"model": _traced}, "apply_bases: model is a TorchScript .* recon needs the eager nn.Module"),
    ({"path": None}, "apply_bases: path must be a str or os.PathLike naming a bases file, got NoneType"),
    ({"path": b"bases.h5"}, "apply_bases: path must be a str or os.PathLike naming a bases file, got bytes"),
    ({"example_input": [[1.0, 2.0]]}, "example_input must be a torch.Tensor .*, got list"),
    ({"example_input": torch.zeros(2, 3, 10, 10, dtype=torch.long)}, "example_input must be a finite floating-point"),
    ({"example_input": torch.full((2, 3, 10, 10), float("nan"))}, "example_input must be a finite floating-point"),
    ({"example_input": torch.zeros(2, 5, 10, 10)}, "the model failed on example_input of shape \\(2, 5, 10, 10\\)"),
])
def test_apply_bases_arguments_are_checked_before_any_work(saved, monkeypatch, arguments, message):
    monkeypatch.setattr("recon.surgery.guard_replacements", lambda *args, **kwargs: pytest.fail("timed first"))
    arguments = {"path": saved, **arguments}
    model = arguments.pop("model", tiny)()
    with pytest.raises(ConfigError, match=message):
        recon.apply_bases(model, **arguments)
    if isinstance(model, torch.nn.Module):  # nothing was replaced
        assert not any(isinstance(module, recon.LowRankModule) for module in model.modules())
