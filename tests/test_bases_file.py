"""Bases files: v2 round trips, v1 files written by recon 0.1, validation, and writes that
never lose data (atomic, locked, links followed, permissions kept, stale temporaries removed)."""
import logging
import multiprocessing
import os
import stat
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import recon
from recon import apply_bases, load_bases
from recon.errors import BasesFileError, LayerError
from recon.io.atomic import exclusive
from recon.io.bases_file import CHECKSUM, BasesFile, read_bases, update_bases, write_bases
from tests.fixture_models import tiny

DATA = Path(__file__).resolve().parent / "data"
FITS = {"features.0": ("scheme2", 4), "features.4": ("scheme1", 3)}


@pytest.fixture
def saved(tmp_path):
    """A v2 file with a Scheme 2 and a Scheme 1 layer of the tiny model, and the records."""
    model = tiny()
    records = {}
    for name, (method, rank) in FITS.items():
        records.update(recon.compress(model, layers=name, method=method, ranks=rank, progress=False).layers)
    path = write_bases(tmp_path / "b.h5", BasesFile("tiny", recon.compress(model, layers="features.0", ranks=2,
                                                                                  progress=False).model_sha256, records))
    return model, records, path


def test_round_trip_keeps_every_field(saved):
    _, records, path = saved
    loaded = read_bases(path)
    assert loaded.model == "tiny" and loaded.version == 2 and set(loaded.layers) == set(FITS)
    for name, record in records.items():
        got = loaded.layers[name]
        for field in ("method", "rank", "mode", "geometry", "weight_sha256", "bias_sha256", "filter_energy_lost",
                      "input_shape", "config"):
            assert getattr(got, field) == getattr(record, field), field
        for key, tensor in record.module.state_dict().items():
            torch.testing.assert_close(got.module.state_dict()[key], tensor)
    np.testing.assert_array_equal(loaded.layers["features.4"].history["lambda"], records["features.4"].history["lambda"])
    with h5py.File(path) as f:
        assert f.attrs["format"] == "recon.bases" and f.attrs["version"] == 2
        assert f["layers/features.0"].attrs["method"] == "scheme2" and "vertical" in f["layers/features.0"]


def test_apply_bases_computes_what_the_records_describe(saved):
    model, records, path = saved
    x = torch.randn(2, 3, 10, 10)
    expected = tiny()
    for name, record in records.items():
        recon.surgery.replace_layer(expected, name, record.module.to_dense())
    apply_bases(model, path)
    torch.testing.assert_close(model(x), expected(x), atol=1e-5, rtol=1e-5)
    assert set(load_bases(path)) == set(FITS)


def _v1_dense_weight(group: h5py.Group) -> np.ndarray:
    """The weight a schema v1 layer describes, from its datasets alone (the v1 schema's formulas)."""
    d = {key: np.asarray(value, np.float64) for key, value in group.items() if isinstance(value, h5py.Dataset)}
    method = group.attrs.get("method")
    if method == "cp":
        return np.einsum("nr,cr,yr,xr->ncyx", d["out_factor"], d["in_factor"], d["row_factor"], d["col_factor"])
    if method == "tucker2":
        return np.einsum("oiyx,no,ci->ncyx", d["core"], d["out_factor"], d["in_factor"])
    if method == "svd":
        return d["second"] @ d["first"]
    if group.attrs["scheme"] == 1:
        return np.einsum("ncm,my,mx->ncyx", d["coeffs"], d["vertical"], d["horizontal"])
    return np.einsum("nkx,kcy->ncyx", d["horizontal"], d["vertical"])


@pytest.mark.parametrize("file", ["v1_tiny.h5", "v1_tiny_peers.h5"])
def test_files_written_by_recon_0_1_still_load(file, caplog):
    path = DATA / file
    loaded = read_bases(path)
    assert loaded.version == 1
    with h5py.File(path) as f:
        for name, record in loaded.layers.items():
            group = f["layers"][name]
            np.testing.assert_allclose(record.module.dense_weight().detach().double().numpy(), _v1_dense_weight(group),
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(record.module.bias.detach().numpy(), group["bias"][...])
    with caplog.at_level(logging.WARNING, logger="recon"):
        model = apply_bases(tiny(), path)
    assert "records no bias hash" in caplog.text  # a changed bias would go unseen: say so
    assert {type(m).__name__ for n, m in model.named_modules() if n in loaded.layers} <= {
        "Scheme1Conv", "Scheme2Conv", "CPConv", "Tucker2Conv", "LowRankLinear"}
    assert model(torch.randn(1, 3, 10, 10)).shape == (1, 2)


def test_weight_and_bias_mismatches_are_refused_unless_allowed(saved):
    _, _, path = saved
    other = tiny()
    with torch.no_grad():
        other.features[0].bias.add_(0.1)
    with pytest.raises(BasesFileError, match="layer 'features.0': the model's bias differs.*allow_mismatch=True"):
        apply_bases(other, path)
    with torch.no_grad():
        other.features[0].weight.mul_(2)
    with pytest.raises(BasesFileError, match="weight_sha256 mismatch"):
        apply_bases(other, path)
    apply_bases(other, path, allow_mismatch=True)


def test_wrong_version_format_and_malformed_attributes_are_named(saved, tmp_path):
    _, _, path = saved
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 3
    with pytest.raises(BasesFileError, match="schema version 3; this recon reads versions 1 and 2"):
        read_bases(path)
    with h5py.File(path, "a") as f:
        f.attrs["version"] = "one"
    with pytest.raises(BasesFileError, match="attribute 'version' is malformed \\('one'"):
        read_bases(path)
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 2
        f["layers/features.0"].attrs["kernel_size"] = np.array([3, 3, 3])
    with pytest.raises(BasesFileError, match="layer 'features.0': attribute 'kernel_size' is malformed"):
        read_bases(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something"
    with pytest.raises(BasesFileError, match="not a recon bases file"):
        read_bases(other)


def test_damaged_tensors_are_named(saved):
    _, _, path = saved
    with h5py.File(path, "a") as f:
        data = f["layers/features.0/horizontal"][...]
        data[0, 0, 0, 0] = np.nan
        f["layers/features.0/horizontal"][...] = data
        del f["layers/features.4/coeffs"]
        f["layers/features.4/coeffs"] = np.zeros((6, 8 * 5, 1, 1), np.float32)
    with pytest.raises(BasesFileError, match="layer 'features.0': field 'horizontal' contains NaN"):
        read_bases(path)
    with h5py.File(path, "a") as f:
        del f["layers/features.0"]
    with pytest.raises(BasesFileError, match="'coeffs' has shape \\(6, 40, 1, 1\\), expected \\(6, 24, 1, 1\\)"):
        read_bases(path)


def test_a_deleted_bias_is_refused_in_both_schemas(saved, tmp_path):
    _, _, path = saved
    with h5py.File(path, "a") as f:
        del f["layers/features.0/bias"]
    with pytest.raises(BasesFileError, match="layer 'features.0': field 'bias' is missing"):
        read_bases(path)
    v1 = tmp_path / "v1.h5"
    v1.write_bytes((DATA / "v1_tiny.h5").read_bytes())
    with h5py.File(v1, "a") as f:
        del f["layers/features.0/bias"]
    with pytest.raises(BasesFileError, match="the model's layer has a bias but the bases have none"):
        apply_bases(tiny(), v1)


def _edit_unchecked(path, dataset, value):
    """Set a dataset's values and drop its checksum, as in a file written before checksums were
    recorded (an edit that keeps the checksum is refused at once: tests/test_hostile_files.py)."""
    with h5py.File(path, "a") as f:
        f[dataset][...] = value(f[dataset][...])
        if CHECKSUM in f[dataset].attrs:
            del f[dataset].attrs[CHECKSUM]


def test_overflowing_or_edited_factors_are_refused(saved):
    _, _, path = saved
    _edit_unchecked(path, "layers/features.4/coeffs", lambda v: v * 1.5)  # plausible weights, but not what was fitted
    with pytest.raises(BasesFileError, match="layer 'features.4': the stored factors lose .* the file was changed"):
        apply_bases(tiny(), path)
    apply_bases(tiny(), path, allow_mismatch=True)
    _edit_unchecked(path, "layers/features.4/coeffs", lambda v: v * 0 + 3e38)  # finite, but weights ~1e38 too large
    for allow in (False, True):
        with pytest.raises(BasesFileError, match="layer 'features.4': the stored factors compose weights .* damaged"):
            apply_bases(tiny(), path, allow_mismatch=allow)
    _edit_unchecked(path, "layers/features.4/vertical", lambda v: v * 0 + 3e38)
    with pytest.raises(BasesFileError, match="layer 'features.4': the factors overflow float32"):
        read_bases(path)


def test_layers_missing_from_the_model_or_of_another_kind_are_named(saved, tmp_path):
    _, records, path = saved
    with h5py.File(path, "a") as f:
        f.move("layers/features.4", "layers/head")
    with pytest.raises(LayerError, match="layer 'head': the model's layer cannot take scheme1 bases: it is a Linear"):
        apply_bases(tiny(), path)
    with h5py.File(path, "a") as f:
        f.move("layers/head", "layers/nosuch")
    with pytest.raises(LayerError, match="layer 'nosuch' of the bases file is not in the model"):
        apply_bases(tiny(), path)
    empty = write_bases(tmp_path / "empty.h5", BasesFile("tiny", "x", {}))
    with pytest.raises(BasesFileError, match="holds no layers"):
        apply_bases(tiny(), empty)


def test_garbage_missing_and_directory_paths(tmp_path):
    garbage = tmp_path / "g.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(BasesFileError, match="not a readable HDF5 file"):
        read_bases(garbage)
    with pytest.raises(BasesFileError, match="does not exist"):
        read_bases(tmp_path / "none.h5")
    with pytest.raises(BasesFileError, match="is a directory"):
        read_bases(tmp_path)
    with pytest.raises(BasesFileError, match="folder .* does not exist"):
        write_bases(tmp_path / "missing" / "b.h5", BasesFile("m", "h", {}))
    with pytest.raises(BasesFileError, match="it is a directory"):
        write_bases(tmp_path, BasesFile("m", "h", {}))


def test_interrupted_write_leaves_existing_file_intact(saved, monkeypatch):
    _, records, path = saved
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("recon.io.bases_file._write_layer", explode)
    with pytest.raises(KeyboardInterrupt):
        write_bases(path, BasesFile("tiny", read_bases(path).model_sha256, records))
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")] == [path.name]


def test_update_adds_layers_and_refuses_other_models(saved):
    model, records, path = saved
    model_hash = read_bases(path).model_sha256
    extra = recon.compress(model, layers="features.0", ranks=2, progress=False).layers["features.0"]
    assert sorted(update_bases(path, "tiny", model_hash, [extra])) == ["features.0", "features.4"]
    updated = read_bases(path).layers
    assert updated["features.0"].rank == 2
    torch.testing.assert_close(updated["features.4"].module.coeffs, records["features.4"].module.coeffs)
    with pytest.raises(BasesFileError, match="another model"):
        update_bases(path, "other", "def", [extra])


def _writer(path: str, model_hash: str, record, prefix: str, rounds: int) -> None:
    for index in range(rounds):
        renamed = type(record)(**{**record.__dict__, "name": f"{prefix}{index}"})
        update_bases(path, "tiny", model_hash, [renamed])


def test_concurrent_writers_do_not_lose_layers(saved):
    _, records, path = saved
    model_hash = read_bases(path).model_sha256
    record = records["features.0"]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(path), model_hash, record, prefix, 8)) for prefix in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    names = set(read_bases(path).layers)
    assert {f"{p}{i}" for p in "ab" for i in range(8)} <= names


def test_whole_file_writes_wait_for_the_update_lock(saved):
    # write_bases replaces the file, so it must not run while an update holds the lock (it would
    # delete the update's live temporary as stale): it waits, then writes
    _, _, path = saved
    bases = read_bases(path)
    with exclusive(path):
        writer = threading.Thread(target=write_bases, args=(path, bases))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive()
    writer.join(30)
    assert not writer.is_alive() and set(read_bases(path).layers) == set(bases.layers)


def test_a_symlink_is_followed_and_permissions_are_kept(saved, tmp_path):
    model, records, path = saved
    model_hash = read_bases(path).model_sha256
    link = tmp_path / "link.h5"
    link.symlink_to(path)
    os.chmod(path, 0o644)
    update_bases(link, "tiny", model_hash, [records["features.0"]])
    assert link.is_symlink() and os.readlink(link) == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    fresh = tmp_path / "fresh.h5"
    update_bases(fresh, "tiny", model_hash, [records["features.0"]])
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


def test_temporaries_left_by_a_killed_writer_are_removed(saved):
    _, records, path = saved
    stale = path.parent / f".{path.name}.abc123.tmp"
    stale.write_bytes(b"half a file")
    update_bases(path, "tiny", read_bases(path).model_sha256, [records["features.0"]])
    assert not stale.exists()


def test_adding_to_a_version_1_file_converts_it(tmp_path):
    path = tmp_path / "v1.h5"
    path.write_bytes((DATA / "v1_tiny.h5").read_bytes())
    old = read_bases(path)
    extra = recon.compress(tiny(), layers="features.2", ranks=2, progress=False).layers["features.2"]
    update_bases(path, old.model, old.model_sha256, [extra])
    new = read_bases(path)
    assert new.version == 2 and set(new.layers) == {"features.0", "features.2", "features.4"}
    for name in ("features.0", "features.4"):
        torch.testing.assert_close(new.layers[name].module.dense_weight(), old.layers[name].module.dense_weight())
    apply_bases(tiny(), path)
